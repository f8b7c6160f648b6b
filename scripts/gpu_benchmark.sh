#!/usr/bin/env bash
# The speed benchmark on a CUDA machine: what `auto` chooses there (bf16/fp16, channels-last, compiled) against the
# reference configuration, side by side in one run. Writes speed.json, speed.md, acceleration.json and the log into
# $OUT if set, else benchmarks/results/gpu. Uses $PYTHON if set, else .venv/bin/python, else python3 (its torch must
# be a CUDA build: this script never installs torch). About 5-10 minutes on one recent GPU.
#   bash scripts/gpu_benchmark.sh [extra `mrtoct bench speed` options, e.g. --quick]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEST=${OUT:-benchmarks/results/gpu}
mkdir -p "$DEST"
export PYTHONPATH="$PWD/MRtoCTSynthesis:$PWD/MRtoCTSegment${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch ' + torch.__version__)"
"$PY" -m MRtoCTSynthesisLib.acceleration --json > "$DEST/acceleration.json"
"$PY" -m MRtoCTSynthesisLib.cli bench speed --device cuda --out "$DEST" "$@" 2>&1 | tee "$DEST/speed.log"
echo "written: $DEST/speed.md $DEST/speed.json $DEST/acceleration.json $DEST/speed.log"
