#!/usr/bin/env bash
# Supply-chain checks (deny.toml): licenses, bans (duplicate versions, wildcards) and sources always;
# advisories when the RustSec database can be fetched (it lives on github.com, which some build machines
# cannot reach: then the skip is said loudly, never silently).
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "$version"; then
    echo "installing cargo-deny $version"
    cargo install cargo-deny --locked --version "$version"
fi
cargo deny check bans licenses sources
if timeout 60 git ls-remote --exit-code https://github.com/RustSec/advisory-db HEAD >/dev/null 2>&1; then
    cargo deny check advisories
else
    echo "WARNING: the RustSec advisory database (github.com) is unreachable from this machine: advisories not checked"
fi
