#!/usr/bin/env bash
# The project's checks that need a CUDA GPU, in one go; nothing else depends on one.
#
#   scripts/gpu_check.sh            # on a machine with an NVIDIA GPU and python3.11
#
# 1. A virtual environment (.venv-gpu, or $GPU_VENV) with vLLM's CUDA build and this
#    package (the Mooncake CUDA build as its transfer engine); skipped where they import.
# 2. The torch block mover on real CUDA caches (pinned staging, side stream): exact bytes.
# 3. The KV connector under a real vLLM engine on the GPU (the tiny model, built locally):
#    identical greedy output from recompute, the engine's cache, the DRAM tier and the disk
#    tier, a corrupted disk block recomputed, a warm restart.
# 4. Pulls between two real nodes, over Mooncake and over the gRPC stream: identical output.
# 5. benchmarks/tiers_ttft.py on the GPU (TTFT from each tier and from a peer vs recompute).
# Prints one verdict line per step and exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

VENV=${GPU_VENV:-.venv-gpu}
VLLM_VERSION=${VLLM_VERSION:-0.32.0}
OUT=${GPU_CHECK_OUT:-gpu_check_results}
mkdir -p "$OUT"
declare -a VERDICTS=()
FAILED=0

step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, record a verdict
  local name=$1; shift
  echo "== $name: $*"
  if "$@" >"$OUT/$name.log" 2>&1; then
    VERDICTS+=("PASS  $name")
  else
    VERDICTS+=("FAIL  $name (see $OUT/$name.log)"); FAILED=1
    tail -20 "$OUT/$name.log"
  fi
}

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi finds none); nothing to check"; exit 2
fi
nvidia-smi -L

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" || { echo "gpu_check: cannot create $VENV"; exit 2; }
PY="$VENV/bin/python"
if ! "$PY" -c "import torch, vllm; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "installing vllm==$VLLM_VERSION (CUDA) into $VENV ..."
  "$PY" -m pip install -q --upgrade pip && "$PY" -m pip install -q "vllm==$VLLM_VERSION" || {
    echo "gpu_check: cannot install vllm==$VLLM_VERSION (no network to PyPI?)"; exit 2; }
fi
if ! "$PY" -c "import preble_tiered, mooncake.engine" 2>/dev/null; then
  "$PY" -m pip install -q -e ".[dev,mooncake-cuda]" || "$PY" -m pip install -q -e ".[dev]" || {
    echo "gpu_check: cannot install this package into $VENV"; exit 2; }
fi
"$PY" -c "import torch, vllm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'vllm', vllm.__version__)"

export PREBLE_GPU_MEMORY_UTILIZATION=${PREBLE_GPU_MEMORY_UTILIZATION:-0.3}  # two nodes share the GPU in the pull tests
export PREBLE_CACHE_DIR=${PREBLE_CACHE_DIR:-$PWD/$OUT/cache}  # the tiny model is built here, once
step torch_mover "$PY" -m pytest -q -p no:cacheprovider tests/kvstore/test_block_copy_torch.py -rs
step connector_round_trips "$PY" -m pytest -q -p no:cacheprovider tests/engine/test_kv_connector_engine.py
step pulls "$PY" -m pytest -q -p no:cacheprovider tests/node/test_transfer_mooncake_e2e.py \
  tests/node/test_transfer_e2e.py
step tiers_ttft "$PY" benchmarks/tiers_ttft.py --reps 5 --json "$OUT/tiers_ttft.json"
grep -E "^(recompute|hbm|dram|disk|remote)" "$OUT/tiers_ttft.log" || true

echo
echo "gpu_check verdict ($(nvidia-smi -L | head -1)):"
printf '  %s\n' "${VERDICTS[@]}"
exit $FAILED
