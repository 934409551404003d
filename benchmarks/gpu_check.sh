#!/usr/bin/env bash
# One prepared GPU check (run on an accelerator machine that has jax, flax, optax, onnx,
# onnxruntime, pyyaml, rich, matplotlib and orbax, with pydantic carried as wheels in .whl/):
# trains the examples on the GPU, cross-checks each export against onnxruntime on the CPU,
# and runs the registry's layer parity tests with JAX on the GPU.
set -uo pipefail
source "$(dirname "$0")/_gpu_env.sh"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee "$OUT/log.txt"
for spec in quickstart cnn lstm gru transformer; do
  /usr/bin/time -f "$spec wall %e s" python3 -m nnspec train "examples/$spec.yaml" \
    --out "$OUT/$spec" -q > "$OUT/$spec.json" 2>> "$OUT/log.txt"
  echo "$spec exit $?" >> "$OUT/log.txt"
  python3 - "$OUT/$spec" >> "$OUT/log.txt" <<'PY'
import json, sys
run = sys.argv[1]
m, p = json.load(open(f"{run}/metrics.json")), json.load(open(f"{run}/parity.json"))
print(run.split("/")[-1], "test", m.get("test"), "train samples/s",
      round(m["training"]["samples_per_second"]), "compile s",
      round(m["training"]["compile_seconds"], 2), "backend", m["training"]["backend"],
      "parity", p["passed"], p["max_abs_diff"])
PY
done
JAX_PLATFORMS=cuda timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_layers.py \
  -k "every_runtime or batch_of_one" -o addopts="" 2>&1 | tail -15 >> "$OUT/log.txt"
cat "$OUT/log.txt"
