//! Every ServiceAccount of the cluster as keyless reads it: that it exists, and its
//! workload-identity client id. A map of its own rather than a kube `Store`: the cluster's most
//! numerous kind (20,000 at issue 18's population) was ~350 bytes each in kube's store (an
//! `ObjectRef` key of four strings beside an `Arc`'d record repeating the name and namespace); here
//! a ServiceAccount is its name and client id under its namespace's one shared name (~60 bytes).
//!
//! It is filled by the same watch events kube's reflector would take, with the same relist rule
//! ([`super::records`]).

use super::records::{RecordMap, RecordWriter, SharedMap};
use super::trim::WorkloadServiceAccount;
use std::collections::HashMap;
use std::sync::Arc;

/// name → client id (None: no `azure.workload.identity/client-id` annotation).
type Names = HashMap<Box<str>, Option<Box<str>>>;

#[derive(Default)]
struct Map {
    by_namespace: HashMap<Arc<str>, Names>,
}

impl RecordMap for Map {
    type Record = WorkloadServiceAccount;

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
    map: SharedMap<Map>,
}

impl ServiceAccounts {
    /// The writer that fills this map from the ServiceAccounts' watch events.
    pub fn writer(&self) -> RecordWriter<impl RecordMap<Record = WorkloadServiceAccount> + use<>> {
        RecordWriter::new(self.map.clone())
    }

    /// The ServiceAccount `namespace/name`, when it exists: its client id, if it has one.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Option<String>> {
        self.map
            .read()
            .by_namespace
            .get(namespace)?
            .get(name)
            .map(|client_id| client_id.as_deref().map(str::to_string))
    }

    /// Whether this ServiceAccount is in the map now.
    pub fn contains(&self, sa: &WorkloadServiceAccount) -> bool {
        self.map
            .read()
            .by_namespace
            .get(&*sa.namespace)
            .is_some_and(|names| names.contains_key(&*sa.name))
    }

    /// Every ServiceAccount, each as a record made now (for a term's start, or a receiver that
    /// fell behind the changes).
    pub fn state(&self) -> Vec<Arc<WorkloadServiceAccount>> {
        self.map.read().records().map(Arc::new).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::records::testing;
    use kube::runtime::watcher::Event;
    use proptest::prelude::*;

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
        testing::a_relist_is_seen_only_whole_and_replaces_the_map(
            &view,
            view.writer(),
            sa("team-a", "chat", Some("c1")),
            sa("team-b", "batch", None),
            sa("team-b", "batch", Some("c2")),
        );
    }

    fn event() -> impl Strategy<Value = Event<WorkloadServiceAccount>> {
        let record = (0..3u8, 0..4u8, prop::option::of(0..3u8)).prop_map(|(ns, name, id)| {
            sa(
                &format!("ns-{ns}"),
                &format!("sa-{name}"),
                id.map(|i| format!("client-{i}")).as_deref(),
            )
        });
        testing::any_event(record)
    }

    proptest! {
        /// The map holds what kube's store would after the same events; a ServiceAccount is found
        /// by its namespace and name (the same name in another namespace is another one), with
        /// the client id it was last seen with, or none.
        #[test]
        fn the_map_agrees_with_a_store_after_any_events(events in prop::collection::vec(event(), 0..60)) {
            let view = ServiceAccounts::default();
            testing::the_map_agrees_with_a_store_after_each(
                &view,
                view.writer(),
                &events,
                |s| (s.namespace.clone(), s.name.clone()),
                |probe, stored| {
                    prop_assert_eq!(
                        view.get(&probe.namespace, &probe.name),
                        stored.map(|s| s.client_id.as_deref().map(String::from))
                    );
                    Ok(())
                },
            )?;
        }
    }
}
