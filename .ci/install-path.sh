#!/usr/bin/env bash
# The README's "Install on AKS", step by step and with no edit, on a real kube-apiserver
# (../shared/k8s) with the Azure emulator standing in for Azure:
#   1. deploy/azure/setup.sh as the README writes it (against a stand-in az), which prints the
#      `helm install` line; its federated subject must be the one the emulated Azure trusts;
#   2. that printed line, run as printed (helm installs the CRDs and the chart; the API server
#      validates every object for real);
#   3. `kubectl apply -f examples/manifests/`;
#   then `keyless run` locally (there is no kubelet: the Deployment never runs) with the Deployment's
#   own arguments, as the chart's ServiceAccount (a TokenRequest token, so the chart's RBAC is what
#   it gets), exchanging a TokenRequest token of that ServiceAccount with the emulated Entra, and
#   waits for the examples' OpenAIAccess objects to be Ready.
# Prints one PASS/FAIL line per step; exits non-zero when any fails. Without ../shared it skips with a
# notice, unless KEYLESS_REQUIRE_SHARED=1 (CI). Called by .ci/run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SHARED=${KEYLESS_SHARED_DIR:-../shared}
if [[ ! -f $SHARED/k8s/up.sh ]]; then
  if [[ ${KEYLESS_REQUIRE_SHARED:-} == 1 ]]; then
    echo "FAIL $SHARED/k8s is missing (KEYLESS_REQUIRE_SHARED=1)"
    exit 1
  fi
  echo "notice: $SHARED/k8s is missing: skipping the install path check"
  exit 0
fi
# How long the examples may take to be Ready, and keyless's resync in this check.
READY_TIMEOUT=${READY_TIMEOUT:-180s}

WORK=$(mktemp -d)
pids=()
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ ! -d $WORK/kas ]] || bash "$SHARED/k8s/down.sh" "$WORK/kas" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

passed=0
failed=0
pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() {
  echo "FAIL $1"
  failed=$((failed + 1))
  [[ ! -s $WORK/out ]] || sed 's/^/    /' "$WORK/out"
}
summary() {
  echo
  echo "install path: $passed passed, $failed failed"
}
# step NAME COMMAND...: PASS when the command succeeds; otherwise FAIL with its output, and stop
# (every later step builds on this one).
step() {
  local name=$1
  shift
  if "$@" >"$WORK/out" 2>&1; then
    pass "$name"
  else
    fail "$name"
    summary
    exit 1
  fi
}

# ------------------------------------------------------------------------------------------ tools
# helm and kubectl from the one installer CI uses (.ci/install-tools.sh: pinned, sha256-checked).
tools=$(bash .ci/install-tools.sh) || { echo "FAIL .ci/install-tools.sh"; exit 1; }
HELM=$(sed -n 's/^KEYLESS_HELM=//p' <<<"$tools")
KUBECTL=$(sed -n 's/^KEYLESS_KUBECTL=//p' <<<"$tools")
export HELM_CACHE_HOME=$WORK/helm/cache HELM_CONFIG_HOME=$WORK/helm/config HELM_DATA_HOME=$WORK/helm/data

step "cargo build (the keyless binary)" cargo build --locked --quiet
KEYLESS=$PWD/target/debug/keyless

# ---------------------------------------------------------------------------------- emulated Azure
"$KEYLESS" emulator --seed examples/emulator/seed.yaml --state-dir "$WORK/emulator" >"$WORK/emulator.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q 'listening on' "$WORK/emulator.out" && break; sleep 0.1; done
endpoint=$(sed -n 's/^keyless Azure emulator listening on //p' "$WORK/emulator.out")
tenant=$(sed -n 's/^ *export AZURE_TENANT_ID=//p' "$WORK/emulator.out")
ca=$(sed -n 's/^ *CA file: *//p' "$WORK/emulator.out")
[[ -n $endpoint && -n $tenant && -n $ca ]] || { cat "$WORK/emulator.out"; echo "FAIL the emulator did not start"; exit 1; }
# The seed's operator identity and the one federated credential Azure holds for it.
read -r seed_client_id seed_issuer seed_subject < <(python3 - <<'PY'
import yaml
seed = yaml.safe_load(open("examples/emulator/seed.yaml"))
name = seed["operator"]["identity"]
identity = next(i for i in seed["identities"] if i["name"] == name)
credential = identity["federatedCredentials"][0]
print(identity["clientId"], credential["issuer"], credential["subject"])
PY
)

# ------------------------------------------------------------------------- a real API server
step "a real kube-apiserver (../shared/k8s) with the cluster's issuer $seed_issuer" \
  env SA_ISSUER="$seed_issuer" bash "$SHARED/k8s/up.sh" "$WORK/kas"
export KUBECONFIG=$WORK/kas/kubeconfig

# ------------------------------------------------------------------- README step 1: setup.sh
# The README's command, with its placeholders filled in; az is the stand-in of .ci/chart/fake-az.
mkdir -p "$WORK/az"
step "README step 1: deploy/azure/setup.sh as the README runs it" \
  env PATH="$PWD/.ci/chart/fake-az:$PATH" FAKE_STATE="$WORK/az" bash deploy/azure/setup.sh \
  --resource-group rg-aks --cluster aks-prod \
  --account /subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-ai-prod/providers/Microsoft.CognitiveServices/accounts/oai-prod \
  --roles OpenAIUser --image example.azurecr.io/keyless
cp "$WORK/out" "$WORK/setup.out"
helm_line=$(grep -E '^ *helm install ' "$WORK/setup.out" | sed 's/^ *//')
setup_subject=$(sed -n 's/^ *federated credential: \(system:serviceaccount:[^ ]*\) from .*/\1/p' "$WORK/setup.out")
subjects_agree() {
  echo "setup.sh federates $setup_subject; the emulated Azure trusts $seed_subject"
  [[ -n $setup_subject && $setup_subject == "$seed_subject" ]]
}
step "setup.sh's federated subject is the one Azure (the emulator's seed) trusts" subjects_agree
release_namespace=$(sed -n 's/.*--namespace \([^ ]*\).*/\1/p' <<<"$helm_line")
service_account=${setup_subject##*:}
printed_line_matches() {
  echo "printed: $helm_line"
  [[ $helm_line == "helm install keyless charts/keyless "* && "system:serviceaccount:$release_namespace:keyless" == "$setup_subject" ]]
}
step "setup.sh prints a helm install line into the namespace it federated ($release_namespace)" printed_line_matches

# ---------------------------------------------------------------- README step 2: helm install
# The printed line, word for word (only `helm` is this repository's pinned binary).
read -r -a helm_words <<<"$helm_line"
step "README step 2: the printed helm install line, run as printed" "$HELM" "${helm_words[@]:1}"
step "the ServiceAccount the federated credential names exists" \
  "$KUBECTL" -n "$release_namespace" get serviceaccount "$service_account"

# ---------------------------------------------------------------------- README step 3: examples
step "kubectl apply -f examples/manifests/ (validated by the API server)" \
  "$KUBECTL" apply -f examples/manifests/
step "the README's CRD upgrade, keyless crd | kubectl apply -f -, is accepted" \
  bash -c "'$KEYLESS' crd | '$KUBECTL' apply -f -"

# ----------------------------------------------------------- keyless run as the chart deploys it
# The Deployment's own arguments, minus the pod's listen address (no port is needed here) and the
# propagation grace (5 minutes by default; this check does not wait for Azure's replication).
deployment_args() {
  mapfile -t args < <("$KUBECTL" -n "$release_namespace" get deployment keyless \
    -o go-template='{{range (index .spec.template.spec.containers 0).args}}{{.}}{{"\n"}}{{end}}' |
    grep -v -e '^--http-addr=' -e '^--propagation-grace=')
}
deployment_args
# Kubernetes as the chart's ServiceAccount: a TokenRequest token, so only the chart's RBAC applies.
token=$("$KUBECTL" -n "$release_namespace" create token "$service_account" --duration=1h)
server=$("$KUBECTL" config view --raw -o jsonpath='{.clusters[0].cluster.server}')
"$KUBECTL" config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$WORK/kas-ca.crt"
cat >"$WORK/sa-kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: kas, cluster: {server: "$server", certificate-authority: "$WORK/kas-ca.crt"}}]
users: [{name: sa, user: {token: "$token"}}]
contexts: [{name: sa, context: {cluster: kas, user: sa, namespace: $release_namespace}}]
current-context: sa
EOF
# Azure as workload identity does it in the pod: the ServiceAccount's token for Entra's audience
# (the projected token file), exchanged with the emulated Entra for the client id setup.sh printed.
"$KUBECTL" -n "$release_namespace" create token "$service_account" --audience api://AzureADTokenExchange \
  --duration=1h >"$WORK/azure-identity-token"
client_id=$("$KUBECTL" -n "$release_namespace" get serviceaccount "$service_account" \
  -o jsonpath='{.metadata.annotations.azure\.workload\.identity/client-id}')
start_keyless() {
  echo "keyless run ${args[*]:1} (as system:serviceaccount:$release_namespace:$service_account, Azure client id $client_id)"
  # The fake az cannot create the seed's identity: its client id stands in for the one setup.sh created.
  KUBECONFIG=$WORK/sa-kubeconfig POD_NAMESPACE=$release_namespace "$KEYLESS" "${args[@]}" \
    --arm-endpoint "$endpoint" --graph-endpoint "$endpoint" --authority-host "$endpoint" --ca-file "$ca" \
    --tenant-id "$tenant" --client-id "$seed_client_id" --federated-token-file "$WORK/azure-identity-token" \
    --propagation-grace=0s >>"$WORK/keyless.log" 2>&1 &
  pids+=($!)
  keyless_pid=$!
  sleep 2
  kill -0 "$keyless_pid" 2>/dev/null || { cp "$WORK/keyless.log" "$WORK/out"; fail "keyless run starts as the chart's ServiceAccount"; summary; exit 1; }
}
start_keyless

# README step 2 installs under Observe: every example account lists the writes keyless would make,
# and the emulated ARM has seen none.
observing() {
  local account planned
  for account in $("$KUBECTL" get openaiaccounts -o name); do
    "$KUBECTL" wait "$account" --for=jsonpath='{.status.conditions[?(@.type=="Managed")].reason}'=Observe \
      --timeout="$READY_TIMEOUT" || return 1
  done
  planned=$("$KUBECTL" get openaiaccount oai-prod -o jsonpath='{range .status.plannedWrites[*]}{.action} {.principalId}{"\n"}{end}')
  echo "oai-prod plans: $planned"
  [[ $(grep -c '^Create ' <<<"$planned") -ge 1 ]] || return 1
  # The emulator's request counts (admin API): no role assignment PUT or DELETE, answered or not.
  curl -fsS --cacert "$ca" "$endpoint/_emulator/requests" | python3 -c '
import json, sys
writes = [r for r in json.load(sys.stdin) if r["operation"] in ("RoleAssignments_Create", "RoleAssignments_Delete")]
print("role assignment write requests:", writes)
sys.exit(1 if writes else 0)'
}
step "README step 2 observes: the accounts list their planned writes and ARM gets none" observing

# README step 4: switch to Manage.
step "README step 4: helm upgrade --reuse-values --set controller.observe=false" \
  "$HELM" upgrade keyless charts/keyless --namespace "$release_namespace" --reuse-values --set controller.observe=false
kill "$keyless_pid"
wait "$keyless_pid" 2>/dev/null || true
deployment_args
no_observe_flag() { ! printf '%s\n' "${args[@]}" | grep -qx -- --observe; }
step "the Deployment no longer passes --observe" no_observe_flag
start_keyless

accesses_ready() {
  local ns name
  for ns_name in team-chat/chat team-chat/batch-scorer-trial ml-platform/platform-team; do
    ns=${ns_name%/*} name=${ns_name#*/}
    "$KUBECTL" -n "$ns" wait "openaiaccess/$name" --for=condition=Ready --timeout="$READY_TIMEOUT" || return 1
    "$KUBECTL" -n "$ns" get "openaiaccess/$name" -o jsonpath='{.status.summary} {.status.roleDisplayName}{"\n"}'
  done
}
if accesses_ready >"$WORK/out" 2>&1; then
  pass "every example OpenAIAccess is Ready ($(tr '\n' ';' <"$WORK/out"))"
else
  kill -0 "$keyless_pid" 2>/dev/null || echo "keyless run exited" >>"$WORK/out"
  tail -n 40 "$WORK/keyless.log" >>"$WORK/out"
  fail "every example OpenAIAccess is Ready"
fi
display_names_shown() {
  "$KUBECTL" -n team-chat get openaiaccess/chat -o jsonpath='{.status.roleDisplayName}' | tee /dev/stderr |
    grep -qx 'Cognitive Services OpenAI User'
}
step "status shows Azure's display name of the role" display_names_shown
summary
[[ $failed -eq 0 ]]
