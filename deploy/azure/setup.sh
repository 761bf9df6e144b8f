#!/usr/bin/env bash
# One-time Azure setup for keyless on AKS: the operator's identity, its federated credential, and the
# least-privilege delegation on each Azure OpenAI account. Run it as someone who may create identities
# and role assignments (Owner or User Access Administrator on the accounts); re-running it is safe.
# See `deploy/azure/setup.sh --help`.
set -euo pipefail

# Built-in role definition GUIDs (../shared/azure-facts.md §F.1; the same table as src/api/roles.rs).
declare -A ROLE_GUIDS=(
  [OpenAIUser]=5e0bd9bd-7b93-4f28-af87-19fc36ad61bd
  [OpenAIContributor]=a001fd3d-188f-4b5d-821b-7da978bf7442
  [CognitiveServicesUser]=a97b65f3-24c7-4388-baec-2e87135dc908
  [FoundryUser]=53ca6127-db72-4b80-b1b0-d745d6d5456d
  # Foundry User's name before Azure renamed it ("Azure AI User"): an alias, the same role.
  [AzureAIUser]=53ca6127-db72-4b80-b1b0-d745d6d5456d
)
ALL_ROLES=OpenAIUser,OpenAIContributor,CognitiveServicesUser,FoundryUser
# Role Based Access Control Administrator: roleAssignments write/delete and */read, and nothing else.
# The ABAC condition below narrows write/delete to the roles keyless may grant.
RBAC_ADMINISTRATOR=f58310d9-a9f6-439a-9e8d-f62e7b41a168
# Microsoft Graph's well-known application id (the same in every cloud).
GRAPH_APP_ID=00000003-0000-0000-c000-000000000000
IDENTITY_READER_ROLE_NAME="keyless Managed Identity Reader"
ACCOUNT_ID_PATTERN='^/subscriptions/[0-9a-fA-F-]{36}/resourceGroups/[^/]+/providers/Microsoft\.CognitiveServices/accounts/[^/]+$'

usage() {
  cat <<'EOF'
Usage: deploy/azure/setup.sh --resource-group RG --cluster AKS_NAME [options]

Creates (or brings up to date) what keyless needs in Azure, and prints the Helm values to use:
  1. a user-assigned managed identity for the operator (--identity-name, default keyless);
  2. its federated identity credential for the chart's ServiceAccount:
     issuer   = the cluster's OIDC issuer (az aks show --query oidcIssuerProfile.issuerUrl)
     subject  = system:serviceaccount:<--namespace>:<--service-account>
     audience = api://AzureADTokenExchange
  3. for each --account: "Role Based Access Control Administrator" at the account's scope, with an ABAC
     condition that lets the identity create and delete role assignments of the allowed roles only
     (--roles) and nothing else - not Owner, not Contributor, not another account;
  4. with --identity-scope: read access to user-assigned identities and their federated credentials
     there (a custom role with exactly those two read actions), needed for serviceAccount and
     managedIdentity principals;
  5. with --graph-permission / --grant-graph: Microsoft Graph application permissions.

Required:
  --resource-group RG        resource group of the AKS cluster
  --cluster NAME             AKS cluster name (needs --enable-oidc-issuer --enable-workload-identity)

Options:
  --account RESOURCE_ID      an Azure OpenAI / AI Services account keyless manages, as
                             /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.CognitiveServices/accounts/<name>
                             (repeatable; re-run with more accounts later)
  --roles LIST               roles keyless may grant, comma-separated (default: all of
                             OpenAIUser,OpenAIContributor,CognitiveServicesUser,FoundryUser; AzureAIUser
                             is accepted as Foundry User's old name). Narrow it to what your
                             OpenAIAccounts allow, e.g. --roles OpenAIUser.
  --identity-name NAME       operator identity name (default: keyless)
  --identity-resource-group RG
                             resource group for the identity (default: --resource-group)
  --location LOCATION        identity location (default: the cluster's)
  --namespace NS             namespace of the Helm release (default: keyless-system); the printed
                             helm install line uses it
  --image REPOSITORY         the keyless image you built and pushed (e.g. myregistry.azurecr.io/keyless),
                             for the printed helm install line
  --service-account NAME     the chart's ServiceAccount (default: keyless; the release's full name)
  --credential-name NAME     federated credential name (default: keyless-<cluster>)
  --identity-scope SCOPE     a subscription (/subscriptions/<id>) holding the workload identities that
                             OpenAIAccess objects name; grants read on identities there (repeatable).
                             Pass the same subscriptions as the chart's azure.identitySubscriptions.
  --identity-reader-role ROLE
                             use this existing role at --identity-scope instead of creating the custom
                             role "keyless Managed Identity Reader" (e.g. Reader)
  --graph-permission NAME    grant one Microsoft Graph application permission (repeatable; needs a
                             Privileged Role Administrator or Global Administrator):
                               User.Read.All         resolve `user` principals (alice@contoso.com)
                               GroupMember.Read.All  resolve `groupName` principals (group display names)
                               Application.Read.All  resolve `appId` principals, and serviceAccount
                                                     principals whose client id is an app registration
                             Not needed for objectId, managedIdentity or serviceAccount (managed
                             identity) principals.
  --grant-graph              all three Graph permissions above
  --dry-run                  read what exists and print the changes as az commands, without making them
  --print-condition          print the ABAC condition for --roles and exit (needs no Azure login)
  -h, --help                 this help

Example:
  deploy/azure/setup.sh --resource-group rg-aks --cluster aks-prod \
    --account /subscriptions/0000.../resourceGroups/rg-ai/providers/Microsoft.CognitiveServices/accounts/oai-prod \
    --roles OpenAIUser --identity-scope /subscriptions/0000...
EOF
}

die() {
  echo "setup.sh: $*" >&2
  exit 1
}
log() { echo "==> $*" >&2; }

resource_group="" cluster="" identity_name=keyless identity_resource_group="" location=""
namespace=keyless-system service_account=keyless credential_name="" roles=$ALL_ROLES
identity_reader_role="" dry_run=false print_condition=false image=""
accounts=() identity_scopes=() graph_permissions=()

while [[ $# -gt 0 ]]; do
  case $1 in
    --resource-group) resource_group=${2:?--resource-group needs a value}; shift 2 ;;
    --cluster) cluster=${2:?--cluster needs a value}; shift 2 ;;
    --account) accounts+=("${2:?--account needs a value}"); shift 2 ;;
    --roles) roles=${2:?--roles needs a value}; shift 2 ;;
    --identity-name) identity_name=${2:?--identity-name needs a value}; shift 2 ;;
    --identity-resource-group) identity_resource_group=${2:?--identity-resource-group needs a value}; shift 2 ;;
    --location) location=${2:?--location needs a value}; shift 2 ;;
    --namespace) namespace=${2:?--namespace needs a value}; shift 2 ;;
    --image) image=${2:?--image needs a value}; shift 2 ;;
    --service-account) service_account=${2:?--service-account needs a value}; shift 2 ;;
    --credential-name) credential_name=${2:?--credential-name needs a value}; shift 2 ;;
    --identity-scope) identity_scopes+=("${2:?--identity-scope needs a value}"); shift 2 ;;
    --identity-reader-role) identity_reader_role=${2:?--identity-reader-role needs a value}; shift 2 ;;
    --graph-permission) graph_permissions+=("${2:?--graph-permission needs a value}"); shift 2 ;;
    --grant-graph) graph_permissions+=(User.Read.All GroupMember.Read.All Application.Read.All); shift ;;
    --dry-run) dry_run=true; shift ;;
    --print-condition) print_condition=true; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done

# The ABAC condition of ../shared/azure-facts.md §F.2 for the chosen roles: write is checked against the
# role in the request, delete against the role of the existing assignment, so both are needed. The
# format (GUIDs joined by ", ") is the one src/api/roles.rs `delegation_condition` produces.
delegation_condition() {
  local guids="" role
  local -a names
  IFS=, read -r -a names <<<"$roles"
  for role in "${names[@]}"; do
    [[ -n ${ROLE_GUIDS[$role]:-} ]] || die "unknown role '$role' (known: $ALL_ROLES, and AzureAIUser)"
    # An alias and its role are one GUID: list it once.
    [[ ", $guids, " == *", ${ROLE_GUIDS[$role]}, "* ]] || guids+="${guids:+, }${ROLE_GUIDS[$role]}"
  done
  [[ -n $guids ]] || die "--roles is empty"
  printf '%s' "((!(ActionMatches{'Microsoft.Authorization/roleAssignments/write'})) OR (@Request[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {$guids})) AND ((!(ActionMatches{'Microsoft.Authorization/roleAssignments/delete'})) OR (@Resource[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {$guids}))"
}
condition=$(delegation_condition)
if $print_condition; then
  printf '%s\n' "$condition"
  exit 0
fi

[[ -n $resource_group ]] || die "--resource-group is required (see --help)"
[[ -n $cluster ]] || die "--cluster is required (see --help)"
identity_resource_group=${identity_resource_group:-$resource_group}
credential_name=${credential_name:-keyless-$cluster}
for account in "${accounts[@]}"; do
  [[ $account =~ $ACCOUNT_ID_PATTERN ]] || die "--account '$account' is not a Microsoft.CognitiveServices/accounts resource id"
done
for scope in "${identity_scopes[@]}"; do
  [[ $scope =~ ^/subscriptions/[0-9a-fA-F-]{36}(/resourceGroups/[^/]+)?$ ]] || die "--identity-scope '$scope' is not a subscription or resource group id"
done
for permission in "${graph_permissions[@]}"; do
  case $permission in
    User.Read.All | GroupMember.Read.All | Application.Read.All) ;;
    *) die "--graph-permission '$permission': keyless uses only User.Read.All, GroupMember.Read.All and Application.Read.All" ;;
  esac
done

command -v az >/dev/null || die "the Azure CLI (az) is required"

# change DESCRIPTION az ARGS...: a mutating az call, printed instead of run under --dry-run.
change() {
  local description=$1
  shift
  if $dry_run; then
    log "would $description:"
    printf '   ' >&2
    printf ' %q' "$@" >&2
    echo >&2
  else
    log "$description"
    "$@"
  fi
}

# ----------------------------------------------------------------------------------------- cluster
az account show --query id -o tsv >/dev/null || die "not logged in: run az login"
read -r issuer workload_identity cluster_location < <(
  az aks show --resource-group "$resource_group" --name "$cluster" \
    --query '[oidcIssuerProfile.issuerUrl, securityProfile.workloadIdentity.enabled, location]' -o tsv
) || die "cannot read AKS cluster $cluster in $resource_group"
if [[ -z $issuer || $issuer == None || $workload_identity != true ]]; then
  die "cluster $cluster needs the OIDC issuer and workload identity: az aks update --resource-group $resource_group --name $cluster --enable-oidc-issuer --enable-workload-identity"
fi
location=${location:-$cluster_location}
subject="system:serviceaccount:$namespace:$service_account"
log "cluster $cluster: issuer $issuer"

# ---------------------------------------------------------------------------------------- identity
identity_fields() {
  az identity show --resource-group "$identity_resource_group" --name "$identity_name" \
    --query '[clientId, principalId, tenantId]' -o tsv 2>/dev/null
}
if ! fields=$(identity_fields); then
  change "create user-assigned identity $identity_name in $identity_resource_group ($location)" \
    az identity create --resource-group "$identity_resource_group" --name "$identity_name" --location "$location" \
    --tags purpose=keyless-operator -o none
  fields=$(identity_fields) || fields="<client-id> <principal-id> <tenant-id>"
else
  log "identity $identity_name exists"
fi
read -r client_id principal_id tenant_id <<<"$fields"

# ------------------------------------------------------------------------------ federated credential
# Azure refuses two credentials with the same issuer and subject on one identity, so look for the pair
# under any name before creating one.
existing_credential=$(az identity federated-credential list --identity-name "$identity_name" \
  --resource-group "$identity_resource_group" \
  --query "[?issuer=='$issuer' && subject=='$subject'].name | [0]" -o tsv 2>/dev/null || true)
if [[ -n $existing_credential ]]; then
  log "federated credential $existing_credential already trusts $subject from this cluster"
else
  verb=create
  if az identity federated-credential show --identity-name "$identity_name" --resource-group "$identity_resource_group" \
    --name "$credential_name" -o none 2>/dev/null; then
    verb=update # the name exists with another issuer or subject (a rebuilt cluster, a renamed release)
  fi
  change "$verb federated credential $credential_name: $subject" \
    az identity federated-credential "$verb" --identity-name "$identity_name" --resource-group "$identity_resource_group" \
    --name "$credential_name" --issuer "$issuer" --subject "$subject" --audiences api://AzureADTokenExchange -o none
fi

# ------------------------------------------------------------------------------------- delegation
# assign ROLE SCOPE [az role assignment create args...]: idempotent. A new identity can take a minute to
# replicate, so PrincipalNotFound is retried; --assignee-principal-type avoids a Graph lookup.
assign() {
  local role=$1 scope=$2 attempt
  shift 2
  for attempt in 1 2 3 4 5 6; do
    if change "assign $role at $scope" az role assignment create --assignee-object-id "$principal_id" \
      --assignee-principal-type ServicePrincipal --role "$role" --scope "$scope" "$@" -o none; then
      return 0
    fi
    log "attempt $attempt failed (a new identity may still be replicating); retrying in 20 s"
    sleep 20
  done
  die "could not assign $role at $scope"
}

for account in "${accounts[@]}"; do
  az resource show --ids "$account" --query id -o tsv >/dev/null || die "account $account not found (or not readable)"
  mapfile -t current < <(az role assignment list --scope "$account" --role "$RBAC_ADMINISTRATOR" \
    --query "[?principalId=='$principal_id'].[id, condition]" -o tsv)
  keep=false
  for line in "${current[@]}"; do
    id=${line%%$'\t'*}
    existing_condition=${line#*$'\t'}
    if [[ $existing_condition == "$condition" ]]; then
      keep=true
      log "delegation on $account is up to date"
    else
      # An unconditioned or differently conditioned RBAC Administrator grant is broader than intended:
      # replace it (keyless cannot write role assignments on this account in between).
      change "remove the delegation on $account whose condition differs" az role assignment delete --ids "$id"
    fi
  done
  if ! $keep; then
    assign "$RBAC_ADMINISTRATOR" "$account" --condition "$condition" --condition-version 2.0 \
      --description "keyless operator ($identity_name): may create and delete only role assignments of: $roles"
  fi
done

# ------------------------------------------------------------------------------ identity read access
if [[ ${#identity_scopes[@]} -gt 0 ]]; then
  reader_role=$identity_reader_role
  if [[ -z $reader_role ]]; then
    reader_role=$IDENTITY_READER_ROLE_NAME
    # One custom role in the tenant, assignable at every --identity-scope given so far.
    mapfile -t existing_scopes < <(az role definition list --custom-role-only true --name "$IDENTITY_READER_ROLE_NAME" \
      --scope "${identity_scopes[0]}" --query '[0].assignableScopes[]' -o tsv 2>/dev/null || true)
    role_id=$(az role definition list --custom-role-only true --name "$IDENTITY_READER_ROLE_NAME" \
      --scope "${identity_scopes[0]}" --query '[0].name' -o tsv 2>/dev/null || true)
    mapfile -t scopes < <(printf '%s\n' "${existing_scopes[@]}" "${identity_scopes[@]}" | sort -fu)
    scopes_json=$(printf '"%s",' "${scopes[@]}")
    definition=$(printf '{%s"Name": "%s", "IsCustom": true, "Description": "Read user-assigned managed identities and their federated credentials (keyless resolves serviceAccount and managedIdentity principals and checks federation).", "Actions": ["Microsoft.ManagedIdentity/userAssignedIdentities/read", "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/read"], "NotActions": [], "DataActions": [], "NotDataActions": [], "AssignableScopes": [%s]}' \
      "${role_id:+\"Id\": \"$role_id\", }" "$IDENTITY_READER_ROLE_NAME" "${scopes_json%,}")
    if [[ -z $role_id ]]; then
      change "create custom role $IDENTITY_READER_ROLE_NAME" az role definition create --role-definition "$definition" -o none
    elif [[ ${#existing_scopes[@]} -ne ${#scopes[@]} ]]; then
      change "make $IDENTITY_READER_ROLE_NAME assignable at ${scopes[*]}" az role definition update --role-definition "$definition" -o none
    fi
  fi
  for scope in "${identity_scopes[@]}"; do
    if [[ -n $(az role assignment list --scope "$scope" --role "$reader_role" \
      --query "[?principalId=='$principal_id'].id | [0]" -o tsv 2>/dev/null || true) ]]; then
      log "$reader_role at $scope is in place"
    else
      assign "$reader_role" "$scope"
    fi
  done
fi

# -------------------------------------------------------------------------------------------- Graph
if [[ ${#graph_permissions[@]} -gt 0 ]]; then
  graph=$(az cloud show --query endpoints.microsoftGraphResourceId -o tsv)
  graph=${graph%/}
  graph_sp=$(az ad sp show --id "$GRAPH_APP_ID" --query id -o tsv)
  for permission in $(printf '%s\n' "${graph_permissions[@]}" | sort -u); do
    app_role=$(az ad sp show --id "$GRAPH_APP_ID" --query "appRoles[?value=='$permission'].id | [0]" -o tsv)
    [[ -n $app_role ]] || die "Microsoft Graph has no application permission $permission in this cloud"
    granted=$(az rest --method GET --url "$graph/v1.0/servicePrincipals/$principal_id/appRoleAssignments" \
      --query "value[?appRoleId=='$app_role'].id | [0]" -o tsv 2>/dev/null || true)
    if [[ -n $granted ]]; then
      log "Graph $permission is granted"
    else
      change "grant Graph application permission $permission" az rest --method POST \
        --url "$graph/v1.0/servicePrincipals/$principal_id/appRoleAssignments" --headers Content-Type=application/json \
        --body "{\"principalId\": \"$principal_id\", \"resourceId\": \"$graph_sp\", \"appRoleId\": \"$app_role\"}" -o none
    fi
  done
fi

# ------------------------------------------------------------------------------------------ summary
# The exact `helm install` for what was set up here: the same namespace and ServiceAccount as the
# federated credential's subject, so the operator's token exchange cannot fail on a mismatch.
helm_install_line() {
  local line="helm install keyless charts/keyless --namespace $namespace --create-namespace"
  line+=" --set azure.clientId=$client_id --set azure.tenantId=$tenant_id --set controller.instanceId=$cluster"
  if [[ $service_account != keyless ]]; then
    line+=" --set serviceAccount.name=$service_account"
  fi
  line+=" --set image.repository=${image:-<your registry>/keyless}"
  # A first install observes: keyless plans and reports what it would change on the live tenant and
  # writes nothing until controller.observe is set back to false.
  line+=" --set controller.observe=true"
  printf '%s' "$line"
}

cat <<EOF

keyless's Azure side is ready$($dry_run && echo " (dry run: nothing was changed)").
  identity:             $identity_name (client id $client_id, principal id $principal_id)
  federated credential: $subject from $issuer
  delegated roles:      $roles on ${#accounts[@]} account(s)

Install the chart with (the namespace and ServiceAccount the federated credential trusts):
  $(helm_install_line)
controller.instanceId marks every grant keyless makes: keep it forever, one per cluster. Upgrading an
install that ran without it? It ran as <namespace>-<release>: set controller.instanceId=$namespace-keyless
instead of $cluster, or its existing grants are orphaned.
It starts under management Observe: each OpenAIAccount's status.plannedWrites lists what keyless
would change, and nothing is written. Once that is what you want:
  helm upgrade keyless charts/keyless --namespace $namespace --reuse-values --set controller.observe=false
EOF
