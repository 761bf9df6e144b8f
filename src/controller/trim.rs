//! What each store keeps of an object: only what some code path of the controller reads. The
//! stores hold every OpenAIAccess, ServiceAccount and Namespace of the cluster, so every field
//! kept is paid for once per object; a field no code path reads only costs memory.
//!
//! What is read, and therefore kept:
//! - every kind: the name and namespace (the store's key); OpenAIAccess and OpenAIAccount also
//!   their uid and resourceVersion (the reconciler's object reference, Events, owner references of
//!   exports);
//! - OpenAIAccess: its spec and status (packed: [`super::lenient`]), and of its metadata the
//!   generation (conditions' observedGeneration), the deletion timestamp and finalizers (cleanup)
//!   and the creation time. Its labels and annotations are read by nothing (a `kubectl apply`
//!   annotation alone repeats the whole spec). An object that does not parse keeps its whole
//!   metadata but managedFields: it is rare, and its metadata is all that is known of it;
//! - ServiceAccount: the workload-identity client-id annotation and nothing else, in a record of
//!   its own ([`WorkloadServiceAccount`]);
//! - Namespace: its labels (account selectors) and nothing else, in a map of its own
//!   ([`super::namespaces`]).
//!
//! managedFields are dropped everywhere: keyless never reads them, and they are often the larger
//! part of an object.

use super::lenient::LenientAccess;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Lookup;
use std::borrow::Cow;

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

/// An OpenAIAccess that parses: its identity and what the passes read (generation, deletion,
/// finalizers, creation time), beside its spec and packed status; one that does not parse keeps
/// all its metadata but managedFields (it is rare, and its metadata is all that is known of it).
pub fn access(object: &mut LenientAccess) {
    let meta = &mut object.metadata;
    if object.parsed.is_err() {
        meta.managed_fields = None;
        return;
    }
    object.metadata = ObjectMeta {
        generation: meta.generation,
        deletion_timestamp: meta.deletion_timestamp.take(),
        finalizers: meta.finalizers.take(),
        creation_timestamp: meta.creation_timestamp.take(),
        ..identity(meta)
    };
}

/// What keyless keeps of a ServiceAccount: its name and its workload-identity client id. Not a
/// trimmed `PartialObjectMeta`: an `ObjectMeta` is about 400 bytes before any field is set and an
/// annotation map allocates a whole B-tree node for one entry, so at 20,000 ServiceAccounts the
/// trimmed objects cost ~16 MB where these cost a fifth (issue 18).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadServiceAccount {
    pub namespace: Box<str>,
    pub name: Box<str>,
    /// The `azure.workload.identity/client-id` annotation.
    pub client_id: Option<Box<str>>,
}

impl WorkloadServiceAccount {
    pub fn of(object: PartialObjectMeta<ServiceAccount>) -> Self {
        let mut meta = object.metadata;
        WorkloadServiceAccount {
            namespace: meta.namespace.unwrap_or_default().into_boxed_str(),
            name: meta.name.unwrap_or_default().into_boxed_str(),
            client_id: meta
                .annotations
                .as_mut()
                .and_then(|a| a.remove(crate::engine::CLIENT_ID_ANNOTATION))
                .map(String::into_boxed_str),
        }
    }

    /// The ServiceAccount as the controller's triggers take it (its name only); made per event.
    pub fn trigger(&self) -> PartialObjectMeta<ServiceAccount> {
        PartialObjectMeta {
            types: None,
            metadata: ObjectMeta {
                name: Some(self.name.to_string()),
                namespace: Some(self.namespace.to_string()),
                ..ObjectMeta::default()
            },
            _phantom: Default::default(),
        }
    }
}

impl Lookup for WorkloadServiceAccount {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        <ServiceAccount as k8s_openapi::Resource>::KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        <ServiceAccount as k8s_openapi::Resource>::GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        <ServiceAccount as k8s_openapi::Resource>::VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        <ServiceAccount as k8s_openapi::Resource>::URL_PATH_SEGMENT.into()
    }
    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }
    fn namespace(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.namespace))
    }
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }
    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
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

        assert_eq!(
            object.parsed, before.parsed,
            "spec and status are kept whole"
        );
        assert!(object.parsed.as_ref().unwrap().status().is_some());
        let (meta, was) = (&object.metadata, &before.metadata);
        assert_eq!(object.key(), before.key());
        assert_eq!(
            (&meta.uid, &meta.resource_version, meta.generation),
            (&was.uid, &was.resource_version, Some(3))
        );
        assert_eq!(meta.finalizers, was.finalizers);
        assert_eq!(meta.creation_timestamp, was.creation_timestamp);
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
        let object: PartialObjectMeta<ServiceAccount> = PartialObjectMeta {
            types: None,
            metadata: full_meta(Some("team-a")),
            _phantom: Default::default(),
        };
        let record = WorkloadServiceAccount::of(object);
        assert_eq!(
            record,
            WorkloadServiceAccount {
                namespace: "team-a".into(),
                name: "chat".into(),
                client_id: Some("4b3c0789-1890-448c-aca3-a44e891753f7".into()),
            }
        );
        // The store keys it as it keyed the object itself.
        assert_eq!(
            record.to_object_ref(()),
            kube::runtime::reflector::ObjectRef::<WorkloadServiceAccount>::new("chat")
                .within("team-a")
        );
        assert_eq!(record.trigger().metadata.name.as_deref(), Some("chat"));

        let without = WorkloadServiceAccount::of(PartialObjectMeta::<ServiceAccount> {
            types: None,
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([("other".into(), "x".into())])),
                ..full_meta(Some("team-a"))
            },
            _phantom: Default::default(),
        });
        assert_eq!(without.client_id, None);
        assert_eq!(&*without.name, "chat");
    }
}
