//! Every ServiceAccount of the cluster as keyless reads it: that it exists, and its
//! workload-identity client id. A map of its own rather than a kube `Store`: the cluster's most
//! numerous kind (20,000 at issue 18's population) was ~350 bytes each in kube's store (an
//! `ObjectRef` key of four strings beside an `Arc`'d record repeating the name and namespace); here
//! a ServiceAccount is its name and client id under its namespace's one shared name (~60 bytes).
//!
//! It is filled by the same watch events kube's reflector would take, with the same relist rule:
//! a relist is collected aside and replaces the map whole at its end, so a reader never sees a
//! half-listed cluster (the view's health says when the first list is complete).

use super::trim::WorkloadServiceAccount;
use kube::runtime::watcher;
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// name → client id (None: no `azure.workload.identity/client-id` annotation).
type Names = HashMap<Box<str>, Option<Box<str>>>;

#[derive(Default)]
struct Map {
    by_namespace: HashMap<Arc<str>, Names>,
}

impl Map {
    fn insert(&mut self, sa: &WorkloadServiceAccount) {
        let names = match self.by_namespace.get_mut(&*sa.namespace) {
            Some(names) => names,
            None => self
                .by_namespace
                .entry(Arc::from(&*sa.namespace))
                .or_default(),
        };
        names.insert(sa.name.clone(), sa.client_id.clone());
    }

    fn remove(&mut self, sa: &WorkloadServiceAccount) {
        if let Some(names) = self.by_namespace.get_mut(&*sa.namespace) {
            names.remove(&*sa.name);
            if names.is_empty() {
                self.by_namespace.remove(&*sa.namespace);
            }
        }
    }

    fn records(&self) -> impl Iterator<Item = WorkloadServiceAccount> + '_ {
        self.by_namespace.iter().flat_map(|(namespace, names)| {
            names
                .iter()
                .map(|(name, client_id)| WorkloadServiceAccount {
                    namespace: Box::from(&**namespace),
                    name: name.clone(),
                    client_id: client_id.clone(),
                })
        })
    }
}

/// The ServiceAccounts of the cluster; clones share one map.
#[derive(Clone, Default)]
pub struct ServiceAccounts {
    map: Arc<RwLock<Map>>,
}

impl ServiceAccounts {
    // A panic while holding the lock cannot leave the map half-written in a way that matters
    // (each write is one insert or remove, or a whole swap): use it anyway.
    fn read(&self) -> RwLockReadGuard<'_, Map> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Map> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The ServiceAccount `namespace/name`, when it exists: its client id, if it has one.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Option<String>> {
        self.read()
            .by_namespace
            .get(namespace)?
            .get(name)
            .map(|client_id| client_id.as_deref().map(str::to_string))
    }

    /// Whether this ServiceAccount is in the map now.
    pub fn contains(&self, sa: &WorkloadServiceAccount) -> bool {
        self.read()
            .by_namespace
            .get(&*sa.namespace)
            .is_some_and(|names| names.contains_key(&*sa.name))
    }

    /// Every ServiceAccount, each as a record made now (for a term's start, or a receiver that
    /// fell behind the changes).
    pub fn state(&self) -> Vec<Arc<WorkloadServiceAccount>> {
        self.read().records().map(Arc::new).collect()
    }

    pub fn len(&self) -> usize {
        self.read().by_namespace.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.read().by_namespace.is_empty()
    }
}

/// Applies watch events to one of keyless's own maps of records ([`ServiceAccounts`],
/// [`super::namespaces::Namespaces`]), as kube's store writer does to a store.
pub trait RecordWriter<R>: Send + 'static {
    /// Applies one event. At the end of a list, returns the records it brought (every one now in
    /// the map); for an applied or deleted one, that one.
    fn apply(&mut self, event: &watcher::Event<R>) -> Vec<R>;
}

/// Applies watch events to a [`ServiceAccounts`] map, as kube's store writer does to a store: a
/// relist is buffered and swapped in at its end.
#[derive(Default)]
pub struct Writer {
    view: ServiceAccounts,
    listing: Option<Map>,
}

impl Writer {
    pub fn new(view: ServiceAccounts) -> Self {
        Writer {
            view,
            listing: None,
        }
    }
}

impl RecordWriter<WorkloadServiceAccount> for Writer {
    fn apply(
        &mut self,
        event: &watcher::Event<WorkloadServiceAccount>,
    ) -> Vec<WorkloadServiceAccount> {
        match event {
            watcher::Event::Init => {
                self.listing = Some(Map::default());
                Vec::new()
            }
            watcher::Event::InitApply(sa) => {
                self.listing.get_or_insert_with(Map::default).insert(sa);
                Vec::new()
            }
            watcher::Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let touched = listed.records().collect();
                *self.view.write() = listed;
                touched
            }
            watcher::Event::Apply(sa) => {
                self.view.write().insert(sa);
                vec![sa.clone()]
            }
            watcher::Event::Delete(sa) => {
                self.view.write().remove(sa);
                vec![sa.clone()]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use watcher::Event;

    fn sa(namespace: &str, name: &str, client_id: Option<&str>) -> WorkloadServiceAccount {
        WorkloadServiceAccount {
            namespace: namespace.into(),
            name: name.into(),
            client_id: client_id.map(Into::into),
        }
    }

    #[test]
    fn a_relist_is_seen_only_whole_and_replaces_the_map() {
        let view = ServiceAccounts::default();
        let mut writer = Writer::new(view.clone());
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(sa("team-a", "chat", Some("c1"))));
        assert!(view.is_empty(), "nothing before the list ends");
        let touched = writer.apply(&Event::InitDone);
        assert_eq!(touched, vec![sa("team-a", "chat", Some("c1"))]);
        assert_eq!(view.get("team-a", "chat"), Some(Some("c1".into())));

        writer.apply(&Event::Apply(sa("team-b", "batch", None)));
        assert_eq!(
            view.get("team-b", "batch"),
            Some(None),
            "exists, no client id"
        );
        assert_eq!(view.get("team-b", "chat"), None);

        // A relist after the watch was down: team-a/chat went meanwhile. The old map is read
        // until the relist ends.
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(sa("team-b", "batch", Some("c2"))));
        assert_eq!(view.get("team-a", "chat"), Some(Some("c1".into())));
        writer.apply(&Event::InitDone);
        assert_eq!(view.get("team-a", "chat"), None);
        assert_eq!(view.get("team-b", "batch"), Some(Some("c2".into())));
        assert_eq!(view.len(), 1);

        writer.apply(&Event::Delete(sa("team-b", "batch", Some("c2"))));
        assert!(view.is_empty());
        assert!(!view.contains(&sa("team-b", "batch", None)));
    }

    fn event() -> impl Strategy<Value = Event<WorkloadServiceAccount>> {
        let record = (0..3u8, 0..4u8, prop::option::of(0..3u8)).prop_map(|(ns, name, id)| {
            sa(
                &format!("ns-{ns}"),
                &format!("sa-{name}"),
                id.map(|i| format!("client-{i}")).as_deref(),
            )
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
        /// The map holds what kube's store would after the same events: a model of the store
        /// (a BTreeMap, with the same buffered relist) agrees after every event.
        #[test]
        fn the_map_agrees_with_a_store_after_any_events(events in prop::collection::vec(event(), 0..60)) {
            let view = ServiceAccounts::default();
            let mut writer = Writer::new(view.clone());
            let mut model: BTreeMap<(String, String), Option<String>> = BTreeMap::new();
            let mut buffer: Option<BTreeMap<(String, String), Option<String>>> = None;
            for event in &events {
                writer.apply(event);
                match event {
                    Event::Init => buffer = Some(BTreeMap::new()),
                    Event::InitApply(s) => {
                        buffer.get_or_insert_with(BTreeMap::new).insert(
                            (s.namespace.to_string(), s.name.to_string()),
                            s.client_id.as_deref().map(String::from),
                        );
                    }
                    Event::InitDone => model = buffer.take().unwrap_or_default(),
                    Event::Apply(s) => {
                        model.insert(
                            (s.namespace.to_string(), s.name.to_string()),
                            s.client_id.as_deref().map(String::from),
                        );
                    }
                    Event::Delete(s) => {
                        model.remove(&(s.namespace.to_string(), s.name.to_string()));
                    }
                }
                let held: BTreeMap<(String, String), Option<String>> = view
                    .state()
                    .iter()
                    .map(|s| {
                        (
                            (s.namespace.to_string(), s.name.to_string()),
                            s.client_id.as_deref().map(String::from),
                        )
                    })
                    .collect();
                prop_assert_eq!(&held, &model);
                for ((namespace, name), client_id) in &model {
                    prop_assert_eq!(view.get(namespace, name), Some(client_id.clone()));
                }
            }
        }
    }
}
