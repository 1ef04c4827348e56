#!/usr/bin/env bash
# Creates tools/reference/.venv with torch + torchvision + Pillow, used only to (re)generate
# the committed fixtures and to benchmark PyTorch. `cargo test` never needs it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python3 -m venv "$here/.venv"
"$here/.venv/bin/pip" install --quiet --upgrade pip
"$here/.venv/bin/pip" install --quiet torch torchvision pillow numpy safetensors
"$here/.venv/bin/python" -c 'import torch, torchvision, PIL; print("torch", torch.__version__, "torchvision", torchvision.__version__, "PIL", PIL.__version__)'
