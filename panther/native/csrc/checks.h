// Argument checks shared by panther's kernels.
//
// Every op is public through torch.ops.panther, so each one checks every tensor argument's
// dimensions, shape, dtype and device before it reads or writes any memory. The checks raise
// through TORCH_CHECK_* on the calling thread, never inside a parallel region or a kernel.
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>

namespace panther {

// float32/float64, plus float16/bfloat16 where the op computes in float32 internally.
inline bool is_supported_float(at::ScalarType t, bool allow_half) {
  if (t == at::kFloat || t == at::kDouble) return true;
  return allow_half && (t == at::kHalf || t == at::kBFloat16);
}

inline void check_float(const char* op, const char* name, const at::Tensor& t, bool allow_half) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, " is an undefined tensor");
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type(), allow_half), op, ": ", name,
                   " must be float32 or float64", allow_half ? " (or float16/bfloat16)" : "",
                   ", got ", t.scalar_type());
}

// `t` must share `ref`'s dtype and device.
inline void check_like(const char* op, const char* ref_name, const at::Tensor& ref,
                       const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, " is an undefined tensor");
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
                   t.scalar_type(), " but ", ref_name, " has ", ref.scalar_type(),
                   "; cast them to one dtype");
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
                    ref_name, " is on ", ref.device(), "; move them to one device");
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t,
                        at::IntArrayRef expected) {
  TORCH_CHECK_VALUE(t.sizes() == expected, op, ": ", name, " must have shape ", expected,
                    ", got ", t.sizes());
}

// Runs `fn` on float32 copies of half-precision inputs (fp32 accumulation) and casts the
// results back; float32/float64 inputs pass straight through.
inline at::Tensor to_compute(const at::Tensor& t) {
  return (t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16) ? t.to(at::kFloat)
                                                                             : t;
}

}  // namespace panther

namespace panther {

// --- per-op argument checks (CPU and CUDA sources share them) ---------------------------------

inline void check_fwht_args(const at::Tensor& x) {
  constexpr const char* op = "panther::fwht";
  check_float(op, "x", x, /*allow_half=*/true);
  TORCH_CHECK_VALUE(x.dim() >= 1, op, " expects at least one dimension");
  const int64_t n = x.size(-1);
  TORCH_CHECK_VALUE(n > 0 && (n & (n - 1)) == 0, op,
                    " needs a power-of-two length on the last dimension, got ", n);
}

inline void check_sparse_args(const at::Tensor& x, const at::Tensor& rows,
                              const at::Tensor& values, int64_t m) {
  constexpr const char* op = "panther::sparse_sketch_apply";
  check_float(op, "x", x, /*allow_half=*/true);
  TORCH_CHECK_VALUE(x.dim() == 2, op, " expects a 2-D input (batch, n), got ", x.dim(), "-D");
  TORCH_CHECK_VALUE(rows.defined() && values.defined(), op, ": rows and values must be tensors");
  TORCH_CHECK_VALUE(rows.dim() == 2 && values.sizes() == rows.sizes(), op,
                    ": rows and values must both have shape (n, s), got ", rows.sizes(), " and ",
                    values.sizes());
  TORCH_CHECK_TYPE(rows.scalar_type() == at::kLong, op, ": rows must be int64, got ",
                   rows.scalar_type());
  check_like(op, "x", x, "values", values);
  TORCH_CHECK_VALUE(rows.device() == x.device(), op, ": rows is on ", rows.device(),
                    " but x is on ", x.device(), "; move them to one device");
  TORCH_CHECK_VALUE(rows.size(0) == x.size(1), op, ": input has ", x.size(1),
                    " features on its last dimension, sketch expects ", rows.size(0));
  TORCH_CHECK_VALUE(m >= 1, op, ": sketch size m must be >= 1, got ", m);
}

inline void check_sparse_backward_args(const at::Tensor& grad, const at::Tensor& x,
                                       const at::Tensor& rows, const at::Tensor& values) {
  constexpr const char* op = "panther::sparse_sketch_apply_backward";
  check_float(op, "x", x, /*allow_half=*/true);
  check_like(op, "x", x, "grad", grad);
  TORCH_CHECK_VALUE(grad.dim() == 2 && x.dim() == 2 && grad.size(0) == x.size(0), op,
                    ": grad must have shape (batch, m) with the batch of x ", x.sizes(), ", got ",
                    grad.sizes());
  check_sparse_args(x, rows, values, grad.size(1));
}

inline void check_attention_args(const char* op, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v) {
  check_float(op, "q_feat", q, /*allow_half=*/false);
  check_like(op, "q_feat", q, "k_feat", k);
  check_like(op, "q_feat", q, "v", v);
  TORCH_CHECK_VALUE(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op,
                    " expects (B, H, n, m) features and (B, H, n, d) values, got ", q.sizes(),
                    ", ", k.sizes(), " and ", v.sizes());
  TORCH_CHECK_VALUE(q.sizes() == k.sizes(), op, ": q_feat and k_feat must have the same shape, got ",
                    q.sizes(), " and ", k.sizes());
  TORCH_CHECK_VALUE(v.size(0) == q.size(0) && v.size(1) == q.size(1) && v.size(2) == q.size(2),
                    op, ": v must share (B, H, n) with the features, got ", v.sizes(), " and ",
                    q.sizes());
}

// grad and out are (B, H, n, d) like v; den is the (B, H, n) normaliser of the forward.
inline void check_attention_backward_args(const at::Tensor& grad, const at::Tensor& q,
                                          const at::Tensor& k, const at::Tensor& v,
                                          const at::Tensor& out, const at::Tensor& den) {
  constexpr const char* op = "panther::causal_linear_attention_backward";
  check_attention_args(op, q, k, v);
  check_like(op, "q_feat", q, "grad", grad);
  check_like(op, "q_feat", q, "out", out);
  check_like(op, "q_feat", q, "den", den);
  check_shape(op, "grad", grad, v.sizes());
  check_shape(op, "out", out, v.sizes());
  check_shape(op, "den", den, {q.size(0), q.size(1), q.size(2)});
}

inline void check_attention_state_args(const at::Tensor& q, const at::Tensor& v,
                                       const at::Tensor& kv0, const at::Tensor& z0) {
  constexpr const char* op = "panther::causal_linear_attention_stateful";
  check_like(op, "q_feat", q, "kv0", kv0);
  check_like(op, "q_feat", q, "z0", z0);
  check_shape(op, "kv0", kv0, {q.size(0), q.size(1), q.size(3), v.size(3)});
  check_shape(op, "z0", z0, {q.size(0), q.size(1), q.size(3)});
}

}  // namespace panther
