#!/bin/bash
# The GPU checks of issues 4 (DeepSpeed) and 10 (speed) in one prepared run, for the `device` tool's
# machine (one GPU, no network, no wandb): about 8 minutes. From the project root here:
#
#   (once, on this machine: build deepspeed + webdataset wheels into .whl/, which the run carries along)
#   then run on the device:  bash tools/gpu_check.sh        (results under $OUT, default /tmp/gpu_check)
#
# It installs the wheels, runs tests/gpu, then benchmarks/step_speed.py at the issues' settings
# (DCGAN 64 px, batch 1024, bf16; channels_last resolves to on for DDP, off under DeepSpeed):
# gandist at world size 1 (strategy single), ZeRO-1/2/3, synthetic vs real shards through the loader, torch.compile, and
# feeds the measured step time to benchmarks/scaling.py. Every step's output goes to its own file;
# a failing step is recorded and the next one runs. GPU_CHECK_DRY=1 runs the same sequence at CPU
# sizes (32 px, batch 16, fp32, few steps) to check the script itself.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${PY:-python3}
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
if [ "${GPU_CHECK_DRY:-0}" = 1 ]; then
  RES=32; BATCH=16; PREC=fp32; STEPS=(--steps 4 --warmup 2 --repeats 1); WORKERS=1
else
  RES=64; BATCH=1024; PREC=bf16; STEPS=(--steps 40 --warmup 10 --repeats 3); WORKERS=8
fi
SPEED=("$PY" benchmarks/step_speed.py --res "$RES" --batch "$BATCH" --precision "$PREC" "${STEPS[@]}")

step() {  # step NAME TIMEOUT_S CMD...: run, keep output and exit status, go on
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  echo "$name: exit $? in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
}

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
step versions 60 "$PY" -c "import torch, deepspeed, accelerate; print(torch.__version__, deepspeed.__version__, accelerate.__version__, torch.cuda.is_available())"
step tests_gpu 240 "$PY" -m pytest -q -p no:cacheprovider tests/gpu
# world size 1: gandist's strategy is "single" there (DDP wraps nothing with one rank)
for strategy in single zero1 zero2 zero3; do
  step "speed_$strategy" 120 "${SPEED[@]}" --strategy "$strategy" --skip-train
done
# real shards through the loader vs synthetic: the embedded sample re-sized to the benchmark resolution
step shards 120 "$PY" -m gandist prepare "gandist/assets/fashion_mnist" "$OUT/shards$RES" --resolution "$RES" \
  --format npy --overwrite
step speed_shards 180 "${SPEED[@]}" --strategy single --workers "$WORKERS" --shards "$OUT/shards$RES"
step speed_compile 240 "${SPEED[@]}" --strategy single --skip-train --compile
STEP_MS=$($PY -c "
import json
r = [json.loads(l) for l in open('$OUT/speed_single.txt') if '\"synthetic_images_per_s\"' in l][-1]
print(round(1000 * $BATCH / r['synthetic_images_per_s'], 3))" 2>/dev/null || echo 15.3)
step scaling 60 "$PY" benchmarks/scaling.py --res "$RES" --step-ms "$STEP_MS"
rm -rf "$OUT/shards$RES"
cat "$OUT/summary.txt"
