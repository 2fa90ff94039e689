"""Dispatching entry points for panther's hot operations.

Layers and sketch operators call these functions only. Each picks the compiled
kernel when the extension is loaded and supports the inputs, and the pure-PyTorch
reference in :mod:`panther.native.reference` otherwise.

Supported by the native kernels: tensors all on one device, on CPU (when the C++ library is
loaded) or CUDA (when the CUDA library is loaded; ``sketched_linear`` only needs the C++ library
because it is built from ATen GEMMs). ``sketched_linear``, ``fwht`` and ``sparse_sketch_apply``
take float32, float64, float16 and bfloat16 (half precision accumulates in float32); the causal
attention ops take float32/float64. Anything else takes the reference path, unless
``PANTHER_NATIVE=1`` (or ``use_backend("native")``) is set, in which case it is an error.
Non-contiguous inputs are fine: the kernels make their own contiguous copies where they need them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from panther.native import _build, backend, reference

__all__ = ["sketched_linear", "fwht", "sparse_sketch_apply", "causal_linear_attention",
           "causal_linear_attention_stateful"]

_FLOATS = (torch.float32, torch.float64)
_ALL_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_CUDA_SHARED_BYTES = 48 * 1024


def _ops():
    return torch.ops.panther


def _use_native(op: str, tensors: list[Tensor], cuda_generic: bool = False,
                same_device: tuple[Tensor, ...] = (), cuda_problem: str | None = None,
                dtypes: tuple[torch.dtype, ...] = _FLOATS) -> bool:
    """Decide between the kernel and the reference for one call (see the module docstring).

    ``tensors`` must share the device and a supported dtype; ``same_device`` (index tensors,
    values that get cast) only the device.
    """
    mode = backend()
    if mode == "reference":
        return False
    # Loading takes a lock, which torch.compile cannot trace: while compiling, use whatever is
    # already loaded (the reference if nothing is yet; an eager call loads the extension).
    st = _build.status() if torch.compiler.is_compiling() else _build.load()
    first = tensors[0]
    device, dtype = first.device, first.dtype
    problem = None
    if not st.cpu_loaded:
        problem = f"the extension is not loaded ({st.reason})"
    elif dtype not in dtypes:
        names = "/".join(str(d).replace("torch.", "") for d in dtypes)
        problem = f"dtype {dtype} is not supported ({names} only)"
    elif any(t.device != device or t.dtype != dtype for t in tensors):
        problem = "inputs are on different devices or have different dtypes"
    elif any(t.device != device for t in same_device):
        problem = "index/value tensors are not on the input's device"
    elif device.type == "cuda":
        if not (st.cuda_loaded or cuda_generic):
            problem = f"CUDA kernels are not loaded ({st.reason})"
        elif cuda_problem is not None:
            problem = cuda_problem
    elif device.type != "cpu":
        problem = f"device {device} is not supported"
    if problem is None:
        return True
    if mode == "native":
        raise RuntimeError(
            f"panther.native.ops.{op}: PANTHER_NATIVE=1 forces the native kernels, but {problem}. "
            "Unset PANTHER_NATIVE (or set it to 0) to use the reference path.")
    if not st.cpu_loaded and not torch.compiler.is_compiling():
        _build.warn_once_unavailable()
    return False


def sketched_linear(x: Tensor, S1: Tensor, U2: Tensor, U1: Tensor, S2: Tensor,
                    bias: Tensor | None, num_terms: int) -> Tensor:
    """See :func:`panther.native.reference.sketched_linear`."""
    if x.dim() < 1:
        raise ValueError("sketched_linear needs an input with a feature dimension, got a scalar")
    if S1.dim() != 2 or U2.shape != S1.shape or U1.dim() != 2 or S2.shape != U1.shape:
        raise ValueError(
            "sketched_linear expects S1, U2 of shape (in, L*k) and U1, S2 of shape (L*k, out); got "
            f"{tuple(S1.shape)}, {tuple(U2.shape)}, {tuple(U1.shape)}, {tuple(S2.shape)}")
    if x.shape[-1] != S1.shape[0] or S1.shape[1] != U1.shape[0]:
        raise ValueError(
            f"sketched_linear shape mismatch: input has {x.shape[-1]} features, S1 is "
            f"{tuple(S1.shape)}, U1 is {tuple(U1.shape)}")
    if int(num_terms) < 1:
        raise ValueError(f"num_terms must be >= 1, got {num_terms}")
    if bias is not None and tuple(bias.shape) != (U1.shape[1],):
        raise ValueError(f"bias must have shape ({U1.shape[1]},), got {tuple(bias.shape)}")
    tensors = [x, S1, U2, U1, S2] + ([bias] if bias is not None else [])
    if not _use_native("sketched_linear", tensors, cuda_generic=True, dtypes=_ALL_FLOATS):
        return reference.sketched_linear(x, S1, U2, U1, S2, bias, num_terms)
    return _ops().sketched_linear(x, S1, U2, U1, S2, bias, int(num_terms))[0]


def sketched_linear_prevalidated(x: Tensor, S1: Tensor, U2: Tensor, U1: Tensor, S2: Tensor,
                                 bias: Tensor | None, num_terms: int) -> Tensor:
    """:func:`sketched_linear` for callers whose factors were validated once (``SKLinear``).

    Skips the per-call Python checks: when the native path applies (the common case: the
    extension is loaded, ``x`` shares the factors' dtype and device) this is one call into the
    compiled op, whose C++ checks still guard memory. Anything else goes through
    :func:`sketched_linear` and its full dispatch.
    """
    # Device and dtype agreement is checked by the compiled op itself (a clear TypeError or
    # ValueError); here only what decides the path: loaded, a supported dtype and device.
    if (_build._STATE.cpu_loaded and x.dtype in _ALL_FLOATS and (x.is_cpu or x.is_cuda)
            and backend() != "reference"):
        return _sketched_linear_op()(x, S1, U2, U1, S2, bias, num_terms)[0]
    return sketched_linear(x, S1, U2, U1, S2, bias, num_terms)


def _sketched_linear_op():
    # torch.ops.panther.sketched_linear resolved once (each lookup costs microseconds). Eager
    # calls take the overload's C++ entry point directly, skipping a Python frame; while
    # compiling, the OpOverload itself, which dynamo knows how to trace.
    if torch.compiler.is_compiling():
        return torch.ops.panther.sketched_linear.default
    global _SKETCHED_LINEAR_OP
    if _SKETCHED_LINEAR_OP is None:
        _SKETCHED_LINEAR_OP = torch.ops.panther.sketched_linear.default._op
    return _SKETCHED_LINEAR_OP


_SKETCHED_LINEAR_OP = None


def fwht(x: Tensor) -> Tensor:
    """See :func:`panther.native.reference.fwht`."""
    if x.dim() < 1:
        raise ValueError("fwht needs at least one dimension")
    n = x.shape[-1]
    if n == 0 or n & (n - 1) != 0:
        raise ValueError(f"fwht needs a power-of-two length on the last dimension, got {n}")
    if not _use_native("fwht", [x], dtypes=_ALL_FLOATS):
        return reference.fwht(x)
    return _ops().fwht(x)


def sparse_sketch_apply(x: Tensor, rows: Tensor, values: Tensor, m: int) -> Tensor:
    """See :func:`panther.native.reference.sparse_sketch_apply`."""
    if rows.dim() != 2 or values.shape != rows.shape:
        raise ValueError(
            f"rows and values must both have shape (n, s), got {tuple(rows.shape)} and "
            f"{tuple(values.shape)}")
    if x.dim() < 1 or x.shape[-1] != rows.shape[0]:
        raise ValueError(
            f"input has {x.shape[-1] if x.dim() else 0} features on its last dimension, sketch "
            f"expects {rows.shape[0]}")
    if int(m) < 1:
        raise ValueError(f"sketch size m must be >= 1, got {m}")
    if rows.dtype.is_floating_point or rows.dtype == torch.bool:
        raise TypeError(f"rows must be an integer tensor, got {rows.dtype}")
    if not _use_native("sparse_sketch_apply", [x], same_device=(rows, values),
                       dtypes=_ALL_FLOATS):
        return reference.sparse_sketch_apply(x, rows, values, m)
    lead = x.shape[:-1]
    out = _ops().sparse_sketch_apply(x.reshape(math.prod(lead), x.shape[-1]), rows.to(torch.long),
                                     values.to(x.dtype), int(m))
    return out.reshape(*lead, int(m))


def causal_linear_attention(q_feat: Tensor, k_feat: Tensor, v: Tensor, eps: float = 1e-6) -> Tensor:
    """See :func:`panther.native.reference.causal_linear_attention`."""
    if q_feat.dim() != 4 or k_feat.shape != q_feat.shape or v.dim() != 4 \
            or v.shape[:3] != q_feat.shape[:3]:
        raise ValueError(
            "causal_linear_attention expects q_feat, k_feat of shape (B, H, n, m) and v of shape "
            f"(B, H, n, d); got {tuple(q_feat.shape)}, {tuple(k_feat.shape)}, {tuple(v.shape)}")
    m, d = q_feat.shape[-1], v.shape[-1]
    # The CUDA scan stages the per-step rows in shared memory (48 KiB without opting in).
    cuda_problem = None
    if (2 * max(m, d) + m + 2 * d) * v.element_size() > _CUDA_SHARED_BYTES:
        cuda_problem = f"m={m}, d={d} is too large for the CUDA scan's shared memory"
    if not _use_native("causal_linear_attention", [q_feat, k_feat, v], cuda_problem=cuda_problem):
        return reference.causal_linear_attention(q_feat, k_feat, v, eps)
    out, _ = _ops().causal_linear_attention(q_feat, k_feat, v, float(eps))
    return out


def causal_linear_attention_stateful(q_feat: Tensor, k_feat: Tensor, v: Tensor, kv0: Tensor,
                                     z0: Tensor, eps: float = 1e-6
                                     ) -> tuple[Tensor, Tensor, Tensor]:
    """See :func:`panther.native.reference.causal_linear_attention_stateful`.

    Meant for inference: the compiled kernel has no backward, so inputs that require grad
    (with grad mode on) take the differentiable reference path, as do CUDA tensors.
    """
    if q_feat.dim() != 4 or k_feat.shape != q_feat.shape or v.dim() != 4 \
            or v.shape[:3] != q_feat.shape[:3]:
        raise ValueError(
            "causal_linear_attention_stateful expects q_feat, k_feat of shape (B, H, n, m) and v "
            f"of shape (B, H, n, d); got {tuple(q_feat.shape)}, {tuple(k_feat.shape)}, "
            f"{tuple(v.shape)}")
    B, H, _, m = q_feat.shape
    d = v.shape[-1]
    if tuple(kv0.shape) != (B, H, m, d) or tuple(z0.shape) != (B, H, m):
        raise ValueError(
            f"causal_linear_attention_stateful expects kv0 of shape (B, H, m, d) = {(B, H, m, d)} "
            f"and z0 of shape (B, H, m) = {(B, H, m)}; got {tuple(kv0.shape)} and "
            f"{tuple(z0.shape)}")
    tensors = [q_feat, k_feat, v, kv0, z0]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    # No CUDA kernel: the reference's chunked GEMMs are the GPU path.
    native = (not needs_grad and q_feat.device.type == "cpu"
              and _use_native("causal_linear_attention_stateful", tensors))
    if not native:
        return reference.causal_linear_attention_stateful(q_feat, k_feat, v, kv0, z0, eps)
    return _ops().causal_linear_attention_stateful(q_feat, k_feat, v, kv0, z0, float(eps))
