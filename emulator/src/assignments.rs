//! The emulator's role assignments, indexed for the questions ARM asks on every request.
//!
//! A plain list made every PUT scan all assignments several times (by name, for a duplicate
//! (scope, principal, role), for the subscription's count, to authorize the caller), so converging
//! N assignments cost O(N²). The store keeps them in creation order (the order lists return) and
//! indexes them by name, normalized scope, principal, (scope, principal, role) and subscription.
//!
//! The indexes only narrow: callers still apply the predicates they applied to the whole list
//! (`is_at_or_above`, a filter's principal test), so what they answer cannot change. Every index
//! holds sets of positions, not one, because a seed or the admin API may write two assignments
//! with one name or one (scope, principal, role); "the first" stays the first in creation order.

use crate::state::{RoleAssignment, normalize_id, subscription_of};
use serde::{Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

/// Position in creation order: the assignment's slot.
type Seq = usize;

/// Positions in ascending order. Most keys hold one, so a vector costs less than a set.
type Seqs = Vec<Seq>;

fn add_seq(seqs: &mut Seqs, seq: Seq) {
    match seqs.last() {
        Some(last) if *last > seq => {
            if let Err(at) = seqs.binary_search(&seq) {
                seqs.insert(at, seq);
            }
        }
        Some(last) if *last == seq => {}
        _ => seqs.push(seq),
    }
}

fn remove_seq(seqs: &mut Seqs, seq: Seq) {
    if let Ok(at) = seqs.binary_search(&seq) {
        seqs.remove(at);
    }
}

#[derive(Clone, Debug, Default)]
pub struct RoleAssignments {
    /// In creation order; a removed assignment leaves an empty slot until the next compaction, so
    /// positions in the indexes stay valid.
    slots: Vec<Option<RoleAssignment>>,
    live: usize,
    /// Lower-case name.
    by_name: HashMap<String, Seqs>,
    /// Normalized scope; ordered, so a scope's descendants are one range.
    by_scope: BTreeMap<String, Seqs>,
    /// Lower-case principal id.
    by_principal: HashMap<String, Seqs>,
    /// A hash of (normalized scope, principal, role GUID): a key per assignment, so a hash rather
    /// than three more strings each. Lookups compare the candidates' fields.
    by_grant: HashMap<u64, Seqs>,
    /// Lower-case subscription id.
    per_subscription: HashMap<String, usize>,
}

/// Lists return assignments in creation order; so does the admin API's snapshot.
impl Serialize for RoleAssignments {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

fn grant_hash(normalized_scope: &str, principal_id: &str, role_definition_guid: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    normalized_scope.hash(&mut hasher);
    principal_id.to_ascii_lowercase().hash(&mut hasher);
    role_definition_guid.to_ascii_lowercase().hash(&mut hasher);
    hasher.finish()
}

fn add<K: Hash + Eq>(index: &mut HashMap<K, Seqs>, key: K, seq: Seq) {
    add_seq(index.entry(key).or_default(), seq);
}

fn drop_from<K: Hash + Eq>(index: &mut HashMap<K, Seqs>, key: &K, seq: Seq) {
    if let Some(seqs) = index.get_mut(key) {
        remove_seq(seqs, seq);
        if seqs.is_empty() {
            index.remove(key);
        }
    }
}

/// `scope` (normalized) and every scope `is_at_or_above` it: `/` and each prefix that ends where
/// a segment ends.
fn ancestors_and_self(scope: &str) -> Vec<&str> {
    let mut scopes = vec!["/"];
    if scope != "/" {
        scopes.extend(
            scope
                .match_indices('/')
                .filter(|(at, _)| *at > 0)
                .map(|(at, _)| &scope[..at]),
        );
        scopes.push(scope);
    }
    scopes
}

impl RoleAssignments {
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// All of them, in creation order.
    pub fn iter(&self) -> impl Iterator<Item = &RoleAssignment> {
        self.slots.iter().flatten()
    }

    /// Appends: the newest assignment lists last.
    pub fn push(&mut self, assignment: RoleAssignment) {
        let seq = self.slots.len();
        self.index(seq, &assignment);
        self.slots.push(Some(assignment));
        self.live += 1;
    }

    fn get(&self, seq: Seq) -> Option<&RoleAssignment> {
        self.slots.get(seq).and_then(Option::as_ref)
    }

    fn index(&mut self, seq: Seq, a: &RoleAssignment) {
        let scope = normalize_id(&a.scope);
        add(&mut self.by_name, a.name.to_ascii_lowercase(), seq);
        add(
            &mut self.by_principal,
            a.principal_id.to_ascii_lowercase(),
            seq,
        );
        add(
            &mut self.by_grant,
            grant_hash(&scope, &a.principal_id, &a.role_definition_guid),
            seq,
        );
        add_seq(self.by_scope.entry(scope).or_default(), seq);
        if let Some(sub) = subscription_of(&a.scope) {
            *self.per_subscription.entry(sub).or_default() += 1;
        }
    }

    fn unindex(&mut self, seq: Seq, a: &RoleAssignment) {
        let scope = normalize_id(&a.scope);
        drop_from(&mut self.by_name, &a.name.to_ascii_lowercase(), seq);
        drop_from(
            &mut self.by_principal,
            &a.principal_id.to_ascii_lowercase(),
            seq,
        );
        drop_from(
            &mut self.by_grant,
            &grant_hash(&scope, &a.principal_id, &a.role_definition_guid),
            seq,
        );
        if let Some(seqs) = self.by_scope.get_mut(&scope) {
            remove_seq(seqs, seq);
            if seqs.is_empty() {
                self.by_scope.remove(&scope);
            }
        }
        if let Some(sub) = subscription_of(&a.scope)
            && let Some(count) = self.per_subscription.get_mut(&sub)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_subscription.remove(&sub);
            }
        }
    }

    fn take(&mut self, seq: Seq) -> Option<RoleAssignment> {
        let assignment = self.slots.get_mut(seq)?.take()?;
        self.live -= 1;
        self.unindex(seq, &assignment);
        Some(assignment)
    }

    /// Once most slots are empty, renumbers the rest: O(n) after n/2 removals.
    fn compact_if_sparse(&mut self) {
        if self.slots.len() >= 64 && self.live * 2 < self.slots.len() {
            let kept: Vec<RoleAssignment> = std::mem::take(&mut self.slots)
                .into_iter()
                .flatten()
                .collect();
            *self = RoleAssignments::default();
            for assignment in kept {
                self.push(assignment);
            }
        }
    }

    fn resolve(&self, seqs: impl IntoIterator<Item = Seq>) -> Vec<&RoleAssignment> {
        seqs.into_iter().filter_map(|seq| self.get(seq)).collect()
    }

    fn first_seq_named(&self, name: &str) -> Option<Seq> {
        self.by_name
            .get(&name.to_ascii_lowercase())
            .and_then(|seqs| seqs.first().copied())
    }

    /// The first assignment with this name (names compare case-insensitively).
    pub fn named(&self, name: &str) -> Option<&RoleAssignment> {
        self.first_seq_named(name).and_then(|seq| self.get(seq))
    }

    /// Changes the first assignment with this name in place: it keeps its place in the order.
    pub fn update_named<R>(
        &mut self,
        name: &str,
        change: impl FnOnce(&mut RoleAssignment) -> R,
    ) -> Option<R> {
        let seq = self.first_seq_named(name)?;
        let mut assignment = self.take(seq)?;
        let result = change(&mut assignment);
        // Re-indexed, in case the change touched an indexed field.
        self.index(seq, &assignment);
        if let Some(slot) = self.slots.get_mut(seq) {
            *slot = Some(assignment);
            self.live += 1;
        }
        Some(result)
    }

    /// Removes the first assignment with this name.
    pub fn remove_first_named(&mut self, name: &str) -> Option<RoleAssignment> {
        let seq = self.first_seq_named(name)?;
        let removed = self.take(seq);
        self.compact_if_sparse();
        removed
    }

    /// Removes every assignment with this name.
    pub fn remove_named(&mut self, name: &str) -> Vec<RoleAssignment> {
        let seqs: Vec<Seq> = self
            .by_name
            .get(&name.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default();
        let removed = seqs.into_iter().filter_map(|seq| self.take(seq)).collect();
        self.compact_if_sparse();
        removed
    }

    /// The first assignment of this role to this principal at exactly this scope.
    pub fn same_grant(
        &self,
        scope: &str,
        principal_id: &str,
        role_definition_guid: &str,
    ) -> Option<&RoleAssignment> {
        let scope = normalize_id(scope);
        self.by_grant
            .get(&grant_hash(&scope, principal_id, role_definition_guid))?
            .iter()
            .filter_map(|seq| self.get(*seq))
            .find(|a| {
                normalize_id(&a.scope) == scope
                    && a.principal_id.eq_ignore_ascii_case(principal_id)
                    && a.role_definition_guid
                        .eq_ignore_ascii_case(role_definition_guid)
            })
    }

    /// How many assignments have a scope in this subscription.
    pub fn in_subscription(&self, subscription_id: &str) -> usize {
        self.per_subscription
            .get(&subscription_id.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// Assignments at `scope`, above it or below it, in creation order: every assignment that
    /// `is_at_or_above(a, scope) || is_at_or_above(scope, a)` can hold for, and no other.
    pub fn related_to(&self, scope: &str) -> Vec<&RoleAssignment> {
        let scope = normalize_id(scope);
        if scope == "/" {
            return self.iter().collect();
        }
        let mut seqs: BTreeSet<Seq> = BTreeSet::new();
        for upper in ancestors_and_self(&scope) {
            if let Some(set) = self.by_scope.get(upper) {
                seqs.extend(set);
            }
        }
        let below = format!("{scope}/");
        for (_, set) in self
            .by_scope
            .range(below.clone()..)
            .take_while(|(key, _)| key.starts_with(&below))
        {
            seqs.extend(set);
        }
        self.resolve(seqs)
    }

    /// Assignments to any of these principals, in creation order.
    pub fn of_principals(&self, principal_ids: &[String]) -> Vec<&RoleAssignment> {
        let mut seqs: BTreeSet<Seq> = BTreeSet::new();
        for id in principal_ids {
            if let Some(set) = self.by_principal.get(&id.to_ascii_lowercase()) {
                seqs.extend(set);
            }
        }
        self.resolve(seqs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::is_at_or_above;

    const SUB: &str = "00000000-0000-0000-0000-00000000000a";
    const OTHER_SUB: &str = "00000000-0000-0000-0000-00000000000b";
    const ROLE: &str = "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd";

    fn mk_assignment(name: &str, scope: &str, principal: &str) -> RoleAssignment {
        RoleAssignment {
            name: name.into(),
            scope: scope.into(),
            role_definition_guid: ROLE.into(),
            principal_id: principal.into(),
            principal_type: "User".into(),
            description: None,
            condition: None,
            condition_version: None,
            created_on: jiff::Timestamp::UNIX_EPOCH,
            updated_on: jiff::Timestamp::UNIX_EPOCH,
            created_by: None,
            updated_by: None,
            delegated_managed_identity_resource_id: None,
        }
    }

    fn names<'a>(list: impl IntoIterator<Item = &'a RoleAssignment>) -> Vec<&'a str> {
        list.into_iter().map(|a| a.name.as_str()).collect()
    }

    fn scopes() -> Vec<String> {
        let rg = format!("/subscriptions/{SUB}/resourceGroups/rg");
        vec![
            "/".into(),
            "/providers/Microsoft.Management/managementGroups/mg".into(),
            format!("/subscriptions/{SUB}"),
            format!("/Subscriptions/{}/", SUB.to_uppercase()),
            format!("/subscriptions/{OTHER_SUB}"),
            rg.clone(),
            format!("/subscriptions/{SUB}/resourceGroups/rg2"),
            format!("/subscriptions/{SUB}/resourceGroups/rg-2"),
            format!("{rg}/providers/Microsoft.CognitiveServices/accounts/a"),
            format!("{rg}/providers/Microsoft.CognitiveServices/accounts/a2"),
            format!("{rg}/providers/Microsoft.CognitiveServices/accounts/A/deployments/d"),
        ]
    }

    /// A store with one assignment at each scope, to two principals alternately.
    fn mk_store() -> RoleAssignments {
        let mut store = RoleAssignments::default();
        for (i, scope) in scopes().iter().enumerate() {
            store.push(mk_assignment(
                &format!("n{i}"),
                scope,
                &format!("p{}", i % 2),
            ));
        }
        store
    }

    #[test]
    fn related_to_finds_exactly_what_a_scan_of_the_list_finds_in_creation_order() {
        let store = mk_store();
        let mut queries = scopes();
        queries.push(format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Authorization/roleAssignments/x"));
        queries.push(format!("/subscriptions/{SUB}/resourcegroups"));
        for query in queries {
            let scanned: Vec<&RoleAssignment> = store
                .iter()
                .filter(|a| is_at_or_above(&a.scope, &query) || is_at_or_above(&query, &a.scope))
                .collect();
            assert_eq!(
                names(store.related_to(&query)),
                names(scanned),
                "scope {query}"
            );
        }
    }

    #[test]
    fn of_principals_finds_their_assignments_in_creation_order() {
        let store = mk_store();
        let found = store.of_principals(&["P1".into(), "nobody".into()]);
        let scanned: Vec<&RoleAssignment> =
            store.iter().filter(|a| a.principal_id == "p1").collect();
        assert_eq!(names(found), names(scanned));
        assert!(store.of_principals(&[]).is_empty());
    }

    #[test]
    fn subscription_counts_follow_pushes_and_removals_whatever_the_casing() {
        let mut store = mk_store();
        // The subscription, its resource groups and the accounts below, however cased.
        assert_eq!(store.in_subscription(SUB), 8);
        assert_eq!(store.in_subscription(&SUB.to_uppercase()), 8);
        assert_eq!(store.in_subscription(OTHER_SUB), 1);
        assert_eq!(
            store
                .remove_named("N2")
                .into_iter()
                .map(|a| a.name)
                .collect::<Vec<_>>(),
            vec!["n2".to_string()]
        );
        assert_eq!(store.in_subscription(SUB), 7);
        assert!(store.remove_first_named("n4").is_some());
        assert_eq!(store.in_subscription(OTHER_SUB), 0);
        assert_eq!(store.len(), scopes().len() - 2);
    }

    #[test]
    fn duplicate_names_answer_the_oldest_first_and_all_can_be_removed() {
        let mut store = RoleAssignments::default();
        store.push(mk_assignment("dup", "/subscriptions/a", "p"));
        store.push(mk_assignment("other", "/subscriptions/a", "p"));
        store.push(mk_assignment("DUP", "/subscriptions/b", "p"));
        assert_eq!(
            store.named("Dup").map(|a| a.scope.as_str()),
            Some("/subscriptions/a")
        );
        assert_eq!(
            store.remove_first_named("dup").map(|a| a.scope),
            Some("/subscriptions/a".into())
        );
        assert_eq!(
            store.named("dup").map(|a| a.scope.as_str()),
            Some("/subscriptions/b")
        );
        store.push(mk_assignment("dup", "/subscriptions/c", "p"));
        assert_eq!(store.remove_named("dup").len(), 2);
        assert_eq!(names(store.iter()), vec!["other"]);
        assert!(store.named("dup").is_none());
    }

    #[test]
    fn the_same_grant_is_found_by_normalized_scope_principal_and_role() {
        let mut store = RoleAssignments::default();
        store.push(mk_assignment("first", "/subscriptions/A/", "P"));
        store.push(mk_assignment("second", "/subscriptions/a", "p"));
        let found = store.same_grant("/Subscriptions/a", "p", &ROLE.to_uppercase());
        assert_eq!(found.map(|a| a.name.as_str()), Some("first"));
        assert!(
            store
                .same_grant("/subscriptions/a/resourceGroups/rg", "p", ROLE)
                .is_none()
        );
        assert!(store.same_grant("/subscriptions/a", "q", ROLE).is_none());
        store.remove_named("first");
        let found = store.same_grant("/subscriptions/a", "p", ROLE);
        assert_eq!(found.map(|a| a.name.as_str()), Some("second"));
    }

    #[test]
    fn an_update_keeps_the_place_in_the_order_and_the_indexes_current() {
        let mut store = mk_store();
        let before = names(store.iter()).join(",");
        let changed = store.update_named("n3", |a| {
            a.description = Some("changed".into());
            a.principal_id = "p9".into();
        });
        assert_eq!(changed, Some(()));
        assert_eq!(names(store.iter()).join(","), before);
        assert_eq!(names(store.of_principals(&["p9".into()])), vec!["n3"]);
        assert!(!names(store.of_principals(&["p1".into()])).contains(&"n3"));
        assert_eq!(store.update_named("missing", |_| ()), None);
    }

    #[test]
    fn compaction_after_many_removals_keeps_the_order_and_the_indexes() {
        let mut store = RoleAssignments::default();
        for i in 0..100 {
            store.push(mk_assignment(
                &format!("n{i}"),
                &format!("/subscriptions/{SUB}/resourceGroups/rg{}", i % 3),
                &format!("p{}", i % 2),
            ));
        }
        for i in (0..100).filter(|i| i % 4 != 0) {
            assert!(store.remove_first_named(&format!("n{i}")).is_some());
        }
        assert!(store.slots.len() < 100, "compacted");
        let kept: Vec<String> = (0..100).step_by(4).map(|i| format!("n{i}")).collect();
        assert_eq!(names(store.iter()), kept);
        assert_eq!(store.len(), kept.len());
        assert_eq!(store.in_subscription(SUB), kept.len());
        assert_eq!(store.named("n96").map(|a| a.name.as_str()), Some("n96"));
        assert!(store.named("n97").is_none());
        let in_rg0 = store.related_to(&format!("/subscriptions/{SUB}/resourceGroups/rg0"));
        let scanned: Vec<&str> = (0..100)
            .step_by(4)
            .filter(|i| i % 3 == 0)
            .map(|i| kept[i / 4].as_str())
            .collect();
        assert_eq!(names(in_rg0), scanned);
        assert_eq!(store.of_principals(&["p0".into()]).len(), kept.len());
        assert!(
            store
                .same_grant(
                    &format!("/subscriptions/{SUB}/resourceGroups/rg1"),
                    "p0",
                    ROLE
                )
                .is_some()
        );
    }

    #[test]
    fn it_serializes_as_the_list_in_creation_order() {
        let store = mk_store();
        let value = serde_json::to_value(&store).unwrap();
        let listed: Vec<&str> = value
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert_eq!(listed, names(store.iter()));
    }
}
