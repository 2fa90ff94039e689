"""Child process of tests/test_op_fuzz.py: runs fuzzed calls of panther's ops, one per line.

Reads a JSON list of calls on stdin. Before each call it prints ``start <i>`` (flushed), after it
``done <i> ok`` or ``done <i> <ExceptionType>``, so a crash names the call that caused it.
Nothing here may crash the process: that is what the parent test checks.
"""

from __future__ import annotations

import json
import sys

import torch

import panther.native as native
from panther.native import ops

DTYPES = {name: getattr(torch, name) for name in
          ("float32", "float64", "float16", "bfloat16", "int64", "int32", "bool")}

# The public Python wrappers, keyed by the raw op they front; same argument order.
WRAPPERS = {
    "sketched_linear": ops.sketched_linear,
    "fwht": ops.fwht,
    "sparse_sketch_apply": ops.sparse_sketch_apply,
    "causal_linear_attention": ops.causal_linear_attention,
    "causal_linear_attention_stateful": ops.causal_linear_attention_stateful,
}


def build(arg: dict, gen: torch.Generator):
    """One argument from its description (a tensor spec, a plain value or None)."""
    if "value" in arg:
        return arg["value"]
    if arg.get("none"):
        return None
    dtype = DTYPES[arg["dtype"]]
    shape = arg["shape"]
    if dtype.is_floating_point:
        t = torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype)
    elif dtype == torch.bool:
        t = torch.randint(0, 2, shape, generator=gen).bool()
    else:
        lo, hi = arg.get("range", (0, 4))
        t = torch.randint(lo, hi, shape, generator=gen, dtype=dtype)
    if arg.get("strided") and t.dim() >= 1 and t.shape[-1] > 1:
        t = t[..., ::2]
    return t.to(arg["device"])


def main() -> int:
    calls = json.load(sys.stdin)
    native.load()
    gen = torch.Generator().manual_seed(0)
    for i, call in enumerate(calls):
        args = [build(a, gen) for a in call["args"]]
        if call["via"] == "raw":
            fn = getattr(torch.ops.panther, call["op"])
        else:
            fn = WRAPPERS[call["op"]]
        print(f"start {i}", flush=True)
        try:
            with native.use_backend(call.get("backend", "native")):
                out = fn(*args)
            # Touch the results: a kernel that wrote out of bounds or left garbage shows here.
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.numel():
                    t.float().sum().item()
            if any(a.is_cuda for a in args if isinstance(a, torch.Tensor)):
                torch.cuda.synchronize()
            result = "ok"
        except Exception as exc:  # noqa: BLE001 - any Python exception is an acceptable answer
            result = type(exc).__name__
        print(f"done {i} {result}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
