#!/usr/bin/env bash
# One prepared GPU session (issue 19): measure GPU speed side by side, then train the papers' comparison at the 2 mm
# head setting (7 variants x 2 seeds, all runs at once on the one GPU, iterations fitted to the time left; the recipe
# RECIPE, default fast: the recipe study's winner, RECIPE=paper for the presets as published), evaluate,
# and write compact results. About 9.5 minutes on one H200 (run it with a 10-minute limit). Writes only under $OUT (default benchmarks/results/
# gpu-session); data, checkpoints and caches live in a scratch folder that is deleted at the end.
#
#   bash scripts/gpu_session.sh            # the full session (needs a CUDA GPU)
#   bash scripts/gpu_session.sh --tiny     # the same steps at tiny sizes on whatever device there is (CI, seconds)
#   MODE=head bash scripts/gpu_session.sh  # instead: train the default head model further (issue 21), see below
#
# MODE=head: simulated head pairs made by all CPU cores (scripts/make_head_model.py data --jobs), then the shipped
# head-synth as the start of a supervised run on the GPU for the time left (make_head_model.py train --init-from);
# writes model_head_synth_gpu.mrtoct.safetensors and head_run.tar.gz (config, events, losses). The real head CTs are
# read from $REAL_DATA (default .gpu/real: scripts/gpu_carry.sh puts them there, git-ignored, never committed); without
# them the anatomy is phantoms only. Score it here afterwards: make_head_model.py's phantom scores and
# benchmarks/real_head_checks.py, against the shipped model.
#
# Python: $PYTHON, else .venv/bin/python, else python3 (a GPU machine's own torch is used; nothing is installed). A
# machine without SimpleITK or pydicom gets them from .gpu/packages.tar.xz when present (their wheels unpacked and
# xz-compressed by scripts/gpu_carry.sh: the lent GPU machine cannot reach a package index).
# Results ($OUT): session.log, acceleration.json, speed.json, speed.md, quality.tar.gz (plan, concurrency timing,
# tables, figures, report, every run's config, losses, events and test metrics; no data, no checkpoints) and the
# seed-0 models of yang2018 and supervised where each is under 16 MiB.
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=0
case "${1:-}" in
    --tiny) TINY=1 ;;
    "") ;;
    *) echo "usage: bash scripts/gpu_session.sh [--tiny]" >&2; exit 2 ;;
esac
SESSION_SECONDS=${SESSION_SECONDS:-$( [ "$TINY" = 1 ] && echo 120 || echo 555 )}  # wall time of the whole session
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEST=${OUT:-benchmarks/results/gpu-session}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/mrtoct-gpu-session.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
STARTED=$(date +%s)
exec > >(tee "$DEST/session.log") 2>&1
elapsed() { echo $(( $(date +%s) - STARTED )); }
say() { echo "[gpu-session +$(elapsed)s] $*"; }

if ! "$PY" -c "import SimpleITK, pydicom" 2>/dev/null; then
    if [ -f .gpu/packages.tar.xz ]; then
        mkdir -p "$SCRATCH/site" && tar -xJf .gpu/packages.tar.xz -C "$SCRATCH/site" || exit 1
        export PYTHONPATH="$SCRATCH/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "SimpleITK or pydicom is missing and .gpu/packages.tar.xz is not there (bash scripts/gpu_carry.sh makes it)" >&2
        exit 2
    fi
fi
export PYTHONPATH="$PWD/MRtoCTSynthesis:$PWD/MRtoCTSegment${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MRTOCT_COMPILE=0   # 14 runs compiling at once would spend the lease compiling; the speed section compiles itself
DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
if [ "$TINY" = 0 ] && [ "$DEVICE" != cuda ]; then
    echo "no CUDA GPU visible to torch: the full session needs one (--tiny runs anywhere)" >&2
    exit 2
fi
say "device $DEVICE; python $("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
lscpu 2>/dev/null | grep -E "^(Model name|CPU\(s\)):" || true

# ------------------------------------------------------------------ MODE=head: the default head model, further trained
if [ "${MODE:-comparison}" = head ]; then
    H="$SCRATCH/head"
    PAIRS=$( [ "$TINY" = 1 ] && echo 2 || echo 320 )
    JOBS=$(nproc 2>/dev/null || echo 2)
    say "head model: $PAIRS simulated pairs, $JOBS processes, real CTs from ${REAL_DATA:-.gpu/real}"
    "$PY" scripts/make_head_model.py data --work "$H" --real-data "${REAL_DATA:-.gpu/real}" --pairs "$PAIRS" \
        --own-mr-every 2 --seed 2 --axial-thick-share 0.67 --bright-fat-share 0.8 --max-bias 0.7 \
        --max-extra-scalp-mm 3 --max-csf-mm 4 --jobs "$JOBS" || exit 1               # v11's data recipe, new pairs
    MINUTES=$("$PY" -c "print(max(0.05, ($STARTED + $SESSION_SECONDS - 45 - $(date +%s)) / 60 / 1.1))")
    say "training on $DEVICE for $MINUTES min from the shipped head-synth"
    "$PY" scripts/make_head_model.py train --work "$H" --minutes "$MINUTES" --device "$DEVICE" \
        --lr 3e-4 --init-from MRtoCTSynthesis/Resources/Models/head-synth.mrtoct.safetensors > "$H/train.log" 2>&1 \
        || { tail -c 2000 "$H/train.log"; exit 1; }
    tail -c 300 "$H/train.log"; echo
    cp "$H/head-synth/model.mrtoct.safetensors" "$DEST/model_head_synth_gpu.mrtoct.safetensors" || exit 1
    (cd "$H/head-synth" && tar -czf "$DEST/head_run.tar.gz" config.json events.jsonl losses.csv loss_curves.png)
    say "written to $DEST: $(ls "$DEST" | tr '\n' ' ')"
    exit 0
fi

# ------------------------------------------------------------------ 1. speed: reference vs auto, side by side
"$PY" -m MRtoCTSynthesisLib.acceleration --json > "$DEST/acceleration.json"
if [ "$TINY" = 1 ]; then
    SPEED_ARGS=(--tiny --repeats 1 --skip memory training difference)
else
    SPEED_ARGS=(--repeats 3 --skip memory training)
fi
say "speed (limit 150 s)"
MRTOCT_COMPILE= timeout 150 "$PY" -m MRtoCTSynthesisLib.cli bench speed --device "$DEVICE" --out "$SCRATCH/speed" \
    "${SPEED_ARGS[@]}" || say "speed stopped early (exit $?): its finished sections are kept"
cp "$SCRATCH/speed/speed.json" "$SCRATCH/speed/speed.md" "$DEST/" 2>/dev/null

# ------------------------------------------------------------------ 2. the papers' comparison, all runs at once
Q="$SCRATCH/quality"
mkdir -p "$Q"
if [ "$TINY" = 1 ]; then
    VARIANTS=(yang2018 supervised); SEEDS=(0); SCALE=(--tiny); SCALE_NAME=tiny; WINDOW=2; EVAL_RESERVE=20
else
    VARIANTS=(cyclegan cyclegan-pbs paired yang2018 hiasa2018 cyclegan-cycle3 supervised); SEEDS=(0 1)
    SCALE=(); SCALE_NAME=default; WINDOW=15; EVAL_RESERVE=130
fi
RECIPE="${RECIPE:-fast}"   # the recipe study's winner (issue 22); RECIPE=paper runs the presets as published
QUALITY=("$PY" -m MRtoCTSynthesisLib.cli bench quality --out "$Q" --anatomy head --seeds "${SEEDS[@]}"
         --variants "${VARIANTS[@]}" --device "$DEVICE" --real-data none --no-progress --recipe "$RECIPE" "${SCALE[@]}")
say "timing ${#VARIANTS[@]} variants x ${#SEEDS[@]} seeds training at once (${WINDOW} s window)"
TRAIN_END=$(( STARTED + SESSION_SECONDS - EVAL_RESERVE ))
"$PY" -m MRtoCTSynthesisLib.quality.concurrency --variants "${VARIANTS[@]}" --seeds "${SEEDS[@]}" \
    --device "$DEVICE" --seconds "$WINDOW" --scale "$SCALE_NAME" --recipe "$RECIPE" --json "$Q/concurrency.json" \
    > /dev/null || exit 1
# iterations that fit the training time left, less about 60 s of data, cache and plan before the first step
ITERATIONS=$("$PY" - "$Q/concurrency.json" $(( TRAIN_END - $(date +%s) - 60 )) <<'EOF'
import json, sys
from MRtoCTSynthesisLib.quality.concurrency import iterations_for
timing = json.load(open(sys.argv[1]))
print(iterations_for(max(float(sys.argv[2]), 1.0), timing))
EOF
) || exit 1
STOP_MINUTES=$("$PY" -c "print(max(0.1, ($TRAIN_END - $(date +%s)) / 60))")
say "$(( ${#VARIANTS[@]} * ${#SEEDS[@]} )) runs of $ITERATIONS iterations; every run stops by +$(( TRAIN_END - STARTED ))s"
PIDS=()
for n in $(seq $(( ${#VARIANTS[@]} * ${#SEEDS[@]} ))); do   # one invocation per run; each claims one, the last reports
    OMP_NUM_THREADS=2 ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=2 "${QUALITY[@]}" --iterations "$ITERATIONS" \
        --stop-after-minutes "$STOP_MINUTES" > "$Q/invocation-$n.log" 2>&1 &
    PIDS+=($!)
done
HARD_END=$(( STARTED + SESSION_SECONDS + 30 ))   # results are packed even if the evaluation overruns
running() { local pid; for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && return 0; done; return 1; }
while running && [ "$(date +%s)" -lt "$HARD_END" ]; do sleep 2; done
if running; then
    say "the evaluation overran the session: stopping it and packing what is there"
    kill "${PIDS[@]}" 2>/dev/null
fi
for pid in "${PIDS[@]}"; do wait "$pid" || say "a quality invocation exited with $?"; done
cat "$Q"/invocation-*.log | grep -v "^\s*$" | tail -n 60
say "quality done"

# ------------------------------------------------------------------ 3. compact results
(cd "$Q" && tar -czf "$DEST/quality.tar.gz" --exclude='*.pt' --exclude='*.safetensors' --exclude='*.part' \
    $(ls -d concurrency.json plan.json RESULTS.md tables figures runs invocation-*.log 2>/dev/null))
for variant in yang2018 supervised; do
    model="$Q/runs/head/$variant-seed0/model.mrtoct.safetensors"
    if [ -f "$model" ] && [ "$(stat -c %s "$model")" -lt 16777216 ]; then
        cp "$model" "$DEST/model_head_${variant}_seed0.mrtoct.safetensors"
    fi
done
say "written to $DEST: $(ls "$DEST" | tr '\n' ' ')"
