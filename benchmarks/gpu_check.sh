#!/usr/bin/env bash
# Issue 26's GPU check, one command of about 6 minutes on an H200 (run from anywhere):
#   bash benchmarks/gpu_check.sh
# 1. python -m pytest tests/test_gpu.py     (GPU paths equal the CPU plain loop; peak memory flat in iters)
# 2. benchmarks/sal_speed.py --device cuda --cifar data/cifar10-subset --speed-only
#    (plain loop, per-layer, batched and fast SAL per row, with peak CUDA memory and the arithmetic floor)
# Installs nothing (the machine has no network). Each part runs under `timeout`, so what a part
# printed before a kill survives. Writes to $OUT (default /tmp/out):
#   env.txt          GPU, versions, which of ulviz's imports are missing
#   test_gpu.log     pytest output
#   sal_speed.log    the benchmark's output, one line per path as it finishes
#   sal-speed-cuda.md  the benchmark's table with command, revision and date (written at its end)
#   results.md       summary: exit codes, test tally, every finished row (also from a killed run)
set -u
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
REV="${ULVIZ_REVISION:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"

{
  date -u +"%Y-%m-%dT%H:%MZ"; echo "revision $REV"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  "$PY" - <<'PYEOF'
import importlib, sys
print("python", sys.version.split()[0])
for m in ("torch", "numpy", "pandas", "h5py", "scipy", "pytest", "streamlit", "plotly"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as e:  # report, never stop the check
        print(m, "MISSING:", type(e).__name__, e)
import torch
print("cuda available", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
try:
    import ulviz, ulviz.measure.sal
    print("ulviz imports from", ulviz.__file__)
except Exception as e:
    print("ulviz import FAILED:", type(e).__name__, e)
PYEOF
} > "$OUT/env.txt" 2>&1

timeout "${TEST_TIMEOUT:-120}" "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py > "$OUT/test_gpu.log" 2>&1
TEST_RC=$?

timeout "${BENCH_TIMEOUT:-240}" "$PY" -u benchmarks/sal_speed.py --device cuda --cifar data/cifar10-subset --speed-only \
  --results "$OUT/sal-speed-cuda.md" > "$OUT/sal_speed.log" 2>&1
BENCH_RC=$?

{
  echo "# Issue 26 GPU check ($(date -u +%Y-%m-%d), revision $REV)"
  echo
  echo "- command: \`bash benchmarks/gpu_check.sh\`; seeds: torch.manual_seed(0) per model, data unshuffled"
  echo "- tests/test_gpu.py exit code $TEST_RC (124 = killed at 120 s): $(tail -n 1 "$OUT/test_gpu.log")"
  echo "- sal_speed.py exit code $BENCH_RC (124 = killed at 240 s; the rows below finished before)"
  echo
  echo "## Environment"; echo; echo '```'; cat "$OUT/env.txt"; echo '```'
  echo
  echo "## Finished rows (seconds, GiB of peak CUDA memory, speed-ups over the plain loop)"; echo; echo '```'
  grep -E "^case=|OOM|Error" "$OUT/sal_speed.log" || echo "(none)"
  echo '```'
  echo
  echo "## Last lines of the benchmark"; echo; echo '```'; tail -n 25 "$OUT/sal_speed.log"; echo '```'
  echo
  echo "## Test failures, if any"; echo; echo '```'; grep -E "FAILED|ERROR|Error|assert" "$OUT/test_gpu.log" | head -40; echo '```'
} > "$OUT/results.md" 2>&1
echo "wrote $OUT/results.md (tests rc $TEST_RC, benchmark rc $BENCH_RC)"
