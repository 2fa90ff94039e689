"""Fake (meta) kernels and autograd formulas for the ``panther::`` ops defined in C++.

The C++ library defines the schemas and the CPU/CUDA kernels; these Python registrations make the
ops work with ``torch.compile`` (shape propagation on fake tensors) and with autograd (each
forward's backward is its own compiled op). :func:`register` runs once, right after the library
is loaded.
"""

from __future__ import annotations

import torch
from torch import Tensor

_REGISTERED = False


def _empty(like: Tensor) -> Tensor:
    return like.new_empty((0,))


def _grads_through_reference(forward, inputs: list[Tensor], needs: list[bool],
                             grad_output: Tensor) -> list[Tensor | None]:
    """Input gradients of ``forward(*inputs)`` that are differentiable themselves.

    Used when a backward runs with ``create_graph=True``: the compiled backward ops have no
    derivatives of their own, so they would cut (or silently zero) the second-order graph.
    Recomputing the forward on the saved inputs through the reference gives ordinary autograd
    all it needs for gradient penalties, Hessian-vector products and the like.
    """
    wanted = [t for t, need in zip(inputs, needs) if need]
    found = iter(torch.autograd.grad(forward(*inputs), wanted, grad_output, create_graph=True,
                                     allow_unused=True))
    return [next(found) if need else None for need in needs]


# --- sketched linear ---------------------------------------------------------------------------


def _sketched_linear_fake(x, S1, U2, U1, S2, bias, num_terms):
    rows = 1
    for size in x.shape[:-1]:
        rows *= size
    return x.new_empty((*x.shape[:-1], U1.shape[1])), x.new_empty((rows, 2 * S1.shape[1]))


def _sketched_linear_backward_fake(grad, x, t, S1, U2, U1, S2, num_terms, output_mask):
    shapes = [x.shape, S1.shape, U2.shape, U1.shape, S2.shape, (U1.shape[1],)]
    return tuple(x.new_empty(s) if need else _empty(x) for s, need in zip(shapes, output_mask))


# The sketched linear op's autograd formula is registered in C++ (sketched_linear.cpp): a Python
# formula cost tens of microseconds per call.


# --- FWHT ----------------------------------------------------------------------------------


def _fwht_fake(x):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fwht_setup(ctx, inputs, output):
    pass


def _fwht_backward(ctx, grad):
    # The orthonormal Hadamard matrix is symmetric and its own inverse: the adjoint is the op.
    return torch.ops.panther.fwht(grad)


# --- sparse sketch apply ---------------------------------------------------------------------


def _sparse_fake(x, rows, values, m):
    return x.new_empty((x.shape[0], m))


def _sparse_backward_fake(grad, x, rows, values, output_mask):
    gx = x.new_empty(x.shape) if output_mask[0] else _empty(x)
    gv = values.new_empty(values.shape) if output_mask[1] else _empty(x)
    return gx, gv


def _sparse_setup(ctx, inputs, output):
    x, rows, values, m = inputs
    ctx.save_for_backward(x, rows, values)
    ctx.m = m


def _sparse_backward(ctx, grad):
    x, rows, values = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[2]]
    if torch.is_grad_enabled():  # create_graph=True
        from panther.native import reference

        m = ctx.m
        gx, gv = _grads_through_reference(
            lambda a, w: reference.sparse_sketch_apply(a, rows, w, m), [x, values], mask, grad)
        return (gx, None, gv, None)
    gx, gv = torch.ops.panther.sparse_sketch_apply_backward(grad, x, rows, values, mask)
    return (gx if mask[0] else None, None, gv if mask[1] else None, None)


# --- causal linear attention -------------------------------------------------------------------


def _causal_fake(q, k, v, eps):
    return v.new_empty(v.shape), v.new_empty(v.shape[:3])


def _causal_backward_fake(grad, q, k, v, out, den, output_mask):
    shapes = [q.shape, k.shape, v.shape]
    return tuple(q.new_empty(s) if need else _empty(q) for s, need in zip(shapes, output_mask))


def _causal_setup(ctx, inputs, output):
    q, k, v, eps = inputs
    out, den = output
    ctx.save_for_backward(q, k, v, out, den)
    ctx.eps = eps


def _causal_backward(ctx, grad_out, grad_den):
    # grad_den is always zero/None: den is internal to the Python wrapper.
    q, k, v, out, den = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:3])
    if torch.is_grad_enabled():  # create_graph=True
        from panther.native import reference

        eps = ctx.eps
        grads = _grads_through_reference(
            lambda a, b, c: reference.causal_linear_attention(a, b, c, eps), [q, k, v], mask,
            grad_out)
        return (*grads, None)
    grads = torch.ops.panther.causal_linear_attention_backward(grad_out, q, k, v, out, den, mask)
    return (*[g if need else None for g, need in zip(grads, mask)], None)


def _causal_stateful_fake(q, k, v, kv0, z0, eps):
    return v.new_empty(v.shape), kv0.new_empty(kv0.shape), z0.new_empty(z0.shape)


# --- FLOP formulas (torch.utils.flop_counter) ------------------------------------------------
#
# Counted the way torch counts its own ops: 2 per multiply-add of a product, 1 per addition;
# bias additions and scalings are not counted (as for aten.addmm). FlopCounterMode calls each
# formula with the shapes of the tensor arguments, the other arguments as given.


def _sketched_linear_flop(x, S1, U2, U1, S2, bias, num_terms, *args, out_shape=None, **kwargs):
    in_f = x[-1]
    rows = 1
    for size in x[:-1]:
        rows *= size
    two_n = 2 * S1[1]
    return 2 * rows * in_f * two_n + 2 * rows * two_n * U1[1]


def _sketched_linear_backward_flop(grad, x, t, S1, U2, U1, S2, num_terms, output_mask,
                                   *args, out_shape=None, **kwargs):
    out_f = grad[-1]
    rows = 1
    for size in grad[:-1]:
        rows *= size
    in_f, n = S1
    need_gx, need_s1, need_u2, need_u1, need_s2 = list(output_mask)[:5]
    flops = 0
    if need_gx or need_s1 or need_u2:
        flops += 2 * rows * out_f * 2 * n  # gT = grad @ [U1; S2]^T
    if need_gx:
        flops += 2 * rows * 2 * n * in_f
    flops += 2 * in_f * rows * n * (int(bool(need_s1)) + int(bool(need_u2)))
    flops += 2 * n * rows * out_f * (int(bool(need_u1)) + int(bool(need_s2)))
    return flops


def _fwht_flop(x, *args, out_shape=None, **kwargs):
    numel = 1
    for size in x:
        numel *= size
    n = x[-1] if len(x) else 1
    return numel * max(n.bit_length() - 1, 0)  # log2(n) butterfly additions per entry


def _sparse_flop(x, rows, values, m, *args, out_shape=None, **kwargs):
    return 2 * x[0] * rows[0] * rows[1]


def _sparse_backward_flop(grad, x, rows, values, output_mask, *args, out_shape=None, **kwargs):
    per_output = 2 * x[0] * rows[0] * rows[1]
    return per_output * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _causal_flop(q, k, v, eps, *args, out_shape=None, **kwargs):
    batch, heads, n, m = q
    d = v[-1]
    # State update k_t v_t^T and read-out q_t S_t, plus the normaliser's update and read-out.
    return batch * heads * n * (4 * m * d + 3 * m)


def _causal_stateful_flop(q, k, v, kv0, z0, eps, *args, out_shape=None, **kwargs):
    return _causal_flop(q, k, v, eps)


def _causal_backward_flop(grad, q, k, v, out, den, output_mask, *args, out_shape=None, **kwargs):
    batch, heads, n, m = q
    d = v[-1]
    need_q, need_k, need_v = (bool(b) for b in output_mask)
    per_step = 0
    if need_q:
        per_step += 2 * m * d + 3 * m  # grad through the forward state and normaliser
    if need_k or need_v:
        per_step += 2 * m * d + 3 * m  # the reverse-time state of q_t grad_t^T
    if need_k:
        per_step += 2 * m * d + 2 * m
    if need_v:
        per_step += 2 * m * d
    return batch * heads * n * per_step


def _register_flop_formulas() -> None:
    from torch.utils.flop_counter import register_flop_formula

    ops = torch.ops.panther
    formulas = {
        ops.sketched_linear: _sketched_linear_flop,
        ops.sketched_linear_backward: _sketched_linear_backward_flop,
        ops.fwht: _fwht_flop,
        ops.sparse_sketch_apply: _sparse_flop,
        ops.sparse_sketch_apply_backward: _sparse_backward_flop,
        ops.causal_linear_attention: _causal_flop,
        ops.causal_linear_attention_backward: _causal_backward_flop,
        ops.causal_linear_attention_stateful: _causal_stateful_flop,
    }
    from torch.utils.flop_counter import flop_registry

    for target, formula in formulas.items():
        if target not in flop_registry:  # a re-import of this module must not raise
            register_flop_formula(target)(formula)


def register() -> None:
    """Attach the fake kernels and autograd formulas (idempotent; needs the library loaded)."""
    global _REGISTERED
    if _REGISTERED:
        return
    lib = torch.library
    lib.register_fake("panther::sketched_linear", _sketched_linear_fake)
    lib.register_fake("panther::sketched_linear_backward", _sketched_linear_backward_fake)
    lib.register_fake("panther::fwht", _fwht_fake)
    lib.register_autograd("panther::fwht", _fwht_backward, setup_context=_fwht_setup)
    lib.register_fake("panther::sparse_sketch_apply", _sparse_fake)
    lib.register_fake("panther::sparse_sketch_apply_backward", _sparse_backward_fake)
    lib.register_autograd("panther::sparse_sketch_apply", _sparse_backward,
                          setup_context=_sparse_setup)
    lib.register_fake("panther::causal_linear_attention", _causal_fake)
    lib.register_fake("panther::causal_linear_attention_backward", _causal_backward_fake)
    lib.register_autograd("panther::causal_linear_attention", _causal_backward,
                          setup_context=_causal_setup)
    # Inference only (no autograd formula): ops.causal_linear_attention_stateful takes the
    # reference path whenever an input needs grad.
    lib.register_fake("panther::causal_linear_attention_stateful", _causal_stateful_fake)
    _register_flop_formulas()
    _REGISTERED = True
