#!/usr/bin/env bash
# Throughput, MFU and peak memory of the h100 preset on one GPU, three ways:
#   bf16 eager | bf16 + torch.compile | fp32 (TF32 off: the true fp32 baseline)
# Each line: images/s of our trainer, MFU against the GPU's peak for that precision, and
# torch.cuda.max_memory_allocated over the timed steps (both the trainer and bench's bare
# comparison loop are resident, so it is an upper bound for the trainer alone).
#
#   scripts/gpu_check.sh                       # on the GPU machine (a few minutes; compile is slow)
#   STEPS=2 scripts/gpu_check.sh --set model.preset=tiny --set train.batch_size=4 \
#       --set "train.curriculum=[{steps: 1, resolution: 16}]" --set data.num_workers=0
#                                              # CPU smoke test of the script itself
# Extra arguments are passed to every `bench train` (e.g. --set train.batch_size=64).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
STEPS=${STEPS:-10}
CONFIG=${CONFIG:-h100}

run() {  # name, then --set overrides
  local name=$1; shift
  local out
  out=$("$PY" -m reference_impl bench train --config "$CONFIG" --steps "$STEPS" --json "$@" | tail -n 1)
  "$PY" - "$name" "$out" <<'PYEOF'
import json, sys
name, r = sys.argv[1], json.loads(sys.argv[2])
mem = r.get("peak_memory_gb")
mfu = r.get("mfu")
print(f"{name:<16} {r['device']:<8} {r['resolution']:>4}px batch {r['batch_size']:>4}  "
      f"{r['ours_images_per_s']:>9.1f} img/s  MFU {'n/a' if mfu is None else f'{100 * mfu:5.1f}%'}  "
      f"peak {'n/a (not CUDA)' if mem is None else f'{mem:.2f} GB'}  "
      f"params {r['model_parameters'] / 1e6:.1f} M", flush=True)
PYEOF
}

echo "bench train --config $CONFIG, $STEPS timed steps"
run "bf16 eager" --set train.mixed_precision=bf16 --set perf.compile=false "$@"
run "bf16 + compile" --set train.mixed_precision=bf16 --set perf.compile=true "$@"
run "fp32" --set "train.mixed_precision='no'" --set perf.tf32=false --set perf.compile=false "$@"
