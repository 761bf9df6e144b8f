//! What each store keeps of an object: only what some code path of the controller reads. The
//! stores hold every OpenAIAccess, ServiceAccount and Namespace of the cluster, so every field
//! kept is paid for once per object; a field no code path reads only costs memory.
//!
//! What is read, and therefore kept:
//! - every kind: the name and namespace (the store's key); OpenAIAccess and OpenAIAccount also
//!   their uid and resourceVersion (the reconciler's object reference, Events, owner references of
//!   exports);
//! - OpenAIAccess: its spec and status, and of its metadata the generation (conditions'
//!   observedGeneration), the deletion timestamp and finalizers (cleanup) and the creation time.
//!   Its labels and annotations are read by nothing (a `kubectl apply` annotation alone repeats
//!   the whole spec). An object that does not parse keeps its whole metadata but managedFields:
//!   it is rare, and its metadata is all that is known of it;
//! - ServiceAccount: the workload-identity client-id annotation and nothing else;
//! - Namespace: its labels (account selectors) and nothing else.
//!
//! managedFields are dropped everywhere: keyless never reads them, and they are often the larger
//! part of an object.

use super::lenient::LenientAccess;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;

/// The name of a ServiceAccount or Namespace: all their stores key by and all keyless reads of
/// their identity. Their uid and resourceVersion are read by nothing (the watcher takes the
/// resourceVersion to resume from before the object is trimmed), and each, kept, is paid twice:
/// in the object and in the store's key (issue 18: about 200 bytes per ServiceAccount).
fn name_only(meta: &mut ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        ..ObjectMeta::default()
    }
}

/// The identity of an object: what every store needs to key and name it.
fn identity(meta: &mut ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        ..ObjectMeta::default()
    }
}

/// An OpenAIAccess: the typed object's metadata without labels, annotations, owner references and
/// managedFields, and the outer copy (the store's key) reduced to the identity and what cleanup
/// reads; an object that does not parse loses its managedFields only.
pub fn access(object: &mut LenientAccess) {
    match &mut object.parsed {
        Ok(parsed) => {
            let meta = &mut parsed.metadata;
            meta.managed_fields = None;
            meta.labels = None;
            meta.annotations = None;
            meta.owner_references = None;
            meta.self_link = None;
            let outer = &mut object.metadata;
            object.metadata = ObjectMeta {
                generation: outer.generation,
                deletion_timestamp: outer.deletion_timestamp.take(),
                finalizers: outer.finalizers.take(),
                ..identity(outer)
            };
        }
        Err(_) => object.metadata.managed_fields = None,
    }
}

/// A ServiceAccount: its identity and the client-id annotation, when it has one.
pub fn service_account(object: &mut PartialObjectMeta<ServiceAccount>) {
    let client_id = object
        .metadata
        .annotations
        .as_mut()
        .and_then(|a| a.remove(crate::engine::CLIENT_ID_ANNOTATION));
    object.metadata = ObjectMeta {
        annotations: client_id.map(|id| {
            std::collections::BTreeMap::from([(
                crate::engine::CLIENT_ID_ANNOTATION.to_string(),
                id,
            )])
        }),
        ..name_only(&mut object.metadata)
    };
    // The apiVersion and kind of each item of a list: the store knows its kind.
    object.types = None;
}

/// A Namespace: its identity and labels.
pub fn namespace(object: &mut PartialObjectMeta<Namespace>) {
    object.metadata = ObjectMeta {
        labels: object.metadata.labels.take(),
        ..name_only(&mut object.metadata)
    };
    object.types = None;
}

/// Any other kind (the accounts: few, and read whole): managedFields only.
pub fn managed_fields<K: kube::Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        FieldsV1, ManagedFieldsEntry, OwnerReference, Time,
    };
    use serde_json::json;
    use std::collections::BTreeMap;

    fn full_meta(namespace: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some("chat".into()),
            namespace: namespace.map(str::to_string),
            uid: Some("5f0c1a9e-0000-4000-8000-000000000001".into()),
            resource_version: Some("42".into()),
            generation: Some(3),
            creation_timestamp: Some(Time(jiff::Timestamp::UNIX_EPOCH)),
            deletion_timestamp: Some(Time(jiff::Timestamp::UNIX_EPOCH)),
            finalizers: Some(vec!["keyless.dev/cleanup".into()]),
            labels: Some(BTreeMap::from([("app".into(), "web".into())])),
            annotations: Some(BTreeMap::from([
                (
                    crate::engine::CLIENT_ID_ANNOTATION.into(),
                    "4b3c0789-1890-448c-aca3-a44e891753f7".into(),
                ),
                (
                    "kubectl.kubernetes.io/last-applied-configuration".into(),
                    "{...}".into(),
                ),
            ])),
            owner_references: Some(vec![OwnerReference {
                name: "owner".into(),
                ..OwnerReference::default()
            }]),
            managed_fields: Some(vec![ManagedFieldsEntry {
                manager: Some("kubectl".into()),
                fields_v1: Some(FieldsV1(json!({"f:spec": {}}))),
                ..ManagedFieldsEntry::default()
            }]),
            ..ObjectMeta::default()
        }
    }

    fn access_value(spec: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess",
            "metadata": serde_json::to_value(full_meta(Some("team-a"))).unwrap(),
            "spec": spec,
            "status": {"principals": [{"principal": "user:alice@contoso.com",
                "objectId": "82f6c951-ea04-4434-a839-f80b32aa6337", "state": "Granted"}]},
        })
    }

    #[test]
    fn a_parsed_access_keeps_its_spec_status_and_what_cleanup_reads() {
        let mut object = LenientAccess::from_value(access_value(json!({
            "accountRef": {"name": "prod"}, "role": "OpenAIUser",
            "principals": [{"user": "alice@contoso.com"}]
        })))
        .unwrap();
        let before = object.clone();
        access(&mut object);

        let (kept, was) = (
            object.parsed.as_ref().unwrap(),
            before.parsed.clone().unwrap(),
        );
        assert_eq!(kept.spec, was.spec);
        assert_eq!(kept.status, was.status);
        let meta = &kept.metadata;
        assert_eq!(
            (
                &meta.name,
                &meta.namespace,
                &meta.uid,
                &meta.resource_version
            ),
            (
                &was.metadata.name,
                &was.metadata.namespace,
                &was.metadata.uid,
                &was.metadata.resource_version
            )
        );
        assert_eq!(meta.generation, Some(3));
        assert_eq!(meta.finalizers, was.metadata.finalizers);
        assert!(meta.deletion_timestamp.is_some() && meta.creation_timestamp.is_some());
        assert_eq!(
            (
                &meta.labels,
                &meta.annotations,
                &meta.owner_references,
                &meta.managed_fields
            ),
            (&None, &None, &None, &None)
        );

        // The store's key and what cleanup reads stay on the outer copy; nothing else.
        assert_eq!(object.key(), before.key());
        let outer = &object.metadata;
        assert_eq!(outer.uid, before.metadata.uid);
        assert_eq!(outer.resource_version, before.metadata.resource_version);
        assert_eq!(outer.generation, Some(3));
        assert_eq!(outer.finalizers, before.metadata.finalizers);
        assert!(outer.deletion_timestamp.is_some());
        assert_eq!(
            (&outer.labels, &outer.annotations, &outer.managed_fields),
            (&None, &None, &None)
        );
    }

    #[test]
    fn a_malformed_access_keeps_all_its_metadata_but_managed_fields() {
        let mut object = LenientAccess::from_value(access_value(
            json!({"accountRef": {"name": "prod"}, "role": "Owner", "principals": []}),
        ))
        .unwrap();
        let before = object.clone();
        access(&mut object);
        assert_eq!(object.parsed, before.parsed);
        assert_eq!(object.metadata.managed_fields, None);
        let mut expected = before.metadata.clone();
        expected.managed_fields = None;
        assert_eq!(object.metadata, expected);
        assert!(object.malformed().is_some());
    }

    #[test]
    fn a_service_account_keeps_its_name_and_client_id_only() {
        let mut object: PartialObjectMeta<ServiceAccount> = PartialObjectMeta {
            types: None,
            metadata: full_meta(Some("team-a")),
            _phantom: Default::default(),
        };
        service_account(&mut object);
        assert_eq!(
            object.metadata,
            ObjectMeta {
                name: Some("chat".into()),
                namespace: Some("team-a".into()),
                annotations: Some(BTreeMap::from([(
                    crate::engine::CLIENT_ID_ANNOTATION.into(),
                    "4b3c0789-1890-448c-aca3-a44e891753f7".into()
                )])),
                ..ObjectMeta::default()
            }
        );

        let mut without = PartialObjectMeta::<ServiceAccount> {
            types: None,
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([("other".into(), "x".into())])),
                ..full_meta(Some("team-a"))
            },
            _phantom: Default::default(),
        };
        service_account(&mut without);
        assert_eq!(without.metadata.annotations, None);
        assert_eq!(without.metadata.name.as_deref(), Some("chat"));
    }

    #[test]
    fn a_namespace_keeps_its_name_and_labels_only() {
        let mut object: PartialObjectMeta<Namespace> = PartialObjectMeta {
            types: None,
            metadata: full_meta(None),
            _phantom: Default::default(),
        };
        namespace(&mut object);
        assert_eq!(
            object.metadata,
            ObjectMeta {
                name: Some("chat".into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..ObjectMeta::default()
            }
        );
    }
}
