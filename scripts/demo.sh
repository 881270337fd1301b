#!/usr/bin/env bash
# Runs the demo mesh on this machine: the controller on testbed/demo-mesh, four pods in network
# namespaces with real Envoy sidecars, and live traffic printed. Installs what it needs (root required).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --bins
exec ./target/debug/mesh-demo "$@"
