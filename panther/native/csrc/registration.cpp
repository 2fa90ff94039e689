// Schemas of panther's compiled operators. Kernels are registered per device in the other sources.
//
// All ops are functional (no aliasing, no mutation of inputs), so the schemas carry no alias
// annotations; Python registers fake (meta) kernels and the remaining autograd formulas on top.
// Every kernel checks every argument's shape, dtype and device before touching memory
// (checks.h): the ops are public through torch.ops.panther.
#include <torch/library.h>

TORCH_LIBRARY(panther, m) {
  // Sketched linear map on an input (..., in). Returns (y, t) where t = x2 @ [S1 | U2] (x2: x
  // flattened to (rows, in)) is kept for backward. Autograd is registered in C++.
  m.def(
      "sketched_linear(Tensor x, Tensor S1, Tensor U2, Tensor U1, Tensor S2, Tensor? bias, "
      "int num_terms) -> (Tensor, Tensor)");
  m.def(
      "sketched_linear_backward(Tensor grad, Tensor x, Tensor t, Tensor S1, Tensor U2, Tensor U1, "
      "Tensor S2, int num_terms, bool[6] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor, "
      "Tensor)");
  // Orthonormal Walsh-Hadamard transform of the last dimension (a power of two).
  m.def("fwht(Tensor x) -> Tensor");
  // out[b, rows[j, t]] += values[j, t] * x[b, j] for a 2-D x; rows is int64 (n, s).
  m.def("sparse_sketch_apply(Tensor x, Tensor rows, Tensor values, int m) -> Tensor");
  m.def(
      "sparse_sketch_apply_backward(Tensor grad, Tensor x, Tensor rows, Tensor values, "
      "bool[2] output_mask) -> (Tensor, Tensor)");
  // Causal random-feature attention on (B, H, n, m/d) inputs. Returns (out, den) where den is
  // the (B, H, n) normaliser including eps, kept for backward.
  m.def("causal_linear_attention(Tensor q, Tensor k, Tensor v, float eps) -> (Tensor, Tensor)");
  m.def(
      "causal_linear_attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor out, "
      "Tensor den, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // Inference-only causal attention from a prefix state: kv0 (B, H, m, d) = sum k_s v_s^T and
  // z0 (B, H, m) = sum k_s over earlier tokens. Returns (out, kv1, z1), the state after the last
  // token. No autograd formula: the Python wrapper never calls it on inputs that need grad.
  m.def(
      "causal_linear_attention_stateful(Tensor q, Tensor k, Tensor v, Tensor kv0, Tensor z0, "
      "float eps) -> (Tensor, Tensor, Tensor)");
}
