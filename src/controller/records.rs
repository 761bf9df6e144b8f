//! What keyless's own compact maps of records ([`super::service_accounts`],
//! [`super::namespaces`]) have in common: the lock they sit behind, and the one writer that fills
//! them from watch events with kube's reflector's relist rule — a relist is collected aside and
//! replaces the map whole at its end, so a reader never sees a half-listed cluster (the view's
//! health says when the first list is complete).
//!
//! Each module keeps its records in a shape of its own ([`RecordMap`]) and reads them its own way;
//! only inserting, removing and listing them is shared.

use kube::runtime::watcher;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A map of records, kept in its module's compact shape rather than as the records themselves.
pub trait RecordMap: Default {
    /// What a watch event carries and the map gives back, made per event.
    type Record;

    /// Adds the record, or replaces the one of the same name.
    fn insert(&mut self, record: &Self::Record);

    /// Removes the record of the same name, if there is one.
    fn remove(&mut self, record: &Self::Record);

    /// Every record in the map, each made now.
    fn records(&self) -> impl Iterator<Item = Self::Record> + '_;
}

/// A [`RecordMap`] behind its lock; clones share it (a view and the [`RecordWriter`] filling it).
#[derive(Default)]
pub struct SharedMap<M>(Arc<RwLock<M>>);

// Not derived: that would ask `M: Clone`, and a clone shares the map rather than copying it.
impl<M> Clone for SharedMap<M> {
    fn clone(&self) -> Self {
        SharedMap(Arc::clone(&self.0))
    }
}

impl<M> SharedMap<M> {
    // A panic while holding the lock cannot leave the map half-written in a way that matters
    // (each write is one insert or remove, or a whole swap): use it anyway.
    pub fn read(&self) -> RwLockReadGuard<'_, M> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, M> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Applies watch events to a [`SharedMap`], as kube's store writer does to a store: a relist is
/// buffered and swapped in at its end.
pub struct RecordWriter<M> {
    map: SharedMap<M>,
    /// The relist in progress, collected aside until its end.
    listing: Option<M>,
}

impl<M> RecordWriter<M>
where
    M: RecordMap,
    M::Record: Clone,
{
    pub fn new(map: SharedMap<M>) -> Self {
        RecordWriter { map, listing: None }
    }

    /// Applies one event. At the end of a list, returns the records it brought (every one now in
    /// the map); for an applied or deleted one, that one.
    pub fn apply(&mut self, event: &watcher::Event<M::Record>) -> Vec<M::Record> {
        match event {
            watcher::Event::Init => {
                self.listing = Some(M::default());
                Vec::new()
            }
            watcher::Event::InitApply(record) => {
                self.listing.get_or_insert_with(M::default).insert(record);
                Vec::new()
            }
            watcher::Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let touched = listed.records().collect();
                *self.map.write() = listed;
                touched
            }
            watcher::Event::Apply(record) => {
                self.map.write().insert(record);
                vec![record.clone()]
            }
            watcher::Event::Delete(record) => {
                self.map.write().remove(record);
                vec![record.clone()]
            }
        }
    }
}

/// The tests every map runs with its own records: the writer's relist rule, and agreement with
/// kube's store after any events.
#[cfg(test)]
pub(super) mod testing {
    use super::{RecordMap, RecordWriter};
    use crate::controller::ObjectView;
    use kube::runtime::watcher::Event;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::fmt::Debug;
    use std::sync::Arc;

    /// Any watch event, its record drawn from `record`.
    pub fn any_event<R: Clone + Debug>(
        record: impl Strategy<Value = R> + Clone,
    ) -> impl Strategy<Value = Event<R>> {
        prop_oneof![
            Just(Event::Init),
            record.clone().prop_map(Event::InitApply),
            Just(Event::InitDone),
            record.clone().prop_map(Event::Apply),
            record.prop_map(Event::Delete),
        ]
    }

    /// A relist, read through `view` while `writer` applies it: nothing of it before it ends, then
    /// the whole of it in place of what the map held. `first` and `second` have different names;
    /// `second_relisted` is `second` as the relist brings it, changed while the watch was down.
    pub fn a_relist_is_seen_only_whole_and_replaces_the_map<R>(
        view: &impl ObjectView<R>,
        mut writer: RecordWriter<impl RecordMap<Record = R>>,
        first: R,
        second: R,
        second_relisted: R,
    ) where
        R: Clone + Debug + PartialEq,
    {
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(first.clone()));
        assert!(view.everything().is_empty(), "nothing before the list ends");
        assert_eq!(writer.apply(&Event::InitDone), vec![first.clone()]);
        assert_eq!(view.everything(), vec![Arc::new(first.clone())]);

        assert_eq!(
            writer.apply(&Event::Apply(second.clone())),
            vec![second.clone()]
        );
        assert!(view.holds(&second));

        // A relist after the watch was down: `first` went meanwhile. The old map is read until the
        // relist ends.
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(second_relisted.clone()));
        assert!(view.holds(&first), "the old map until the relist ends");
        assert_eq!(
            writer.apply(&Event::InitDone),
            vec![second_relisted.clone()]
        );
        assert!(!view.holds(&first));
        assert_eq!(view.everything(), vec![Arc::new(second_relisted.clone())]);

        assert_eq!(
            writer.apply(&Event::Delete(second_relisted.clone())),
            vec![second_relisted.clone()]
        );
        assert!(view.everything().is_empty());
        assert!(!view.holds(&second));
    }

    /// After every one of `events`, the map `writer` fills holds what kube's store would after the
    /// same events. The store is modelled as a BTreeMap by each record's name (`name`), with the
    /// same buffered relist; what each event returned, what `view` reads, and the map's own reads
    /// (`reads_agree`: a record's name looked up, against the model's record of that name) must
    /// all agree with it. Every name the events brought is looked up, whether held or not.
    pub fn the_map_agrees_with_a_store_after_each<R, N>(
        view: &impl ObjectView<R>,
        mut writer: RecordWriter<impl RecordMap<Record = R>>,
        events: &[Event<R>],
        name: impl Fn(&R) -> N,
        reads_agree: impl Fn(&R, Option<&R>) -> Result<(), TestCaseError>,
    ) -> Result<(), TestCaseError>
    where
        R: Clone + Debug + PartialEq,
        N: Ord,
    {
        let by_name = |records: &mut Vec<R>| records.sort_by_key(&name);
        let mut model: BTreeMap<N, R> = BTreeMap::new();
        let mut buffer: Option<BTreeMap<N, R>> = None;
        let mut seen: BTreeMap<N, R> = BTreeMap::new();
        for event in events {
            let mut touched = writer.apply(event);
            let mut expected = match event {
                Event::Init => {
                    buffer = Some(BTreeMap::new());
                    Vec::new()
                }
                Event::InitApply(r) => {
                    buffer
                        .get_or_insert_with(BTreeMap::new)
                        .insert(name(r), r.clone());
                    Vec::new()
                }
                Event::InitDone => {
                    model = buffer.take().unwrap_or_default();
                    model.values().cloned().collect()
                }
                Event::Apply(r) => {
                    model.insert(name(r), r.clone());
                    vec![r.clone()]
                }
                Event::Delete(r) => {
                    model.remove(&name(r));
                    vec![r.clone()]
                }
            };
            by_name(&mut touched);
            by_name(&mut expected);
            prop_assert_eq!(touched, expected);

            let mut held: Vec<R> = view.everything().iter().map(|r| (**r).clone()).collect();
            by_name(&mut held);
            prop_assert_eq!(held, model.values().cloned().collect::<Vec<_>>());

            if let Event::InitApply(r) | Event::Apply(r) | Event::Delete(r) = event {
                seen.insert(name(r), r.clone());
            }
            for (key, probe) in &seen {
                prop_assert_eq!(view.holds(probe), model.contains_key(key));
                reads_agree(probe, model.get(key))?;
            }
        }
        Ok(())
    }
}
