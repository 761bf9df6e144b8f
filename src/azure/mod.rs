//! Azure side effects behind small traits of domain verbs. The engine (and so file mode and the
//! controller) is generic over these traits; the HTTP implementations talk to ARM, Graph and Entra,
//! and the tests run them against the Azure emulator over real HTTPS.

pub mod arm;
pub mod cloud;
pub mod config;
pub mod credential;
pub mod error;
pub mod graph;
pub mod http;
pub mod pacing;
pub mod retry;

pub use arm::ArmClient;
pub use cloud::{AzureCloud, CloudEndpoints};
pub use config::{AzureArgs, AzureConfig};
pub use credential::{CredentialChoice, CredentialDecision};
pub use error::{AzureError, AzureErrorKind, RetryDecision};
pub use graph::GraphClient;
pub use pacing::RateLimitRemaining;

use crate::plan::{AccountScope, NewAssignment, ObservedAssignment, PrincipalType};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

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

/// Everything one `atScope()` LIST returned: the assignments at the account (the planner's) and
/// those inherited from above it (the access report's).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeListing {
    pub at_scope: Vec<ObservedAssignment>,
    /// At the resource group, subscription, management groups or root above the account.
    pub inherited: Vec<ObservedAssignment>,
    /// ARM's `createdBy` (an object id) by lower-case assignment id, where ARM reports it.
    pub created_by: BTreeMap<String, String>,
}

impl ScopeListing {
    /// Every assignment that applies to the account: at it, then inherited.
    pub fn all(&self) -> impl Iterator<Item = &ObservedAssignment> {
        self.at_scope.iter().chain(&self.inherited)
    }
}

/// Role assignments at one account scope (ARM `Microsoft.Authorization/roleAssignments`, 2022-04-01).
#[async_trait]
pub trait RoleAssignments: Send + Sync {
    /// One `atScope()` LIST (every page), filtered in code to exactly this scope.
    async fn observe_scope(
        &self,
        scope: &AccountScope,
    ) -> Result<Vec<ObservedAssignment>, AzureError>;
    /// The same one LIST, keeping what is inherited from above the account as well. Implementations
    /// that only know the account's own assignments report nothing inherited.
    async fn observe_scope_listing(
        &self,
        scope: &AccountScope,
    ) -> Result<ScopeListing, AzureError> {
        Ok(ScopeListing {
            at_scope: self.observe_scope(scope).await?,
            ..ScopeListing::default()
        })
    }
    /// A PUT with the planner's name, always sending `principalType` and the ownership marker.
    async fn create_assignment(&self, assignment: &NewAssignment) -> Result<Created, AzureError>;
    /// DELETE by full assignment id; 204 (already gone) is success.
    async fn delete_assignment(&self, assignment_id: &str) -> Result<Deleted, AzureError>;
}

/// ARM role definitions (`Microsoft.Authorization/roleDefinitions`, 2022-04-01), read to tell which
/// assignments let their principal call an account or read its keys.
#[async_trait]
pub trait RoleDefinitions: Send + Sync {
    /// The definition with this GUID as seen from the account scope (built-in and custom roles
    /// assignable there), cached for the configured time: definitions rarely change.
    async fn role_definition(
        &self,
        scope: &AccountScope,
        role_definition_guid: &str,
    ) -> Result<crate::report::RoleDefinition, AzureError>;
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
    /// The federated credentials of the application object with this app id
    /// (`GET /applications(appId='…')/federatedIdentityCredentials`, Application.Read.All).
    /// `Ok(None)` when this tenant holds no such application object (a multi-tenant app from
    /// another tenant). Credentials with a `claimsMatchingExpression` are left out: keyless cannot
    /// evaluate them, so they fail closed.
    async fn application_federated_credentials(
        &self,
        app_id: &str,
    ) -> Result<Option<Vec<FederatedCredential>>, AzureError>;
}

/// Why the Azure clients could not be built. Each is a configuration problem, reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum AzureSetupError {
    #[error("resolve the Azure endpoints")]
    Endpoints(#[from] cloud::CloudError),
    #[error("read the CA file {path}")]
    ReadCaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA file {path} holds no PEM certificate keyless can use")]
    ParseCaFile {
        path: PathBuf,
        #[source]
        source: Option<reqwest::Error>,
    },
    #[error("build the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    #[error("AZURE_AUTHORITY_HOST {value:?} is not an https URL")]
    AuthorityHostEnv { value: String },
    #[error("choose the Azure credential")]
    Credential(#[from] credential::CredentialError),
}

/// The Azure clients the engine works with, built once from the configuration: one reqwest client
/// (one TLS stack, the configured CAs) serves ARM, Graph and the credential.
#[derive(Clone)]
pub struct AzureClients {
    pub role_assignments: Arc<dyn RoleAssignments>,
    pub accounts: Arc<dyn Accounts>,
    pub role_definitions: Arc<dyn RoleDefinitions>,
    pub identities: Arc<dyn ManagedIdentities>,
    pub directory: Arc<dyn Directory>,
    /// The concrete ARM client, for what the traits do not cover (rate-limit headers).
    pub arm: Arc<ArmClient>,
    pub graph: Arc<GraphClient>,
    /// Which credential was chosen and why; `None` when the caller supplied the credential.
    pub credential: Option<CredentialDecision>,
    pub endpoints: CloudEndpoints,
    observer: http::ObserverSlot,
    gate: http::GateSlot,
}

impl std::fmt::Debug for AzureClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureClients")
            .field("arm", &self.arm)
            .field("graph", &self.graph)
            .field("credential", &self.credential)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl AzureClients {
    /// Builds every client from the configuration and the process environment.
    pub fn from_config(config: &AzureConfig) -> Result<AzureClients, AzureSetupError> {
        AzureClients::from_config_with_env(config, &credential::process_env)
    }

    /// As [`from_config`](Self::from_config), reading the environment through `env` (tests pass a map).
    pub fn from_config_with_env(
        config: &AzureConfig,
        env: credential::EnvLookup<'_>,
    ) -> Result<AzureClients, AzureSetupError> {
        let endpoints = resolve_endpoints(config, env)?;
        let http = http_client(config)?;
        let chosen =
            credential::build_credential(&config.credential, &endpoints, http.clone(), env)?;
        Ok(AzureClients::assemble(
            config,
            endpoints,
            http,
            chosen.credential,
            Some(chosen.decision),
        ))
    }

    /// Builds the clients around a credential the caller supplies (tests, embedding).
    pub fn with_credential(
        config: &AzureConfig,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<AzureClients, AzureSetupError> {
        let endpoints = CloudEndpoints::resolve(config.cloud, &config.endpoints)?;
        let http = http_client(config)?;
        Ok(AzureClients::assemble(
            config, endpoints, http, credential, None,
        ))
    }

    fn assemble(
        config: &AzureConfig,
        endpoints: CloudEndpoints,
        http: reqwest::Client,
        credential: Arc<dyn TokenCredential>,
        decision: Option<CredentialDecision>,
    ) -> AzureClients {
        let observer = http::ObserverSlot::default();
        let gate = http::GateSlot::default();
        let arm_api = http::ApiClient::new(
            http::Service::Arm,
            http.clone(),
            credential.clone(),
            endpoints.arm_scope.clone(),
            config.retry,
            config.timeout,
        )
        .with_observer(observer.clone())
        .with_gate(gate.clone());
        let graph_api = http::ApiClient::new(
            http::Service::Graph,
            http,
            credential,
            endpoints.graph_scope.clone(),
            config.retry,
            config.timeout,
        )
        .with_observer(observer.clone());
        let arm = Arc::new(ArmClient::new(
            arm_api,
            &endpoints,
            pacing::Pacer::new(config.pacing),
            arm::ArmSettings {
                identity_subscriptions: config.identity_subscriptions.clone(),
                identity_cache_ttl: config.identity_cache_ttl,
                role_definition_cache_ttl: config.role_definition_cache_ttl,
            },
        ));
        let graph = Arc::new(GraphClient::new(graph_api, &endpoints));
        AzureClients {
            role_assignments: arm.clone(),
            accounts: arm.clone(),
            role_definitions: arm.clone(),
            identities: arm.clone(),
            directory: graph.clone(),
            arm,
            graph,
            credential: decision,
            endpoints,
            observer,
            gate,
        }
    }

    /// Consults `gate` just before every ARM write attempt (after pacing and backoff); a closed
    /// gate fails the write with [`AzureErrorKind::Fenced`] and nothing is sent. Graph is only read.
    pub fn fence_writes(&self, gate: Arc<http::WriteGate>) {
        self.gate.set(gate);
    }

    /// Reports every ARM and Graph request (service, operation, status or 0) to `observer`.
    pub fn observe_requests(&self, observer: Arc<http::RequestObserver>) {
        self.observer.set(observer);
    }
}

/// The endpoints: the cloud's, the flags' overrides, and for the authority host the
/// `AZURE_AUTHORITY_HOST` the workload identity webhook injects (the pod's cloud) when no flag set it.
pub fn resolve_endpoints(
    config: &AzureConfig,
    env: credential::EnvLookup<'_>,
) -> Result<CloudEndpoints, AzureSetupError> {
    let mut overrides = config.endpoints.clone();
    if overrides.authority_host.is_none()
        && let Some(value) = env("AZURE_AUTHORITY_HOST")
    {
        let url = url::Url::parse(&value)
            .ok()
            .filter(|url| url.scheme() == "https")
            .ok_or(AzureSetupError::AuthorityHostEnv { value })?;
        overrides.authority_host = Some(url);
    }
    Ok(CloudEndpoints::resolve(config.cloud, &overrides)?)
}

/// The one reqwest client: system roots plus the configured CA files, a connect timeout, no
/// redirects (ARM and Graph do not redirect, and a redirect must never carry a token elsewhere).
pub fn http_client(config: &AzureConfig) -> Result<reqwest::Client, AzureSetupError> {
    let mut certificates = Vec::new();
    for path in &config.ca_files {
        let pem = std::fs::read(path).map_err(|source| AzureSetupError::ReadCaFile {
            path: path.clone(),
            source,
        })?;
        let found = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
            AzureSetupError::ParseCaFile {
                path: path.clone(),
                source: Some(source),
            }
        })?;
        if found.is_empty() {
            return Err(AzureSetupError::ParseCaFile {
                path: path.clone(),
                source: None,
            });
        }
        certificates.extend(found);
    }
    reqwest::Client::builder()
        .user_agent(concat!("keyless/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(config.timeout.min(std::time::Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_merge(certificates)
        .build()
        .map_err(AzureSetupError::HttpClient)
}
