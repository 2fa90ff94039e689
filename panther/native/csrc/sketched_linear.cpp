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

// Inputs above this size are assumed not to stay in cache between two GEMMs.
constexpr int64_t kStreamedInputBytes = 16 << 20;

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
  // t = x @ [S1 | U2]. When x is larger than the caches, one GEMM against the concatenated
  // factors streams it from memory once; otherwise two GEMMs write the two halves of t in place,
  // which avoids copying the (in, 2Lk) factors on every call (measured: ~5% of the forward at
  // (in, out, rows) = (4096, 4096, 256)).
  const int64_t lk = S1.size(1);
  at::Tensor t = at::empty({x.size(0), 2 * lk}, x.options());
  if (x.numel() * static_cast<int64_t>(x.element_size()) > kStreamedInputBytes) {
    at::mm_out(t, x, at::cat({S1, U2}, 1));
  } else {
    at::Tensor t1 = t.narrow(1, 0, lk);
    at::Tensor t2 = t.narrow(1, lk, lk);
    at::mm_out(t1, x, S1);
    at::mm_out(t2, x, U2);
  }
  // The right factors are concatenated: one GEMM writes y once (two accumulating GEMMs would
  // stream the (rows, out) output twice).
  const at::Tensor right = at::cat({U1, S2}, 0);
  at::Tensor y;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == U1.size(1), "bias must have shape (",
                U1.size(1), ",), got ", bias->sizes());
    // Scale and bias fused into the second GEMM (C = bias broadcast, alpha = 1/(2L)).
    y = at::addmm(*bias, t, right, /*beta=*/1, /*alpha=*/scale);
  } else {
    y = mm_scaled(t, right, scale);
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
