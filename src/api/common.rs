//! Types shared by both CRDs: deletion policy, condition types and reasons, schema helpers.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};

/// The API group of every keyless resource.
pub const GROUP: &str = "keyless.dev";
/// The finalizer keyless puts on objects whose deletion must revoke grants first.
pub const CLEANUP_FINALIZER: &str = "keyless.dev/cleanup";

/// Regular expressions used in the CRD schemas (and so checked by the apiserver).
pub mod patterns {
    /// A GUID in its 8-4-4-4-12 form, any case.
    pub const GUID: &str =
        r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
    /// The ARM id of a Cognitive Services account.
    pub const ACCOUNT_RESOURCE_ID: &str = r"^/(?i:subscriptions)/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}/(?i:resourceGroups)/[-\w\._\(\)]{1,90}/(?i:providers/Microsoft\.CognitiveServices/accounts)/[a-zA-Z0-9][a-zA-Z0-9-]{1,63}$";
    /// The ARM id of a user-assigned managed identity.
    pub const MANAGED_IDENTITY_ID: &str = r"^/(?i:subscriptions)/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}/(?i:resourceGroups)/[-\w\._\(\)]{1,90}/(?i:providers/Microsoft\.ManagedIdentity/userAssignedIdentities)/[a-zA-Z0-9][a-zA-Z0-9_-]{2,127}$";
    /// A user principal name: local part, '@', domain.
    pub const USER_PRINCIPAL_NAME: &str = r"^[^@\s]+@[^@\s]+\.[^@\s]+$";
    /// A DNS-1123 label (namespace names).
    pub const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
    /// A DNS-1123 subdomain (ServiceAccount, ConfigMap and OpenAIAccount names).
    pub const DNS_SUBDOMAIN: &str =
        r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
}

/// What happens to the role assignments keyless created when the object that declared them goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Revoke the role assignments keyless created (unless another object still declares them).
    #[default]
    Delete,
    /// Leave the role assignments in place; keyless stops managing them.
    Retain,
}

/// Condition types (kstatus: `Ready`, `Reconciling`, `Stalled`, so Flux, Argo CD and `kubectl wait`
/// read health).
pub mod condition_types {
    pub const READY: &str = "Ready";
    pub const RECONCILING: &str = "Reconciling";
    pub const STALLED: &str = "Stalled";
    /// On OpenAIAccount: False while the account still accepts API keys.
    pub const KEYLESS_ONLY: &str = "KeylessOnly";
    /// On OpenAIAccount: False when Entra tokens cannot work (no custom subdomain).
    pub const TOKEN_AUTH_SUPPORTED: &str = "TokenAuthSupported";
    /// On OpenAIAccount: True when another account registers the same resource id first.
    pub const CONFLICT: &str = "Conflict";
    /// On OpenAIAccount: True when another keyless installation writes markers with this one's
    /// instance id (another fingerprint): nothing on the account is deleted while it lasts.
    pub const INSTANCE_ID_COLLISION: &str = "InstanceIdCollision";
    /// On OpenAIAccount: True under management Manage; False (reason `Observe`) while keyless only
    /// plans and reports.
    pub const MANAGED: &str = "Managed";
    /// On OpenAIAccount under enforcement Exclusive: True while assignments made outside keyless
    /// are listed for revocation (status.exclusiveRevocations) and the grace has not passed; its
    /// message says which and when.
    pub const EXCLUSIVE_REVOCATIONS_PENDING: &str = "ExclusiveRevocationsPending";
    /// On OpenAIAccount: False when enforcement Exclusive revokes nothing this pass (another
    /// instance on the account, an incomplete view, an unresolved declaration); its message says why.
    pub const EXCLUSIVE_ENFORCED: &str = "ExclusiveEnforced";
}

/// Reasons used in conditions, per-principal status and events. A bounded set: safe as metric labels.
pub mod reasons {
    pub const GRANTED: &str = "Granted";
    pub const PROPAGATING: &str = "Propagating";
    pub const ADOPTED: &str = "Adopted";
    pub const PENDING: &str = "Pending";
    pub const REPLICATING: &str = "PrincipalReplicating";
    pub const RESOLUTION_FAILED: &str = "ResolutionFailed";
    pub const NAMESPACE_NOT_ALLOWED: &str = "NamespaceNotAllowed";
    pub const ROLE_NOT_ALLOWED: &str = "RoleNotAllowed";
    pub const PRINCIPAL_KIND_NOT_ALLOWED: &str = "PrincipalKindNotAllowed";
    pub const FEDERATION_MISSING: &str = "FederationMissing";
    pub const ACCOUNT_NOT_FOUND: &str = "AccountNotFound";
    pub const AZURE_ACCOUNT_NOT_FOUND: &str = "AzureAccountNotFound";
    pub const EXPIRED: &str = "Expired";
    pub const REVOKED: &str = "Revoked";
    /// A delete of an assignment made outside keyless, under enforcement Exclusive.
    pub const NOT_DECLARED: &str = "NotDeclared";
    pub const RETAINED: &str = "Retained";
    pub const STILL_DECLARED: &str = "StillDeclaredElsewhere";
    pub const DELETE_LIMIT: &str = "DeleteLimitReached";
    pub const ARM_ERROR: &str = "AzureError";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const CONFLICT: &str = "DuplicateResourceId";
    pub const RECONCILED: &str = "Reconciled";
    pub const PROGRESSING: &str = "Progressing";
    /// The namespace's labels are not known yet and its name is not listed: nothing is created or
    /// deleted for it until they are.
    pub const NAMESPACE_UNKNOWN: &str = "NamespaceUnknown";
    /// deletionPolicy Retain on an account that does not allow it (treated as Delete).
    pub const RETAIN_NOT_ALLOWED: &str = "RetainNotAllowed";
    /// The service account issuer is not known, so federation cannot be checked.
    pub const ISSUER_UNKNOWN: &str = "ServiceAccountIssuerUnknown";
    /// A released or adopted assignment that still grants access after keyless stopped managing it.
    pub const STILL_GRANTED: &str = "StillGranted";
    /// The replacement of a changed principal must propagate before the old grant goes.
    pub const REPLACEMENT_PROPAGATING: &str = "ReplacementPropagating";
    /// Management Observe: what keyless would do, and sends no write for.
    pub const OBSERVE: &str = "Observe";
    pub const MANAGE: &str = "Manage";
    /// Management Observe: the role assignment keyless would create.
    pub const WOULD_CREATE: &str = "WouldCreate";
    /// Management Observe: an existing assignment keyless would adopt (no write either way).
    pub const WOULD_ADOPT: &str = "WouldAdopt";
    /// Management Observe: the role assignment keyless would delete.
    pub const WOULD_DELETE: &str = "WouldDelete";
    /// Management Observe: the role assignment keyless would release (deletionPolicy Retain).
    pub const WOULD_RELEASE: &str = "WouldRelease";
}

// kube-derive marks `Option` fields `nullable: true`. On a one-of field that would let `x: null`
// count as set for `has(self.x)`. Without `nullable`, the apiserver prunes a null before validation,
// so null and absent are the same thing. Used as `#[schemars(transform = not_nullable)]`.
pub(crate) fn not_nullable(schema: &mut schemars::Schema) {
    if let Some(object) = schema.as_object_mut() {
        object.remove("nullable");
        if let Some(serde_json::Value::Array(types)) = object.get_mut("type") {
            types.retain(|t| t != "null");
            if types.len() == 1 {
                let only = types.remove(0);
                object.insert("type".into(), only);
            }
        }
        if let Some(serde_json::Value::Array(values)) = object.get_mut("enum") {
            values.retain(|v| !v.is_null());
        }
        if let Some(serde_json::Value::Array(any_of)) = object.get("anyOf").cloned() {
            let rest: Vec<_> = any_of
                .into_iter()
                .filter(|s| s.get("type").and_then(|t| t.as_str()) != Some("null"))
                .collect();
            if rest.len() == 1 {
                object.remove("anyOf");
                if let Some(serde_json::Value::Object(inner)) = rest.into_iter().next() {
                    for (k, v) in inner {
                        object.entry(k).or_insert(v);
                    }
                }
            }
        }
    }
}
