// Sketched linear forward/backward built from a minimal number of GEMMs.
//
// The kernels only call ATen GEMMs, so they are device-generic: the same functions are registered
// for CPU and CUDA (cuBLAS is reached through at::addmm_out), and no .cu twin is needed.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

namespace panther {
namespace {

// Outputs up to this size stay in cache between two GEMMs, so accumulating into them twice is
// cheaper than concatenating the right factors on every call.
constexpr int64_t kCachedOutputBytes = 8 << 20;

void check_inputs(const at::Tensor& x, const at::Tensor& S1, const at::Tensor& U2,
                  const at::Tensor& U1, const at::Tensor& S2, int64_t num_terms) {
  TORCH_CHECK_VALUE(x.dim() == 2, "panther::sketched_linear expects a 2-D input, got ", x.dim(), "-D");
  TORCH_CHECK_VALUE(num_terms >= 1, "num_terms must be >= 1, got ", num_terms);
  TORCH_CHECK_VALUE(S1.dim() == 2 && U2.dim() == 2 && U1.dim() == 2 && S2.dim() == 2,
              "sketch factors must be 2-D");
  TORCH_CHECK_VALUE(S1.sizes() == U2.sizes(), "S1 and U2 must have the same shape (in, L*k)");
  TORCH_CHECK_VALUE(U1.sizes() == S2.sizes(), "U1 and S2 must have the same shape (L*k, out)");
  TORCH_CHECK_VALUE(S1.size(0) == x.size(1), "input has ", x.size(1), " features, S1 expects ",
              S1.size(0));
  TORCH_CHECK_VALUE(S1.size(1) == U1.size(0), "S1 has ", S1.size(1), " columns but U1 has ",
              U1.size(0), " rows");
}

// out = alpha * a @ b into a fresh buffer; beta = 0 means the uninitialised buffer is never read.
at::Tensor mm_scaled(const at::Tensor& a, const at::Tensor& b, double alpha) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  if (alpha == 1.0) {
    at::mm_out(out, a, b);
  } else {
    at::addmm_out(out, out, a, b, /*beta=*/0, /*alpha=*/alpha);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> sketched_linear_forward(
    const at::Tensor& x, const at::Tensor& S1, const at::Tensor& U2, const at::Tensor& U1,
    const at::Tensor& S2, const std::optional<at::Tensor>& bias, int64_t num_terms) {
  check_inputs(x, S1, U2, U1, S2, num_terms);
  const double scale = 1.0 / (2.0 * static_cast<double>(num_terms));
  // t = x @ [S1 | U2] as one GEMM. Measured against two GEMMs writing the halves of t in place
  // (2 threads, min of 60): the copy of the (in, 2Lk) factors costs ~0.03 ms, while a GEMM with
  // only Lk columns runs below peak and reads x twice; one GEMM wins at (8192, 8192, rows 64,
  // k 16) by ~0.02 ms and ties at (4096, 4096, 256, 64).
  const int64_t lk = S1.size(1);
  const at::Tensor t = at::mm(x, at::cat({S1, U2}, 1));
  const at::Tensor t1 = t.narrow(1, 0, lk);
  const at::Tensor t2 = t.narrow(1, lk, lk);
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == U1.size(1), "bias must have shape (",
                U1.size(1), ",), got ", bias->sizes());
  }
  const int64_t out_bytes = x.size(0) * U1.size(1) * static_cast<int64_t>(x.element_size());
  at::Tensor y;
  if (out_bytes <= kCachedOutputBytes) {
    // y = bias + scale * t1 @ U1, then y += scale * t2 @ S2: no copy of the right factors, and
    // the second pass over y hits the cache (measured ~10% faster than concatenating [U1; S2]
    // at (8192, 8192, rows 64, k 16), ~3% at (4096, 4096, 256, 64)).
    if (has_bias) {
      y = at::addmm(*bias, t1, U1, /*beta=*/1, /*alpha=*/scale);
    } else {
      y = mm_scaled(t1, U1, scale);
    }
    y.addmm_(t2, S2, /*beta=*/1, /*alpha=*/scale);
  } else {
    // A large output would be streamed from memory twice; one GEMM against [U1; S2] writes it
    // once, and the copy of the small right factors is cheap next to it.
    const at::Tensor right = at::cat({U1, S2}, 0);
    if (has_bias) {
      // Scale and bias fused into the GEMM (C = bias broadcast, alpha = 1/(2L)).
      y = at::addmm(*bias, t, right, /*beta=*/1, /*alpha=*/scale);
    } else {
      y = mm_scaled(t, right, scale);
    }
  }
  return {y, t};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
sketched_linear_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& t,
                         const at::Tensor& S1, const at::Tensor& U2, const at::Tensor& U1,
                         const at::Tensor& S2, int64_t num_terms, std::array<bool, 6> mask) {
  check_inputs(x, S1, U2, U1, S2, num_terms);
  const double scale = 1.0 / (2.0 * static_cast<double>(num_terms));
  const int64_t lk = S1.size(1);
  const auto none = [&]() { return at::empty({0}, x.options()); };
  at::Tensor gx = none(), gS1 = none(), gU2 = none(), gU1 = none(), gS2 = none(), gb = none();

  if (mask[0] || mask[1] || mask[2]) {
    // gT = scale * grad @ [U1; S2]^T, the gradient w.r.t. t = x @ [S1 | U2].
    const at::Tensor right = at::cat({U1, S2}, 0);
    const at::Tensor gT = mm_scaled(grad, right.t(), scale);
    if (mask[0]) {
      gx = at::mm(gT, at::cat({S1, U2}, 1).t());
    }
    if (mask[1] && mask[2]) {
      // One GEMM over the input, split afterwards: x is the big operand and is read once.
      const at::Tensor both = at::mm(x.t(), gT);
      gS1 = both.narrow(1, 0, lk).contiguous();
      gU2 = both.narrow(1, lk, lk).contiguous();
    } else if (mask[1]) {
      gS1 = at::mm(x.t(), gT.narrow(1, 0, lk));
    } else if (mask[2]) {
      gU2 = at::mm(x.t(), gT.narrow(1, lk, lk));
    }
  }
  if (mask[3]) {
    gU1 = mm_scaled(t.narrow(1, 0, lk).t(), grad, scale);
  }
  if (mask[4]) {
    gS2 = mm_scaled(t.narrow(1, lk, lk).t(), grad, scale);
  }
  if (mask[5]) {
    gb = grad.sum(0);
  }
  return {gx, gS1, gU2, gU1, gS2, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(panther, CPU, m) {
  m.impl("sketched_linear", &sketched_linear_forward);
  m.impl("sketched_linear_backward", &sketched_linear_backward);
}

TORCH_LIBRARY_IMPL(panther, CUDA, m) {
  m.impl("sketched_linear", &sketched_linear_forward);
  m.impl("sketched_linear_backward", &sketched_linear_backward);
}

}  // namespace panther
