//! `keyless doctor`: checks a set-up before the first run, each check one pass/fail line with the
//! fix. The checks, in order: the cloud's endpoints agree; a token can be had with the configured
//! credential (and whose it is, from its `oid`); each account in the files exists and takes Entra
//! tokens (custom subdomain); keyless may write and delete role assignments at each account scope
//! (ARM's permissions API, ABAC condition included); Graph answers when the files name principals
//! only Graph can resolve.

use super::args::DoctorArgs;
use super::{FilesError, emulated, load};
use crate::api::{PrincipalRef, RoleName};
use crate::azure::credential::{self, EnvLookup};
use crate::azure::http::{ApiClient, Call, Service};
use crate::azure::{AzureClients, AzureCloud, AzureConfig, AzureErrorKind, CloudEndpoints};
use crate::plan::AccountScope;
use azure_core::credentials::TokenCredential;
use base64::Engine as _;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The ARM permissions API's version (`Microsoft.Authorization/permissions`).
pub const PERMISSIONS_API_VERSION: &str = "2022-04-01";
const WRITE: &str = "Microsoft.Authorization/roleAssignments/write";
const DELETE: &str = "Microsoft.Authorization/roleAssignments/delete";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    const fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's result.
#[derive(Clone, Debug)]
pub struct Check {
    pub status: Status,
    pub what: String,
    /// What to do about a failure or warning.
    pub fix: Option<String>,
}

fn pass(what: impl Into<String>) -> Check {
    Check {
        status: Status::Pass,
        what: what.into(),
        fix: None,
    }
}

fn fail(what: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        status: Status::Fail,
        what: what.into(),
        fix: Some(fix.into()),
    }
}

fn warn(what: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        status: Status::Warn,
        what: what.into(),
        fix: Some(fix.into()),
    }
}

/// Every check's result, in order.
#[derive(Debug, Default)]
pub struct Diagnosis {
    pub checks: Vec<Check>,
}

impl Diagnosis {
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    pub fn print(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        for check in &self.checks {
            writeln!(out, "{}  {}", check.status.as_str(), check.what)?;
            if let Some(fix) = &check.fix {
                writeln!(out, "      fix: {fix}")?;
            }
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count();
        if failed == 0 {
            writeln!(out, "All {} checks passed.", self.checks.len())
        } else {
            writeln!(out, "{failed} of {} checks failed.", self.checks.len())
        }
    }
}

/// Runs `keyless doctor` and prints the result.
pub async fn run(args: &DoctorArgs) -> Result<Diagnosis, FilesError> {
    let mut diagnosis = Diagnosis::default();
    let manifests = if args.paths.is_empty() {
        None
    } else {
        match load::load(&args.paths, args.recursive) {
            Ok(manifests) => {
                diagnosis.checks.push(pass(format!(
                    "manifests: {} OpenAIAccount(s), {} OpenAIAccess(es), valid against the CRDs",
                    manifests.accounts.len(),
                    manifests.accesses.len()
                )));
                Some(manifests)
            }
            Err(error) => {
                diagnosis.checks.push(fail(
                    format!("manifests: {}", error_text(&error)),
                    "fix the fields named above (`keyless crd` prints the schemas)",
                ));
                None
            }
        }
    };
    let embedded = emulated::start(&args.emulator, &args.azure).await?;
    let (config, env): (AzureConfig, EnvLookup<'_>) = match &embedded {
        Some(embedded) => (embedded.config.clone(), &emulated::no_env),
        None => (args.azure.to_config(), &credential::process_env),
    };
    check(&mut diagnosis, &config, env, manifests.as_ref()).await;
    let mut stdout = std::io::stdout().lock();
    diagnosis.print(&mut stdout).map_err(FilesError::Output)?;
    drop(stdout);
    if let Some(embedded) = embedded {
        embedded.shutdown().await;
    }
    Ok(diagnosis)
}

fn error_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The checks against a configuration (the tests call this with the emulator's).
pub async fn check(
    diagnosis: &mut Diagnosis,
    config: &AzureConfig,
    env: EnvLookup<'_>,
    manifests: Option<&load::Manifests>,
) {
    let checks = &mut diagnosis.checks;
    let endpoints = match crate::azure::resolve_endpoints(config, env) {
        Ok(endpoints) => endpoints,
        Err(error) => {
            checks.push(fail(
                format!("endpoints: {}", error_text(&error)),
                "pass https URLs to --arm-endpoint, --graph-endpoint and --authority-host",
            ));
            return;
        }
    };
    checks.push(endpoints_agree(&endpoints));

    let http = match crate::azure::http_client(config) {
        Ok(http) => http,
        Err(error) => {
            checks.push(fail(
                format!("HTTP client: {}", error_text(&error)),
                "check --ca-file",
            ));
            return;
        }
    };
    let chosen =
        match credential::build_credential(&config.credential, &endpoints, http.clone(), env) {
            Ok(chosen) => chosen,
            Err(error) => {
                checks.push(fail(
                    format!("credential: {}", error_text(&error)),
                    "choose one with --credential (workload-identity, managed-identity, azure-cli)",
                ));
                return;
            }
        };
    let kind = chosen.decision.kind.as_str();
    let claims = match token_claims(chosen.credential.as_ref(), &endpoints.arm_scope, config).await
    {
        Ok(claims) => claims,
        Err(error) => {
            checks.push(fail(
                format!("token: {kind} ({}) could not get an ARM token: {error}", chosen.decision.reason),
                match chosen.decision.kind {
                    credential::CredentialKind::WorkloadIdentity => "check AZURE_CLIENT_ID / --client-id (the identity's client id), AZURE_TENANT_ID, the token file, and that the identity has a federated credential for this issuer and subject",
                    credential::CredentialKind::ManagedIdentity => "assign the managed identity to this machine, or pass its client id with --client-id",
                    credential::CredentialKind::AzureCli => "run `az login` (and `az account set`), or pick another --credential",
                },
            ));
            return;
        }
    };
    checks.push(pass(format!(
        "token: {kind} gets ARM tokens as object id {} (tenant {}){}",
        claims.oid.as_deref().unwrap_or("?"),
        claims.tid.as_deref().unwrap_or("?"),
        claims
            .app_id
            .as_deref()
            .map(|a| format!(", app {a}"))
            .unwrap_or_default()
    )));
    if let (Some(wanted), Some(tid)) = (
        config
            .credential
            .tenant_id
            .clone()
            .or_else(|| env("AZURE_TENANT_ID")),
        claims.tid.as_deref(),
    ) && !wanted.eq_ignore_ascii_case(tid)
    {
        checks.push(fail(
            format!("token: issued by tenant {tid}, but the tenant configured is {wanted}"),
            "set --tenant-id / AZURE_TENANT_ID to the tenant the accounts live in",
        ));
    }
    let audience = endpoints.arm_scope.trim_end_matches("/.default");
    if let Some(aud) = claims.aud.as_deref()
        && aud.trim_end_matches('/') != audience.trim_end_matches('/')
    {
        checks.push(fail(
            format!("token: audience {aud}, but ARM expects {audience}"),
            "use the --cloud the ARM endpoint belongs to",
        ));
    }

    let Some(manifests) = manifests else {
        checks.push(warn(
            "accounts: none checked (no -f)",
            "pass the manifests (-f DIR) to check each account and keyless's permissions on it",
        ));
        return;
    };
    let clients = match AzureClients::from_config_with_env(config, env) {
        Ok(clients) => clients,
        Err(error) => {
            checks.push(fail(
                format!("clients: {}", error_text(&error)),
                "see above",
            ));
            return;
        }
    };
    let arm = ApiClient::new(
        Service::Arm,
        http,
        chosen.credential.clone(),
        endpoints.arm_scope.clone(),
        config.retry,
        config.timeout,
    );
    // The roles the files ask for: the ABAC condition must allow each.
    let roles: BTreeSet<RoleName> = manifests
        .accesses
        .iter()
        .map(|a| a.object.spec.role)
        .collect();
    for account in manifests.accounts.values() {
        let Ok(scope) = AccountScope::parse(&account.object.spec.resource_id) else {
            continue;
        };
        match clients.accounts.get_account(&scope).await {
            Ok(None) => {
                checks.push(fail(
                    format!(
                        "account {}: {scope} does not exist (or keyless cannot see it)",
                        account.name
                    ),
                    "correct spec.resourceId, or give keyless's identity Reader on the account",
                ));
                continue;
            }
            Err(error) => {
                checks.push(fail(
                    format!(
                        "account {}: cannot read {scope}: {}",
                        account.name,
                        error_text(&error)
                    ),
                    "give keyless's identity at least Reader on the account",
                ));
                // The permissions check below still says what is missing.
            }
            Ok(Some(info)) => {
                match &info.custom_sub_domain_name {
                    Some(subdomain) => checks.push(pass(format!(
                        "account {}: {} account, endpoint {} (custom subdomain {subdomain}: Entra tokens work)",
                        account.name,
                        info.kind,
                        info.endpoint.as_deref().unwrap_or("?")
                    ))),
                    None => checks.push(fail(
                        format!(
                            "account {}: no custom subdomain, so its endpoint does not accept Entra tokens and role assignments would not let anyone in",
                            account.name
                        ),
                        format!(
                            "az cognitiveservices account update -g {} -n {} --custom-domain {} (irreversible)",
                            scope.resource_group(),
                            scope.account_name(),
                            scope.account_name()
                        ),
                    )),
                }
                if !info.local_auth_disabled {
                    checks.push(warn(
                        format!("account {}: still accepts API keys", account.name),
                        format!(
                            "once every client uses Entra ID: az resource update --ids {scope} --set properties.disableLocalAuth=true"
                        ),
                    ));
                }
            }
        }
        checks.push(permissions(&arm, &endpoints, &scope, &account.name, &roles).await);
    }
    if let Some(check) = graph(&clients, manifests).await {
        checks.push(check);
    }
}

fn endpoints_agree(endpoints: &CloudEndpoints) -> Check {
    let host = |url: &url::Url| url.host_str().unwrap_or("").to_ascii_lowercase();
    let builtin = |value: &str| url::Url::parse(value).map(|u| host(&u)).unwrap_or_default();
    let mut overridden = Vec::new();
    let mut foreign = Vec::new();
    let ours = endpoints.cloud;
    for (what, url, of) in [
        (
            "ARM",
            &endpoints.arm,
            AzureCloud::arm_endpoint as fn(AzureCloud) -> &'static str,
        ),
        ("Graph", &endpoints.graph, AzureCloud::graph_endpoint),
        (
            "authority",
            &endpoints.authority_host,
            AzureCloud::authority_host,
        ),
    ] {
        if host(url) == builtin(of(ours)) {
            continue;
        }
        overridden.push(format!("{what} {url}"));
        for other in [
            AzureCloud::AzurePublicCloud,
            AzureCloud::AzureUSGovernment,
            AzureCloud::AzureChinaCloud,
        ] {
            if other != ours && host(url) == builtin(of(other)) {
                foreign.push(format!("{what} {url} belongs to {other}"));
            }
        }
    }
    if !foreign.is_empty() {
        return fail(
            format!("endpoints: --cloud is {ours}, but {}", foreign.join("; ")),
            "pass the --cloud those endpoints belong to, or drop the overrides",
        );
    }
    if overridden.is_empty() {
        pass(format!(
            "endpoints: {ours} (ARM {}, Graph {}, authority {})",
            endpoints.arm, endpoints.graph, endpoints.authority_host
        ))
    } else {
        pass(format!(
            "endpoints: {ours} with overrides ({}); token audiences stay {ours}'s",
            overridden.join(", ")
        ))
    }
}

#[derive(Debug, Default, Deserialize)]
struct Claims {
    oid: Option<String>,
    tid: Option<String>,
    aud: Option<String>,
    #[serde(alias = "azp", rename = "appid")]
    app_id: Option<String>,
}

async fn token_claims(
    credential: &dyn TokenCredential,
    scope: &str,
    config: &AzureConfig,
) -> Result<Claims, String> {
    let token = tokio::time::timeout(config.timeout, credential.get_token(&[scope], None))
        .await
        .map_err(|_| format!("no answer within {:?}", config.timeout))?
        .map_err(|error| error_text(&error))?;
    // Only the claims are read, never printed whole: the token is a secret.
    let payload = token
        .token
        .secret()
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.trim_end_matches('='))
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice::<Claims>(&bytes).ok());
    Ok(payload.unwrap_or_default())
}

#[derive(Debug, Deserialize)]
struct PermissionList {
    #[serde(default)]
    value: Vec<Permission>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Permission {
    #[serde(default)]
    actions: Vec<String>,
    #[serde(default)]
    not_actions: Vec<String>,
    #[serde(default)]
    condition: Option<String>,
}

/// ARM action patterns: `*` matches any run of characters, case-insensitively.
fn action_matches(pattern: &str, action: &str) -> bool {
    let (pattern, action) = (pattern.to_ascii_lowercase(), action.to_ascii_lowercase());
    let parts: Vec<&str> = pattern.split('*').collect();
    let Some((first, rest)) = parts.split_first() else {
        return false;
    };
    let Some(mut remaining) = action.strip_prefix(first) else {
        return false;
    };
    for (i, part) in rest.iter().enumerate() {
        if i + 1 == rest.len() {
            return remaining.ends_with(part);
        }
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.is_empty()
}

/// How an action is allowed: not at all, unconditionally, or only under conditions.
fn allowed(permissions: &[Permission], action: &str) -> (bool, Vec<String>) {
    let mut conditions = Vec::new();
    for permission in permissions {
        let granted = permission.actions.iter().any(|p| action_matches(p, action))
            && !permission
                .not_actions
                .iter()
                .any(|p| action_matches(p, action));
        if granted {
            match &permission.condition {
                None => return (true, Vec::new()),
                Some(condition) => conditions.push(condition.clone()),
            }
        }
    }
    (!conditions.is_empty(), conditions)
}

async fn permissions(
    arm: &ApiClient,
    endpoints: &CloudEndpoints,
    scope: &AccountScope,
    account: &str,
    roles: &BTreeSet<RoleName>,
) -> Check {
    let guidance = crate::azure::arm::role_assignment_guidance(None);
    let mut url = match endpoints.arm.join(&format!(
        "{}/providers/Microsoft.Authorization/permissions",
        scope.to_string().trim_start_matches('/')
    )) {
        Ok(url) => url,
        Err(error) => return fail(format!("permissions on {account}: {error}"), guidance),
    };
    crate::azure::http::set_query(&mut url, &[("api-version", PERMISSIONS_API_VERSION)]);
    let call = Call {
        method: reqwest::Method::GET,
        url,
        body: None,
        operation: "list_permissions",
        pacing: None,
    };
    let list: PermissionList = match arm.send(&call, None).await {
        Ok(reply) if reply.status.is_success() => match reply.json("list permissions") {
            Ok(list) => list,
            Err(error) => return fail(format!("permissions on {account}: {error}"), guidance),
        },
        Ok(reply) => {
            let error = reply.to_error(&format!("list keyless's permissions on {scope}"));
            return fail(format!("permissions on {account}: {error}"), guidance);
        }
        Err(error) => {
            return fail(
                format!("permissions on {account}: {}", error_text(&error)),
                guidance,
            );
        }
    };
    let mut problems = Vec::new();
    let mut conditional = false;
    for (verb, action) in [("write", WRITE), ("delete", DELETE)] {
        let (ok, conditions) = allowed(&list.value, action);
        if !ok {
            problems.push(format!("may not {verb} role assignments"));
            continue;
        }
        if !conditions.is_empty() {
            conditional = true;
            // Under an ABAC condition: each role the files ask for must be among those it allows.
            let missing: Vec<&str> = roles
                .iter()
                .filter(|role| {
                    !conditions
                        .iter()
                        .any(|c| c.to_ascii_lowercase().contains(role.definition_guid()))
                })
                .map(|role| role.as_str())
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "may {verb} role assignments only under a condition that does not list {}",
                    missing.join(", ")
                ));
            }
        }
    }
    if problems.is_empty() {
        pass(format!(
            "permissions on {account}: keyless may write and delete role assignments{}",
            if conditional {
                " (limited by an ABAC condition to the roles it assigns)"
            } else {
                " (unconditionally: consider the ABAC condition that limits it to keyless's roles)"
            }
        ))
    } else {
        fail(
            format!("permissions on {account}: keyless {}", problems.join("; ")),
            guidance,
        )
    }
}

/// One lookup per Graph-resolved kind the files use: does Graph answer, and may keyless read?
async fn graph(clients: &AzureClients, manifests: &load::Manifests) -> Option<Check> {
    let mut user = None;
    let mut group = None;
    let mut app = None;
    for access in &manifests.accesses {
        for principal in &access.object.spec.principals {
            match principal.reference() {
                Some(PrincipalRef::User(v)) => user = user.or(Some(v)),
                Some(PrincipalRef::GroupName(v)) => group = group.or(Some(v)),
                Some(PrincipalRef::AppId(v)) => app = app.or(Some(v)),
                _ => {}
            }
        }
    }
    if user.is_none() && group.is_none() && app.is_none() {
        return None;
    }
    let directory = clients.directory.clone();
    let mut answered = Vec::new();
    let lookups: Vec<(&str, &str, String)> = [
        ("user", "User.Read.All", user),
        ("group", "GroupMember.Read.All", group),
        ("app", "Application.Read.All", app),
    ]
    .into_iter()
    .filter_map(|(what, permission, name)| Some((what, permission, name?)))
    .collect();
    for (what, permission, name) in lookups {
        let directory: Arc<dyn crate::azure::Directory> = directory.clone();
        let result = match what {
            "user" => directory.user_by_upn(&name).await,
            "group" => directory.group_by_display_name(&name).await,
            _ => directory.service_principal_by_app_id(&name).await,
        };
        match result {
            Ok(object) => answered.push(format!("{what} {name} → {}", object.id)),
            Err(error)
                if matches!(
                    error.kind,
                    AzureErrorKind::NotFound | AzureErrorKind::PrincipalNotFound
                ) =>
            {
                answered.push(format!("{what} {name} not found (yet)"))
            }
            Err(error)
                if matches!(
                    error.kind,
                    AzureErrorKind::AuthorizationFailed | AzureErrorKind::Unauthorized
                ) =>
            {
                return Some(fail(
                    format!(
                        "Graph: keyless may not look up the {what} {name}: {}",
                        error_text(&error)
                    ),
                    format!(
                        "grant keyless's identity the Microsoft Graph application permission {permission} (admin consent), or name principals by objectId, managedIdentity or serviceAccount, which need no Graph"
                    ),
                ));
            }
            Err(error) => {
                return Some(fail(
                    format!(
                        "Graph: the {what} lookup of {name} failed: {}",
                        error_text(&error)
                    ),
                    "check --graph-endpoint and the network path to Microsoft Graph",
                ));
            }
        }
    }
    Some(pass(format!("Graph answers: {}", answered.join("; "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm_action_patterns_match_as_arm_does() {
        assert!(action_matches("*", WRITE));
        assert!(action_matches("Microsoft.Authorization/*", WRITE));
        assert!(action_matches(
            "microsoft.authorization/roleassignments/*",
            DELETE
        ));
        assert!(action_matches("*/write", WRITE));
        assert!(!action_matches("*/read", WRITE));
        assert!(!action_matches(
            "Microsoft.Authorization/roleAssignments/read",
            WRITE
        ));
    }

    #[test]
    fn not_actions_and_conditions_count() {
        let owner_minus = [Permission {
            actions: vec!["*".into()],
            not_actions: vec!["Microsoft.Authorization/*/Delete".into()],
            condition: None,
        }];
        assert_eq!(allowed(&owner_minus, WRITE), (true, vec![]));
        assert!(!allowed(&owner_minus, DELETE).0);
        let conditional = [Permission {
            actions: vec!["Microsoft.Authorization/roleAssignments/*".into()],
            not_actions: vec![],
            condition: Some("c".into()),
        }];
        assert_eq!(allowed(&conditional, WRITE), (true, vec!["c".to_string()]));
    }
}
