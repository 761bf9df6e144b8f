//! One pass over one account scope: from what is declared, resolved and observed, to the writes ARM
//! needs and the status of every OpenAIAccess. Pure: no IO, `now` is an input, and the same input
//! always gives the same plan.
//!
//! [`plan`] runs the stages in order, each in its own module with its own tests, each rule in
//! exactly one of them:
//! 1. [`eligibility`](super::eligibility): namespace (three-way), role, declared kind, retention —
//!    from the spec and the account alone, before any lookup;
//! 2. [`resolution`](super::resolution): the lookup's facts; lasting vs temporary failures;
//! 3. [`authorise`](super::authorise): federation and the found kind;
//! 4. [`desired`](super::desired): the desired set and what is protected, and by whom;
//! 5. [`diff`](super::diff): the writes, keyed by grant;
//! 6. [`status`](super::status): every object's status, projected once.

use super::model::{NewAssignment, ObservedAssignment, PrincipalType};
use super::ownership::InstanceId;
use super::policy::NamespaceLabels;
use super::scope::AccountScope;
use super::view::{MalformedObject, ViewCompleteness};
use crate::api::{
    GrantState, OpenAIAccessSpec, OpenAIAccessStatus, OpenAIAccountSpec, PrincipalRef,
    PrincipalStatus, RoleName,
};
use jiff::Timestamp;
use std::sync::Arc;
use std::time::Duration;

pub use super::resolution::Resolution;

/// A namespaced object's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One OpenAIAccess on the account, live or being deleted.
#[derive(Clone, Debug)]
pub struct AccessInput {
    pub key: ObjectKey,
    pub generation: Option<i64>,
    pub spec: Arc<OpenAIAccessSpec>,
    pub being_deleted: bool,
    /// The status written by the previous pass: pinned group ids, replication clocks, and the
    /// object ids principals had (so a principal that fails to resolve still protects its grant).
    pub previous: Option<Arc<OpenAIAccessStatus>>,
    /// One per `spec.principals` entry, in order.
    pub resolutions: Vec<Resolution>,
}

/// The OpenAIAccount being planned.
#[derive(Clone, Debug)]
pub struct AccountInput {
    pub name: String,
    pub spec: OpenAIAccountSpec,
    pub being_deleted: bool,
}

/// What ARM said about the scope.
#[derive(Clone, Debug)]
pub enum Observation {
    /// Every page of the `atScope()` LIST.
    Complete(Vec<ObservedAssignment>),
    /// Some pages: creates are still safe (a duplicate is a 409 to adopt), deletes are not.
    Incomplete(Vec<ObservedAssignment>),
    /// ARM answered 404 for the account: it is gone, and every assignment at its scope with it.
    AccountGone,
    /// The account or its assignments could not be read.
    Unavailable { message: String },
}

#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    pub scope: &'a AccountScope,
    pub account: &'a AccountInput,
    pub accesses: &'a [AccessInput],
    pub namespaces: &'a NamespaceLabels,
    pub observation: &'a Observation,
    pub instance: &'a InstanceId,
    pub now: Timestamp,
    pub max_deletes: usize,
    /// How long a maybe-replicating principal stays Pending before it is reported Failed.
    pub replication_deadline: Duration,
    /// How long after ARM's createdOn a new grant is assumed effective: the old grant of a changed
    /// principal goes only once its replacement is past it.
    pub propagation_grace: Duration,
    /// Whether `accesses` is every object on the account.
    pub view: &'a ViewCompleteness,
    /// Objects that may name this account but could not be decoded.
    pub malformed: &'a [MalformedObject],
    /// What enforcement Exclusive keeps between passes, and its grace.
    pub exclusive: &'a super::exclusive::ExclusiveContext,
}

/// A grant: (principal object id in lower case, role) at the plan's scope.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantKey {
    pub principal_id: String,
    pub role: RoleName,
}

impl GrantKey {
    pub fn new(principal_id: &str, role: RoleName) -> GrantKey {
        GrantKey {
            principal_id: principal_id.to_ascii_lowercase(),
            role,
        }
    }
}

/// A write to ARM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Create {
        assignment: NewAssignment,
        /// The objects that declare it.
        declared_by: Vec<ObjectKey>,
    },
    /// Re-PUT an owned assignment with a description naming no instance: deletion policy Retain
    /// leaves the grant, and no keyless may delete it afterwards.
    Release {
        assignment: NewAssignment,
        id: String,
    },
    Delete {
        assignment: ObservedAssignment,
        reason: &'static str,
        /// Live objects whose principal this grant was (a principal change): the delete waits for
        /// their creates to succeed in this pass.
        after_creates_of: Vec<ObjectKey>,
    },
}

/// Whether an object being deleted may lose its finalizer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cleanup {
    NotDeleting,
    /// Nothing left to revoke for it.
    Complete,
    /// Complete once the writes of these grants succeed.
    AfterWrites(Vec<GrantKey>),
    /// Not this pass; the message says why.
    Blocked(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct AccessOutcome {
    pub key: ObjectKey,
    pub generation: Option<i64>,
    pub principals: Vec<PrincipalStatus>,
    pub cleanup: Cleanup,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Creates first, then releases, then deletes.
    pub writes: Vec<Write>,
    pub accesses: Vec<AccessOutcome>,
    /// For the OpenAIAccount itself when it is being deleted.
    pub account_cleanup: Cleanup,
    /// Deletes left for the next pass by the per-pass limit.
    pub deferred_deletes: usize,
    /// Why this pass deletes nothing, when it does not.
    pub deletions_blocked: Option<String>,
    /// Grants made without federation where the account leaves it optional: worth a warning.
    pub findings: Vec<(ObjectKey, String)>,
    /// Another installation writes markers with this instance id: the `InstanceIdCollision`
    /// condition's message. Deletes and releases stop on the account while it lasts.
    pub instance_collision: Option<String>,
    /// Enforcement Exclusive's decision; its deletes are in `writes` too, after the diff's.
    pub exclusive: super::exclusive::ExclusivePlan,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.writes.is_empty()
    }
}

impl Write {
    /// The grant this write is about: results are matched by it, never by position.
    pub fn grant(&self) -> Option<GrantKey> {
        match self {
            Write::Create { assignment, .. } | Write::Release { assignment, .. } => {
                Some(GrantKey::new(&assignment.principal_id, assignment.role))
            }
            Write::Delete { assignment, .. } => {
                RoleName::from_definition_id(&assignment.role_definition_id)
                    .map(|role| GrantKey::new(&assignment.principal_id, role))
            }
        }
    }
}

/// Plans one pass over one account scope, stage by stage.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let decisions = super::desired::decide(input);
    let desired = super::desired::desired(input, &decisions);
    let mut diff = super::diff::diff(input, &decisions, &desired);
    let deletes_so_far = diff
        .writes
        .iter()
        .filter(|w| matches!(w, Write::Delete { .. }))
        .count();
    let exclusive = super::exclusive::exclusive(
        input,
        &decisions,
        &desired,
        diff.instance_collision.as_deref(),
        deletes_so_far,
    );
    diff.writes.extend(exclusive.deletes.iter().cloned());
    diff.deferred_deletes += exclusive.deferred;
    let accesses = super::status::project(input, &decisions, &desired, &diff);
    let account_cleanup = super::status::account_cleanup(input, &diff);
    let findings = input
        .accesses
        .iter()
        .zip(&decisions)
        .flat_map(|(access, object)| {
            object.principals.iter().filter_map(|p| match &p.decision {
                super::desired::Decision::Authorised {
                    finding: Some(note),
                    ..
                } => Some((access.key.clone(), format!("{}: {note}", p.label))),
                _ => None,
            })
        })
        .collect();
    Plan {
        findings,
        writes: diff.writes,
        accesses,
        account_cleanup,
        deferred_deletes: diff.deferred_deletes,
        deletions_blocked: diff.deletions_blocked,
        instance_collision: diff.instance_collision,
        exclusive,
    }
}

/// `"{granted}/{total} granted"` for an object's status.
pub fn summary(principals: &[PrincipalStatus]) -> String {
    let granted = principals
        .iter()
        .filter(|p| p.state == Some(GrantState::Granted))
        .count();
    format!("{granted}/{} granted", principals.len())
}

/// The object id `previous` records for this principal entry, if it resolved (used by the resolver
/// to keep a group name pinned). The pin is per entry and lasts until the entry's own text changes:
/// an edit elsewhere in the spec (another principal, the role, expiresAt) keeps it, so a later
/// rename of some other group to this name cannot capture the grant.
pub fn pinned_object_id<'a>(
    previous: Option<&'a OpenAIAccessStatus>,
    principal: &PrincipalRef,
) -> Option<(&'a str, PrincipalType)> {
    let label = principal.to_string();
    previous?
        .principals
        .iter()
        .find(|p| p.principal == label)
        .and_then(|p| Some((p.object_id.as_deref()?, p.principal_type?)))
}
