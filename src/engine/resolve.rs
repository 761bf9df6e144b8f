//! Resolve: every *eligible* principal of every OpenAIAccess on a scope to an Entra object id, each
//! distinct principal once per pass. The resolver gathers facts only — an object id, a type, and
//! for a ServiceAccount what its identity's federated credentials say about this cluster's issuer
//! and this ServiceAccount's subject. It decides nothing: the planner's authorisation stage decides
//! federation and policy every pass, for every account. Failures become `Resolution::Unresolved`
//! with a lasting or temporary cause, never an aborted pass.

use crate::api::{OpenAIAccessStatus, PrincipalRef, reasons};
use crate::azure::{AzureError, AzureErrorKind, Directory, ManagedIdentities};
use crate::plan::planner::pinned_object_id;
use crate::plan::{
    CredentialMatch, Failure, FederationFacts, IdentityKind, ObjectKey, PrincipalType, Resolution,
};
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash};

/// The ServiceAccount annotation Azure workload identity reads.
pub const CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";

/// What the front end knows about a ServiceAccount an OpenAIAccess names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceAccountInfo {
    /// `azure.workload.identity/client-id`, if annotated.
    pub client_id: Option<String>,
}

/// The token exchange audiences a federated credential must name (public, US Government, China).
pub const TOKEN_EXCHANGE_AUDIENCES: [&str; 3] = [
    "api://AzureADTokenExchange",
    "api://AzureADTokenExchangeUSGov",
    "api://AzureADTokenExchangeChina",
];

/// How to gather federation facts. Whether federation is required is not here: that is the
/// account's decision, made by the planner.
#[derive(Clone, Debug, Default)]
pub struct FederationCheck {
    /// This cluster's service account issuer; when unknown a matching subject yields
    /// `CredentialMatch::IssuerUnknown`, which fails closed where federation is required.
    pub issuer: Option<String>,
}

/// Facts kept across passes — identities and directory objects for `ttl`, federated credentials
/// (a ServiceAccount's resolution) for a shorter, jittered `federation_ttl` — so a resync of an
/// unchanged account costs its one LIST and not a Graph or ARM read per principal. Facts, never
/// decisions: every account decides federation and policy from them every pass, so a warm and a
/// cold cache plan the same writes. A miss only means looking the principal up again.
#[derive(Debug)]
pub struct ResolutionCache {
    ttl: std::time::Duration,
    federation_ttl: std::time::Duration,
    jitter: std::collections::hash_map::RandomState,
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
    // Managed identities by resource id (lowercase), as ARM returned them: the resolver fills it,
    // and endpoint export reads the client id from it instead of a GET per object per pass.
    identities: std::sync::Mutex<
        std::collections::HashMap<String, (crate::azure::ManagedIdentity, std::time::Instant)>,
    >,
    // Entries at the last sweep of expired ones: the next sweep waits until the map has doubled,
    // so inserts cost O(1) amortized instead of a scan each.
    swept_at_len: std::sync::atomic::AtomicUsize,
}

// (namespace for ServiceAccounts, the principal, the ServiceAccount's client id annotation).
type CacheKey = (String, PrincipalRef, Option<String>);

impl ResolutionCache {
    /// Federation facts are kept for a quarter of `ttl` (at most two minutes) unless
    /// [`with_federation_ttl`](Self::with_federation_ttl) says otherwise.
    pub fn new(ttl: std::time::Duration) -> ResolutionCache {
        ResolutionCache {
            ttl,
            federation_ttl: (ttl / 4).min(std::time::Duration::from_secs(120)),
            jitter: std::collections::hash_map::RandomState::new(),
            entries: Default::default(),
            accounts: Default::default(),
            identities: Default::default(),
            swept_at_len: Default::default(),
        }
    }

    /// How long a ServiceAccount's federation facts are kept: each entry between 3/4 of this and
    /// all of it (jittered, so entries do not expire together), so a removed federated credential
    /// stops counting soon.
    pub fn with_federation_ttl(mut self, federation_ttl: std::time::Duration) -> ResolutionCache {
        self.federation_ttl = federation_ttl;
        self
    }

    fn ttl_of(&self, key: &CacheKey) -> std::time::Duration {
        if !matches!(key.1, PrincipalRef::ServiceAccount(_)) {
            return self.ttl;
        }
        let mut hasher = self.jitter.build_hasher();
        key.hash(&mut hasher);
        let fraction = (std::hash::Hasher::finish(&hasher) % 1000) as u32;
        self.federation_ttl * 3 / 4 + self.federation_ttl / 4 * fraction / 1000
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

    /// A managed identity read from ARM within the TTL.
    pub fn identity(&self, resource_id: &str) -> Option<crate::azure::ManagedIdentity> {
        let identities = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        identities
            .get(&resource_id.to_ascii_lowercase())
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(i, _)| i.clone())
    }

    pub fn put_identity(&self, resource_id: &str, identity: &crate::azure::ManagedIdentity) {
        let mut identities = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        identities.insert(
            resource_id.to_ascii_lowercase(),
            (identity.clone(), std::time::Instant::now()),
        );
    }

    fn get(&self, key: &CacheKey) -> Option<Resolution> {
        let ttl = self.ttl_of(key);
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(r, _)| r.clone())
    }

    // Only facts are cached: a resolved object (with its federation facts); never a failure. A
    // ServiceAccount whose credentials do not (yet) federate it is not cached either, so a
    // credential someone adds counts at the next pass; one someone removes stops counting within
    // the federation TTL.
    fn put(&self, key: CacheKey, resolution: &Resolution) {
        let cacheable = match resolution {
            Resolution::Resolved { federation, .. } => federation
                .as_ref()
                .is_none_or(|f| f.credential == CredentialMatch::Federated),
            Resolution::Unresolved { .. } | Resolution::NotLookedUp => false,
        };
        if cacheable {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let swept = self.swept_at_len.load(std::sync::atomic::Ordering::Relaxed);
            if entries.len() >= swept.saturating_mul(2).max(64) {
                // Expired entries are never read (`get` checks the age); this only bounds memory.
                entries.retain(|_, (_, at)| at.elapsed() < self.ttl);
                self.swept_at_len
                    .store(entries.len(), std::sync::atomic::Ordering::Relaxed);
            }
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
    ) -> Resolution {
        // A group name stays pinned to what its entry resolved to until the entry's text changes: a
        // later rename of another group to this name cannot capture the grant.
        if let PrincipalRef::GroupName(_) = principal
            && let Some((object_id, principal_type)) = pinned_object_id(previous, principal)
        {
            return Resolution::Resolved {
                object_id: object_id.to_string(),
                principal_type,
                federation: None,
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
                        if let Some(shared) = self.shared {
                            shared.put_identity(resource_id, &identity);
                        }
                        resolved(&identity.principal_id, PrincipalType::ServicePrincipal)
                    }
                    Ok(None) => Resolution::Unresolved {
                        reason: reasons::RESOLUTION_FAILED.into(),
                        message: format!("managed identity {resource_id} does not exist"),
                        failure: Failure::Lasting,
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
                failure: Failure::Lasting,
            };
        };
        let Some(client_id) = info.client_id.as_deref() else {
            return Resolution::Unresolved {
                reason: "WorkloadIdentityNotConfigured".into(),
                message: format!(
                    "ServiceAccount {sa_key} has no {CLIENT_ID_ANNOTATION} annotation: set it to the client id of the identity it should use"
                ),
                failure: Failure::Lasting,
            };
        };
        let identity = match self.identities.find_identity_by_client_id(client_id).await {
            Ok(identity) => identity,
            Err(error) => {
                return unresolved(&format!("the identity with client id {client_id}"), &error);
            }
        };
        let subject = format!("system:serviceaccount:{}:{}", sa_key.namespace, sa_key.name);
        let Some(identity) = identity else {
            // Not a managed identity: an app registration. Its service principal is the object to
            // grant; its *application* object's federated credentials say whether this
            // ServiceAccount may use it. The planner decides what the facts allow.
            let object = match self.directory.service_principal_by_app_id(client_id).await {
                Ok(object) => object,
                Err(error) => {
                    return unresolved(
                        &format!("the service principal with appId {client_id}"),
                        &error,
                    );
                }
            };
            let credential = match self
                .directory
                .application_federated_credentials(client_id)
                .await
            {
                Ok(Some(credentials)) => {
                    self.credential_match(&credentials, &subject, &format!("app {client_id}"))
                }
                // The application object lives in another tenant: its credentials cannot be
                // read here, so it fails closed.
                Ok(None) => CredentialMatch::NotFederated {
                    detail: format!(
                        "the application object of app {client_id} is not in this tenant, so its federation cannot be checked"
                    ),
                },
                Err(error) => {
                    return unresolved(
                        &format!("federated credentials of app {client_id}"),
                        &error,
                    );
                }
            };
            return Resolution::Resolved {
                object_id: object.id.to_ascii_lowercase(),
                principal_type: PrincipalType::ServicePrincipal,
                federation: Some(FederationFacts {
                    via: IdentityKind::Application,
                    identity: format!("app {client_id}"),
                    credential,
                }),
            };
        };
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
        let credential = self.credential_match(&credentials, &subject, &identity.resource_id);
        Resolution::Resolved {
            object_id: identity.principal_id.to_ascii_lowercase(),
            principal_type: PrincipalType::ServicePrincipal,
            federation: Some(FederationFacts {
                via: IdentityKind::ManagedIdentity,
                identity: identity.resource_id.clone(),
                credential,
            }),
        }
    }

    /// Whether a credential trusts exactly `subject` from this cluster's issuer, for the token
    /// exchange audience.
    fn credential_match(
        &self,
        credentials: &[crate::azure::FederatedCredential],
        subject: &str,
        identity: &str,
    ) -> CredentialMatch {
        let audience_ok = |c: &crate::azure::FederatedCredential| {
            c.audiences
                .iter()
                .any(|a| TOKEN_EXCHANGE_AUDIENCES.contains(&a.as_str()))
        };
        let candidates: Vec<&crate::azure::FederatedCredential> = credentials
            .iter()
            .filter(|c| c.subject == subject && audience_ok(c))
            .collect();
        match self.federation.issuer.as_deref() {
            None if !candidates.is_empty() => CredentialMatch::IssuerUnknown,
            None => CredentialMatch::NotFederated {
                detail: format!(
                    "{identity} has no federated credential with subject {subject} and audience api://AzureADTokenExchange"
                ),
            },
            Some(ours) => {
                let same =
                    |issuer: &str| ours.trim_end_matches('/') == issuer.trim_end_matches('/');
                if candidates.iter().any(|c| same(&c.issuer)) {
                    CredentialMatch::Federated
                } else {
                    CredentialMatch::NotFederated {
                        detail: format!(
                            "{identity} has no federated credential with subject {subject}, issuer {ours} and audience api://AzureADTokenExchange"
                        ),
                    }
                }
            }
        }
    }
}

fn resolved(object_id: &str, principal_type: PrincipalType) -> Resolution {
    Resolution::Resolved {
        object_id: object_id.to_ascii_lowercase(),
        principal_type,
        federation: None,
    }
}

fn unresolved(what: &str, error: &AzureError) -> Resolution {
    // Graph's 404 for a name may be an object still replicating through Entra; an ambiguous name
    // or a malformed one will not fix itself; anything else (5xx, 429, timeouts, permissions being
    // granted) may resolve next pass.
    let failure = match error.kind {
        AzureErrorKind::NotFound | AzureErrorKind::PrincipalNotFound => Failure::Replicating,
        AzureErrorKind::Ambiguous
        | AzureErrorKind::BadRequest
        | AzureErrorKind::UnmatchedPrincipalType => Failure::Lasting,
        _ => Failure::Temporary,
    };
    Resolution::Unresolved {
        reason: if failure == Failure::Replicating {
            reasons::REPLICATING.into()
        } else {
            error.kind.as_str().to_string()
        },
        message: format!("could not resolve {what}: {error}"),
        failure,
    }
}
