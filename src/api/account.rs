//! `OpenAIAccount`: a platform team registers one Azure OpenAI / AI Services account, and says which
//! namespaces may request which roles on it for which kinds of principal.

// kube-derive's printcolumn(...) repeats `type_ = ...`, which clippy mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use super::common::{Condition, DeletionPolicy, LabelSelector, not_nullable, patterns};
use super::roles::RoleName;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Registers one Azure OpenAI or AI Services account with keyless. Role assignments are always made
/// at this account's scope, never at a resource group or subscription.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "keyless.dev",
    version = "v1alpha1",
    kind = "OpenAIAccount",
    plural = "openaiaccounts",
    singular = "openaiaccount",
    shortname = "oaiaccount",
    shortname = "oaia",
    category = "keyless",
    status = "OpenAIAccountStatus",
    derive = "PartialEq",
    printcolumn(
        name = "Account",
        type_ = "string",
        json_path = ".status.accountName",
        description = "The Azure account name"
    ),
    printcolumn(name = "Kind", type_ = "string", json_path = ".status.kind"),
    printcolumn(
        name = "Keyless",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"KeylessOnly\")].status",
        description = "False while the account still accepts API keys"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct OpenAIAccountSpec {
    /// The ARM resource id of the account:
    /// /subscriptions/{subscription-id}/resourceGroups/{group}/providers/Microsoft.CognitiveServices/accounts/{name}.
    /// Compared case-insensitively. Immutable: register a new OpenAIAccount to point at another account.
    #[schemars(length(max = 512), pattern(patterns::ACCOUNT_RESOURCE_ID))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("resourceId is immutable: register a new OpenAIAccount for another account"))]
    pub resource_id: String,

    /// Which namespaces may request access to this account: those listed in `names` and those whose
    /// labels match `selector`. Absent means no namespace may (deny by default); `selector: {}`
    /// selects every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable)]
    pub allowed_namespaces: Option<AllowedNamespaces>,

    /// The roles an OpenAIAccess may request on this account. Defaults to [OpenAIUser].
    /// AzureAIUser is the name Foundry User had before Azure renamed it: allowing either allows both.
    #[serde(default = "default_allowed_roles")]
    // Room for every name, aliases included (RoleName::manifest_names).
    #[schemars(length(min = 1, max = 5))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub allowed_roles: Vec<RoleName>,

    /// The kinds of principal an OpenAIAccess may name on this account. Defaults to every kind; a
    /// production account might allow only WorkloadIdentity and ManagedIdentity.
    #[serde(default = "default_allowed_principal_kinds")]
    #[schemars(length(min = 1, max = 5))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub allowed_principal_kinds: Vec<PrincipalKind>,

    /// Grant a `serviceAccount` principal only if its managed identity has a federated credential for
    /// exactly that ServiceAccount in this cluster. Default true.
    #[serde(default = "default_true")]
    pub require_federation: bool,

    /// What unregistering the account does: Delete (default) revokes the role assignments keyless
    /// made on it; Retain leaves them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Whether an OpenAIAccess on this account may keep its role assignments after it is deleted
    /// (its deletionPolicy: Retain). Default false: the account decides retention, so a tenant
    /// cannot make a grant outlive the account's policy; Retain is then treated as Delete, with a
    /// warning in the OpenAIAccess's status. Policy tightening and expiry always revoke.
    #[serde(default)]
    pub allow_retain: bool,

    /// Whether keyless may write role assignments on this account. Manage (default): it creates,
    /// adopts and revokes them. Observe: it resolves, plans and reports exactly as under Manage —
    /// each OpenAIAccess's status says the write it would make (WouldCreate, WouldAdopt,
    /// WouldDelete) and `status.plannedWrites` lists them — and sends no write to Azure. Finalizers
    /// are still added, so a later switch to Manage cannot miss a deletion; an object deleted under
    /// Observe loses its finalizer at once. `keyless run --observe` forces Observe on every account.
    #[serde(default)]
    pub management: Management,

    /// Additive (default): keyless adds and revokes only the role assignments it made; others are
    /// left alone and counted in `status.access`. Exclusive: the OpenAIAccess objects are the only
    /// way in — a role assignment made outside keyless (the portal, a script) at exactly this
    /// account's scope, of a role keyless manages, that no eligible OpenAIAccess declares, is
    /// revoked. Never one inherited from above, one another keyless instance made, one with an
    /// ABAC condition, one keyless released (Retain), or one listed in `exclusiveExemptions`.
    /// Each is first listed in `status.exclusiveRevocations` (condition
    /// ExclusiveRevocationsPending) and revoked only once the controller's `--exclusive-grace` has
    /// passed since; nothing is revoked while keyless's view is incomplete or a declaration on the
    /// account is unresolved or unreadable. Refused (nothing revoked) while another keyless
    /// instance has grants on the account. Revokes only under management Manage.
    #[serde(default)]
    pub enforcement: Enforcement,

    /// Under Exclusive: principal object ids whose assignments on the account are never revoked
    /// (break-glass access).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 36), pattern(patterns::GUID)))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub exclusive_exemptions: Vec<String>,

    /// Under Exclusive: object ids of creators (ARM's `createdBy`) whose assignments are never
    /// revoked — for instance the service principal Privileged Identity Management activates
    /// eligible roles with, in your tenant. PIM-activated assignments carry no keyless marker and
    /// end by themselves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 36), pattern(patterns::GUID)))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub exclusive_exempt_creators: Vec<String>,
}

/// Whether keyless's declarations are the only way to get a role on the account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Enforcement {
    /// Add and revoke only what keyless made; assignments made elsewhere stay.
    #[default]
    Additive,
    /// Also revoke undeclared assignments made elsewhere at the account's scope, after a grace.
    Exclusive,
}

impl Enforcement {
    pub const fn as_str(self) -> &'static str {
        match self {
            Enforcement::Additive => "Additive",
            Enforcement::Exclusive => "Exclusive",
        }
    }
}

/// Whether keyless may write role assignments on an account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Management {
    /// Create, adopt and revoke role assignments.
    #[default]
    Manage,
    /// Plan and report only: no role assignment write is sent.
    Observe,
}

impl Management {
    pub const fn as_str(self) -> &'static str {
        match self {
            Management::Manage => "Manage",
            Management::Observe => "Observe",
        }
    }
}

/// Namespaces allowed to request access. The two ways are OR-ed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowedNamespaces {
    /// Namespace names allowed by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(length(max = 63), pattern(patterns::DNS_LABEL))
    )]
    pub names: Vec<String>,

    /// A label selector over Namespaces. `{}` selects every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable)]
    pub selector: Option<LabelSelector>,
}

/// A kind of principal, as an OpenAIAccess names it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum PrincipalKind {
    /// An Entra user (`user`, or `objectId` with principalType User).
    User,
    /// An Entra group (`groupName`, or `objectId` with principalType Group).
    Group,
    /// An application's service principal (`appId`, or `objectId` with principalType ServicePrincipal).
    ServicePrincipal,
    /// A user-assigned managed identity named by its ARM id (`managedIdentity`).
    ManagedIdentity,
    /// A Kubernetes ServiceAccount using Azure workload identity (`serviceAccount`).
    WorkloadIdentity,
}

impl PrincipalKind {
    pub const ALL: [PrincipalKind; 5] = [
        PrincipalKind::User,
        PrincipalKind::Group,
        PrincipalKind::ServicePrincipal,
        PrincipalKind::ManagedIdentity,
        PrincipalKind::WorkloadIdentity,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "User",
            PrincipalKind::Group => "Group",
            PrincipalKind::ServicePrincipal => "ServicePrincipal",
            PrincipalKind::ManagedIdentity => "ManagedIdentity",
            PrincipalKind::WorkloadIdentity => "WorkloadIdentity",
        }
    }
}

impl std::fmt::Display for PrincipalKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_allowed_roles() -> Vec<RoleName> {
    vec![RoleName::OpenAIUser]
}

fn default_allowed_principal_kinds() -> Vec<PrincipalKind> {
    PrincipalKind::ALL.to_vec()
}

fn default_true() -> bool {
    true
}

/// What keyless observed of the account, and whether its grants are in place.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenAIAccountStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling, Stalled, KeylessOnly, TokenAuthSupported, Conflict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The normalized scope role assignments are made at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The account's name in Azure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_name: Option<String>,
    /// The account's endpoint, as ARM reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// OpenAI or AIServices (or another Cognitive Services kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// True when API keys are disabled on the account (ARM's disableLocalAuth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_auth_disabled: Option<bool>,
    /// The custom subdomain Entra ID token authentication needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_sub_domain_name: Option<String>,
    /// Grants keyless holds on this account, by state (e.g. "12 granted, 1 pending").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Who can call the account, and why: every role assignment at the account or inherited from
    /// above it whose role grants Cognitive Services data actions or lets its holder list the API
    /// keys, counted by origin, from keyless's last list of the account's role assignments. Group
    /// members are not expanded, and assignments at scopes below the account (Foundry projects)
    /// are not listed. `keyless report` shows the whole matrix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccountAccess>,
    /// Under management Observe: the role assignment writes keyless would send now, in the order
    /// it would send them (at most 100; `plannedWritesOmitted` counts the rest). What Manage then
    /// does is the plan of that moment: it may differ if anything changes in between. Empty
    /// under Manage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub planned_writes: Vec<PlannedWrite>,
    /// How many planned writes there are beyond the list.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub planned_writes_omitted: u32,
    /// Under enforcement Exclusive: the assignments made outside keyless that keyless will revoke,
    /// each with when it was first reported here. Revoked once the controller's grace has passed
    /// since then; an assignment not listed here is never revoked. At most 100.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub exclusive_revocations: Vec<ExclusiveRevocation>,
}

/// An assignment enforcement Exclusive will revoke.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExclusiveRevocation {
    /// The role assignment's name (a GUID).
    pub assignment_name: String,
    /// The principal's Entra object id.
    pub principal_id: String,
    /// The role definition's GUID.
    pub role_definition_id: String,
    /// Who made it (ARM's `createdBy` object id), when ARM says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// When keyless first reported it: it is revoked once the grace has passed since.
    pub reported_at: crate::api::common::Time,
}

/// One role assignment write keyless would send under Manage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedWrite {
    /// Create (PUT a new assignment), Delete, or Release (re-PUT without keyless's marker).
    pub action: PlannedAction,
    /// The role assignment's name (a GUID).
    pub assignment_name: String,
    /// The principal's Entra object id.
    pub principal_id: String,
    /// The role definition's GUID.
    pub role_definition_id: String,
    /// The OpenAIAccess that declares it (creates) or why it goes (deletes and releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub because: Option<String>,
}

/// The kind of a planned write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PlannedAction {
    Create,
    Delete,
    Release,
}

impl PlannedAction {
    pub const fn as_str(self) -> &'static str {
        match self {
            PlannedAction::Create => "Create",
            PlannedAction::Delete => "Delete",
            PlannedAction::Release => "Release",
        }
    }
}

/// Who can call an account, by origin. Object ids only: names are not kept in cluster status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountAccess {
    /// Assignments made by this keyless instance.
    #[serde(default)]
    pub managed: u32,
    /// Assignments made by someone else and adopted by an OpenAIAccess (never deleted by keyless).
    #[serde(default)]
    pub adopted: u32,
    /// Assignments keyless made and then released (deletion policy Retain).
    #[serde(default)]
    pub released: u32,
    /// Assignments made by another keyless instance (its ownership marker names that instance).
    #[serde(default)]
    pub other_instance: u32,
    /// Assignments made at the account outside keyless: the portal, Bicep, Terraform, scripts.
    #[serde(default)]
    pub foreign: u32,
    /// Assignments at the resource group, subscription or management groups above the account.
    #[serde(default)]
    pub inherited: u32,
    /// Principals whose role can list the account's API keys (they can call it with a key while
    /// disableLocalAuth is false).
    #[serde(default)]
    pub key_readers: u32,
    /// Assignments whose role definition could not be read: counted in their origin, and listed
    /// by `keyless report` as unknown rather than hidden.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unknown_roles: u32,
    /// Object ids of the principals of foreign assignments, sorted, at most 50.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign_principals: Vec<String>,
    /// How many more foreign principals there are beyond the list.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub foreign_principals_omitted: u32,
    /// Object ids of the principals of inherited assignments, sorted, at most 50.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inherited_principals: Vec<String>,
    /// How many more inherited principals there are beyond the list.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inherited_principals_omitted: u32,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}
