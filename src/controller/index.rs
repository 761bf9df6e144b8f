//! Indexes beside the stores, so that the work of an event or a pass follows what it touches rather
//! than the size of the cluster:
//!
//! - [`AccessIndex`]: which OpenAIAccess objects name an account, which accounts have objects in a
//!   namespace, which accounts' objects name a ServiceAccount. It is kept by the very watch events
//!   that fill the OpenAIAccess store (a relist is swapped in whole at its end, as the reflector
//!   does), so an account pass reads its own objects and a ServiceAccount or Namespace event finds
//!   its accounts without scanning or cloning the store.
//! - [`ChangeFilter`]: lets through only the events that change what keyless reads of an object
//!   (a Namespace's labels, a ServiceAccount's client-id annotation), plus its first sight and its
//!   deletion. Everything else about those kinds (annotations, finalizers, secrets) costs nothing.
//!
//! Both are sans-IO and tested in bulk here.

use super::lenient::LenientAccess;
use crate::plan::ObjectKey;
use kube::runtime::watcher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

/// The accounts an event maps to: the named ones, and every account when a malformed object
/// whose reference could not be read is involved (it may name any).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accounts {
    pub named: BTreeSet<String>,
    pub any: bool,
}

/// What the index keeps of one OpenAIAccess: only the fields the mappings need.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    /// None: malformed, with no readable `accountRef` (it may name any account).
    account: Option<String>,
    service_accounts: Vec<String>,
}

impl Entry {
    fn of(access: &LenientAccess) -> Entry {
        match &access.parsed {
            Ok(parsed) => Entry {
                account: Some(parsed.spec.account_ref.name.clone()),
                service_accounts: parsed
                    .spec
                    .principals
                    .iter()
                    .filter_map(|p| p.service_account.clone())
                    .collect(),
            },
            Err(unparsed) => Entry {
                account: unparsed.account_ref.clone(),
                service_accounts: Vec::new(),
            },
        }
    }
}

#[derive(Default)]
struct Entries {
    /// Each key once; the sets below share it (an object is in three of them).
    by_key: HashMap<Arc<ObjectKey>, Entry>,
    by_account: HashMap<String, BTreeSet<Arc<ObjectKey>>>,
    /// Malformed objects without a readable account reference.
    any_account: BTreeSet<Arc<ObjectKey>>,
    by_namespace: HashMap<String, BTreeSet<Arc<ObjectKey>>>,
    /// (namespace, ServiceAccount name) → the objects naming it.
    by_service_account: HashMap<(String, String), BTreeSet<Arc<ObjectKey>>>,
}

fn remove_from<K: Eq + Hash>(
    map: &mut HashMap<K, BTreeSet<Arc<ObjectKey>>>,
    at: K,
    key: &ObjectKey,
) {
    if let Some(keys) = map.get_mut(&at) {
        keys.remove(key);
        if keys.is_empty() {
            map.remove(&at);
        }
    }
}

impl Entries {
    fn insert(&mut self, access: &LenientAccess) {
        let key = Arc::new(access.key());
        self.remove(&key);
        let entry = Entry::of(access);
        match &entry.account {
            Some(account) => {
                self.by_account
                    .entry(account.clone())
                    .or_default()
                    .insert(key.clone());
            }
            None => {
                self.any_account.insert(key.clone());
            }
        }
        self.by_namespace
            .entry(key.namespace.clone())
            .or_default()
            .insert(key.clone());
        for name in &entry.service_accounts {
            self.by_service_account
                .entry((key.namespace.clone(), name.clone()))
                .or_default()
                .insert(key.clone());
        }
        self.by_key.insert(key, entry);
    }

    fn remove(&mut self, key: &ObjectKey) {
        let Some((_, entry)) = self.by_key.remove_entry(key) else {
            return;
        };
        match entry.account {
            Some(account) => remove_from(&mut self.by_account, account, key),
            None => {
                self.any_account.remove(key);
            }
        }
        remove_from(&mut self.by_namespace, key.namespace.clone(), key);
        for name in entry.service_accounts {
            remove_from(
                &mut self.by_service_account,
                (key.namespace.clone(), name),
                key,
            );
        }
    }

    fn accounts_of<'a>(&self, keys: impl IntoIterator<Item = &'a Arc<ObjectKey>>) -> Accounts {
        let mut accounts = Accounts::default();
        for key in keys {
            match self.by_key.get(key).and_then(|e| e.account.as_ref()) {
                Some(account) => {
                    accounts.named.insert(account.clone());
                }
                None => accounts.any = true,
            }
        }
        accounts
    }
}

#[derive(Default)]
struct Indexed {
    live: Entries,
    /// The objects of a relist in progress, swapped in at its end (until then the live entries
    /// stay, exactly like the reflector's store).
    relist: Option<Entries>,
}

/// The OpenAIAccess index; cheap to clone, every clone shares one index.
#[derive(Clone, Default)]
pub struct AccessIndex(Arc<RwLock<Indexed>>);

impl AccessIndex {
    pub fn new() -> AccessIndex {
        AccessIndex::default()
    }

    /// Applies one watch event (call it right after the reflector applied it to the store).
    pub fn apply(&self, event: &watcher::Event<LenientAccess>) {
        let mut indexed = self.0.write().unwrap_or_else(|p| p.into_inner());
        match event {
            watcher::Event::Apply(access) => indexed.live.insert(access),
            watcher::Event::Delete(access) => indexed.live.remove(&access.key()),
            watcher::Event::Init => indexed.relist = Some(Entries::default()),
            watcher::Event::InitApply(access) => {
                indexed
                    .relist
                    .get_or_insert_with(Entries::default)
                    .insert(access);
            }
            watcher::Event::InitDone => {
                if let Some(relist) = indexed.relist.take() {
                    indexed.live = relist;
                }
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Indexed> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The objects that may name `account`: those naming it and the malformed ones whose
    /// reference could not be read.
    pub fn objects_of(&self, account: &str) -> Vec<ObjectKey> {
        let indexed = self.read();
        let live = &indexed.live;
        live.by_account
            .get(account)
            .into_iter()
            .flatten()
            .chain(live.any_account.iter())
            .map(|key| ObjectKey::clone(key))
            .collect()
    }

    /// The accounts of the objects in `namespace`.
    pub fn accounts_in_namespace(&self, namespace: &str) -> Accounts {
        let indexed = self.read();
        let live = &indexed.live;
        live.accounts_of(live.by_namespace.get(namespace).into_iter().flatten())
    }

    /// The accounts of the objects naming the ServiceAccount `namespace/name`.
    pub fn accounts_using_service_account(&self, namespace: &str, name: &str) -> Accounts {
        let indexed = self.read();
        let live = &indexed.live;
        let at = (namespace.to_string(), name.to_string());
        live.accounts_of(live.by_service_account.get(&at).into_iter().flatten())
    }
}

/// Remembers what keyless reads of each object of a kind (a fingerprint of it) and lets an event
/// through only when that changed, the object is seen for the first time, or it is gone.
///
/// Both the object's key and what is read of it are kept as 64-bit hashes: it remembers every
/// object of the cluster (32,000 at issue 18's population), and a key's two strings and a value's
/// copy cost ~100 bytes each where the hashes cost 16. A collision could only hide one change
/// from the triggers (the passes read the stores, never this), and the next resync passes every
/// account anyway; at 64 bits it does not happen.
pub struct ChangeFilter<V> {
    seen: HashMap<u64, u64>,
    read: std::marker::PhantomData<fn(V)>,
}

impl<V> Default for ChangeFilter<V> {
    fn default() -> Self {
        ChangeFilter {
            seen: HashMap::new(),
            read: std::marker::PhantomData,
        }
    }
}

/// A hash that is the same for the same value for the life of the process (std's SipHash with
/// fixed keys, not a `RandomState`).
fn fingerprint(value: &impl Hash) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

impl<V: Hash> ChangeFilter<V> {
    /// `current`: what keyless reads of the object now, or None when it is no longer in the
    /// store (deleted). Returns whether the event matters.
    pub fn changed(&mut self, key: ObjectKey, current: Option<V>) -> bool {
        let key = fingerprint(&key);
        match current {
            None => self.seen.remove(&key).is_some(),
            Some(value) => {
                let value = fingerprint(&value);
                self.seen.insert(key, value) != Some(value)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use serde_json::json;

    fn mk_access(namespace: &str, name: &str, account: &str, sas: &[&str]) -> LenientAccess {
        let principals: Vec<_> = sas.iter().map(|s| json!({"serviceAccount": s})).collect();
        LenientAccess::from_value(json!({
            "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"accountRef": {"name": account}, "role": "OpenAIUser", "principals": principals}
        }))
        .unwrap()
    }

    fn mk_malformed(namespace: &str, name: &str, account: Option<&str>) -> LenientAccess {
        let mut spec = json!({"role": "NoSuchRole", "principals": "not a list"});
        if let Some(account) = account {
            spec["accountRef"] = json!({"name": account});
        }
        let access = LenientAccess::from_value(json!({
            "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec
        }))
        .unwrap();
        assert!(
            access.parsed.is_err(),
            "the builder makes a malformed object"
        );
        access
    }

    fn key(namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn named(accounts: &[&str]) -> Accounts {
        Accounts {
            named: accounts.iter().map(|a| a.to_string()).collect(),
            any: false,
        }
    }

    fn sorted(mut keys: Vec<ObjectKey>) -> Vec<ObjectKey> {
        keys.sort();
        keys
    }

    #[test]
    fn an_account_finds_exactly_its_objects_and_the_unreadable_ones() {
        let index = AccessIndex::new();
        index.apply(&watcher::Event::Apply(mk_access("a", "x", "prod", &[])));
        index.apply(&watcher::Event::Apply(mk_access("b", "y", "prod", &[])));
        index.apply(&watcher::Event::Apply(mk_access("a", "z", "dev", &[])));
        index.apply(&watcher::Event::Apply(mk_malformed("c", "bad", None)));
        index.apply(&watcher::Event::Apply(mk_malformed(
            "c",
            "bad-dev",
            Some("dev"),
        )));
        assert_eq!(
            sorted(index.objects_of("prod")),
            vec![key("a", "x"), key("b", "y"), key("c", "bad")]
        );
        assert_eq!(
            sorted(index.objects_of("dev")),
            vec![key("a", "z"), key("c", "bad"), key("c", "bad-dev")]
        );
        assert_eq!(index.objects_of("other"), vec![key("c", "bad")]);
    }

    #[test]
    fn moving_an_object_to_another_account_leaves_no_trace_under_the_old_one() {
        let index = AccessIndex::new();
        index.apply(&watcher::Event::Apply(mk_access("a", "x", "prod", &["sa"])));
        index.apply(&watcher::Event::Apply(mk_access(
            "a",
            "x",
            "dev",
            &["other"],
        )));
        assert!(index.objects_of("prod").is_empty());
        assert_eq!(index.objects_of("dev"), vec![key("a", "x")]);
        assert_eq!(
            index.accounts_using_service_account("a", "sa"),
            Accounts::default()
        );
        assert_eq!(
            index.accounts_using_service_account("a", "other"),
            named(&["dev"])
        );
        index.apply(&watcher::Event::Delete(mk_access("a", "x", "dev", &[])));
        assert!(index.objects_of("dev").is_empty());
        assert_eq!(index.accounts_in_namespace("a"), Accounts::default());
    }

    #[test]
    fn namespaces_and_service_accounts_map_to_the_accounts_of_their_objects_only() {
        let index = AccessIndex::new();
        index.apply(&watcher::Event::Apply(mk_access(
            "a",
            "x",
            "prod",
            &["chat"],
        )));
        index.apply(&watcher::Event::Apply(mk_access(
            "a",
            "y",
            "dev",
            &["chat", "web"],
        )));
        index.apply(&watcher::Event::Apply(mk_access(
            "b",
            "z",
            "prod",
            &["web"],
        )));
        let cases = [
            (index.accounts_in_namespace("a"), named(&["dev", "prod"])),
            (index.accounts_in_namespace("b"), named(&["prod"])),
            (index.accounts_in_namespace("unrelated"), named(&[])),
            (
                index.accounts_using_service_account("a", "chat"),
                named(&["dev", "prod"]),
            ),
            (
                index.accounts_using_service_account("a", "web"),
                named(&["dev"]),
            ),
            (
                index.accounts_using_service_account("b", "chat"),
                named(&[]),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
        index.apply(&watcher::Event::Apply(mk_malformed("b", "bad", None)));
        assert!(index.accounts_in_namespace("b").any);
        assert!(!index.accounts_in_namespace("a").any);
    }

    #[test]
    fn a_relist_replaces_the_index_at_its_end_and_drops_what_vanished_meanwhile() {
        let index = AccessIndex::new();
        index.apply(&watcher::Event::Apply(mk_access("a", "gone", "prod", &[])));
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(mk_access(
            "a",
            "kept",
            "prod",
            &[],
        )));
        // Until the relist ends, the previous view stays (as in the reflector's store).
        assert_eq!(index.objects_of("prod"), vec![key("a", "gone")]);
        index.apply(&watcher::Event::InitDone);
        assert_eq!(index.objects_of("prod"), vec![key("a", "kept")]);
    }

    #[test]
    fn the_change_filter_passes_first_sight_changes_and_deletions_only() {
        let mut filter = ChangeFilter::default();
        let ns = || key("", "team");
        let steps = [
            (Some("tier=prod"), true, "first sight"),
            (
                Some("tier=prod"),
                false,
                "unchanged (an annotation or finalizer changed)",
            ),
            (Some("tier=dev"), true, "labels changed"),
            (Some("tier=dev"), false, "unchanged again"),
            (None, true, "deleted"),
            (None, false, "deleted and already forgotten"),
            (Some("tier=dev"), true, "created again"),
        ];
        for (current, want, why) in steps {
            assert_eq!(filter.changed(ns(), current), want, "{why}");
        }
    }
}
