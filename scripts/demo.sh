#!/usr/bin/env bash
# Set everything up, then run a real search: regularized evolution over the NAS-Bench-201
# cell space on a local Ray, trials stored in SQLite, and ask for the best architectures
# under 18 ms on a Pixel 3 (HW-NAS-Bench measurements shipped with the package).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
export NAS_DB_URL=${NAS_DB_URL:-sqlite:///demo.db}
mkdir -p demo
db=$(python -c 'import os; from nas.storage import mask_url; print(mask_url(os.environ["NAS_DB_URL"]))')
echo "== nas submit examples/nb201-evolution.yaml --wait   (database: $db)"  # password masked
job=$(nas submit examples/nb201-evolution.yaml --wait | awk '/^job /{print $2}')
echo "== nas status $job"
nas status "$job"
echo "== nas best $job --device pixel3 --max-latency-ms 18 --top 5"
nas best "$job" --device pixel3 --max-latency-ms 18 --top 5
echo "== nas pareto $job --device edgegpu --plot demo/pareto.png"
nas pareto "$job" --device edgegpu --plot demo/pareto.png
echo "== nas export $job --best --format onnx -o demo/best.onnx"
nas export "$job" --best --format onnx -o demo/best.onnx
