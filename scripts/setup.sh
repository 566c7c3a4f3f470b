#!/usr/bin/env bash
# Create .venv and install medtune with everything the tests and the offline default need.
# torch is installed first, pinned to the CPU build, so no multi-GB CUDA build is pulled in on a CPU machine;
# on a GPU machine install the torch build you want first, then `pip install -e .` accepts any torch in range.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0" || \
    .venv/bin/python -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
fi
.venv/bin/python -m pip install -q -e ".[test]"
# A CJK font, so the charts of `--lang zh` reports have Chinese labels (optional: the set-up never fails on it).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! fc-list :lang=zh 2>/dev/null | grep -q .; then
  { apt-get install -y -q fonts-wqy-microhei || { apt-get update -q && apt-get install -y -q fonts-wqy-microhei; } \
    || apt-get install -y -q fonts-noto-cjk; } >/dev/null 2>&1 \
    || echo "setup: no CJK font installed; zh report charts keep English labels (install fonts-noto-cjk or fonts-wqy-microhei)"
fi
