// Sketched linear forward/backward built from a minimal number of GEMMs, with its autograd
// formula registered in C++.
//
// The kernels only call ATen GEMMs, so they are device-generic: the same functions are registered
// for CPU and CUDA (cuBLAS is reached through at::mm_out), and no .cu twin is needed. The GEMMs
// run in the input's dtype (float16/bfloat16 included: ATen accumulates those in float32, and on
// CUDA cuBLAS picks tensor-core kernels; float32 follows torch.backends.cuda.matmul.allow_tf32
// exactly as nn.Linear does).
//
// Autograd lives here too (a torch::autograd::Function on the Autograd key) rather than in
// Python: a Python autograd formula costs tens of microseconds per call, which dominated small
// layers. Under inference mode the Autograd key is skipped and a call goes straight to the kernel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/accumulate.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "checks.h"

#include <array>
#include <optional>
#include <tuple>

namespace panther {
namespace {

constexpr const char* kOp = "panther::sketched_linear";
// Outputs up to this size stay in cache between two GEMMs, so accumulating into them twice is
// cheaper than concatenating the right factors on every call.
constexpr int64_t kCachedOutputBytes = 8 << 20;
// Problems up to this many multiply-adds run in one fused loop on the CPU: at such sizes each
// ATen GEMM call costs more in dispatch and set-up than its arithmetic, and four of them made a
// 64x64 layer several times slower than nn.Linear's single call.
constexpr int64_t kFusedMaxMacs = 1 << 16;
// Sketches this narrow (L*k <= 8) use one GEMM against the concatenated factors on each side. The
// CPU BLAS runs products with an N or K below 16 far below its peak: at 128 rows and
// 1024 -> 1024, x @ S1 with k = 8 took 150 us where one GEMM with 2k = 16 took 54 us, which
// made rank 8 slower than rank 16 (and the tuner, choosing by multiply-adds, pick the slower).
// From L*k = 16 on, the two GEMMs without the copies tie or win (at 8192 -> 8192 on 64 rows
// with L*k = 16, one GEMM with the copies halved the efficiency on 2 threads).
constexpr int64_t kConcatMaxLk = 8;

void check_inputs(const char* op, const at::Tensor& x, const at::Tensor& S1, const at::Tensor& U2,
                  const at::Tensor& U1, const at::Tensor& S2, int64_t num_terms) {
  check_float(op, "x", x, /*allow_half=*/true);
  check_like(op, "x", x, "S1", S1);
  check_like(op, "x", x, "U2", U2);
  check_like(op, "x", x, "U1", U1);
  check_like(op, "x", x, "S2", S2);
  TORCH_CHECK_VALUE(x.dim() >= 1, op, " expects an input with a feature dimension, got a scalar");
  TORCH_CHECK_VALUE(num_terms >= 1, op, ": num_terms must be >= 1, got ", num_terms);
  TORCH_CHECK_VALUE(S1.dim() == 2 && U2.dim() == 2 && U1.dim() == 2 && S2.dim() == 2, op,
                    ": sketch factors must be 2-D");
  TORCH_CHECK_VALUE(S1.sizes() == U2.sizes(), op,
                    ": S1 and U2 must have the same shape (in, L*k), got ", S1.sizes(), " and ",
                    U2.sizes());
  TORCH_CHECK_VALUE(U1.sizes() == S2.sizes(), op,
                    ": U1 and S2 must have the same shape (L*k, out), got ", U1.sizes(), " and ",
                    S2.sizes());
  TORCH_CHECK_VALUE(S1.size(0) == x.size(-1), op, ": input has ", x.size(-1),
                    " features, S1 expects ", S1.size(0));
  TORCH_CHECK_VALUE(S1.size(1) == U1.size(0), op, ": S1 has ", S1.size(1),
                    " columns but U1 has ", U1.size(0), " rows");
}

void check_bias(const at::Tensor& x, const std::optional<at::Tensor>& bias, int64_t out) {
  if (bias.has_value() && bias->defined()) {
    check_like(kOp, "x", x, "bias", *bias);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == out, kOp, ": bias must have shape (",
                      out, ",), got ", bias->sizes());
  }
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

std::vector<int64_t> output_shape(const at::Tensor& x, int64_t out) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(out);
  return shape;
}

// y = bias + scale * ((x S1) U1 + (x U2) S2) and t = x [S1 | U2] for tiny problems, row by row
// with every operand in cache; the inner loops run over contiguous rows and vectorise.
template <typename T>
void fused_small_forward(const T* __restrict__ x, const T* __restrict__ S1,
                         const T* __restrict__ U2, const T* __restrict__ U1,
                         const T* __restrict__ S2, const T* __restrict__ bias, T* __restrict__ y,
                         T* __restrict__ t, int64_t rows, int64_t in, int64_t lk, int64_t out,
                         T scale) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * in;
    T* t1 = t + r * 2 * lk;
    T* t2 = t1 + lk;
    for (int64_t j = 0; j < 2 * lk; ++j) t1[j] = T(0);
    for (int64_t i = 0; i < in; ++i) {
      const T xi = xr[i];
      const T* s1 = S1 + i * lk;
      const T* u2 = U2 + i * lk;
#pragma omp simd
      for (int64_t j = 0; j < lk; ++j) {
        t1[j] += xi * s1[j];
        t2[j] += xi * u2[j];
      }
    }
    T* yr = y + r * out;
    for (int64_t o = 0; o < out; ++o) yr[o] = T(0);
    for (int64_t j = 0; j < lk; ++j) {
      const T a = t1[j], b = t2[j];
      const T* u1 = U1 + j * out;
      const T* s2 = S2 + j * out;
#pragma omp simd
      for (int64_t o = 0; o < out; ++o) yr[o] += a * u1[o] + b * s2[o];
    }
    if (bias != nullptr) {
#pragma omp simd
      for (int64_t o = 0; o < out; ++o) yr[o] = yr[o] * scale + bias[o];
    } else {
#pragma omp simd
      for (int64_t o = 0; o < out; ++o) yr[o] *= scale;
    }
  }
}

bool use_fused(const at::Tensor& x, const at::Tensor& S1, const at::Tensor& U2,
               const at::Tensor& U1, const at::Tensor& S2, const std::optional<at::Tensor>& bias,
               int64_t rows) {
  const int64_t lk = S1.size(1);
  const int64_t macs = rows * 2 * lk * (S1.size(0) + U1.size(1));
  return x.device().is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) &&
         macs <= kFusedMaxMacs && x.is_contiguous() && S1.is_contiguous() &&
         U2.is_contiguous() && U1.is_contiguous() && S2.is_contiguous() &&
         (!bias.has_value() || !bias->defined() || bias->is_contiguous());
}

// Forward on x of shape (..., in): returns y (..., out) and t = x2 @ [S1 | U2] (rows, 2Lk), the
// intermediate the backward needs (x2 is x flattened to rows).
std::tuple<at::Tensor, at::Tensor> sketched_linear_forward(
    const at::Tensor& x_in, const at::Tensor& S1, const at::Tensor& U2, const at::Tensor& U1,
    const at::Tensor& S2, const std::optional<at::Tensor>& bias, int64_t num_terms) {
  check_inputs(kOp, x_in, S1, U2, U1, S2, num_terms);
  const int64_t out_f = U1.size(1);
  check_bias(x_in, bias, out_f);
  // A 2-D input is used as is: even a no-op reshape is a dispatcher call, a measurable share of
  // a small layer's time.
  const at::Tensor x = x_in.dim() == 2 ? x_in : x_in.reshape({-1, x_in.size(-1)});
  const double scale = 1.0 / (2.0 * static_cast<double>(num_terms));
  const int64_t rows = x.size(0), lk = S1.size(1);
  const bool has_bias = bias.has_value() && bias->defined();
  if (use_fused(x, S1, U2, U1, S2, bias, rows)) {
    at::Tensor y = at::empty(output_shape(x_in, out_f), x.options());
    at::Tensor t = at::empty({rows, 2 * lk}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "panther_sketched_linear_small", [&] {
      fused_small_forward<scalar_t>(
          x.data_ptr<scalar_t>(), S1.data_ptr<scalar_t>(), U2.data_ptr<scalar_t>(),
          U1.data_ptr<scalar_t>(), S2.data_ptr<scalar_t>(),
          has_bias ? bias->data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(),
          t.data_ptr<scalar_t>(), rows, S1.size(0), lk, out_f, static_cast<scalar_t>(scale));
    });
    return {y, t};
  }
  // Two GEMMs writing the halves of t in place, instead of one against [S1 | U2]: no copy of
  // the (in, 2Lk) factors on every call. Measured on 2 threads (fastest of 25): 0.34 vs 0.54 ms
  // at (8192, 8192, rows 64, k 16), 0.54 vs 0.63 ms at (768, 3072, 512, 64), a tie at
  // (4096, 4096, 256, 64).
  const bool narrow = x.device().is_cpu() && lk <= kConcatMaxLk;
  at::Tensor t = at::empty({rows, 2 * lk}, x.options());
  at::Tensor t1 = t.narrow(1, 0, lk), t2 = t.narrow(1, lk, lk);
  if (narrow) {
    at::mm_out(t, x, at::cat({S1, U2}, 1));
  } else {
    at::mm_out(t1, x, S1);
    at::mm_out(t2, x, U2);
  }
  const int64_t out_bytes = rows * out_f * static_cast<int64_t>(x.element_size());
  at::Tensor y;
  if (!narrow && out_bytes <= kCachedOutputBytes) {
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
    // A large output would be streamed from memory twice, and a narrow sketch runs slow
    // GEMMs: one GEMM against [U1; S2] avoids both, and the copy of the small right factors
    // is cheap next to it.
    const at::Tensor right = at::cat({U1, S2}, 0);
    if (has_bias) {
      y = at::addmm(*bias, t, right, /*beta=*/1, /*alpha=*/scale);
    } else {
      y = mm_scaled(t, right, scale);
    }
  }
  return {x_in.dim() == 2 ? y : y.view(output_shape(x_in, out_f)), t};
}

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Input gradients. `differentiable` builds them from out-of-place ATen ops only, so a backward
// run with create_graph=True records its own graph (second-order gradients); otherwise the
// GEMMs write into fresh buffers with the scale fused.
Grads backward_impl(const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& t,
                    const at::Tensor& S1, const at::Tensor& U2, const at::Tensor& U1,
                    const at::Tensor& S2, int64_t num_terms, std::array<bool, 6> mask,
                    bool differentiable) {
  const double scale = 1.0 / (2.0 * static_cast<double>(num_terms));
  const int64_t lk = S1.size(1), out_f = U1.size(1);
  const at::Tensor x = x_in.reshape({-1, x_in.size(-1)});
  const at::Tensor grad = grad_in.reshape({-1, out_f});
  const auto none = [&]() { return at::empty({0}, x.options()); };
  const auto mms = [&](const at::Tensor& a, const at::Tensor& b) {
    return differentiable ? at::mm(a, b) * scale : mm_scaled(a, b, scale);
  };
  at::Tensor gx = none(), gS1 = none(), gU2 = none(), gU1 = none(), gS2 = none(), gb = none();

  if (mask[0] || mask[1] || mask[2]) {
    // gT = scale * grad @ [U1; S2]^T, the gradient w.r.t. t = x @ [S1 | U2].
    const at::Tensor gT = mms(grad, at::cat({U1, S2}, 0).t());
    if (mask[0]) {
      gx = at::mm(gT, at::cat({S1, U2}, 1).t()).view(x_in.sizes());
    }
    if (mask[1] && mask[2] && !differentiable) {
      // One GEMM over the input, split afterwards: x is the big operand and is read once.
      const at::Tensor both = at::mm(x.t(), gT);
      gS1 = both.narrow(1, 0, lk).contiguous();
      gU2 = both.narrow(1, lk, lk).contiguous();
    } else {
      if (mask[1]) gS1 = at::mm(x.t(), gT.narrow(1, 0, lk));
      if (mask[2]) gU2 = at::mm(x.t(), gT.narrow(1, lk, lk));
    }
  }
  if (mask[3] || mask[4]) {
    // With create_graph, t is recomputed from the saved inputs so the graph reaches them.
    const at::Tensor tt = differentiable ? at::cat({at::mm(x, S1), at::mm(x, U2)}, 1) : t;
    if (mask[3]) gU1 = mms(tt.narrow(1, 0, lk).t(), grad);
    if (mask[4]) gS2 = mms(tt.narrow(1, lk, lk).t(), grad);
  }
  if (mask[5]) {
    gb = grad.sum(0);
  }
  return {gx, gS1, gU2, gU1, gS2, gb};
}

Grads sketched_linear_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& t,
                               const at::Tensor& S1, const at::Tensor& U2, const at::Tensor& U1,
                               const at::Tensor& S2, int64_t num_terms, std::array<bool, 6> mask) {
  constexpr const char* op = "panther::sketched_linear_backward";
  check_inputs(op, x, S1, U2, U1, S2, num_terms);
  check_like(op, "x", x, "grad", grad);
  check_like(op, "x", x, "t", t);
  check_shape(op, "grad", grad, output_shape(x, U1.size(1)));
  const int64_t rows = c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1);
  check_shape(op, "t", t, {rows, 2 * S1.size(1)});
  return backward_impl(grad, x, t, S1, U2, U1, S2, num_terms, mask, /*differentiable=*/false);
}

// --- autograd -------------------------------------------------------------------------------

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class SketchedLinearFunction : public torch::autograd::Function<SketchedLinearFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& S1,
                               const at::Tensor& U2, const at::Tensor& U1, const at::Tensor& S2,
                               const std::optional<at::Tensor>& bias, int64_t num_terms) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("panther::sketched_linear", "")
                         .typed<decltype(sketched_linear_forward)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, t] = op.call(x, S1, U2, U1, S2, bias, num_terms);
    ctx->save_for_backward({x, t, S1, U2, U1, S2});
    ctx->saved_data["num_terms"] = num_terms;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->mark_non_differentiable({t});
    return {y, t};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("panther::sketched_linear_backward", "")
                         .typed<decltype(sketched_linear_backward)>();
    const auto saved = ctx->get_saved_variables();
    const int64_t num_terms = ctx->saved_data["num_terms"].toInt();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const at::Tensor& grad = grad_outputs[0];
    variable_list result(7);
    if (!grad.defined()) return result;
    std::array<bool, 6> mask{};
    for (size_t i = 0; i < 5; ++i) mask[i] = ctx->needs_input_grad(i);
    mask[5] = has_bias && ctx->needs_input_grad(5);
    Grads grads;
    if (at::GradMode::is_enabled()) {
      // create_graph=True: differentiable ATen ops record the second-order graph.
      grads = backward_impl(grad, saved[0], saved[1], saved[2], saved[3], saved[4], saved[5],
                            num_terms, mask, /*differentiable=*/true);
    } else {
      // Through the dispatcher, so fake tensors (torch.compile) reach the fake kernel.
      grads = op.call(grad, saved[0], saved[1], saved[2], saved[3], saved[4], saved[5],
                      num_terms, mask);
    }
    const at::Tensor all[6] = {std::get<0>(grads), std::get<1>(grads), std::get<2>(grads),
                               std::get<3>(grads), std::get<4>(grads), std::get<5>(grads)};
    for (size_t i = 0; i < 6; ++i) {
      if (mask[i]) result[i] = all[i];
    }
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor> sketched_linear_autograd(
    const at::Tensor& x, const at::Tensor& S1, const at::Tensor& U2, const at::Tensor& U1,
    const at::Tensor& S2, const std::optional<at::Tensor>& bias, int64_t num_terms) {
  // An undefined tensor inside the optional counts as no bias.
  const std::optional<at::Tensor> b =
      bias.has_value() && bias->defined() ? bias : std::optional<at::Tensor>();
  auto outs = SketchedLinearFunction::apply(x, S1, U2, U1, S2, b, num_terms);
  return {outs[0], outs[1]};
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

TORCH_LIBRARY_IMPL(panther, Autograd, m) {
  m.impl("sketched_linear", &sketched_linear_autograd);
}

}  // namespace panther
