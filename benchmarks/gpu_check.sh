#!/usr/bin/env bash
# The one prepared device check for a GPU session (issues 11 and 15): run from the repository
# root on the GPU machine, e.g. through the device tool with timeout_s=590:
#
#     bash benchmarks/gpu_check.sh
#
# Steps, each logged to its own file under $OUT (./gpu-check-logs when OUT is unset), with a
# one-line status per step in $OUT/summary.txt:
#   1. env      - nvidia-smi, torch/CUDA versions; installs carried wheels from .whl/ if any
#   2. build    - builds the C++ and CUDA extension (python -m panther.native build --verbose)
#   3. crash    - the issues' crash reproductions in subprocesses (16 and 1 threads, then with
#                 C++ stack traces), under faulthandler, so a crash prints where it happened
#   4. tests    - pytest -m cuda over the layer/op test files
#   5. bench    - benchmarks/bench_gpu.py --profile (tables + gpu_cuda.json copied to $OUT)
#   6. tests-native - tests/test_native.py and tests/test_op_fuzz.py in full
# Typical on one H200: build ~1-2 min, tests ~1-2 min, bench < 4 min; give the call 590 s.
# At most 8 files come back from $OUT: summary, 5 logs, the JSON (7 files).
# The machine has torch 2.11+cu130 but no optuna: panther.nn/panther.native do not need it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-logs}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PANTHER_REQUIRE_NATIVE=1
export PANTHER_EXTENSION_DIR=${PANTHER_EXTENSION_DIR:-/tmp/panther-extensions}
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
: > "$OUT/summary.txt"

step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
  tail -n 8 "$OUT/$name.log"
}

step env 60 bash -c "nvidia-smi; nproc; $PY -c 'import torch; print(torch.__version__, \
torch.version.cuda, torch.cuda.get_device_name(0), torch.backends.cuda.matmul.allow_tf32)'"
step build 240 $PY -m panther.native build --verbose
cat > /tmp/panther_crash_repro.py <<'EOF'
import torch
from panther.native import ops
import panther.native as native
print("threads", torch.get_num_threads(), native.load())
for name, call in [
    ("sparse rows out of range", lambda: ops.sparse_sketch_apply(
        torch.randn(2, 4), torch.tensor([[0], [1], [5], [2]]), torch.ones(4, 1), 3)),
    ("causal backward empty den", lambda: torch.ops.panther.causal_linear_attention_backward(
        torch.ones(2, 4, 256, 16), torch.rand(2, 4, 256, 16), torch.rand(2, 4, 256, 16),
        torch.rand(2, 4, 256, 16), torch.rand(2, 4, 256, 16), torch.empty(0),
        [True, True, True])),
]:
    try:
        with native.use_backend("native"):
            call()
        print(name, "-> returned (WRONG)")
    except Exception as exc:
        print(name, "->", type(exc).__name__, str(exc).splitlines()[0])
EOF
# As in the issue first (plain environment, 16 and 1 threads), then with C++ stack traces
# (raw addresses: symbolizing them with addr2line takes ~30 s per exception).
step crash 150 bash -c "worst=0; for env in 'OMP_NUM_THREADS=16' 'OMP_NUM_THREADS=1' \
'OMP_NUM_THREADS=16 TORCH_SHOW_CPP_STACKTRACES=1 TORCH_DISABLE_ADDR2LINE=1'; do \
env \$env $PY -X faulthandler /tmp/panther_crash_repro.py; rc=\$?; echo \"[\$env] exit \$rc\"; \
[ \$rc -ne 0 ] && worst=\$rc; done; exit \$worst"
# Only the files of the layers and ops: the tuner's tests import optuna, which is not there.
CUDA_TEST_FILES=$(ls tests/test_native.py tests/test_sketch.py tests/test_precision_and_capture.py \
  tests/test_sklinear.py tests/test_skconv2d.py tests/test_attention.py tests/test_attention_gpu.py \
  tests/test_attention_landmark.py 2>/dev/null)
step tests 300 $PY -m pytest -q -p no:cacheprovider -m cuda $CUDA_TEST_FILES
step bench 240 $PY benchmarks/bench_gpu.py --profile
cp benchmarks/results/gpu_cuda.json "$OUT/" 2>/dev/null || true
# Last: the longest step; if the call's time runs out, everything above is already in $OUT.
step tests-native 240 $PY -m pytest -q -p no:cacheprovider tests/test_native.py \
  tests/test_op_fuzz.py
echo "logs in $OUT"
