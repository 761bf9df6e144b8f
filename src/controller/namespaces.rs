//! Every Namespace of the cluster as keyless reads it: its name and labels (account selectors).
//! A map of its own rather than a kube `Store`, for the reason of [`super::service_accounts`]: in
//! kube's store a Namespace was an `ObjectRef` key, a 360-byte `ObjectMeta` and a B-tree node for
//! its labels (~1.4 KB); here it is its name and a slice of label pairs.
//!
//! Filled by the watch events with the same relist rule as kube's reflector (a relist is
//! collected aside and swapped in whole at its end).

use super::service_accounts::RecordWriter;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Lookup;
use kube::runtime::watcher;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

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

type Map = HashMap<Box<str>, Labels>;

/// The Namespaces of the cluster; clones share one map.
#[derive(Clone, Default)]
pub struct Namespaces {
    map: Arc<RwLock<Map>>,
}

impl Namespaces {
    // A panic while holding the lock cannot leave the map half-written in a way that matters
    // (each write is one insert or remove, or a whole swap): use it anyway.
    fn read(&self) -> RwLockReadGuard<'_, Map> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Map> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The labels of the Namespace `name`, when it exists.
    pub fn labels(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.read().get(name).map(label_map)
    }

    /// Whether this Namespace is in the map now.
    pub fn contains(&self, namespace: &NamespaceRecord) -> bool {
        self.read().contains_key(&namespace.name)
    }

    /// Every Namespace, each as a record made now.
    pub fn state(&self) -> Vec<Arc<NamespaceRecord>> {
        self.read()
            .iter()
            .map(|(name, labels)| {
                Arc::new(NamespaceRecord {
                    name: name.clone(),
                    labels: labels.clone(),
                })
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }
}

/// Applies watch events to a [`Namespaces`] map as kube's store writer does to a store.
pub struct Writer {
    view: Namespaces,
    listing: Option<Map>,
}

impl Writer {
    pub fn new(view: Namespaces) -> Self {
        Writer {
            view,
            listing: None,
        }
    }
}

impl RecordWriter<NamespaceRecord> for Writer {
    fn apply(&mut self, event: &watcher::Event<NamespaceRecord>) -> Vec<NamespaceRecord> {
        match event {
            watcher::Event::Init => {
                self.listing = Some(Map::default());
                Vec::new()
            }
            watcher::Event::InitApply(ns) => {
                self.listing
                    .get_or_insert_with(Map::default)
                    .insert(ns.name.clone(), ns.labels.clone());
                Vec::new()
            }
            watcher::Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let touched = listed
                    .iter()
                    .map(|(name, labels)| NamespaceRecord {
                        name: name.clone(),
                        labels: labels.clone(),
                    })
                    .collect();
                *self.view.write() = listed;
                touched
            }
            watcher::Event::Apply(ns) => {
                self.view.write().insert(ns.name.clone(), ns.labels.clone());
                vec![ns.clone()]
            }
            watcher::Event::Delete(ns) => {
                self.view.write().remove(&ns.name);
                vec![ns.clone()]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use watcher::Event;

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
        let mut writer = Writer::new(view.clone());
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(ns("team-a", &[("tier", "prod")])));
        assert!(view.is_empty(), "nothing before the list ends");
        assert_eq!(writer.apply(&Event::InitDone).len(), 1);
        assert_eq!(
            view.labels("team-a"),
            Some(BTreeMap::from([("tier".into(), "prod".into())]))
        );
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(ns("team-b", &[])));
        assert!(
            view.labels("team-a").is_some(),
            "the old map until the relist ends"
        );
        writer.apply(&Event::InitDone);
        assert_eq!(view.labels("team-a"), None);
        assert_eq!(view.labels("team-b"), Some(BTreeMap::new()));
        writer.apply(&Event::Delete(ns("team-b", &[])));
        assert!(view.is_empty());
    }

    fn event() -> impl Strategy<Value = Event<NamespaceRecord>> {
        let record = (0..4u8, prop::option::of(0..3u8)).prop_map(|(name, tier)| {
            let tier = tier.map(|t| format!("t{t}"));
            let labels: Vec<(&str, &str)> =
                tier.as_deref().map(|t| ("tier", t)).into_iter().collect();
            ns(&format!("ns-{name}"), &labels)
        });
        prop_oneof![
            Just(Event::Init),
            record.clone().prop_map(Event::InitApply),
            Just(Event::InitDone),
            record.clone().prop_map(Event::Apply),
            record.prop_map(Event::Delete),
        ]
    }

    proptest! {
        /// The map holds what kube's store would after the same events (a model with the same
        /// buffered relist).
        #[test]
        fn the_map_agrees_with_a_store_after_any_events(events in prop::collection::vec(event(), 0..60)) {
            let view = Namespaces::default();
            let mut writer = Writer::new(view.clone());
            let mut model: BTreeMap<String, Labels> = BTreeMap::new();
            let mut buffer: Option<BTreeMap<String, Labels>> = None;
            for event in &events {
                writer.apply(event);
                match event {
                    Event::Init => buffer = Some(BTreeMap::new()),
                    Event::InitApply(n) => {
                        buffer.get_or_insert_with(BTreeMap::new).insert(n.name.to_string(), n.labels.clone());
                    }
                    Event::InitDone => model = buffer.take().unwrap_or_default(),
                    Event::Apply(n) => {
                        model.insert(n.name.to_string(), n.labels.clone());
                    }
                    Event::Delete(n) => {
                        model.remove(&*n.name);
                    }
                }
                let held: BTreeMap<String, Labels> = view
                    .state()
                    .iter()
                    .map(|n| (n.name.to_string(), n.labels.clone()))
                    .collect();
                prop_assert_eq!(&held, &model);
                prop_assert_eq!(view.len(), model.len());
            }
        }
    }
}
