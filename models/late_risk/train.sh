#!/usr/bin/env bash
# Rebuilds the late-risk model from the real order table, in one command:
#   models/late_risk/train.sh
# Makes a Python venv with the pinned requirements, builds edge-host (its features module
# computes the training features), simulates the event streams, trains, exports to ONNX and
# writes the parity vectors and metrics. Deterministic for a given seed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
data=${DATA_DIR:-$root/../shared/data/food-delivery}
venv=${VENV:-$here/.venv}
work="$here/work"

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
cargo build --release --quiet -p fleet-host --manifest-path "$root/Cargo.toml"
mkdir -p "$work"
"$venv/bin/python" "$here/simulate.py" \
  --orders "$data/deliverytime.csv" --test-split "$data/kaggle_test_raw.csv" \
  --events "$work/events.jsonl" --tasks "$work/tasks.csv"
"$root/target/release/edge-host" features --input "$work/events.jsonl" > "$work/features.csv"
"$venv/bin/python" "$here/train.py" --features "$work/features.csv" --tasks "$work/tasks.csv"
echo "wrote $here/model.onnx, metrics.json, testdata/parity.csv; rebuild edge-host to embed the new model"
