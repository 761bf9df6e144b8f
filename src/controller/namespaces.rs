//! Every Namespace of the cluster as keyless reads it: its name and labels (account selectors).
//! A map of its own rather than a kube `Store`, for the reason of [`super::service_accounts`]: in
//! kube's store a Namespace was an `ObjectRef` key, a 360-byte `ObjectMeta` and a B-tree node for
//! its labels (~1.4 KB); here it is its name and a slice of label pairs.
//!
//! Filled by the watch events with the same relist rule as kube's reflector
//! ([`super::records`]).

use super::records::{RecordMap, RecordWriter, SharedMap};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Lookup;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Label pairs, sorted by key (as the API server's map is).
pub type Labels = Box<[(Box<str>, Box<str>)]>;

/// What keyless keeps of a Namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NamespaceRecord {
    pub name: Box<str>,
    pub labels: Labels,
}

impl NamespaceRecord {
    pub fn of(object: PartialObjectMeta<Namespace>) -> Self {
        NamespaceRecord {
            name: object.metadata.name.unwrap_or_default().into_boxed_str(),
            labels: object
                .metadata
                .labels
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect(),
        }
    }

    /// The Namespace as the controller's triggers take it (its name only); made per event.
    pub fn trigger(&self) -> PartialObjectMeta<Namespace> {
        PartialObjectMeta {
            types: None,
            metadata: ObjectMeta {
                name: Some(self.name.to_string()),
                ..ObjectMeta::default()
            },
            _phantom: Default::default(),
        }
    }
}

fn label_map(labels: &Labels) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Lookup for NamespaceRecord {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        <Namespace as k8s_openapi::Resource>::KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        <Namespace as k8s_openapi::Resource>::GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        <Namespace as k8s_openapi::Resource>::VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        <Namespace as k8s_openapi::Resource>::URL_PATH_SEGMENT.into()
    }
    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }
    fn namespace(&self) -> Option<Cow<'_, str>> {
        None
    }
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }
    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

#[derive(Default)]
struct Map {
    by_name: HashMap<Box<str>, Labels>,
}

impl RecordMap for Map {
    type Record = NamespaceRecord;

    fn insert(&mut self, namespace: &NamespaceRecord) {
        self.by_name
            .insert(namespace.name.clone(), namespace.labels.clone());
    }

    fn remove(&mut self, namespace: &NamespaceRecord) {
        self.by_name.remove(&namespace.name);
    }

    fn records(&self) -> impl Iterator<Item = NamespaceRecord> + '_ {
        self.by_name.iter().map(|(name, labels)| NamespaceRecord {
            name: name.clone(),
            labels: labels.clone(),
        })
    }
}

/// The Namespaces of the cluster; clones share one map.
#[derive(Clone, Default)]
pub struct Namespaces {
    map: SharedMap<Map>,
}

impl Namespaces {
    /// The writer that fills this map from the Namespaces' watch events.
    pub fn writer(&self) -> RecordWriter<impl RecordMap<Record = NamespaceRecord> + use<>> {
        RecordWriter::new(self.map.clone())
    }

    /// The labels of the Namespace `name`, when it exists.
    pub fn labels(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.map.read().by_name.get(name).map(label_map)
    }

    /// Whether this Namespace is in the map now.
    pub fn contains(&self, namespace: &NamespaceRecord) -> bool {
        self.map.read().by_name.contains_key(&namespace.name)
    }

    /// Every Namespace, each as a record made now.
    pub fn state(&self) -> Vec<Arc<NamespaceRecord>> {
        self.map.read().records().map(Arc::new).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::records::testing;
    use kube::runtime::watcher::Event;
    use proptest::prelude::*;

    fn ns(name: &str, labels: &[(&str, &str)]) -> NamespaceRecord {
        NamespaceRecord {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        }
    }

    #[test]
    fn a_namespace_keeps_its_name_and_labels_only() {
        let object = PartialObjectMeta::<Namespace> {
            types: None,
            metadata: ObjectMeta {
                name: Some("team-a".into()),
                uid: Some("u".into()),
                labels: Some(BTreeMap::from([("tier".into(), "prod".into())])),
                annotations: Some(BTreeMap::from([("a".into(), "b".into())])),
                ..ObjectMeta::default()
            },
            _phantom: Default::default(),
        };
        let record = NamespaceRecord::of(object);
        assert_eq!(record, ns("team-a", &[("tier", "prod")]));
        assert_eq!(record.trigger().metadata.name.as_deref(), Some("team-a"));
    }

    #[test]
    fn a_relist_is_seen_only_whole_and_replaces_the_map() {
        let view = Namespaces::default();
        testing::a_relist_is_seen_only_whole_and_replaces_the_map(
            &view,
            view.writer(),
            ns("team-a", &[("tier", "prod")]),
            ns("team-b", &[]),
            ns("team-b", &[("tier", "dev")]),
        );
    }

    fn event() -> impl Strategy<Value = Event<NamespaceRecord>> {
        let record = (0..4u8, prop::option::of(0..3u8)).prop_map(|(name, tier)| {
            let tier = tier.map(|t| format!("t{t}"));
            let labels: Vec<(&str, &str)> =
                tier.as_deref().map(|t| ("tier", t)).into_iter().collect();
            ns(&format!("ns-{name}"), &labels)
        });
        testing::any_event(record)
    }

    proptest! {
        /// The map holds what kube's store would after the same events; a Namespace's labels are
        /// found by its name, as it was last seen.
        #[test]
        fn the_map_agrees_with_a_store_after_any_events(events in prop::collection::vec(event(), 0..60)) {
            let view = Namespaces::default();
            testing::the_map_agrees_with_a_store_after_each(
                &view,
                view.writer(),
                &events,
                |n| n.name.clone(),
                |probe, stored| {
                    prop_assert_eq!(view.labels(&probe.name), stored.map(|n| label_map(&n.labels)));
                    Ok(())
                },
            )?;
        }
    }
}
