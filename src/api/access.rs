//! `OpenAIAccess`: a team's request for access to a registered account, for a list of principals.

// kube-derive's printcolumn(...) repeats `type_ = ...`, which clippy mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use super::account::PrincipalKind;
use super::common::{Condition, DeletionPolicy, Time, not_nullable, patterns};
use super::roles::RoleName;
use crate::plan::PrincipalType;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Requests an Azure role on a registered OpenAIAccount for a list of principals. keyless creates
/// the role assignments, keeps them in place, and revokes them when they are no longer declared.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "keyless.dev",
    version = "v1alpha1",
    kind = "OpenAIAccess",
    plural = "openaiaccesses",
    singular = "openaiaccess",
    shortname = "oaiaccess",
    shortname = "oai",
    category = "keyless",
    namespaced,
    status = "OpenAIAccessStatus",
    derive = "PartialEq",
    printcolumn(
        name = "Account",
        type_ = "string",
        json_path = ".spec.accountRef.name"
    ),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role"),
    printcolumn(name = "Granted", type_ = "string", json_path = ".status.summary"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Expires",
        type_ = "date",
        json_path = ".spec.expiresAt",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct OpenAIAccessSpec {
    /// The OpenAIAccount to grant access on. Immutable: create a new OpenAIAccess for another account.
    #[x_kube(validation = Rule::new("self == oldSelf").message("accountRef is immutable: create a new OpenAIAccess for another account"))]
    pub account_ref: AccountRef,

    /// The role to grant. Must be one of the account's allowedRoles. Defaults to OpenAIUser.
    /// OpenAIUser (Cognitive Services OpenAI User), OpenAIContributor (Cognitive Services OpenAI
    /// Contributor), CognitiveServicesUser (Cognitive Services User) or FoundryUser (Foundry User;
    /// AzureAIUser, its name before Azure's rename, means the same role).
    #[serde(default = "default_role")]
    pub role: RoleName,

    /// Who gets the role: 1 to 256 principals.
    #[schemars(length(min = 1, max = 256))]
    pub principals: Vec<Principal>,

    /// When set, the grants are revoked after this time (RFC 3339), for time-bound onboarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable)]
    pub expires_at: Option<Time>,

    /// What deleting this object does: Delete (default) revokes the role assignments keyless made
    /// for it (unless another object still declares them); Retain leaves them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Export the account's endpoint for applications in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable)]
    pub export_to: Option<ExportTo>,
}

/// A reference to a cluster-scoped OpenAIAccount.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountRef {
    /// The OpenAIAccount's name.
    #[schemars(length(min = 1, max = 253), pattern(patterns::DNS_SUBDOMAIN))]
    pub name: String,
}

/// Where to export the account's endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportTo {
    /// A ConfigMap in this namespace that keyless writes (and owns) with AZURE_OPENAI_ENDPOINT and,
    /// when exactly one workload or managed identity is listed, AZURE_OPENAI_CLIENT_ID.
    #[schemars(length(min = 1, max = 253), pattern(patterns::DNS_SUBDOMAIN))]
    pub config_map_name: String,
}

/// One principal. Set exactly one of user, groupName, appId, managedIdentity, serviceAccount or
/// objectId (with principalType).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.user) ? 1 : 0) + (has(self.groupName) ? 1 : 0) + (has(self.appId) ? 1 : 0) + (has(self.managedIdentity) ? 1 : 0) + (has(self.serviceAccount) ? 1 : 0) + (has(self.objectId) ? 1 : 0) == 1").message("set exactly one of user, groupName, appId, managedIdentity, serviceAccount or objectId"),
    validation = Rule::new("has(self.objectId) == has(self.principalType)").message("principalType is required with objectId, and only allowed with it")
)]
pub struct Principal {
    /// An Entra user's user principal name (alice@contoso.com), resolved through Microsoft Graph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable, length(max = 256), pattern(patterns::USER_PRINCIPAL_NAME))]
    pub user: Option<String>,

    /// An Entra group's display name, resolved through Microsoft Graph once per spec generation and
    /// then pinned in status: renaming some other group later cannot capture the grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable, length(min = 1, max = 256))]
    pub group_name: Option<String>,

    /// A service principal's application (client) id, resolved through Microsoft Graph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable, length(max = 36), pattern(patterns::GUID))]
    pub app_id: Option<String>,

    /// The ARM id of a user-assigned managed identity:
    /// /subscriptions/{id}/resourceGroups/{group}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable, length(max = 512), pattern(patterns::MANAGED_IDENTITY_ID))]
    pub managed_identity: Option<String>,

    /// The name of a ServiceAccount in this namespace that uses Azure workload identity (annotation
    /// azure.workload.identity/client-id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable, length(max = 253), pattern(patterns::DNS_SUBDOMAIN))]
    pub service_account: Option<String>,

    /// An Entra object id, used as is (no lookup). Also how to name a system-assigned managed
    /// identity. Requires principalType.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable, length(max = 36), pattern(patterns::GUID))]
    pub object_id: Option<String>,

    /// The type of the object named by objectId: User, Group or ServicePrincipal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable)]
    pub principal_type: Option<PrincipalType>,
}

/// A principal, as far as the spec says (before any lookup).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrincipalRef {
    User(String),
    GroupName(String),
    AppId(String),
    ManagedIdentity(String),
    ServiceAccount(String),
    ObjectId(String, PrincipalType),
}

/// The spec's one-of was not respected (the CRD's CEL rules reject this; file mode and a
/// schema-less apiserver might not).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "principals[{index}]: set exactly one of user, groupName, appId, managedIdentity, serviceAccount or objectId (with principalType)"
)]
pub struct InvalidPrincipal {
    pub index: usize,
}

impl Principal {
    /// The single form this principal takes, or None when the one-of is violated.
    pub fn reference(&self) -> Option<PrincipalRef> {
        let mut forms = Vec::with_capacity(1);
        if let Some(v) = &self.user {
            forms.push(PrincipalRef::User(v.clone()));
        }
        if let Some(v) = &self.group_name {
            forms.push(PrincipalRef::GroupName(v.clone()));
        }
        if let Some(v) = &self.app_id {
            forms.push(PrincipalRef::AppId(v.to_ascii_lowercase()));
        }
        if let Some(v) = &self.managed_identity {
            forms.push(PrincipalRef::ManagedIdentity(v.clone()));
        }
        if let Some(v) = &self.service_account {
            forms.push(PrincipalRef::ServiceAccount(v.clone()));
        }
        match (&self.object_id, self.principal_type) {
            (Some(id), Some(t)) => forms.push(PrincipalRef::ObjectId(id.to_ascii_lowercase(), t)),
            (None, None) => {}
            _ => return None,
        }
        match forms.len() {
            1 => forms.pop(),
            _ => None,
        }
    }
}

impl PrincipalRef {
    /// The policy kind of this principal.
    pub fn kind(&self) -> PrincipalKind {
        match self {
            PrincipalRef::User(_) | PrincipalRef::ObjectId(_, PrincipalType::User) => {
                PrincipalKind::User
            }
            PrincipalRef::GroupName(_) | PrincipalRef::ObjectId(_, PrincipalType::Group) => {
                PrincipalKind::Group
            }
            PrincipalRef::AppId(_) | PrincipalRef::ObjectId(_, PrincipalType::ServicePrincipal) => {
                PrincipalKind::ServicePrincipal
            }
            PrincipalRef::ManagedIdentity(_) => PrincipalKind::ManagedIdentity,
            PrincipalRef::ServiceAccount(_) => PrincipalKind::WorkloadIdentity,
        }
    }
}

impl std::fmt::Display for PrincipalRef {
    /// The principal as written, e.g. `user:alice@contoso.com`, used as the key in status.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrincipalRef::User(v) => write!(f, "user:{v}"),
            PrincipalRef::GroupName(v) => write!(f, "groupName:{v}"),
            PrincipalRef::AppId(v) => write!(f, "appId:{v}"),
            PrincipalRef::ManagedIdentity(v) => write!(f, "managedIdentity:{v}"),
            PrincipalRef::ServiceAccount(v) => write!(f, "serviceAccount:{v}"),
            PrincipalRef::ObjectId(v, t) => write!(f, "objectId:{v} ({t})"),
        }
    }
}

fn default_role() -> RoleName {
    RoleName::OpenAIUser
}

/// The state of one principal's grant.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum GrantState {
    /// The role assignment exists in Azure.
    Granted,
    /// Not granted yet: being resolved, replicating, or waiting for the next pass.
    Pending,
    /// keyless could not grant it; the reason and message say why.
    Failed,
    /// The account's policy does not allow it.
    Denied,
    /// The grant was removed (expired, or no longer allowed).
    Revoked,
    // A state this version does not know (written by a newer keyless, before a rollback): read
    // as Unknown so the object stays readable; never written, and not part of the schema.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

impl GrantState {
    pub const fn as_str(self) -> &'static str {
        match self {
            GrantState::Granted => "Granted",
            GrantState::Pending => "Pending",
            GrantState::Failed => "Failed",
            GrantState::Denied => "Denied",
            GrantState::Revoked => "Revoked",
            GrantState::Unknown => "Unknown",
        }
    }
}

/// What keyless did for this OpenAIAccess.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenAIAccessStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling and Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Granted principals out of those listed, e.g. "3/4 granted".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The account scope the grants are made at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The role granted, by its current display name in Azure, e.g. "Cognitive Services OpenAI
    /// User" or "Foundry User".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_display_name: Option<String>,
    /// One entry per principal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<PrincipalStatus>,
}

/// A grant being replaced: the Entra object id and the role it was made for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplacedGrant {
    pub object_id: String,
    pub role: RoleName,
}

/// The grant of one principal.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrincipalStatus {
    /// The principal as written in the spec, e.g. user:alice@contoso.com.
    pub principal: String,
    /// The Entra object id it resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    /// User, Group or ServicePrincipal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_type: Option<PrincipalType>,
    /// The spec generation the object id was last resolved or confirmed at. A group name stays
    /// pinned to the object id until this principal entry's own text changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_generation: Option<i64>,
    /// The role of this principal's grant (a role change is a replacement: see `replaces`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<RoleName>,
    /// The grant this entry held before its principal or role changed. keyless keeps it until the
    /// new grant is past its propagation grace (make-before-break), then deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<ReplacedGrant>,
    /// The ARM id of the role assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_assignment_id: Option<String>,
    /// Granted, Pending, Failed, Denied or Revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<GrantState>,
    /// A CamelCase reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human-readable explanation and, when something must change, what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When ARM created the role assignment (its createdOn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<Time>,
    /// When the principal was first seen unresolvable as possibly replicating; keyless gives up
    /// waiting a configurable time after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_since: Option<Time>,
}
