//! Endpoint export: with `--enable-configmap-export`, `spec.exportTo.configMapName` makes keyless
//! apply a ConfigMap in the object's namespace, owned by it (so it goes with it), holding what
//! keyless-authenticated application code reads: `AZURE_OPENAI_ENDPOINT` and, when exactly one
//! workload identity or managed identity is listed, `AZURE_OPENAI_CLIENT_ID`. Computed at every
//! reconcile but applied only when it differs from what this term last applied
//! ([`ExportMemo`]), rather than watched cluster-wide: keyless needs no ConfigMap watch, and a
//! quiet resync sends no ConfigMap write. A ConfigMap deleted by hand comes back when its data
//! changes or at the next term (restart or leader change). A managed identity's client id comes
//! from the resolution cache the pass filled (one ARM GET per identity per cache TTL, not one per
//! exporting object per pass).

use super::kube_io::FIELD_MANAGER;
use super::service_accounts::ServiceAccounts;
use crate::api::{OpenAIAccessSpec, PrincipalRef};
use crate::azure::ManagedIdentities;
use crate::engine::ResolutionCache;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

pub const ENDPOINT_KEY: &str = "AZURE_OPENAI_ENDPOINT";
pub const CLIENT_ID_KEY: &str = "AZURE_OPENAI_CLIENT_ID";

/// The ConfigMap's data for an OpenAIAccess in `namespace`.
pub async fn export_data(
    namespace: &str,
    spec: &OpenAIAccessSpec,
    endpoint: Option<&str>,
    service_accounts: &ServiceAccounts,
    identities: &dyn ManagedIdentities,
    cache: Option<&ResolutionCache>,
) -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    if let Some(endpoint) = endpoint {
        data.insert(ENDPOINT_KEY.to_string(), endpoint.to_string());
    }
    let workloads: Vec<PrincipalRef> = spec
        .principals
        .iter()
        .filter_map(|p| p.reference())
        .filter(|r| {
            matches!(
                r,
                PrincipalRef::ServiceAccount(_) | PrincipalRef::ManagedIdentity(_)
            )
        })
        .collect();
    // With several identities there is no single right answer: export none rather than guess.
    if let [only] = workloads.as_slice() {
        let client_id = match only {
            PrincipalRef::ServiceAccount(name) => service_accounts.get(namespace, name).flatten(),
            PrincipalRef::ManagedIdentity(id) => match cache.and_then(|c| c.identity(id)) {
                // The pass that granted it has just read it: no second GET.
                Some(identity) => Some(identity.client_id),
                None => {
                    let identity = identities.get_identity(id).await.ok().flatten();
                    if let (Some(cache), Some(identity)) = (cache, &identity) {
                        cache.put_identity(id, identity);
                    }
                    identity.map(|i| i.client_id)
                }
            },
            _ => None,
        };
        if let Some(client_id) = client_id {
            data.insert(CLIENT_ID_KEY.to_string(), client_id);
        }
    }
    data
}

/// Applies the ConfigMap (server-side apply, owned by the OpenAIAccess).
pub async fn apply_config_map<K: Resource<DynamicType = ()>>(
    client: &kube::Client,
    access: &K,
    name: &str,
    data: BTreeMap<String, String>,
) -> Result<(), kube::Error> {
    let namespace = access.namespace().unwrap_or_default();
    let owner = access.controller_owner_ref(&()).map(|mut o| {
        // Deleting the ConfigMap first must not wait on the OpenAIAccess's finalizer.
        o.block_owner_deletion = Some(false);
        o
    });
    let config_map = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "keyless"},
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "data": data,
    });
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(config_map),
    )
    .await
    .map(|_| ())
}

/// One export: the object (by uid too, so a re-created object is exported again) and its
/// ConfigMap's name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExportKey {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub config_map: String,
}

impl ExportKey {
    pub fn of<K: Resource>(access: &K, config_map: &str) -> ExportKey {
        ExportKey {
            namespace: access.namespace().unwrap_or_default(),
            name: access.name_any(),
            uid: access.uid(),
            config_map: config_map.to_string(),
        }
    }
}

type ExportData = BTreeMap<String, String>;

/// The data last applied per export, by account; an account's entries are replaced by each of its
/// passes, so objects that stopped exporting (or were deleted) are not kept.
#[derive(Default)]
pub struct ExportMemo(Mutex<HashMap<String, HashMap<ExportKey, ExportData>>>);

impl ExportMemo {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<ExportKey, ExportData>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether exactly `data` was applied for this export already.
    pub fn is_applied(&self, account: &str, key: &ExportKey, data: &ExportData) -> bool {
        self.lock()
            .get(account)
            .and_then(|exports| exports.get(key))
            .is_some_and(|applied| applied == data)
    }

    /// Records a successful apply.
    pub fn applied(&self, account: &str, key: ExportKey, data: ExportData) {
        self.lock()
            .entry(account.to_string())
            .or_default()
            .insert(key, data);
    }

    /// Keeps only the exports an account's pass still made.
    pub fn retain(&self, account: &str, exporting: &HashSet<ExportKey>) {
        let mut memo = self.lock();
        if let Some(exports) = memo.get_mut(account) {
            exports.retain(|key, _| exporting.contains(key));
            if exports.is_empty() {
                memo.remove(account);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn key(name: &str, uid: &str) -> ExportKey {
        ExportKey {
            namespace: "team".into(),
            name: name.into(),
            uid: Some(uid.into()),
            config_map: "openai".into(),
        }
    }

    #[derive(Default)]
    struct CountingIdentities {
        gets: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl ManagedIdentities for CountingIdentities {
        async fn get_identity(
            &self,
            resource_id: &str,
        ) -> Result<Option<crate::azure::ManagedIdentity>, crate::azure::AzureError> {
            self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Some(crate::azure::ManagedIdentity {
                resource_id: resource_id.into(),
                principal_id: "p".into(),
                client_id: "client-1".into(),
                tenant_id: "t".into(),
            }))
        }
        async fn find_identity_by_client_id(
            &self,
            _: &str,
        ) -> Result<Option<crate::azure::ManagedIdentity>, crate::azure::AzureError> {
            Ok(None)
        }
        async fn federated_credentials(
            &self,
            _: &str,
        ) -> Result<Vec<crate::azure::FederatedCredential>, crate::azure::AzureError> {
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn a_managed_identitys_client_id_is_read_from_arm_once_per_cache_ttl() {
        const ID: &str = "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/chat";
        let access: crate::api::OpenAIAccess = serde_json::from_value(serde_json::json!({
            "apiVersion": "keyless.dev/v1alpha1",
            "kind": "OpenAIAccess",
            "metadata": {"name": "chat", "namespace": "team"},
            "spec": {"accountRef": {"name": "prod"}, "principals": [{"managedIdentity": ID}]},
        }))
        .unwrap();
        let service_accounts = ServiceAccounts::default();
        let identities = CountingIdentities::default();
        let gets = || identities.gets.load(std::sync::atomic::Ordering::Relaxed);
        let cache = ResolutionCache::new(std::time::Duration::from_secs(600));
        for _ in 0..3 {
            let data = export_data(
                "team",
                &access.spec,
                Some("https://e"),
                &service_accounts,
                &identities,
                Some(&cache),
            )
            .await;
            assert_eq!(data[CLIENT_ID_KEY], "client-1");
        }
        assert_eq!(gets(), 1, "once, then from the cache");
        // The control: without a cache every export reads ARM.
        export_data(
            "team",
            &access.spec,
            None,
            &service_accounts,
            &identities,
            None,
        )
        .await;
        assert_eq!(gets(), 2);
    }

    fn data(endpoint: &str) -> ExportData {
        BTreeMap::from([(ENDPOINT_KEY.to_string(), endpoint.to_string())])
    }

    #[test]
    fn an_export_is_applied_again_only_when_its_data_or_its_object_changes() {
        let memo = ExportMemo::default();
        assert!(
            !memo.is_applied("prod", &key("app", "1"), &data("a")),
            "never applied"
        );
        memo.applied("prod", key("app", "1"), data("a"));
        let cases = [
            ("prod", key("app", "1"), data("a"), true, "unchanged"),
            ("prod", key("app", "1"), data("b"), false, "data changed"),
            (
                "prod",
                key("app", "2"),
                data("a"),
                false,
                "object re-created",
            ),
            ("dev", key("app", "1"), data("a"), false, "another account"),
        ];
        for (account, key, data, want, why) in cases {
            assert_eq!(memo.is_applied(account, &key, &data), want, "{why}");
        }
    }

    #[test]
    fn exports_no_longer_made_are_forgotten() {
        let memo = ExportMemo::default();
        memo.applied("prod", key("app", "1"), data("a"));
        memo.applied("prod", key("gone", "2"), data("a"));
        memo.retain("prod", &HashSet::from([key("app", "1")]));
        assert!(memo.is_applied("prod", &key("app", "1"), &data("a")));
        assert!(!memo.is_applied("prod", &key("gone", "2"), &data("a")));
        memo.retain("prod", &HashSet::new());
        assert!(memo.lock().is_empty());
    }
}
