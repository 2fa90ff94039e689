// Causal random-feature attention as a sequential prefix-sum scan.
//
// Per head the scan keeps only the running state S = sum_s k_s v_s^T (m x d) and z = sum_s k_s
// (m), so memory is O(m * d) per head and there is no n x n or chunk x chunk score matrix. Each
// step costs 2*m*d multiply-adds with S resident in L1, which for m, d <= ~128 beats the chunked
// GEMM formulation (that one spends ~2x the flops on the intra-chunk triangle).
//
// Backward (g = dL/dout, den includes eps, dn_t = g_t / den_t, dd_t = -(g_t . out_t) / den_t):
//   dq_t = S_t dn_t + z_t dd_t                       (forward scan, S_t includes step t)
//   R_s = sum_{t>=s} q_t dn_t^T,  r_s = sum_{t>=s} q_t dd_t   (reverse scan)
//   dk_s = R_s v_s + r_s,  dv_s = R_s^T k_s
// Every one of these (and the forward numerator) is the same rank-1 scan
//   X_t = X_{t-1} + a_t u_t^T,   y_t = X_t^T b_t
// with X in the layout that makes y_t a sum of whole rows (no horizontal reductions):
//   forward: X = S   (m x d), a = k, b = q,  u = v        y = numerator
//   dq:      X = S^T (d x m), a = v, b = dn, u = k        y = dq - z dd
//   dk:      X = R^T (d x m), a = dn, b = v, u = q        y = dk - r  (reverse time)
//   dv:      X = R   (m x d), a = q, b = k,  u = dn       y = dv      (reverse time)
// Columns of X are independent, so each scan runs in column blocks whose state fits in L1, and
// the blocks, scans and heads are separate parallel work items. State is O(m * d) per item.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

namespace panther {
namespace {

// Columns per register tile: the output tile stays in registers across the rows loop.
constexpr int64_t kTile = 16;
// State kept per work item: small enough to stay in a 32 KiB L1 data cache beside the streamed
// rows of the inputs.
constexpr int64_t kStateBytes = 24 * 1024;

template <typename T>
inline T dot(const T* __restrict__ a, const T* __restrict__ b, int64_t len) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < len; ++j) acc += a[j] * b[j];
  return acc;
}

// X[r, :W] += a * u[:W] and acc[:W] += b * X[r, :W] for one row.
template <typename T, int64_t W>
inline void update_row(T* __restrict__ Xr, const T* __restrict__ u, T a, T b,
                       T* __restrict__ acc) {
#pragma omp simd
  for (int64_t j = 0; j < W; ++j) {
    const T x = Xr[j] + a * u[j];
    Xr[j] = x;
    acc[j] += b * x;
  }
}

// One step of the rank-1 scan on a block: X (rows x width, leading dimension ld) gets a u^T added
// and y = X^T b is written for the block's width columns.
template <typename T>
void scan_step(T* __restrict__ X, int64_t ld, int64_t rows, int64_t width,
               const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ u,
               T* __restrict__ y) {
  for (int64_t c0 = 0; c0 < width; c0 += kTile) {
    const int64_t w = std::min(kTile, width - c0);
    // Four accumulators (rows r mod 4) break the FMA dependency chain on the output tile.
    T acc[4][kTile] = {};
    const T* uu = u + c0;
    T* X0 = X + c0;
    int64_t r = 0;
    if (w == kTile) {
      for (; r + 4 <= rows; r += 4) {
        update_row<T, kTile>(X0 + r * ld, uu, a[r], b[r], acc[0]);
        update_row<T, kTile>(X0 + (r + 1) * ld, uu, a[r + 1], b[r + 1], acc[1]);
        update_row<T, kTile>(X0 + (r + 2) * ld, uu, a[r + 2], b[r + 2], acc[2]);
        update_row<T, kTile>(X0 + (r + 3) * ld, uu, a[r + 3], b[r + 3], acc[3]);
      }
      for (; r < rows; ++r) update_row<T, kTile>(X0 + r * ld, uu, a[r], b[r], acc[0]);
    } else {
      for (; r < rows; ++r) {
        T* Xr = X0 + r * ld;
        for (int64_t c = 0; c < w; ++c) {
          const T x = Xr[c] + a[r] * uu[c];
          Xr[c] = x;
          acc[0][c] += b[r] * x;
        }
      }
    }
    for (int64_t c = 0; c < w; ++c) {
      y[c0 + c] = (acc[0][c] + acc[1][c]) + (acc[2][c] + acc[3][c]);
    }
  }
}

// Width of the column blocks for a state with `rows` rows.
inline int64_t block_width(int64_t rows, int64_t width, int64_t elem) {
  int64_t w = std::max<int64_t>(1, kStateBytes / std::max<int64_t>(1, rows * elem));
  if (w >= kTile) w -= w % kTile;
  return std::min(w, width);
}

void check_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_attention_args("panther::causal_linear_attention", q, k, v);
}

// Pointers of one head.
template <typename T>
struct Head {
  const T* q;
  const T* k;
  const T* v;
  int64_t n, m, d;
};

// Prefix state of one head for the stateful forward: the initial S (m x d, row-major) and z (m)
// are read, the final ones written. All null for the plain forward, which starts from zero.
template <typename T>
struct State {
  const T* kv0 = nullptr;
  const T* z0 = nullptr;
  T* kv1 = nullptr;
  T* z1 = nullptr;
};

// Forward on value columns [c0, c0 + width). den_out may be null (the stateful forward does not
// keep the normaliser: it has no backward).
template <typename T>
void forward_block(const Head<T>& h, T* __restrict__ out, T* __restrict__ den_out, int64_t c0,
                   int64_t width, T eps, const State<T>& st = State<T>{}) {
  const int64_t m = h.m, d = h.d;
  std::vector<T> X(static_cast<size_t>(m * width), T(0));
  std::vector<T> z(static_cast<size_t>(m), T(0));
  std::vector<T> y(static_cast<size_t>(width));
  if (st.kv0 != nullptr) {
    for (int64_t r = 0; r < m; ++r) {
      std::copy(st.kv0 + r * d + c0, st.kv0 + r * d + c0 + width, X.begin() + r * width);
    }
    std::copy(st.z0, st.z0 + m, z.begin());
  }
  for (int64_t t = 0; t < h.n; ++t) {
    const T* qt = h.q + t * m;
    const T* kt = h.k + t * m;
    T den = 0;
#pragma omp simd reduction(+ : den)
    for (int64_t i = 0; i < m; ++i) {
      z[i] += kt[i];
      den += qt[i] * z[i];
    }
    den += eps;
    if (c0 == 0 && den_out != nullptr) den_out[t] = den;
    scan_step<T>(X.data(), width, m, width, kt, qt, h.v + t * d + c0, y.data());
    const T inv = T(1) / den;
    T* ot = out + t * d + c0;
    for (int64_t c = 0; c < width; ++c) ot[c] = y[c] * inv;
  }
  if (st.kv1 != nullptr) {
    for (int64_t r = 0; r < m; ++r) {
      std::copy(X.begin() + r * width, X.begin() + (r + 1) * width, st.kv1 + r * d + c0);
    }
    // Every column block recomputes z; the first one publishes it.
    if (c0 == 0) std::copy(z.begin(), z.end(), st.z1);
  }
}

// The three backward scans. kind 0: dq on feature columns, 1: dk on feature columns (reverse),
// 2: dv on value columns (reverse). Columns [c0, c0 + width).
template <typename T>
void backward_block(const Head<T>& h, const T* __restrict__ g, const T* __restrict__ o,
                    const T* __restrict__ den, T* __restrict__ grad_out, int kind, int64_t c0,
                    int64_t width) {
  const int64_t m = h.m, d = h.d, n = h.n;
  const int64_t rows = kind == 2 ? m : d;
  const int64_t ld_out = kind == 2 ? d : m;
  std::vector<T> X(static_cast<size_t>(rows * width), T(0));
  std::vector<T> side(static_cast<size_t>(width), T(0));  // z (dq) or r (dk)
  std::vector<T> dn(static_cast<size_t>(d));
  std::vector<T> y(static_cast<size_t>(width));
  for (int64_t step = 0; step < n; ++step) {
    const int64_t t = kind == 0 ? step : n - 1 - step;
    const T* gt = g + t * d;
    const T inv = T(1) / den[t];
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) dn[j] = gt[j] * inv;
    T* gout = grad_out + t * ld_out + c0;
    if (kind == 0) {
      const T dd = -dot(gt, o + t * d, d) * inv;
      const T* kt = h.k + t * m + c0;
      for (int64_t c = 0; c < width; ++c) side[c] += kt[c];
      scan_step<T>(X.data(), width, d, width, h.v + t * d, dn.data(), kt, y.data());
      for (int64_t c = 0; c < width; ++c) gout[c] = y[c] + side[c] * dd;
    } else if (kind == 1) {
      const T dd = -dot(gt, o + t * d, d) * inv;
      const T* qt = h.q + t * m + c0;
      for (int64_t c = 0; c < width; ++c) side[c] += qt[c] * dd;
      scan_step<T>(X.data(), width, d, width, dn.data(), h.v + t * d, qt, y.data());
      for (int64_t c = 0; c < width; ++c) gout[c] = y[c] + side[c];
    } else {
      scan_step<T>(X.data(), width, m, width, h.q + t * m, h.k + t * m, dn.data() + c0,
                   y.data());
      std::copy(y.begin(), y.end(), gout);
    }
  }
}

// A work item: one head, one scan kind, one block of columns.
struct Item {
  int64_t head;
  int kind;
  int64_t c0;
  int64_t width;
};

void add_items(std::vector<Item>& items, int64_t heads, int kind, int64_t width, int64_t block) {
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t c0 = 0; c0 < width; c0 += block) {
      items.push_back({h, kind, c0, std::min(block, width - c0)});
    }
  }
}

// Splits blocks further when there are fewer items than threads (small batch, one head).
int64_t balance(int64_t block, int64_t width, int64_t items_per_col_block, int64_t threads) {
  while (block > kTile && items_per_col_block * ((width + block - 1) / block) < threads) {
    block = std::max<int64_t>(kTile, ((block / 2 + kTile - 1) / kTile) * kTile);
  }
  return block;
}

std::tuple<at::Tensor, at::Tensor> causal_forward_cpu(const at::Tensor& q_in,
                                                      const at::Tensor& k_in,
                                                      const at::Tensor& v_in, double eps) {
  check_attention(q_in, k_in, v_in);
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const int64_t B = q.size(0), H = q.size(1), n = q.size(2), m = q.size(3), d = v.size(3);
  const int64_t heads = B * H;
  at::Tensor out = at::empty({B, H, n, d}, v.options());
  at::Tensor den = at::empty({B, H, n}, v.options());
  if (heads == 0 || n == 0) return {out, den};
  if (d == 0) {
    den.copy_((q * k.cumsum(2)).sum(-1) + eps);
    return {out, den};
  }
  const int64_t threads = at::get_num_threads();
  int64_t block = block_width(m, d, q.element_size());
  block = balance(block, d, heads, threads);
  std::vector<Item> items;
  add_items(items, heads, 0, d, block);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "panther_causal_forward", [&] {
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* dp = den.data_ptr<scalar_t>();
    at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        const Item& it = items[u];
        const int64_t hh = it.head;
        const Head<scalar_t> head{qp + hh * n * m, kp + hh * n * m, vp + hh * n * d, n, m, d};
        forward_block<scalar_t>(head, op + hh * n * d, dp + hh * n, it.c0, it.width,
                                static_cast<scalar_t>(eps));
      }
    });
  });
  return {out, den};
}

// Forward from a given prefix state (kv0 = sum k_s v_s^T, z0 = sum k_s over the earlier tokens),
// returning the output and the state after the last token. Inference only: no normaliser is
// kept and no backward exists, which lets a caller process a long sequence block by block.
std::tuple<at::Tensor, at::Tensor, at::Tensor> causal_forward_stateful_cpu(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& kv0_in, const at::Tensor& z0_in, double eps) {
  check_attention_args("panther::causal_linear_attention_stateful", q_in, k_in, v_in);
  check_attention_state_args(q_in, v_in, kv0_in, z0_in);
  const int64_t B = q_in.size(0), H = q_in.size(1), n = q_in.size(2), m = q_in.size(3);
  const int64_t d = v_in.size(3);
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const at::Tensor kv0 = kv0_in.contiguous(), z0 = z0_in.contiguous();
  const int64_t heads = B * H;
  at::Tensor out = at::empty({B, H, n, d}, v.options());
  at::Tensor kv1 = at::empty({B, H, m, d}, v.options());
  at::Tensor z1 = at::empty({B, H, m}, v.options());
  if (heads == 0) return {out, kv1, z1};
  if (n == 0 || d == 0 || m == 0) {
    // Nothing for the scan to do: the state only gains the (possibly empty) block's sums.
    kv1.copy_(kv0 + at::matmul(k.transpose(-1, -2), v));
    z1.copy_(z0 + k.sum(2));
    out.zero_();  // m == 0: no features, so a zero numerator over eps
    return {out, kv1, z1};
  }
  const int64_t threads = at::get_num_threads();
  int64_t block = block_width(m, d, q.element_size());
  block = balance(block, d, heads, threads);
  std::vector<Item> items;
  add_items(items, heads, 0, d, block);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "panther_causal_forward_stateful", [&] {
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    const scalar_t* kv0p = kv0.data_ptr<scalar_t>();
    const scalar_t* z0p = z0.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* kv1p = kv1.data_ptr<scalar_t>();
    scalar_t* z1p = z1.data_ptr<scalar_t>();
    at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        const Item& it = items[u];
        const int64_t hh = it.head;
        const Head<scalar_t> head{qp + hh * n * m, kp + hh * n * m, vp + hh * n * d, n, m, d};
        State<scalar_t> st;
        st.kv0 = kv0p + hh * m * d;
        st.z0 = z0p + hh * m;
        st.kv1 = kv1p + hh * m * d;
        st.z1 = z1p + hh * m;
        forward_block<scalar_t>(head, op + hh * n * d, nullptr, it.c0, it.width,
                                static_cast<scalar_t>(eps), st);
      }
    });
  });
  return {out, kv1, z1};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> causal_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& den_in,
    std::array<bool, 3> mask) {
  check_attention_backward_args(grad_in, q_in, k_in, v_in, out_in, den_in);
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const at::Tensor g = grad_in.contiguous(), o = out_in.contiguous(), den = den_in.contiguous();
  const int64_t B = q.size(0), H = q.size(1), n = q.size(2), m = q.size(3), d = v.size(3);
  const int64_t heads = B * H;
  at::Tensor dq = mask[0] ? at::zeros_like(q) : at::empty({0}, q.options());
  at::Tensor dk = mask[1] ? at::zeros_like(k) : at::empty({0}, k.options());
  at::Tensor dv = mask[2] ? at::zeros_like(v) : at::empty({0}, v.options());
  if (heads == 0 || n == 0) return {dq, dk, dv};
  const int64_t threads = at::get_num_threads();
  const int64_t elem = q.element_size();
  const int64_t scans_m = (mask[0] ? 1 : 0) + (mask[1] ? 1 : 0);
  const int64_t scans = scans_m + (mask[2] ? 1 : 0);
  std::vector<Item> items;
  if (m > 0 && d > 0) {
    const int64_t block_m = balance(block_width(d, m, elem), m, heads * scans, threads);
    const int64_t block_d = balance(block_width(m, d, elem), d, heads * scans, threads);
    if (mask[0]) add_items(items, heads, 0, m, block_m);
    if (mask[1]) add_items(items, heads, 1, m, block_m);
    if (mask[2]) add_items(items, heads, 2, d, block_d);
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "panther_causal_backward", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    const scalar_t* op = o.data_ptr<scalar_t>();
    const scalar_t* dp = den.data_ptr<scalar_t>();
    scalar_t* outs[3] = {mask[0] ? dq.data_ptr<scalar_t>() : nullptr,
                         mask[1] ? dk.data_ptr<scalar_t>() : nullptr,
                         mask[2] ? dv.data_ptr<scalar_t>() : nullptr};
    at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        const Item& it = items[u];
        const int64_t hh = it.head;
        const Head<scalar_t> head{qp + hh * n * m, kp + hh * n * m, vp + hh * n * d, n, m, d};
        const int64_t off = it.kind == 2 ? hh * n * d : hh * n * m;
        backward_block<scalar_t>(head, gp + hh * n * d, op + hh * n * d, dp + hh * n,
                                 outs[it.kind] + off, it.kind, it.c0, it.width);
      }
    });
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(panther, CPU, m) {
  m.impl("causal_linear_attention", &causal_forward_cpu);
  m.impl("causal_linear_attention_backward", &causal_backward_cpu);
  m.impl("causal_linear_attention_stateful", &causal_forward_stateful_cpu);
}

}  // namespace panther
