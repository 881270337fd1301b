#!/usr/bin/env bash
# Runs the load-test series behind SCALE.md's curves and draws them: sidecars 1k/5k/10k/19k (10 Services),
# and Services 10/100/1,000 (1,000 sidecars). Reports go to target/scale/*.json, the chart to
# target/scale/scale.svg (copy it to docs/ to publish). About ten minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p actors -p loadtest
# Each sidecar needs a descriptor in the load generator and one in the controller; where the hard limit is
# 20,000 (these machines), the largest run is 19,000 sidecars. Raise it where allowed.
ulimit -n 65536 2>/dev/null || true
out=target/scale
mkdir -p "$out"
lt=./target/release/loadtest
args=(--rate 5000 --changes 10 --change-rate 2 --timeout-s 300)
charts=()
for n in 1000 5000 10000 19000; do
    "$lt" --sidecars "$n" "${args[@]}" --json "$out/sidecars-$n.json" --work-dir "$out/work"
    charts+=("sidecars=$out/sidecars-$n.json")
done
for s in 10 100 1000; do
    "$lt" --sidecars 1000 --services "$s" "${args[@]}" --json "$out/services-$s.json" --work-dir "$out/work"
    charts+=("services=$out/services-$s.json")
done
./target/release/loadtest-chart --out "$out/scale.svg" "${charts[@]}"
