#!/usr/bin/env bash
# The whole test suite: unit tests, in-process tests, and the end-to-end tests that run real Envoy
# sidecars in network-namespace pods. Installs what it needs first (root required).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Build the binaries the end-to-end tests run, then test everything; any failure fails the script.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast "$@"
