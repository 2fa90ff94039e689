// CUDA versions of the FWHT, sparse sketch and causal-attention kernels.
//
// Compiled only where torch.cuda.is_available() and a CUDA toolkit exist; the schemas live in
// registration.cpp (the C++ library is always loaded first). sketched_linear needs no CUDA source:
// its ATen-GEMM implementation in sketched_linear.cpp is registered for CUDA too.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"

#include <array>
#include <cmath>
#include <tuple>

namespace panther {
namespace {

constexpr int kThreads = 256;
// Shared memory a block may use without opting in to the larger carve-out.
constexpr int64_t kSharedLimit = 48 * 1024;

inline int64_t blocks_for(int64_t work, int64_t threads) {
  return std::max<int64_t>(1, std::min<int64_t>((work + threads - 1) / threads, 65535 * 32));
}

// --- FWHT -------------------------------------------------------------------------------------

// One block per row; the whole row is transformed in shared memory.
template <typename T>
__global__ void fwht_shared_kernel(T* __restrict__ data, int64_t n, T scale) {
  extern __shared__ unsigned char smem_raw[];
  T* s = reinterpret_cast<T*>(smem_raw);
  T* row = data + static_cast<int64_t>(blockIdx.x) * n;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s[i] = row[i];
  __syncthreads();
  for (int64_t h = 1; h < n; h <<= 1) {
    for (int64_t p = threadIdx.x; p < n / 2; p += blockDim.x) {
      const int64_t i = (p / h) * 2 * h + (p % h);
      const T a = s[i], b = s[i + h];
      s[i] = a + b;
      s[i + h] = a - b;
    }
    __syncthreads();
  }
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) row[i] = s[i] * scale;
}

// One butterfly stage over all rows, for rows too long for shared memory.
template <typename T>
__global__ void fwht_stage_kernel(T* __restrict__ data, int64_t rows, int64_t n, int64_t h,
                                  T scale) {
  const int64_t pairs = rows * (n / 2);
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < pairs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = p / (n / 2), q = p % (n / 2);
    const int64_t i = r * n + (q / h) * 2 * h + (q % h);
    const T a = data[i], b = data[i + h];
    data[i] = (a + b) * scale;
    data[i + h] = (a - b) * scale;
  }
}

at::Tensor fwht_cuda(const at::Tensor& x) {
  check_fwht_args(x);
  if (x.scalar_type() != to_compute(x).scalar_type()) {
    return fwht_cuda(to_compute(x)).to(x.scalar_type());  // float32 butterflies, one rounding
  }
  const int64_t n = x.size(-1);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = x.clone(at::MemoryFormat::Contiguous);
  const int64_t rows = out.numel() / n;
  if (rows == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "panther_fwht_cuda", [&] {
    const scalar_t scale = static_cast<scalar_t>(1.0 / std::sqrt(static_cast<double>(n)));
    scalar_t* data = out.data_ptr<scalar_t>();
    const int64_t bytes = n * static_cast<int64_t>(sizeof(scalar_t));
    if (bytes <= kSharedLimit && rows <= 2147483647LL) {
      const int threads = static_cast<int>(std::min<int64_t>(std::max<int64_t>(n / 2, 32), 512));
      fwht_shared_kernel<scalar_t><<<static_cast<unsigned>(rows), threads, bytes, stream>>>(
          data, n, scale);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      const int64_t blocks = blocks_for(rows * (n / 2), kThreads);
      for (int64_t h = 1; h < n; h <<= 1) {
        const scalar_t s = (h << 1) == n ? scale : scalar_t(1);
        fwht_stage_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
            data, rows, n, h, s);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  });
  return out;
}

// --- sparse sketch ------------------------------------------------------------------------------

// Indices are checked on the device, without a host sync (so the ops stay capturable in CUDA
// graphs): every kernel skips an out-of-range index instead of touching memory through it and
// raises a flag, and the flag feeds a device-side assertion (at::_assert_async), the mechanism
// torch's own indexing ops use. The host-side checks cover shapes, dtypes and devices.
inline __device__ bool row_ok(int64_t r, int64_t m, int* bad) {
  if (r >= 0 && r < m) return true;
  *bad = 1;
  return false;
}

void assert_rows_ok(const at::Tensor& bad, const char* op) {
  at::_assert_async(bad.eq(0), std::string(op) +
                                   ": sketch row indices must lie in [0, m); an index out of "
                                   "range was skipped");
}

template <typename T>
__global__ void sparse_apply_kernel(const T* __restrict__ x, const int64_t* __restrict__ rows,
                                    const T* __restrict__ values, T* __restrict__ out, int64_t B,
                                    int64_t n, int64_t s, int64_t m, int* __restrict__ bad) {
  const int64_t total = B * n * s;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = idx / (n * s), js = idx % (n * s), j = js / s;
    const int64_t r = rows[js];
    if (row_ok(r, m, bad)) atomicAdd(out + b * m + r, values[js] * x[b * n + j]);
  }
}

template <typename T>
__global__ void sparse_grad_x_kernel(const T* __restrict__ g, const int64_t* __restrict__ rows,
                                     const T* __restrict__ values, T* __restrict__ gx, int64_t B,
                                     int64_t n, int64_t s, int64_t m, int* __restrict__ bad) {
  const int64_t total = B * n;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = idx / n, j = idx % n;
    T acc = 0;
    for (int64_t t = 0; t < s; ++t) {
      const int64_t r = rows[j * s + t];
      if (row_ok(r, m, bad)) acc += values[j * s + t] * g[b * m + r];
    }
    gx[idx] = acc;
  }
}

template <typename T>
__global__ void sparse_grad_values_kernel(const T* __restrict__ g, const T* __restrict__ x,
                                          const int64_t* __restrict__ rows, T* __restrict__ gv,
                                          int64_t B, int64_t n, int64_t s, int64_t m,
                                          int* __restrict__ bad) {
  const int64_t total = B * n * s;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = idx / (n * s), js = idx % (n * s), j = js / s;
    const int64_t r = rows[js];
    if (row_ok(r, m, bad)) atomicAdd(gv + js, g[b * m + r] * x[b * n + j]);
  }
}

at::Tensor sparse_apply_cuda(const at::Tensor& x_in, const at::Tensor& rows_in,
                             const at::Tensor& values_in, int64_t m) {
  check_sparse_args(x_in, rows_in, values_in, m);
  if (x_in.scalar_type() != to_compute(x_in).scalar_type()) {
    // Half precision: float32 accumulation (the atomics too), one rounding at the end.
    return sparse_apply_cuda(to_compute(x_in), rows_in, to_compute(values_in), m)
        .to(x_in.scalar_type());
  }
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), rows = rows_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  const int64_t B = x.size(0), n = x.size(1), s = rows.size(1);
  at::Tensor out = at::zeros({B, m}, x.options());
  if (B * n * s == 0) return out;
  at::Tensor bad = at::zeros({1}, x.options().dtype(at::kInt));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "panther_sparse_apply_cuda", [&] {
    sparse_apply_kernel<scalar_t>
        <<<static_cast<unsigned>(blocks_for(B * n * s, kThreads)), kThreads, 0, stream>>>(
            x.data_ptr<scalar_t>(), rows.data_ptr<int64_t>(), values.data_ptr<scalar_t>(),
            out.data_ptr<scalar_t>(), B, n, s, m, bad.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  assert_rows_ok(bad, "panther::sparse_sketch_apply");
  return out;
}

std::tuple<at::Tensor, at::Tensor> sparse_apply_backward_cuda(const at::Tensor& grad_in,
                                                              const at::Tensor& x_in,
                                                              const at::Tensor& rows_in,
                                                              const at::Tensor& values_in,
                                                              std::array<bool, 2> mask) {
  check_sparse_backward_args(grad_in, x_in, rows_in, values_in);
  if (x_in.scalar_type() != to_compute(x_in).scalar_type()) {
    auto [gx32, gv32] = sparse_apply_backward_cuda(to_compute(grad_in), to_compute(x_in), rows_in,
                                                   to_compute(values_in), mask);
    return {gx32.to(x_in.scalar_type()), gv32.to(x_in.scalar_type())};
  }
  const at::Tensor grad = grad_in.contiguous();
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), rows = rows_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  const int64_t B = x.size(0), n = x.size(1), s = rows.size(1), m = grad.size(1);
  at::Tensor gx = mask[0] ? at::zeros({B, n}, x.options()) : at::empty({0}, x.options());
  at::Tensor gv = mask[1] ? at::zeros({n, s}, x.options()) : at::empty({0}, x.options());
  at::Tensor bad = at::zeros({1}, x.options().dtype(at::kInt));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "panther_sparse_apply_backward_cuda", [&] {
    if (mask[0] && B * n > 0) {
      sparse_grad_x_kernel<scalar_t>
          <<<static_cast<unsigned>(blocks_for(B * n, kThreads)), kThreads, 0, stream>>>(
              grad.data_ptr<scalar_t>(), rows.data_ptr<int64_t>(), values.data_ptr<scalar_t>(),
              gx.data_ptr<scalar_t>(), B, n, s, m, bad.data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (mask[1] && B * n * s > 0) {
      sparse_grad_values_kernel<scalar_t>
          <<<static_cast<unsigned>(blocks_for(B * n * s, kThreads)), kThreads, 0, stream>>>(
              grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), rows.data_ptr<int64_t>(),
              gv.data_ptr<scalar_t>(), B, n, s, m, bad.data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  assert_rows_ok(bad, "panther::sparse_sketch_apply_backward");
  return {gx, gv};
}

// --- causal linear attention ----------------------------------------------------------------------
//
// The same rank-1 scan as the CPU version (see causal_attention.cpp):
//   X_t = X_{t-1} + a_t u_t^T,  y_t = X_t^T b_t
// kind 0 forward (X = S, a = k, b = q, u = v), 1 dq (X = S^T, a = v, b = dn, u = k),
// 2 dk (X = R^T, a = dn, b = v, u = q, reverse), 3 dv (X = R, a = q, b = k, u = dn, reverse).
// Each thread owns one column of X (kept in a global scratch buffer, coalesced across the block);
// the per-step row vectors a and b are staged in shared memory. Blocks are (head, column block).

template <typename T>
__global__ void causal_scan_kernel(int kind, const T* __restrict__ q, const T* __restrict__ k,
                                   const T* __restrict__ v, const T* __restrict__ g,
                                   const T* __restrict__ o, const T* __restrict__ den,
                                   T* __restrict__ out, T* __restrict__ den_out,
                                   T* __restrict__ scratch, int64_t n, int64_t m, int64_t d,
                                   int64_t blocks_per_head, T eps) {
  extern __shared__ unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  const int64_t rows = (kind == 0 || kind == 3) ? m : d;
  const int64_t width = (kind == 1 || kind == 2) ? m : d;
  T* sA = smem;
  T* sB = sA + rows;
  T* sZ = sB + rows;  // running sum of k (forward only), m entries
  T* sG = sZ + m;     // g_t, d entries
  T* sO = sG + d;     // out_t, d entries

  const int64_t head = blockIdx.x / blocks_per_head;
  const int64_t cb = blockIdx.x % blocks_per_head;
  const int64_t tid = threadIdx.x, bd = blockDim.x;
  const int64_t col = cb * bd + tid;
  const bool active = col < width;
  q += head * n * m;
  k += head * n * m;
  v += head * n * d;
  if (kind != 0) {
    g += head * n * d;
    o += head * n * d;
    den += head * n;
  }
  T* X = scratch + static_cast<int64_t>(blockIdx.x) * rows * bd;
  for (int64_t r = 0; r < rows; ++r) X[r * bd + tid] = T(0);
  for (int64_t i = tid; i < m; i += bd) sZ[i] = T(0);
  T side = 0;
  __syncthreads();

  for (int64_t step = 0; step < n; ++step) {
    const int64_t t = (kind == 0 || kind == 1) ? step : n - 1 - step;
    if (kind == 0 || kind == 3) {
      for (int64_t i = tid; i < m; i += bd) {
        const T a = kind == 0 ? k[t * m + i] : q[t * m + i];
        sA[i] = a;
        sB[i] = kind == 0 ? q[t * m + i] : k[t * m + i];
        if (kind == 0) sZ[i] += a;
      }
    } else {
      for (int64_t j = tid; j < d; j += bd) {
        sA[j] = v[t * d + j];  // a for dq, b for dk
        sG[j] = g[t * d + j];
        sO[j] = o[t * d + j];
      }
    }
    __syncthreads();
    T dent, inv, dd = 0;
    if (kind == 0) {
      dent = eps;
      for (int64_t i = 0; i < m; ++i) dent += sB[i] * sZ[i];
    } else {
      dent = den[t];
    }
    inv = T(1) / dent;
    if (kind == 1 || kind == 2) {
      T go = 0;
      for (int64_t j = 0; j < d; ++j) go += sG[j] * sO[j];
      dd = -go * inv;
    }
    if (active) {
      T u;
      if (kind == 0) {
        u = v[t * d + col];
      } else if (kind == 1) {
        u = k[t * m + col];
      } else if (kind == 2) {
        u = q[t * m + col];
      } else {
        u = g[t * d + col] * inv;
      }
      T acc = 0;
      for (int64_t r = 0; r < rows; ++r) {
        T a, b;
        if (kind == 1) {
          a = sA[r];
          b = sG[r] * inv;
        } else if (kind == 2) {
          a = sG[r] * inv;
          b = sA[r];
        } else {
          a = sA[r];
          b = sB[r];
        }
        const T xv = X[r * bd + tid] + a * u;
        X[r * bd + tid] = xv;
        acc += b * xv;
      }
      if (kind == 0) {
        out[head * n * d + t * d + col] = acc * inv;
      } else if (kind == 1) {
        side += u;
        out[head * n * m + t * m + col] = acc + side * dd;
      } else if (kind == 2) {
        side += u * dd;
        out[head * n * m + t * m + col] = acc + side;
      } else {
        out[head * n * d + t * d + col] = acc;
      }
    }
    if (kind == 0 && cb == 0 && tid == 0) den_out[head * n + t] = dent;
    __syncthreads();
  }
}

void check_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_attention_args("panther::causal_linear_attention", q, k, v);
}

template <typename T>
void launch_scan(int kind, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const T* g, const T* o, const T* den, T* out, T* den_out, int64_t heads,
                 double eps) {
  const int64_t n = q.size(2), m = q.size(3), d = v.size(3);
  const int64_t rows = (kind == 0 || kind == 3) ? m : d;
  const int64_t width = (kind == 1 || kind == 2) ? m : d;
  if (heads == 0 || n == 0 || width == 0) return;
  const int64_t threads = std::min<int64_t>(128, ((width + 31) / 32) * 32);
  const int64_t per_head = (width + threads - 1) / threads;
  const int64_t shared = (2 * rows + m + 2 * d) * static_cast<int64_t>(sizeof(T));
  TORCH_CHECK_VALUE(shared <= kSharedLimit, "panther::causal_linear_attention on CUDA supports "
                    "(2*max(m, d) + m + 2*d) * itemsize <= 48 KiB; got m=", m, ", d=", d);
  at::Tensor scratch = at::empty({heads * per_head * rows * threads}, q.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  causal_scan_kernel<T><<<static_cast<unsigned>(heads * per_head), static_cast<unsigned>(threads),
                          static_cast<size_t>(shared), stream>>>(
      kind, q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), g, o, den, out, den_out,
      scratch.data_ptr<T>(), n, m, d, per_head, static_cast<T>(eps));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> causal_forward_cuda(const at::Tensor& q_in,
                                                       const at::Tensor& k_in,
                                                       const at::Tensor& v_in, double eps) {
  check_attention(q_in, k_in, v_in);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const int64_t B = q.size(0), H = q.size(1), n = q.size(2);
  at::Tensor out = at::zeros_like(v);
  at::Tensor den = at::empty({B, H, n}, v.options());
  if (v.size(3) == 0) {
    den.copy_((q * k.cumsum(2)).sum(-1) + eps);
    return {out, den};
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "panther_causal_forward_cuda", [&] {
    launch_scan<scalar_t>(0, q, k, v, nullptr, nullptr, nullptr, out.data_ptr<scalar_t>(),
                          den.data_ptr<scalar_t>(), B * H, eps);
  });
  return {out, den};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> causal_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& den_in,
    std::array<bool, 3> mask) {
  check_attention_backward_args(grad_in, q_in, k_in, v_in, out_in, den_in);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const at::Tensor g = grad_in.contiguous(), o = out_in.contiguous(), den = den_in.contiguous();
  const int64_t heads = q.size(0) * q.size(1);
  at::Tensor dq = mask[0] ? at::zeros_like(q) : at::empty({0}, q.options());
  at::Tensor dk = mask[1] ? at::zeros_like(k) : at::empty({0}, k.options());
  at::Tensor dv = mask[2] ? at::zeros_like(v) : at::empty({0}, v.options());
  if (v.size(3) == 0) return {dq, dk, dv};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "panther_causal_backward_cuda", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* op = o.data_ptr<scalar_t>();
    const scalar_t* dp = den.data_ptr<scalar_t>();
    if (mask[0]) launch_scan<scalar_t>(1, q, k, v, gp, op, dp, dq.data_ptr<scalar_t>(), nullptr,
                                       heads, 0.0);
    if (mask[1]) launch_scan<scalar_t>(2, q, k, v, gp, op, dp, dk.data_ptr<scalar_t>(), nullptr,
                                       heads, 0.0);
    if (mask[2]) launch_scan<scalar_t>(3, q, k, v, gp, op, dp, dv.data_ptr<scalar_t>(), nullptr,
                                       heads, 0.0);
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(panther, CUDA, m) {
  m.impl("fwht", &fwht_cuda);
  m.impl("sparse_sketch_apply", &sparse_apply_cuda);
  m.impl("sparse_sketch_apply_backward", &sparse_apply_backward_cuda);
  m.impl("causal_linear_attention", &causal_forward_cuda);
  m.impl("causal_linear_attention_backward", &causal_backward_cuda);
}

}  // namespace panther
