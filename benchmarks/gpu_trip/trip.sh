#!/usr/bin/env bash
# The GPU trip of issue 27, run on the device machine in the repository root with .gpu-trip carried
# (benchmarks/gpu_trip/README.md says how to call it). Phases, each timed into $OUT/trip.log:
#   setup   wheels into /tmp/site, unpack and check the carried data and generator
#   smoke   one CUDA training iteration of the full networks with the train phase's settings, one
#           CUDA upscale; if it fails, train and export are skipped (the tests still run)
#   train   the paper's retina recipe from realesrgan-x4plus on STARE + HRF (perceptual loss off: no
#           VGG19 weights exist there; fresh D with warm-up); resumed if an earlier call on this
#           (still warm) machine left a checkpoint; stopped by SIGTERM to leave time for what follows
#           (finetune saves the iteration under way: status 124 is this phase's normal end)
#   export  the EMA generator in fp16, in pieces under 16 MiB ($OUT/retina-gpu.safetensors.partNN)
#   tests   pytest -m gpu (tests/test_gpu.py)
#   bench   medsr vs upstream RealESRGANer on a 1024x1024 chest X-ray; training s/iteration
# tests and bench run once per machine. TRIP_SECONDS (default 540) is this call's whole budget:
# give the device tool a timeout_s a little above it. Exit status 0 when a model came back. To try
# the script on a CPU first (one line; the README has it):
# TRIP_DEVICE=cpu TRIP_EXTRA="--set data.batch_size=2 --set data.gt_size=64 --set data.pool_size=4 --set model.d_warmup_iters=1 --set run.iterations=4" bash benchmarks/gpu_trip/trip.sh
set -u
BUDGET=${TRIP_SECONDS:-540}
DEVICE=${TRIP_DEVICE:-cuda}
PRECISION=$([ "$DEVICE" = cpu ] && echo fp32 || echo fp16)  # the speed table's (fp16 is for GPUs)
read -r -a EXTRA <<<"${TRIP_EXTRA:-}"  # more --set options for both finetune runs (a CPU try)
WORK=/tmp/trip
export OUT=${OUT:-/tmp/trip-out}
export PYTHONUNBUFFERED=1 MEDSR_OFFLINE=1 MEDSR_HOME="$WORK/home" MEDSR_SHARED_DATA="$WORK/shared"
export MEDSR_TEST_DEVICE="$DEVICE" PYTHONPATH="/tmp/site:$PWD/src" MEDSR_TEST_X4PLUS="$WORK/home/models/realesrgan-x4plus.safetensors"
medsr() { python3 -m medsr.cli "$@"; }

phase_setup() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu-trip/wheels/*.whl || return 1
    [ -f "$WORK/unpacked" ] || { python3 benchmarks/gpu_trip/unpack.py .gpu-trip "$WORK" && touch "$WORK/unpacked"; }
}

# The train phase's settings (the smoke run adds a small pool and one iteration).
TRAIN_SETTINGS=(--set run.device="$DEVICE" --set loss.perceptual_weight=0 --set run.channels_last=true
                --set data.val_images=4 --set run.save_every=500 --set run.val_every=500 --set run.log_every=50)

phase_smoke() {
    rm -rf "$WORK/smoke"
    medsr finetune --preset retina --data "$WORK/train" --val "$WORK/val" -o "$WORK/smoke" "${TRAIN_SETTINGS[@]}" \
        --set data.pool_size=10 "${EXTRA[@]}" --set run.iterations=1 --set run.val_every=1 \
        --set model.d_warmup_iters=1 || return 1
    medsr upscale "$WORK/cxr-256.png" -o "$WORK/smoke/upscaled" --model realesrgan-x4plus --device "$DEVICE"
}

phase_train() {
    local start=(--preset retina --data "$WORK/train" --val "$WORK/val")
    [ -f "$WORK/run/latest.pth" ] && start=(--resume)  # a resumed run keeps its stored config
    # exec: the SIGTERM of the phase's time limit reaches finetune itself, which saves before it ends
    exec python3 -m medsr.cli finetune -o "$WORK/run" "${start[@]}" "${TRAIN_SETTINGS[@]}" "${EXTRA[@]}"
}

phase_export() {
    [ -f "$WORK/run/latest.pth" ] || return 1
    rm -f "$WORK/retina-gpu.safetensors" "$OUT"/retina-gpu.safetensors.part*
    medsr export "$WORK/run/latest.pth" -o "$WORK/retina-gpu.safetensors" || return 1
    split -b 15M -d "$WORK/retina-gpu.safetensors" "$OUT/retina-gpu.safetensors.part"
    python3 - "$WORK/retina-gpu.safetensors" >"$OUT/model.json" <<'PY'
import hashlib, json, sys
from safetensors import safe_open
with safe_open(sys.argv[1], "pt") as f:
    iteration = f.metadata()["iteration"]
print(json.dumps({"iteration": int(iteration), "sha256": hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()}))
PY
}

phase_tests() {
    python3 -m pytest -q -s -p no:cacheprovider -m gpu tests/test_gpu.py
}

phase_bench() {
    python3 benchmarks/bench_upstream.py "$WORK/cxr.png" --device "$DEVICE" --precision "$PRECISION" --repeats 2 \
        --tile 256
    python3 benchmarks/bench_train.py --setting paper --iterations 3 --precision bf16,fp32 --device "$DEVICE" \
        --data "$WORK/train"
}

# A phase runs in a child (bash "$0" --phase NAME) so that timeout can stop it.
if [ "${1:-}" = "--phase" ]; then "phase_$2"; exit $?; fi

START=$(date +%s)
if [ -n "${TRIP_RESUME:-}" ] && [ ! -f "$WORK/run/latest.pth" ]; then  # a second call that met a fresh machine
    echo "TRIP_RESUME: no run in $WORK to resume (this machine is a fresh one); nothing done"
    exit 3
fi
mkdir -p "$WORK" "$OUT"
LOG="$OUT/trip.log"
left() { echo $((BUDGET - ($(date +%s) - START))); }
phase() {  # phase NAME SECONDS: run it with a time limit, log its time and status
    local name=$1 limit=$2 t0 rc
    t0=$(date +%s)
    echo "== $name (limit ${limit} s, $(left) s left in the call)" | tee -a "$LOG"
    timeout -s TERM -k 30 "$limit" bash "$0" --phase "$name" >>"$LOG" 2>&1
    rc=$?
    echo "== $name: status $rc after $(($(date +%s) - t0)) s" | tee -a "$LOG"
    echo "{\"phase\": \"$name\", \"status\": $rc, \"seconds\": $(($(date +%s) - t0))}" >>"$OUT/phases.jsonl"
    return $rc
}

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
              torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
  echo "$(nproc) CPUs"; cat .gpu-trip/commit.txt; } >>"$LOG" 2>&1

phase setup 60 || exit 1
[ -f "$WORK/smoke.ok" ] || { phase smoke 120 && touch "$WORK/smoke.ok"; }

# What follows the training needs about this long (less once tests and bench have run here).
RESERVE=60
[ -f "$WORK/tests.done" ] || RESERVE=$((RESERVE + 75))
[ -f "$WORK/bench.done" ] || RESERVE=$((RESERVE + 90))
TRAIN_S=$(($(left) - RESERVE))
if [ -f "$WORK/smoke.ok" ] && [ "$TRAIN_S" -gt 30 ]; then
    phase train "$TRAIN_S"
    cp "$WORK/run/log.csv" "$OUT/train-log.csv" 2>/dev/null
    phase export 40
fi

if [ ! -f "$WORK/tests.done" ] && [ "$(left)" -gt 60 ]; then
    phase tests 75
    touch "$WORK/tests.done"
fi
if [ ! -f "$WORK/bench.done" ] && [ "$(left)" -gt 30 ]; then
    phase bench $(($(left) - 5))
    touch "$WORK/bench.done"
fi
echo "== done after $(($(date +%s) - START)) s; model: $(cat "$OUT/model.json" 2>/dev/null || echo none)" | tee -a "$LOG"
[ -f "$OUT/model.json" ]  # the status: 0 when a model came back
