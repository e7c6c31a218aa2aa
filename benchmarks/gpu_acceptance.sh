#!/usr/bin/env bash
# GPU acceptance of ppsvd in one call, on a single H100 or H200, in under 8 minutes (issue 21).
#
#   bash benchmarks/gpu_acceptance.sh OUT_DIR        # from the repository root; OUT_DIR default: acceptance-out
#
# What it runs, all on the one GPU with the SVD-XT architecture and random weights (nothing to download):
#   1. ppsvd doctor --weights random --json                                           -> OUT/doctor.json
#   2. ppsvd verify --dtype fp16, 4 frames 256x256, 6 steps, 3 samples, layouts: 1 process; 2 and 3 stages
#      on the one GPU over zmq and over gloo; a guidance pair on it                   -> OUT/verify-layouts.json
#   3. ppsvd verify --dtype fp16, 14 frames 512x512, 16 steps, 3 samples: N=1 eager and N=1 --compile
#      (compile time reported apart; steady throughput and step time compared)       -> OUT/verify-compile.json
#   then OUT/acceptance.json (everything) and OUT/acceptance.md (one table), and OUT/acceptance.log.
# Exit 0 when every step passed; 1 when one failed (the table says which); 2 when a prerequisite is missing.
# Budget (H200 costs: one step 165 ms at 14x512x512 with guidance, encode 65 ms, decode 490 ms): step 2 about
# 2.5 min (six launches of ~20 s), step 3 about 1.5 min plus the UNet's compilation; every step has a timeout.
#
# Preparation. The GPU machine has CUDA torch (2.11) and Python 3.12 but not diffusers or pyzmq, and its typer
# may predate the floor in pyproject.toml; nothing can be fetched there. So, here, in the repository root, on a
# machine with PyPI (wheels for Python 3.12 on x86-64 Linux, whatever this machine is):
#
#   echo /.whl/ >> .git/info/exclude      # (.gitignore lists it too)
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
#     diffusers==0.42.1 pyzmq==27.3.0 typer==0.29.2 click==8.5.1 pydantic==2.14.4 pydantic-core==2.50.5 \
#     annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
#
# (about 10 MB; pydantic and friends are typer 0.29's own needs; imageio-ffmpeg is not needed: nothing here
# writes an MP4). Then carry .whl to the GPU machine (the device tool: carry [".whl"]) and run this script
# there: it installs them itself, as
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD
#
# and stops with one line naming whatever is still missing or older than pyproject.toml's floors.
# PPSVD_ACCEPTANCE_DEVICE=cpu runs the same sequence with the tiny model on CPU (a dry run of the plumbing;
# its timings mean nothing).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(mkdir -p "${1:-acceptance-out}" && cd "${1:-acceptance-out}" && pwd)
DEVICE=${PPSVD_ACCEPTANCE_DEVICE:-cuda}
cd "$ROOT" || exit 2
LOG="$OUT/acceptance.log"
: >"$LOG"
say() { echo "gpu_acceptance: $*" | tee -a "$LOG" >&2; }

if compgen -G ".whl/*.whl" >/dev/null; then
    if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl >>"$LOG" 2>&1; then
        say "installing .whl/*.whl into /tmp/site failed (pip's output is in $LOG)"
        exit 2
    fi
    export PYTHONPATH="/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
python3 benchmarks/acceptance_report.py check --device "$DEVICE" 2> >(tee -a "$LOG" >&2) || exit 2

# Timeouts (s) of the three steps: sized for the GPU; a CPU dry run on a busy machine needs more.
LIMITS=(90 270 300)
if [ "$DEVICE" = cpu ]; then
    MODEL=(--model-id tiny --device cpu --dtype fp32)
    SMALL=(--latent-shape 1 4 3 8 8 --num-inference-steps 6)
    BIG=(--latent-shape 1 4 3 8 8 --num-inference-steps 6)
    LIMITS=(300 1200 1200)
else
    MODEL=(--weights random --device cuda --dtype fp16)
    SMALL=(--latent-shape 1 4 4 32 32 --num-inference-steps 6)
    BIG=(--latent-shape 1 4 14 64 64 --num-inference-steps 16)
fi

STEPS_JSON="$OUT/steps.json"
echo "{}" >"$STEPS_JSON"
# step NAME TIMEOUT_S COMMAND...: stdout to OUT/NAME.json, stderr to the log, exit code and time to steps.json
step() {
    local name=$1 limit=$2
    shift 2
    say "$name: $*"
    local started=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.json" 2>>"$LOG"
    local rc=$?
    [ "$rc" = 124 ] && say "$name: stopped after its $limit s timeout"
    python3 - "$STEPS_JSON" "$name" "$rc" "$((SECONDS - started))" <<'PY'
import json, sys
path, name, rc, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
steps = json.load(open(path))
steps[name] = {"rc": rc, "seconds": seconds}
json.dump(steps, open(path, "w"), indent=1)
PY
    say "$name: exit $rc after $((SECONDS - started)) s"
}

step doctor "${LIMITS[0]}" python3 -m ppsvd doctor "${MODEL[@]}" --nproc 1 --live-timeout 30 --json
step verify-layouts "${LIMITS[1]}" python3 -m ppsvd verify "${MODEL[@]}" "${SMALL[@]}" --num-samples 3 --timeout 180 \
    --layouts pipeline:1,pipeline:2:zmq,pipeline:2:gloo,pipeline:3:zmq,pipeline:3:gloo,cfg:2:zmq --json
step verify-compile "${LIMITS[2]}" python3 -m ppsvd verify "${MODEL[@]}" "${BIG[@]}" --num-samples 3 --timeout 240 \
    --layouts pipeline:1,pipeline:1:compile --json

python3 benchmarks/acceptance_report.py report "$OUT" | tee -a "$LOG"
rc=${PIPESTATUS[0]}
say "done in $SECONDS s: $OUT/acceptance.md, $OUT/acceptance.json"
exit "$rc"
