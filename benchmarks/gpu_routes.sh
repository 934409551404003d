#!/usr/bin/env bash
# One prepared GPU check of the training routes (train.loop x train.pipeline): trains examples
# on the GPU each way, with throughput, test accuracy and parity per route; then the
# throughput benchmark against the hand-written loop, and tests/test_pipeline.py on the GPU.
# Usage (accelerator machine, pydantic wheels carried in .whl/): bash benchmarks/gpu_routes.sh
set -uo pipefail
source "$(dirname "$0")/_gpu_env.sh"
log="$OUT/routes.txt"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" > "$log" 2>&1
route() {  # SPEC LOOP PIPELINE
  local run="$OUT/$1-$2-$3"
  timeout 120 python3 -m nnspec train "examples/$1.yaml" --out "$run" -q \
    --set "train.loop=$2" --set "train.pipeline=$3" > /dev/null 2>> "$OUT/stderr.txt"
  echo "$1 $2 $3 exit $?" >> "$log"
  python3 - "$run" >> "$log" 2>&1 <<'PY'
import json, sys
run = sys.argv[1]
m, p = json.load(open(f"{run}/metrics.json")), json.load(open(f"{run}/parity.json"))
t = m["training"]
print(f"  {t['loop']}/{t['pipeline']} on {t['backend']}: {t['samples_per_second']:,.0f} "
      f"samples/s, compile {t['compile_seconds']:.2f} s, test {m['test']}, parity "
      f"{p['passed']} {p['max_abs_diff']:.2g}")
PY
}
for spec in quickstart cnn; do
  for r in "step device" "fused device" "fused stream"; do route $spec $r; done
done
route lstm step device
route lstm fused device
timeout 240 python3 benchmarks/train_throughput.py --models mlp,cnn --rounds 3 2>&1 \
  | tail -4 >> "$log"
JAX_PLATFORMS=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider \
  tests/test_pipeline.py -o addopts="" 2>&1 | tail -8 >> "$log"
cat "$log"
