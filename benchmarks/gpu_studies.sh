#!/usr/bin/env bash
# Issue 25's reruns on a GPU machine, after gpu_check.sh in the same call (run from anywhere):
#   bash benchmarks/gpu_studies.sh
# 1. benchmarks/poison_effect.py: the CIFAR-10 subset, resnet18 width 8, 40 epochs, every method,
#    training seeds 0,1,2, exact SAL at 10/20/30/40 on 512 images, UD against each seed's clean run;
#    its report is rewritten after every finished run, so a time limit leaves the runs before it.
# 2. benchmarks/ud_sensitivity.py on the seed-0 runs that finished (clean, random, em-class, ops).
# Installs nothing. Writes to $OUT (default /tmp/out): poison-effect.md, poison_effect.log,
# ud-sensitivity.md, ud_sensitivity.log.
set -u
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 ULVIZ_CACHE_DIR=/tmp/ulviz-poisons
RUNS=/tmp/poison_effect

timeout "${EFFECT_TIMEOUT:-300}" "$PY" -u benchmarks/poison_effect.py --device cuda --workers "${WORKERS:-10}" \
  --seeds 0,1,2 --epochs 40 --sal-epochs 10,20,30,40 --sal-subset 512 --runs-dir "$RUNS" \
  --out "$OUT/poison-effect.md" > "$OUT/poison_effect.log" 2>&1
echo "poison_effect rc $?"

runs=()
for m in clean random em-class ops; do
  [ -f "$RUNS/${m}_seed-0.h5" ] && runs+=("$RUNS/${m}_seed-0.h5")
done
if [ "${#runs[@]}" -ge 2 ]; then
  timeout "${SENSITIVITY_TIMEOUT:-60}" "$PY" -u benchmarks/ud_sensitivity.py "${runs[@]}" --epochs 10,20,30,40 \
    --device cuda --workers 8 --out "$OUT/ud-sensitivity.md" > "$OUT/ud_sensitivity.log" 2>&1
  echo "ud_sensitivity rc $?"
fi
