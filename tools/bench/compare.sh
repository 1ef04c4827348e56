#!/usr/bin/env bash
# One command for the side-by-side benchmark (ours vs PyTorch NCHW / channels_last vs ONNX Runtime):
#   tools/bench/compare.sh [--setup] [compare.py args...]
# --setup (or a missing venv) creates tools/reference/.venv and installs onnxruntime/onnx/onnxscript;
# the release binary is (re)built first, so the numbers are never those of a stale build. See compare.py --help.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/tools/reference/.venv"
setup=0
if [[ "${1:-}" == "--setup" ]]; then setup=1; shift; fi
if [[ $setup == 1 || ! -x "$venv/bin/python" ]]; then
  "$root/tools/reference/setup.sh"
  "$venv/bin/pip" install --quiet onnxruntime onnx onnxscript
  "$venv/bin/python" -c 'import onnxruntime, onnx; print("onnxruntime", onnxruntime.__version__, "onnx", onnx.__version__)'
fi
(cd "$root" && cargo build --release -p resnet-cli)
exec "$venv/bin/python" "$root/tools/bench/compare.py" "$@"
