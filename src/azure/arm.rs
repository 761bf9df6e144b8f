//! Azure Resource Manager: role assignments (2022-04-01), Cognitive Services accounts (2024-10-01)
//! and user-assigned managed identities (2023-01-31), behind the engine's traits
//! ([`RoleAssignments`], [`Accounts`], [`ManagedIdentities`]). ARM's semantics are those of
//! ../shared/azure-facts.md §A: the PUT is idempotent (no GET before it), a 409
//! `RoleAssignmentExists` hands back the existing assignment for adoption, DELETE's 204 means gone.

use super::cloud::CloudEndpoints;
use super::error::{AzureError, AzureErrorKind};
use super::http::{ApiClient, Call, Reply, set_query};
use super::pacing::{OperationClass, Pacer, RateLimitRemaining};
use super::{
    AccountInfo, Accounts, Created, Deleted, FederatedCredential, ManagedIdentities,
    ManagedIdentity, RoleAssignments, RoleDefinitions, ScopeListing,
};
use crate::api::roles::{RBAC_ADMINISTRATOR_GUID, RoleName, delegation_condition};
use crate::plan::model::assignment_id;
use crate::plan::{AccountScope, NewAssignment, ObservedAssignment, PrincipalType};
use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;
use url::Url;

pub const ROLE_ASSIGNMENTS_API_VERSION: &str = "2022-04-01";
pub const ACCOUNTS_API_VERSION: &str = "2024-10-01";
pub const MANAGED_IDENTITY_API_VERSION: &str = "2023-01-31";
pub const ROLE_DEFINITIONS_API_VERSION: &str = "2022-04-01";

const ROLE_ASSIGNMENTS_PROVIDER: &str = "/providers/Microsoft.Authorization/roleAssignments/";

/// ARM-specific settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArmSettings {
    /// Where `find_identity_by_client_id` looks; empty = the subscriptions of the accounts keyless
    /// has seen.
    pub identity_subscriptions: Vec<String>,
    /// How long an identity found by client id is remembered.
    pub identity_cache_ttl: Duration,
    /// How long a role definition is remembered.
    pub role_definition_cache_ttl: Duration,
}

impl Default for ArmSettings {
    fn default() -> Self {
        ArmSettings {
            identity_subscriptions: Vec::new(),
            identity_cache_ttl: Duration::from_secs(600),
            role_definition_cache_ttl: Duration::from_secs(6 * 3600),
        }
    }
}

/// One client for everything keyless asks ARM.
#[derive(Debug)]
pub struct ArmClient {
    api: ApiClient,
    base: Url,
    pacer: Pacer,
    settings: ArmSettings,
    /// Subscriptions of the accounts seen so far: the default search space for identities.
    account_subscriptions: Mutex<BTreeSet<String>>,
    /// client id (lower case) → identity and when it was found.
    identities_by_client_id: Mutex<HashMap<String, (ManagedIdentity, Instant)>>,
    /// role definition GUID → definition and when it was read.
    role_definitions: Mutex<HashMap<String, (crate::report::RoleDefinition, Instant)>>,
    /// One role-definition read from ARM at a time: passes that miss the cache together (every
    /// account's first pass at start-up) wait for the first one's answer instead of each asking.
    role_definition_reads: tokio::sync::Mutex<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned cache is still a valid cache of plain values.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ARM wire types (only the fields keyless reads).

#[derive(Deserialize)]
struct Page<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
    #[serde(rename = "nextLink", default)]
    next_link: Option<String>,
}

#[derive(Deserialize)]
struct RoleAssignmentResource {
    id: String,
    name: String,
    properties: RoleAssignmentProperties,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoleAssignmentProperties {
    role_definition_id: String,
    principal_id: String,
    #[serde(default)]
    principal_type: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    condition: Option<String>,
    #[serde(default)]
    created_on: Option<String>,
    #[serde(default)]
    created_by: Option<String>,
}

#[derive(Deserialize)]
struct RoleDefinitionResource {
    name: String,
    properties: RoleDefinitionProperties,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoleDefinitionProperties {
    #[serde(default)]
    role_name: String,
    #[serde(default, rename = "type")]
    role_type: Option<String>,
    #[serde(default)]
    permissions: Vec<PermissionResource>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PermissionResource {
    #[serde(default)]
    actions: Vec<String>,
    #[serde(default)]
    not_actions: Vec<String>,
    #[serde(default)]
    data_actions: Vec<String>,
    #[serde(default)]
    not_data_actions: Vec<String>,
}

impl RoleDefinitionResource {
    fn into_definition(self) -> crate::report::RoleDefinition {
        crate::report::RoleDefinition {
            guid: self.name.to_ascii_lowercase(),
            role_name: self.properties.role_name,
            custom: self
                .properties
                .role_type
                .is_some_and(|t| t.eq_ignore_ascii_case("CustomRole")),
            permissions: self
                .properties
                .permissions
                .into_iter()
                .map(|p| crate::report::Permission {
                    actions: p.actions,
                    not_actions: p.not_actions,
                    data_actions: p.data_actions,
                    not_data_actions: p.not_data_actions,
                })
                .collect(),
        }
    }
}

impl RoleAssignmentResource {
    fn into_observed(self) -> ObservedAssignment {
        let scope = self
            .properties
            .scope
            .unwrap_or_else(|| scope_of_assignment_id(&self.id));
        ObservedAssignment {
            id: self.id,
            name: self.name,
            scope,
            principal_id: self.properties.principal_id,
            principal_type: self.properties.principal_type,
            role_definition_id: self.properties.role_definition_id,
            description: self.properties.description,
            condition: self.properties.condition,
            created_on: self
                .properties
                .created_on
                .and_then(|text| text.parse::<jiff::Timestamp>().ok()),
        }
    }
}

// True when `upper` is a scope strictly above the lower-case `account` scope (`/` included).
fn is_above(upper: &str, account: &str) -> bool {
    let upper = upper.trim_end_matches('/').to_ascii_lowercase();
    upper.is_empty() || account.starts_with(&format!("{upper}/"))
}

fn scope_of_assignment_id(id: &str) -> String {
    let lower = id.to_ascii_lowercase();
    match lower.find(&ROLE_ASSIGNMENTS_PROVIDER.to_ascii_lowercase()) {
        Some(at) => id[..at].to_string(),
        None => id.to_string(),
    }
}

#[derive(Deserialize)]
struct AccountResource {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    properties: AccountProperties,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccountProperties {
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    disable_local_auth: Option<bool>,
    #[serde(default)]
    custom_sub_domain_name: Option<String>,
}

#[derive(Deserialize)]
struct IdentityResource {
    id: String,
    properties: IdentityProperties,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityProperties {
    principal_id: String,
    client_id: String,
    tenant_id: String,
}

impl IdentityResource {
    fn into_identity(self) -> ManagedIdentity {
        ManagedIdentity {
            resource_id: self.id,
            principal_id: self.properties.principal_id,
            client_id: self.properties.client_id,
            tenant_id: self.properties.tenant_id,
        }
    }
}

#[derive(Deserialize)]
struct FederatedCredentialResource {
    name: String,
    properties: FederatedCredentialProperties,
}

#[derive(Deserialize)]
struct FederatedCredentialProperties {
    issuer: String,
    subject: String,
    #[serde(default)]
    audiences: Vec<String>,
}

/// The name of the existing assignment in a 409 `RoleAssignmentExists` message ("The ID of the
/// existing role assignment is 2f826ae117284c63bbb7a8a150a5a52d."), as a hyphenated GUID. `None`
/// when the message does not carry it: the text is not a contract (facts §A.6).
pub fn existing_assignment_name(message: &str) -> Option<uuid::Uuid> {
    const MARKER: &str = "existing role assignment is ";
    let at = message.find(MARKER)? + MARKER.len();
    let candidate: String = message[at..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    if candidate.len() != 32 {
        return None;
    }
    uuid::Uuid::try_parse(&candidate).ok()
}

/// A user-assigned identity's resource id, checked: it is pasted into the URL, so nothing but the
/// expected shape may pass.
/// The principal type ARM says an `UnmatchedPrincipalType` principal really has. Its message is not
/// a contract (roughly "The principal with ID '…' has type 'ServicePrincipal', which is different
/// from the PrinciaplType 'User' in the request", facts §A.6): the first known type after "has type"
/// is taken, and None when there is none.
pub fn actual_principal_type(message: &str) -> Option<PrincipalType> {
    let lower = message.to_ascii_lowercase();
    let after = &message[lower.find("has type")? + "has type".len()..];
    after
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|word| !word.is_empty())
        .and_then(PrincipalType::from_arm)
}

/// ARM's error codes that say the account (or what holds it) does not exist.
pub const ACCOUNT_GONE_CODES: [&str; 3] = [
    "ResourceNotFound",
    "ResourceGroupNotFound",
    "ParentResourceNotFound",
];

/// Whether a failed read of an account, or of the assignments at its scope, says the account is
/// gone. Only ARM's own envelopes do: "gone" releases every finalizer without revoking, so a 404
/// from a wrong endpoint, a proxy's error page or `SubscriptionNotFound` (a subscription moved to
/// another tenant, a credential for the wrong tenant) must never count.
pub fn means_account_gone(error: &AzureError) -> bool {
    error.kind == AzureErrorKind::NotFound
        && error
            .code
            .as_deref()
            .is_some_and(|code| ACCOUNT_GONE_CODES.contains(&code))
}

/// Any other 404 on an account's path is a temporary failure: nothing is created or deleted, and
/// the pass is retried.
fn not_found_is_temporary(mut error: AzureError) -> AzureError {
    if error.kind == AzureErrorKind::NotFound {
        error.kind = AzureErrorKind::Transient;
        error.message = format!(
            "{} (a 404 without ARM's ResourceNotFound, ResourceGroupNotFound or ParentResourceNotFound code: treated as a temporary failure, not as a deleted account; check the ARM endpoint and the subscription)",
            error.message
        );
    }
    error
}

pub(crate) fn parse_identity_id(resource_id: &str) -> Option<(String, String)> {
    let segments: Vec<&str> = resource_id.trim_end_matches('/').split('/').collect();
    match segments.as_slice() {
        [
            "",
            subscriptions,
            sub,
            groups,
            rg,
            providers,
            namespace,
            kind,
            name,
        ] if subscriptions.eq_ignore_ascii_case("subscriptions")
            && groups.eq_ignore_ascii_case("resourceGroups")
            && providers.eq_ignore_ascii_case("providers")
            && namespace.eq_ignore_ascii_case("Microsoft.ManagedIdentity")
            && kind.eq_ignore_ascii_case("userAssignedIdentities")
            && uuid::Uuid::try_parse(sub).is_ok()
            && is_path_safe(rg)
            && is_path_safe(name) =>
        {
            Some((
                sub.to_ascii_lowercase(),
                format!(
                    "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
                ),
            ))
        }
        _ => None,
    }
}

// Resource group and identity names: letters, digits, '-', '_', '.', '(' and ')'. Nothing that could
// add a path segment, a query or a fragment.
fn is_path_safe(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '(' | ')'))
}

/// A role assignment id keyless may delete: at an account scope, named by a GUID.
pub(crate) fn parse_assignment_id(assignment_id: &str) -> Option<(AccountScope, uuid::Uuid)> {
    let lower = assignment_id.to_ascii_lowercase();
    let at = lower.find(&ROLE_ASSIGNMENTS_PROVIDER.to_ascii_lowercase())?;
    let scope = AccountScope::parse(&assignment_id[..at]).ok()?;
    let name =
        uuid::Uuid::try_parse(&assignment_id[at + ROLE_ASSIGNMENTS_PROVIDER.len()..]).ok()?;
    Some((scope, name))
}

/// What an admin must grant when ARM refuses a role assignment write or delete.
pub fn role_assignment_guidance(role: Option<RoleName>) -> String {
    let attempted = role
        .map(|role| {
            format!(
                " The role asked for is {} ({}); the condition refuses any role outside its list by design.",
                role.display_name(),
                role.definition_guid()
            )
        })
        .unwrap_or_default();
    format!(
        "keyless's identity needs the role Role Based Access Control Administrator ({RBAC_ADMINISTRATOR_GUID}) \
         on the account, its resource group or its subscription, constrained by the ABAC condition \
         (conditionVersion 2.0) that lets it add and remove only the roles keyless assigns: {}.{attempted}",
        delegation_condition(&RoleName::ALL)
    )
}

impl ArmClient {
    pub fn new(
        api: ApiClient,
        endpoints: &CloudEndpoints,
        pacer: Pacer,
        settings: ArmSettings,
    ) -> ArmClient {
        ArmClient {
            api,
            base: endpoints.arm.clone(),
            pacer,
            settings,
            account_subscriptions: Mutex::new(BTreeSet::new()),
            identities_by_client_id: Mutex::new(HashMap::new()),
            role_definitions: Mutex::new(HashMap::new()),
            role_definition_reads: tokio::sync::Mutex::new(()),
        }
    }

    /// What ARM last reported as remaining in its throttling buckets for this subscription.
    pub fn rate_limit_remaining(&self, subscription_id: &str) -> RateLimitRemaining {
        self.pacer.remaining(subscription_id)
    }

    /// How many role assignments the subscription holds (at, above and below its scope, as ARM's
    /// unfiltered list returns them), against ARM's fixed limit of 4,000 per subscription. Needs
    /// roleAssignments/read at the subscription.
    pub async fn count_subscription_assignments(
        &self,
        subscription_id: &str,
    ) -> Result<u64, AzureError> {
        let what = format!("count role assignments in subscription {subscription_id}");
        if uuid::Uuid::try_parse(subscription_id).is_err() {
            return Err(AzureError::new(
                AzureErrorKind::BadRequest,
                format!("{what}: not a subscription id"),
            ));
        }
        let url = self.url(
            &format!(
                "/subscriptions/{subscription_id}/providers/Microsoft.Authorization/roleAssignments"
            ),
            &[("api-version", ROLE_ASSIGNMENTS_API_VERSION)],
        )?;
        let items: Vec<serde_json::Value> = self
            .list_all(url, "count_role_assignments", subscription_id, &what)
            .await?;
        Ok(items.len() as u64)
    }

    /// Adds a subscription to the default search space of `find_identity_by_client_id` (keyless
    /// also learns them from the account scopes it is asked about).
    pub fn register_account_subscription(&self, subscription_id: &str) {
        lock(&self.account_subscriptions).insert(subscription_id.to_ascii_lowercase());
    }

    /// `{ARM}{resource path}?{query}`. The path has been validated or built from validated parts.
    fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, AzureError> {
        let mut url = self
            .base
            .join(path.trim_start_matches('/'))
            .map_err(|source| {
                let mut error = AzureError::new(
                    AzureErrorKind::BadRequest,
                    format!("{path} does not make an ARM URL"),
                );
                error.source = Some(Box::new(source));
                error
            })?;
        set_query(&mut url, query);
        Ok(url)
    }

    fn call(
        &self,
        method: Method,
        url: Url,
        operation: &'static str,
        subscription: &str,
        class: OperationClass,
    ) -> Call {
        Call {
            method,
            url,
            body: None,
            operation,
            pacing: Some((subscription.to_string(), class)),
        }
    }

    /// A `nextLink` must point at the same ARM endpoint: the token goes with it.
    fn next_link(&self, link: &str, what: &str) -> Result<Url, AzureError> {
        let url = Url::parse(link)
            .ok()
            .filter(|url| url.origin() == self.base.origin());
        url.ok_or_else(|| {
            AzureError::new(
                AzureErrorKind::BadRequest,
                format!("{what}: ARM returned a nextLink to another host; keyless does not send its token there"),
            )
        })
    }

    /// Every item of a pageable ARM list.
    async fn list_all<T: serde::de::DeserializeOwned>(
        &self,
        first: Url,
        operation: &'static str,
        subscription: &str,
        what: &str,
    ) -> Result<Vec<T>, AzureError> {
        let mut items = Vec::new();
        let mut url = first;
        loop {
            let reply = self
                .api
                .send(
                    &self.call(
                        Method::GET,
                        url,
                        operation,
                        subscription,
                        OperationClass::Read,
                    ),
                    Some(&self.pacer),
                )
                .await?;
            if reply.status != StatusCode::OK {
                return Err(reply.to_error(what));
            }
            let page: Page<T> = reply.json(what)?;
            items.extend(page.value);
            match page.next_link.filter(|link| !link.is_empty()) {
                Some(link) => url = self.next_link(&link, what)?,
                None => return Ok(items),
            }
        }
    }

    async fn get_assignment(
        &self,
        scope: &AccountScope,
        name: &str,
    ) -> Result<Option<ObservedAssignment>, AzureError> {
        let id = assignment_id(scope, name);
        let what = format!("get role assignment {id}");
        let url = self.url(&id, &[("api-version", ROLE_ASSIGNMENTS_API_VERSION)])?;
        let reply = self
            .api
            .send(
                &self.call(
                    Method::GET,
                    url,
                    "get_role_assignment",
                    scope.subscription_id(),
                    OperationClass::Read,
                ),
                Some(&self.pacer),
            )
            .await?;
        match reply.status {
            StatusCode::OK => Ok(Some(
                reply.json::<RoleAssignmentResource>(&what)?.into_observed(),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(reply.to_error(&what)),
        }
    }

    /// The fallback when a 409 does not name the existing assignment: the principal's assignments
    /// (`principalId eq`), kept to this exact scope and role.
    async fn find_existing(
        &self,
        assignment: &NewAssignment,
    ) -> Result<Option<ObservedAssignment>, AzureError> {
        let scope = &assignment.scope;
        let what = format!(
            "list role assignments of principal {} at {scope}",
            assignment.principal_id
        );
        let filter = format!(
            "principalId eq {}",
            super::graph::odata_string(&assignment.principal_id)
        );
        let url = self.url(
            &format!("{scope}/providers/Microsoft.Authorization/roleAssignments"),
            &[
                ("api-version", ROLE_ASSIGNMENTS_API_VERSION),
                ("$filter", &filter),
            ],
        )?;
        let items: Vec<RoleAssignmentResource> = self
            .list_all(
                url,
                "list_role_assignments_of_principal",
                scope.subscription_id(),
                &what,
            )
            .await?;
        Ok(items
            .into_iter()
            .map(RoleAssignmentResource::into_observed)
            .find(|observed| {
                scope.matches(&observed.scope)
                    && observed
                        .principal_id
                        .eq_ignore_ascii_case(&assignment.principal_id)
                    && RoleName::from_definition_id(&observed.role_definition_id)
                        == Some(assignment.role)
            }))
    }

    async fn adopt_existing(
        &self,
        assignment: &NewAssignment,
        reply: &Reply,
        what: &str,
    ) -> Result<Created, AzureError> {
        let message = reply.error_body().message.unwrap_or_default();
        if let Some(name) = existing_assignment_name(&message)
            && let Some(existing) = self
                .get_assignment(&assignment.scope, &name.to_string())
                .await?
        {
            return Ok(Created::AlreadyExists(existing));
        }
        if let Some(existing) = self.find_existing(assignment).await? {
            return Ok(Created::AlreadyExists(existing));
        }
        // ARM says it exists but neither lookup sees it yet: its read side lags. Try again later.
        let mut error = AzureError::new(
            AzureErrorKind::Transient,
            format!(
                "{what}: ARM answered RoleAssignmentExists, but the existing assignment of {} to {} at {} cannot be read yet",
                assignment.role.display_name(),
                assignment.principal_id,
                assignment.scope
            ),
        );
        error.request_id = reply.request_id();
        Err(error)
    }

    fn identity_search_space(&self) -> Vec<String> {
        if self.settings.identity_subscriptions.is_empty() {
            lock(&self.account_subscriptions).iter().cloned().collect()
        } else {
            self.settings
                .identity_subscriptions
                .iter()
                .map(|sub| sub.to_ascii_lowercase())
                .collect()
        }
    }

    fn cached_identity(&self, client_id: &str) -> Option<ManagedIdentity> {
        let cache = lock(&self.identities_by_client_id);
        let (identity, found) = cache.get(client_id)?;
        (found.elapsed() < self.settings.identity_cache_ttl).then(|| identity.clone())
    }
}

#[async_trait]
impl RoleAssignments for ArmClient {
    async fn observe_scope(
        &self,
        scope: &AccountScope,
    ) -> Result<Vec<ObservedAssignment>, AzureError> {
        // atScope() also returns assignments above the scope (resource group, subscription, ...):
        // only those exactly at the account are the planner's to manage.
        Ok(self.observe_scope_listing(scope).await?.at_scope)
    }

    async fn observe_scope_listing(
        &self,
        scope: &AccountScope,
    ) -> Result<ScopeListing, AzureError> {
        self.register_account_subscription(scope.subscription_id());
        let what = format!("list role assignments at {scope}");
        let url = self.url(
            &format!("{scope}/providers/Microsoft.Authorization/roleAssignments"),
            &[
                ("api-version", ROLE_ASSIGNMENTS_API_VERSION),
                ("$filter", "atScope()"),
            ],
        )?;
        let items: Vec<RoleAssignmentResource> = self
            .list_all(url, "list_role_assignments", scope.subscription_id(), &what)
            .await
            .map_err(|error| {
                // The engine reads a NotFound here as "the account is gone": keep that kind only
                // for ARM's envelopes that say so.
                let mut error = if means_account_gone(&error) {
                    error
                } else {
                    not_found_is_temporary(error)
                };
                if error.kind == AzureErrorKind::AuthorizationFailed {
                    error.message = format!(
                        "{}. keyless's identity needs Microsoft.Authorization/roleAssignments/read at the account; {}",
                        error.message,
                        role_assignment_guidance(None)
                    );
                }
                error
            })?;
        let mut listing = ScopeListing::default();
        let account = scope.to_string().to_ascii_lowercase();
        for item in items {
            let created_by = item.properties.created_by.clone();
            let observed = item.into_observed();
            if let Some(created_by) = created_by.filter(|c| !c.is_empty()) {
                listing
                    .created_by
                    .insert(observed.id.to_ascii_lowercase(), created_by);
            }
            if scope.matches(&observed.scope) {
                listing.at_scope.push(observed);
            } else if is_above(&observed.scope, &account) {
                listing.inherited.push(observed);
            }
        }
        Ok(listing)
    }

    async fn create_assignment(&self, assignment: &NewAssignment) -> Result<Created, AzureError> {
        // A name derived from the instance id alone (no fingerprint) is shared by any other
        // installation given the same id, and a PUT on an existing name replaces its description:
        // read it first, and take an existing assignment as it is (adopted, or confirmed when the
        // marker is ours) instead of overwriting it. Fingerprinted names are the installation's own.
        if crate::plan::ownership::writes_an_unfingerprinted_marker(&assignment.description)
            && let Some(existing) = self
                .get_assignment(&assignment.scope, &assignment.name.to_string())
                .await?
        {
            return Ok(Created::AlreadyExists(existing));
        }
        let id = assignment.id();
        let what = format!(
            "assign {} to {} {} at {}",
            assignment.role.display_name(),
            assignment.principal_type,
            assignment.principal_id,
            assignment.scope
        );
        let url = self.url(&id, &[("api-version", ROLE_ASSIGNMENTS_API_VERSION)])?;
        let body = serde_json::json!({
            "properties": {
                "roleDefinitionId": assignment.role.definition_id(assignment.scope.subscription_id()),
                "principalId": assignment.principal_id,
                // Always sent: ARM trusts it while a new principal replicates, and an ABAC
                // condition on the operator may filter on it (facts §F.2).
                "principalType": assignment.principal_type.as_str(),
                "description": assignment.description,
            }
        });
        let mut call = self.call(
            Method::PUT,
            url,
            "create_role_assignment",
            assignment.scope.subscription_id(),
            OperationClass::Write,
        );
        call.body = Some(body);
        let reply = self.api.send(&call, Some(&self.pacer)).await?;
        match reply.status {
            StatusCode::OK | StatusCode::CREATED => Ok(Created::Created(
                reply.json::<RoleAssignmentResource>(&what)?.into_observed(),
            )),
            StatusCode::CONFLICT
                if reply.error_body().code.as_deref() == Some("RoleAssignmentExists") =>
            {
                self.adopt_existing(assignment, &reply, &what).await
            }
            _ => {
                let mut error = reply.to_error(&what);
                if error.kind == AzureErrorKind::AuthorizationFailed {
                    error.message = format!(
                        "{}. {}",
                        error.message,
                        role_assignment_guidance(Some(assignment.role))
                    );
                }
                Err(error)
            }
        }
    }

    async fn delete_assignment(&self, assignment_id: &str) -> Result<Deleted, AzureError> {
        let what = format!("delete role assignment {assignment_id}");
        let Some((scope, name)) = parse_assignment_id(assignment_id) else {
            return Err(AzureError::new(
                AzureErrorKind::BadRequest,
                format!(
                    "{what}: not a role assignment at a Cognitive Services account; keyless deletes nothing else"
                ),
            ));
        };
        let url = self.url(
            &assignment_id_string(&scope, &name),
            &[("api-version", ROLE_ASSIGNMENTS_API_VERSION)],
        )?;
        let reply = self
            .api
            .send(
                &self.call(
                    Method::DELETE,
                    url,
                    "delete_role_assignment",
                    scope.subscription_id(),
                    OperationClass::Delete,
                ),
                Some(&self.pacer),
            )
            .await?;
        match reply.status {
            StatusCode::OK | StatusCode::ACCEPTED => Ok(Deleted::Deleted),
            // 204 is ARM's "already deleted or does not exist"; a 404 means the scope itself is gone,
            // and the assignment with it.
            StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => Ok(Deleted::AlreadyGone),
            _ => {
                let mut error = reply.to_error(&what);
                if error.kind == AzureErrorKind::AuthorizationFailed {
                    error.message =
                        format!("{}. {}", error.message, role_assignment_guidance(None));
                } else if error.kind == AzureErrorKind::ScopeLocked {
                    error.message = format!(
                        "{}. A lock on the account or its resource group forbids deletes; remove it (or wait for its owner to) and keyless will retry",
                        error.message
                    );
                }
                Err(error)
            }
        }
    }
}

#[async_trait]
impl RoleDefinitions for ArmClient {
    async fn role_definition(
        &self,
        scope: &AccountScope,
        role_definition_guid: &str,
    ) -> Result<crate::report::RoleDefinition, AzureError> {
        let what = format!("read role definition {role_definition_guid} at {scope}");
        let guid = uuid::Uuid::try_parse(role_definition_guid)
            .map_err(|_| {
                AzureError::new(
                    AzureErrorKind::BadRequest,
                    format!("{what}: not a role definition GUID"),
                )
            })?
            .to_string();
        let cached = || {
            lock(&self.role_definitions)
                .get(&guid)
                .filter(|(_, read)| read.elapsed() < self.settings.role_definition_cache_ttl)
                .map(|(definition, _)| definition.clone())
        };
        if let Some(definition) = cached() {
            return Ok(definition);
        }
        let _one_read_at_a_time = self.role_definition_reads.lock().await;
        // Another caller may have read it while this one waited.
        if let Some(definition) = cached() {
            return Ok(definition);
        }
        // RoleDefinitions_Get at the account: built-in roles and the custom roles assignable
        // there, with the read permission keyless already has at the account.
        let url = self.url(
            &format!("{scope}/providers/Microsoft.Authorization/roleDefinitions/{guid}"),
            &[("api-version", ROLE_DEFINITIONS_API_VERSION)],
        )?;
        let reply = self
            .api
            .send(
                &self.call(
                    Method::GET,
                    url,
                    "get_role_definition",
                    scope.subscription_id(),
                    OperationClass::Read,
                ),
                Some(&self.pacer),
            )
            .await?;
        if reply.status != StatusCode::OK {
            return Err(reply.to_error(&what));
        }
        let definition = reply
            .json::<RoleDefinitionResource>(&what)?
            .into_definition();
        lock(&self.role_definitions).insert(guid, (definition.clone(), Instant::now()));
        Ok(definition)
    }
}

fn assignment_id_string(scope: &AccountScope, name: &uuid::Uuid) -> String {
    assignment_id(scope, &name.to_string())
}

#[async_trait]
impl Accounts for ArmClient {
    async fn get_account(&self, scope: &AccountScope) -> Result<Option<AccountInfo>, AzureError> {
        self.register_account_subscription(scope.subscription_id());
        let what = format!("get account {scope}");
        let url = self.url(&scope.to_string(), &[("api-version", ACCOUNTS_API_VERSION)])?;
        let reply = self
            .api
            .send(
                &self.call(
                    Method::GET,
                    url,
                    "get_account",
                    scope.subscription_id(),
                    OperationClass::Read,
                ),
                Some(&self.pacer),
            )
            .await?;
        match reply.status {
            StatusCode::OK => {
                let account: AccountResource = reply.json(&what)?;
                Ok(Some(AccountInfo {
                    kind: account.kind.unwrap_or_default(),
                    endpoint: account.properties.endpoint,
                    local_auth_disabled: account.properties.disable_local_auth.unwrap_or(false),
                    custom_sub_domain_name: account.properties.custom_sub_domain_name,
                }))
            }
            _ => {
                let mut error = reply.to_error(&what);
                if means_account_gone(&error) {
                    return Ok(None);
                }
                error = not_found_is_temporary(error);
                if error.kind == AzureErrorKind::AuthorizationFailed {
                    error.message = format!(
                        "{}. keyless's identity needs Microsoft.CognitiveServices/accounts/read on the account (Role Based Access Control Administrator's */read includes it)",
                        error.message
                    );
                }
                Err(error)
            }
        }
    }
}

#[async_trait]
impl ManagedIdentities for ArmClient {
    async fn get_identity(&self, resource_id: &str) -> Result<Option<ManagedIdentity>, AzureError> {
        let what = format!("get managed identity {resource_id}");
        let Some((subscription, path)) = parse_identity_id(resource_id) else {
            return Err(AzureError::new(
                AzureErrorKind::BadRequest,
                format!(
                    "{what}: not a user-assigned identity id (/subscriptions/{{guid}}/resourceGroups/{{group}}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{{name}})"
                ),
            ));
        };
        let url = self.url(&path, &[("api-version", MANAGED_IDENTITY_API_VERSION)])?;
        let reply = self
            .api
            .send(
                &self.call(
                    Method::GET,
                    url,
                    "get_identity",
                    &subscription,
                    OperationClass::Read,
                ),
                Some(&self.pacer),
            )
            .await?;
        match reply.status {
            StatusCode::OK => Ok(Some(reply.json::<IdentityResource>(&what)?.into_identity())),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(reply.to_error(&what)),
        }
    }

    async fn find_identity_by_client_id(
        &self,
        client_id: &str,
    ) -> Result<Option<ManagedIdentity>, AzureError> {
        let key = client_id.to_ascii_lowercase();
        if let Some(identity) = self.cached_identity(&key) {
            return Ok(Some(identity));
        }
        let subscriptions = self.identity_search_space();
        if subscriptions.is_empty() {
            return Err(AzureError::new(
                AzureErrorKind::BadRequest,
                format!(
                    "find the managed identity with client id {client_id}: no subscription to search; pass --identity-subscription"
                ),
            ));
        }
        let mut found = None;
        for subscription in subscriptions {
            let what = format!("list managed identities in subscription {subscription}");
            if uuid::Uuid::try_parse(&subscription).is_err() {
                return Err(AzureError::new(
                    AzureErrorKind::BadRequest,
                    format!("{what}: {subscription:?} is not a subscription id"),
                ));
            }
            let url = self.url(
                &format!("/subscriptions/{subscription}/providers/Microsoft.ManagedIdentity/userAssignedIdentities"),
                &[("api-version", MANAGED_IDENTITY_API_VERSION)],
            )?;
            let identities: Vec<IdentityResource> = self
                .list_all(url, "list_identities", &subscription, &what)
                .await?;
            // Every identity listed is remembered: the next lookup of another client id in the
            // same subscriptions needs no call.
            let now = Instant::now();
            let mut cache = lock(&self.identities_by_client_id);
            for identity in identities.into_iter().map(IdentityResource::into_identity) {
                let identity_key = identity.client_id.to_ascii_lowercase();
                if identity_key == key {
                    found = Some(identity.clone());
                }
                cache.insert(identity_key, (identity, now));
            }
            drop(cache);
            if found.is_some() {
                break;
            }
        }
        Ok(found)
    }

    async fn federated_credentials(
        &self,
        identity_resource_id: &str,
    ) -> Result<Vec<FederatedCredential>, AzureError> {
        let what = format!("list federated credentials of {identity_resource_id}");
        let Some((subscription, path)) = parse_identity_id(identity_resource_id) else {
            return Err(AzureError::new(
                AzureErrorKind::BadRequest,
                format!("{what}: not a user-assigned identity id"),
            ));
        };
        let url = self.url(
            &format!("{path}/federatedIdentityCredentials"),
            &[("api-version", MANAGED_IDENTITY_API_VERSION)],
        )?;
        let items: Vec<FederatedCredentialResource> = self
            .list_all(url, "list_federated_credentials", &subscription, &what)
            .await?;
        Ok(items
            .into_iter()
            .map(|item| FederatedCredential {
                name: item.name,
                issuer: item.properties.issuer,
                subject: item.properties.subject,
                audiences: item.properties.audiences,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_arm_expects_is_read_from_an_unmatched_principal_type_message() {
        let cases: &[(&str, Option<PrincipalType>)] = &[
            (
                "The principal with ID '00000000000000000000000000000001' has type 'ServicePrincipal', which is different from the PrinciaplType 'User' in the request.",
                Some(PrincipalType::ServicePrincipal),
            ),
            (
                "UnmatchedPrincipalType: principal 0001 has type Group which is different from specified PrincipalType User",
                Some(PrincipalType::Group),
            ),
            // ForeignGroup is not a type keyless assigns; no "has type" at all; nothing after it.
            ("The principal has type 'ForeignGroup'.", None),
            ("The principal type does not match.", None),
            ("... has type", None),
        ];
        for (message, expected) in cases {
            assert_eq!(actual_principal_type(message), *expected, "{message}");
        }
    }

    #[test]
    fn only_arms_not_found_envelopes_mean_the_account_is_gone() {
        use crate::azure::http::{Reply, classify};
        let cases: &[(u16, &str, bool, AzureErrorKind)] = &[
            (
                404,
                r#"{"error":{"code":"ResourceNotFound","message":"gone"}}"#,
                true,
                AzureErrorKind::NotFound,
            ),
            (
                404,
                r#"{"error":{"code":"ResourceGroupNotFound","message":"gone"}}"#,
                true,
                AzureErrorKind::NotFound,
            ),
            (
                404,
                r#"{"error":{"code":"ParentResourceNotFound","message":"gone"}}"#,
                true,
                AzureErrorKind::NotFound,
            ),
            // A subscription in another tenant, a wrong endpoint, a proxy's page: temporary.
            (
                404,
                r#"{"error":{"code":"SubscriptionNotFound","message":"?"}}"#,
                false,
                AzureErrorKind::Transient,
            ),
            (
                404,
                r#"{"error":{"code":"NotFound","message":"Nothing is served here"}}"#,
                false,
                AzureErrorKind::Transient,
            ),
            (
                404,
                "<html><body>404 Not Found</body></html>",
                false,
                AzureErrorKind::Transient,
            ),
            (404, "", false, AzureErrorKind::Transient),
            // The right code on another status is not a 404 at all.
            (
                400,
                r#"{"error":{"code":"ResourceNotFound","message":"?"}}"#,
                false,
                AzureErrorKind::BadRequest,
            ),
        ];
        for (status, body, gone, kind_when_not_gone) in cases {
            let reply = Reply {
                service: crate::azure::http::Service::Arm,
                operation: "get_account",
                status: StatusCode::from_u16(*status).unwrap(),
                headers: reqwest::header::HeaderMap::new(),
                body: bytes::Bytes::from(body.to_string()),
            };
            let error = reply.to_error("get account");
            assert_eq!(
                classify(reply.status, error.code.as_deref()),
                error.kind,
                "{status} {body}"
            );
            assert_eq!(means_account_gone(&error), *gone, "{status} {body}");
            if !gone {
                let error = not_found_is_temporary(error);
                assert_eq!(error.kind, *kind_when_not_gone, "{status} {body}");
            }
        }
    }

    #[test]
    fn the_existing_assignment_name_is_read_from_a_409_message_and_hyphenated() {
        let message = "The role assignment already exists.\nThe ID of the existing role assignment is 2f826ae117284c63bbb7a8a150a5a52d.";
        assert_eq!(
            existing_assignment_name(message).map(|name| name.to_string()),
            Some("2f826ae1-1728-4c63-bbb7-a8a150a5a52d".to_string())
        );
    }

    #[test]
    fn a_409_message_without_a_usable_id_yields_none_so_the_list_fallback_runs() {
        for message in [
            "The role assignment already exists.",
            "The ID of the existing role assignment is 2f826ae1.",
            "The ID of the existing role assignment is 2f826ae117284c63bbb7a8a150a5a52d00.",
            "The ID of the existing role assignment is zz826ae117284c63bbb7a8a150a5a52d.",
            "",
        ] {
            assert_eq!(existing_assignment_name(message), None, "{message}");
        }
    }

    #[test]
    fn only_role_assignments_at_an_account_scope_named_by_a_guid_can_be_deleted() {
        let scope = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/acct";
        let good = format!(
            "{scope}/providers/Microsoft.Authorization/roleAssignments/2f826ae1-1728-4c63-bbb7-a8a150a5a52d"
        );
        assert!(parse_assignment_id(&good).is_some());
        for bad in [
            "/subscriptions/00000000-0000-0000-0000-000000000001/providers/Microsoft.Authorization/roleAssignments/2f826ae1-1728-4c63-bbb7-a8a150a5a52d".to_string(),
            format!("{scope}/providers/Microsoft.Authorization/roleAssignments/not-a-guid"),
            format!("{scope}/providers/Microsoft.Authorization/roleAssignments/2f826ae1-1728-4c63-bbb7-a8a150a5a52d?x=1"),
            format!("{scope}/../../providers/Microsoft.Authorization/roleAssignments/2f826ae1-1728-4c63-bbb7-a8a150a5a52d"),
        ] {
            assert!(parse_assignment_id(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn identity_ids_with_path_tricks_are_refused() {
        let good = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-1";
        assert!(parse_identity_id(good).is_some());
        for bad in [
            "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/../providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-1",
            "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id?api-version=1",
            "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a%2Fb",
            "/subscriptions/x/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-1",
        ] {
            assert!(parse_identity_id(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_403_guidance_names_the_role_the_condition_and_the_refused_role() {
        let guidance = role_assignment_guidance(Some(RoleName::OpenAIContributor));
        assert!(guidance.contains("Role Based Access Control Administrator"));
        assert!(guidance.contains(RBAC_ADMINISTRATOR_GUID));
        assert!(guidance.contains(&delegation_condition(&RoleName::ALL)));
        assert!(guidance.contains(
            "Cognitive Services OpenAI Contributor (a001fd3d-188f-4b5d-821b-7da978bf7442)"
        ));
    }

    #[test]
    fn the_scope_of_an_assignment_id_is_everything_before_the_provider() {
        assert_eq!(
            scope_of_assignment_id(
                "/subscriptions/s/resourcegroups/rg/providers/Microsoft.CognitiveServices/accounts/a/providers/microsoft.authorization/roleassignments/n"
            ),
            "/subscriptions/s/resourcegroups/rg/providers/Microsoft.CognitiveServices/accounts/a"
        );
    }
}
