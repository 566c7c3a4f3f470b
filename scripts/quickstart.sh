#!/usr/bin/env bash
# Set up (idempotent) and run the main job: the v1/v2/v3 ablation on the offline default, ending in the report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/medtune ablate experiments/quickstart.yaml "$@"
