//! Endpoint export: with `--enable-configmap-export`, `spec.exportTo.configMapName` makes keyless
//! apply a ConfigMap in the object's namespace, owned by it (so it goes with it), holding what
//! keyless-authenticated application code reads: `AZURE_OPENAI_ENDPOINT` and, when exactly one
//! workload identity or managed identity is listed, `AZURE_OPENAI_CLIENT_ID`. Re-applied at every
//! reconcile rather than watched cluster-wide, so keyless needs no cluster-wide ConfigMap watch.

use super::kube_io::FIELD_MANAGER;
use crate::api::{OpenAIAccess, PrincipalRef};
use crate::azure::ManagedIdentities;
use crate::engine::CLIENT_ID_ANNOTATION;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};

use std::collections::BTreeMap;

pub const ENDPOINT_KEY: &str = "AZURE_OPENAI_ENDPOINT";
pub const CLIENT_ID_KEY: &str = "AZURE_OPENAI_CLIENT_ID";

/// The ConfigMap's data for an OpenAIAccess.
pub async fn export_data(
    access: &OpenAIAccess,
    endpoint: Option<&str>,
    service_accounts: &Store<PartialObjectMeta<ServiceAccount>>,
    identities: &dyn ManagedIdentities,
) -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    if let Some(endpoint) = endpoint {
        data.insert(ENDPOINT_KEY.to_string(), endpoint.to_string());
    }
    let workloads: Vec<PrincipalRef> = access
        .spec
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
            PrincipalRef::ServiceAccount(name) => service_accounts
                .get(&ObjectRef::new(name).within(&access.namespace().unwrap_or_default()))
                .and_then(|sa| sa.annotations().get(CLIENT_ID_ANNOTATION).cloned()),
            PrincipalRef::ManagedIdentity(id) => identities
                .get_identity(id)
                .await
                .ok()
                .flatten()
                .map(|i| i.client_id),
            _ => None,
        };
        if let Some(client_id) = client_id {
            data.insert(CLIENT_ID_KEY.to_string(), client_id);
        }
    }
    data
}

/// Applies the ConfigMap (server-side apply, owned by the OpenAIAccess).
pub async fn apply_config_map(
    client: &kube::Client,
    access: &OpenAIAccess,
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
