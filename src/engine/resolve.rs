//! Resolve: every principal of every OpenAIAccess on a scope to an Entra object id, each distinct
//! principal once per pass. Failures become `Resolution::Unresolved` (which protects the grant the
//! principal had) or `Resolution::Denied` (a federation finding), never an aborted pass.

use crate::api::{OpenAIAccessStatus, PrincipalRef, reasons};
use crate::azure::{AzureError, AzureErrorKind, Directory, ManagedIdentities};
use crate::plan::planner::pinned_object_id;
use crate::plan::{ObjectKey, PrincipalType, Resolution};
use std::collections::BTreeMap;

/// The ServiceAccount annotation Azure workload identity reads.
pub const CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";

/// What the front end knows about a ServiceAccount an OpenAIAccess names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceAccountInfo {
    /// `azure.workload.identity/client-id`, if annotated.
    pub client_id: Option<String>,
}

/// How to check workload identity federation.
#[derive(Clone, Debug, Default)]
pub struct FederationCheck {
    /// Require a federated credential for exactly this ServiceAccount.
    pub required: bool,
    /// This cluster's service account issuer; when unknown only the subject is checked.
    pub issuer: Option<String>,
}

/// Successful resolutions (and account postures) kept across passes, so a resync of an unchanged account costs its one
/// LIST and not a Graph or ARM read per principal. Not decision-critical: a miss (after a restart
/// or past the TTL) only means looking the principal up again, which also notices an identity that
/// was deleted and re-created with a new object id.
#[derive(Debug)]
pub struct ResolutionCache {
    ttl: std::time::Duration,
    entries:
        std::sync::Mutex<std::collections::HashMap<CacheKey, (Resolution, std::time::Instant)>>,
    // The account's posture, re-read once per TTL: the LIST alone notices an account that is gone
    // (ARM answers 404 at its scope).
    accounts: std::sync::Mutex<
        std::collections::HashMap<
            crate::plan::AccountScope,
            (crate::azure::AccountInfo, std::time::Instant),
        >,
    >,
}

// (namespace for ServiceAccounts, the principal, the ServiceAccount's client id annotation).
type CacheKey = (String, PrincipalRef, Option<String>);

impl ResolutionCache {
    pub fn new(ttl: std::time::Duration) -> ResolutionCache {
        ResolutionCache {
            ttl,
            entries: Default::default(),
            accounts: Default::default(),
        }
    }

    pub(crate) fn account(
        &self,
        scope: &crate::plan::AccountScope,
    ) -> Option<crate::azure::AccountInfo> {
        let accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        accounts
            .get(scope)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(a, _)| a.clone())
    }

    pub(crate) fn put_account(
        &self,
        scope: &crate::plan::AccountScope,
        info: &crate::azure::AccountInfo,
    ) {
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        accounts.insert(scope.clone(), (info.clone(), std::time::Instant::now()));
    }

    pub(crate) fn forget_account(&self, scope: &crate::plan::AccountScope) {
        self.accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(scope);
    }

    fn get(&self, key: &CacheKey) -> Option<Resolution> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(r, _)| r.clone())
    }

    fn put(&self, key: CacheKey, resolution: &Resolution) {
        if matches!(resolution, Resolution::Resolved { .. }) {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries.retain(|_, (_, at)| at.elapsed() < self.ttl);
            entries.insert(key, (resolution.clone(), std::time::Instant::now()));
        }
    }
}

/// Resolves principals, memoizing each distinct lookup for the pass.
pub struct Resolver<'a> {
    pub directory: &'a dyn Directory,
    pub identities: &'a dyn ManagedIdentities,
    pub service_accounts: &'a BTreeMap<ObjectKey, ServiceAccountInfo>,
    pub federation: FederationCheck,
    cache: BTreeMap<(String, PrincipalRef), Resolution>,
    shared: Option<&'a ResolutionCache>,
    /// Findings worth an event: an identity federated with other namespaces' ServiceAccounts.
    pub findings: Vec<(ObjectKey, String)>,
}

impl<'a> Resolver<'a> {
    pub fn new(
        directory: &'a dyn Directory,
        identities: &'a dyn ManagedIdentities,
        service_accounts: &'a BTreeMap<ObjectKey, ServiceAccountInfo>,
        federation: FederationCheck,
        shared: Option<&'a ResolutionCache>,
    ) -> Resolver<'a> {
        Resolver {
            directory,
            identities,
            service_accounts,
            federation,
            cache: BTreeMap::new(),
            shared,
            findings: Vec::new(),
        }
    }

    /// Resolves one principal of the object `key` (namespace matters for ServiceAccounts).
    pub async fn resolve(
        &mut self,
        key: &ObjectKey,
        principal: &PrincipalRef,
        previous: Option<&OpenAIAccessStatus>,
        generation: Option<i64>,
    ) -> Resolution {
        // A group name resolved at this generation stays pinned: a later rename of another group to
        // this name cannot capture the grant.
        if let PrincipalRef::GroupName(_) = principal
            && let Some((object_id, principal_type)) =
                pinned_object_id(previous, principal, generation)
        {
            return Resolution::Resolved {
                object_id: object_id.to_string(),
                principal_type,
            };
        }
        let cache_key = (
            match principal {
                PrincipalRef::ServiceAccount(_) => key.namespace.clone(),
                _ => String::new(),
            },
            principal.clone(),
        );
        if let Some(hit) = self.cache.get(&cache_key) {
            return hit.clone();
        }
        let shared_key = (
            cache_key.0.clone(),
            principal.clone(),
            match principal {
                PrincipalRef::ServiceAccount(name) => self
                    .service_accounts
                    .get(&ObjectKey {
                        namespace: key.namespace.clone(),
                        name: name.clone(),
                    })
                    .and_then(|sa| sa.client_id.clone()),
                _ => None,
            },
        );
        if let Some(hit) = self.shared.and_then(|shared| shared.get(&shared_key)) {
            self.cache.insert(cache_key, hit.clone());
            return hit;
        }
        let resolution = self.lookup(key, principal).await;
        if let Some(shared) = self.shared {
            shared.put(shared_key, &resolution);
        }
        self.cache.insert(cache_key, resolution.clone());
        resolution
    }

    async fn lookup(&mut self, key: &ObjectKey, principal: &PrincipalRef) -> Resolution {
        match principal {
            PrincipalRef::ObjectId(id, principal_type) => resolved(id, *principal_type),
            PrincipalRef::User(upn) => match self.directory.user_by_upn(upn).await {
                Ok(object) => resolved(&object.id, object.principal_type),
                Err(error) => unresolved(&format!("user {upn}"), &error),
            },
            PrincipalRef::GroupName(name) => match self.directory.group_by_display_name(name).await
            {
                Ok(object) => resolved(&object.id, PrincipalType::Group),
                Err(error) => unresolved(&format!("group {name:?}"), &error),
            },
            PrincipalRef::AppId(app_id) => {
                match self.directory.service_principal_by_app_id(app_id).await {
                    Ok(object) => resolved(&object.id, PrincipalType::ServicePrincipal),
                    Err(error) => unresolved(&format!("service principal of app {app_id}"), &error),
                }
            }
            PrincipalRef::ManagedIdentity(resource_id) => {
                match self.identities.get_identity(resource_id).await {
                    Ok(Some(identity)) => {
                        resolved(&identity.principal_id, PrincipalType::ServicePrincipal)
                    }
                    Ok(None) => Resolution::Unresolved {
                        reason: reasons::RESOLUTION_FAILED.into(),
                        message: format!("managed identity {resource_id} does not exist"),
                        replicating: false,
                    },
                    Err(error) => unresolved(&format!("managed identity {resource_id}"), &error),
                }
            }
            PrincipalRef::ServiceAccount(name) => self.service_account(key, name).await,
        }
    }

    async fn service_account(&mut self, key: &ObjectKey, name: &str) -> Resolution {
        let sa_key = ObjectKey {
            namespace: key.namespace.clone(),
            name: name.to_string(),
        };
        let Some(info) = self.service_accounts.get(&sa_key) else {
            return Resolution::Unresolved {
                reason: "ServiceAccountNotFound".into(),
                message: format!("ServiceAccount {sa_key} does not exist"),
                replicating: false,
            };
        };
        let Some(client_id) = info.client_id.as_deref() else {
            return Resolution::Unresolved {
                reason: "WorkloadIdentityNotConfigured".into(),
                message: format!(
                    "ServiceAccount {sa_key} has no {CLIENT_ID_ANNOTATION} annotation: set it to the client id of the identity it should use"
                ),
                replicating: false,
            };
        };
        let identity = match self.identities.find_identity_by_client_id(client_id).await {
            Ok(identity) => identity,
            Err(error) => {
                return unresolved(&format!("the identity with client id {client_id}"), &error);
            }
        };
        let Some(identity) = identity else {
            // Not a managed identity: an app registration's service principal, found through Graph.
            // Federation of app registrations lives in Graph and is not checked here.
            return match self.directory.service_principal_by_app_id(client_id).await {
                Ok(object) => resolved(&object.id, PrincipalType::ServicePrincipal),
                Err(error) => unresolved(
                    &format!("the service principal with appId {client_id}"),
                    &error,
                ),
            };
        };
        let subject = format!("system:serviceaccount:{}:{}", sa_key.namespace, sa_key.name);
        let credentials = match self
            .identities
            .federated_credentials(&identity.resource_id)
            .await
        {
            Ok(credentials) => credentials,
            Err(error) => {
                return unresolved(
                    &format!("federated credentials of {}", identity.resource_id),
                    &error,
                );
            }
        };
        let issuer_matches = |issuer: &str| {
            self.federation
                .issuer
                .as_deref()
                .is_none_or(|ours| ours.trim_end_matches('/') == issuer.trim_end_matches('/'))
        };
        let federated = credentials
            .iter()
            .any(|c| c.subject == subject && issuer_matches(&c.issuer));
        let others: Vec<&str> = credentials
            .iter()
            .filter(|c| c.subject.starts_with("system:serviceaccount:") && c.subject != subject)
            .filter(|c| {
                !c.subject
                    .starts_with(&format!("system:serviceaccount:{}:", sa_key.namespace))
            })
            .map(|c| c.subject.as_str())
            .collect();
        if !others.is_empty() {
            self.findings.push((
                key.clone(),
                format!("identity {} is also federated with other namespaces' ServiceAccounts ({}): an identity shared across tenants", identity.resource_id, others.join(", ")),
            ));
        }
        if !federated {
            let message = format!(
                "identity {} has no federated credential with subject {subject}{}: add one, or set requireFederation: false on the account",
                identity.resource_id,
                self.federation
                    .issuer
                    .as_deref()
                    .map(|i| format!(" and issuer {i}"))
                    .unwrap_or_default()
            );
            if self.federation.required {
                return Resolution::Denied {
                    reason: reasons::FEDERATION_MISSING.into(),
                    message,
                };
            }
            self.findings.push((key.clone(), message));
        }
        resolved(&identity.principal_id, PrincipalType::ServicePrincipal)
    }
}

fn resolved(object_id: &str, principal_type: PrincipalType) -> Resolution {
    Resolution::Resolved {
        object_id: object_id.to_ascii_lowercase(),
        principal_type,
    }
}

fn unresolved(what: &str, error: &AzureError) -> Resolution {
    // Graph's 404 for a name may be an object still replicating through Entra.
    let replicating = matches!(
        error.kind,
        AzureErrorKind::NotFound | AzureErrorKind::PrincipalNotFound
    );
    Resolution::Unresolved {
        reason: if replicating {
            reasons::REPLICATING.into()
        } else {
            error.kind.as_str().to_string()
        },
        message: format!("could not resolve {what}: {error}"),
        replicating,
    }
}
