#!/usr/bin/env bash
# Sets up .venv and runs the main job: synthesize a CT from the embedded phantom MR with the embedded demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mrtoct demo --out "${1:-demo_output}"
