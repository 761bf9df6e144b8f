//! Azure side effects behind small traits of domain verbs. The engine (and so file mode and the
//! controller) is generic over these traits; the HTTP implementations talk to ARM, Graph and Entra,
//! and the tests run them against the Azure emulator over real HTTPS.

pub mod error;

pub use error::{AzureError, AzureErrorKind, RetryDecision};

use crate::plan::{AccountScope, NewAssignment, ObservedAssignment, PrincipalType};
use async_trait::async_trait;

/// What a create did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// ARM created (201) or confirmed (200) the assignment under our name.
    Created(ObservedAssignment),
    /// 409 `RoleAssignmentExists`: the same (scope, principal, role) already exists under another
    /// name; this is that assignment, to adopt.
    AlreadyExists(ObservedAssignment),
}

/// What a delete did: ARM answers 200 with the body, or 204 when it was already gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    AlreadyGone,
}

/// Role assignments at one account scope (ARM `Microsoft.Authorization/roleAssignments`, 2022-04-01).
#[async_trait]
pub trait RoleAssignments: Send + Sync {
    /// One `atScope()` LIST (every page), filtered in code to exactly this scope.
    async fn observe_scope(
        &self,
        scope: &AccountScope,
    ) -> Result<Vec<ObservedAssignment>, AzureError>;
    /// A PUT with the planner's name, always sending `principalType` and the ownership marker.
    async fn create_assignment(&self, assignment: &NewAssignment) -> Result<Created, AzureError>;
    /// DELETE by full assignment id; 204 (already gone) is success.
    async fn delete_assignment(&self, assignment_id: &str) -> Result<Deleted, AzureError>;
}

/// A Cognitive Services account as ARM reports it (2024-10-01).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountInfo {
    /// `OpenAI`, `AIServices`, or another Cognitive Services kind.
    pub kind: String,
    pub endpoint: Option<String>,
    pub local_auth_disabled: bool,
    pub custom_sub_domain_name: Option<String>,
}

#[async_trait]
pub trait Accounts: Send + Sync {
    /// `Ok(None)` on 404: the account is gone, and with it every role assignment at its scope.
    async fn get_account(&self, scope: &AccountScope) -> Result<Option<AccountInfo>, AzureError>;
}

/// A user-assigned managed identity (Microsoft.ManagedIdentity 2023-01-31).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedIdentity {
    pub resource_id: String,
    /// The object id of its service principal: what a role assignment names.
    pub principal_id: String,
    /// The application (client) id, what workload identity's `azure.workload.identity/client-id` names.
    pub client_id: String,
    pub tenant_id: String,
}

/// A federated identity credential on a user-assigned identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederatedCredential {
    pub name: String,
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
}

#[async_trait]
pub trait ManagedIdentities: Send + Sync {
    /// `Ok(None)` on 404.
    async fn get_identity(&self, resource_id: &str) -> Result<Option<ManagedIdentity>, AzureError>;
    /// Finds the identity with this client id in the configured subscriptions (cached).
    async fn find_identity_by_client_id(
        &self,
        client_id: &str,
    ) -> Result<Option<ManagedIdentity>, AzureError>;
    async fn federated_credentials(
        &self,
        identity_resource_id: &str,
    ) -> Result<Vec<FederatedCredential>, AzureError>;
}

/// A directory object resolved through Microsoft Graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryObject {
    pub id: String,
    pub principal_type: PrincipalType,
    pub display_name: Option<String>,
}

/// Microsoft Graph v1.0, only to resolve names to object ids. Not-found, and several matches for a
/// group name, are errors (`AzureErrorKind::NotFound`, `AzureErrorKind::Ambiguous`) that say which.
#[async_trait]
pub trait Directory: Send + Sync {
    async fn user_by_upn(&self, user_principal_name: &str) -> Result<DirectoryObject, AzureError>;
    async fn group_by_display_name(
        &self,
        display_name: &str,
    ) -> Result<DirectoryObject, AzureError>;
    async fn service_principal_by_app_id(
        &self,
        app_id: &str,
    ) -> Result<DirectoryObject, AzureError>;
    async fn object_by_id(&self, object_id: &str) -> Result<DirectoryObject, AzureError>;
}
