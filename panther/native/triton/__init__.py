"""GPU path of :class:`panther.nn.RandMultiHeadAttention`: Triton kernels and a chunked torch form.

Nothing here is imported by ``panther`` on a CPU-only run; the attention layer imports this
package when its inputs live on a CUDA device (or when a test forces the path). ``triton`` itself
is imported lazily: without it, :func:`triton_available` is False and the layer takes the
vectorised chunked-torch form (:func:`chunked_causal_linear_attention`), which also runs on the
GPU without any Python loop over blocks.

Triton's interpreter (``TRITON_INTERPRET=1`` in the environment *before* the kernels module is
first imported) runs the same kernels on CPU tensors, which is how the CI tests them.
"""

from panther.native.triton.linear_attention import (
    chunked_causal_linear_attention,
    fused_random_feature_attention,
    triton_available,
)

__all__ = [
    "chunked_causal_linear_attention",
    "fused_random_feature_attention",
    "triton_available",
]
