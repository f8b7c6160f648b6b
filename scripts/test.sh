#!/usr/bin/env bash
# Sets up .venv and runs the whole test suite (engine, CLI, Slicer logic on real MRML, .ui panels).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
