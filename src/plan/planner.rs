//! One pass over one account scope: from what is declared, resolved and observed, to the writes ARM
//! needs and the status of every OpenAIAccess. Pure: no IO, `now` is an input, and the same input
//! always gives the same plan.
//!
//! The rules, each tested in `plan::tests`:
//! - A grant is (scope, principal object id, role GUID). An observed assignment with that triple is
//!   the grant whatever its name: kept if ours, adopted (never touched) otherwise.
//! - Ours means the description carries our marker with our instance id (`ownership`).
//! - A grant stays while any live OpenAIAccess declares it; an owned one nobody declares goes.
//! - The account's policy is authoritative: what it does not allow is denied, and revoked if ours.
//! - No deletion for an object whose principals failed to resolve, when the account could not be
//!   read, or when the LIST was incomplete; at most `max_deletes` per pass.
//! - Creates come before deletes (make-before-break), and a delete that replaces a principal of an
//!   object waits for that object's creates to succeed.
//! - Past `expiresAt`, owned grants go even under Retain, unless another live object declares them.

use super::model::{NewAssignment, ObservedAssignment, PrincipalType};
use super::ownership::{
    InstanceId, assignment_name, is_owned_by, ownership_marker, released_marker,
};
use super::policy::{self, NamespaceLabels};
use super::scope::AccountScope;
use crate::api::common::Time;
use crate::api::{
    DeletionPolicy, GrantState, OpenAIAccessSpec, OpenAIAccessStatus, OpenAIAccountSpec,
    PrincipalRef, PrincipalStatus, RoleName, reasons,
};
use jiff::Timestamp;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

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

/// How one principal of an OpenAIAccess resolved to an Entra object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    Resolved {
        object_id: String,
        principal_type: PrincipalType,
    },
    /// Could not be resolved now. `replicating`: the principal may still appear (a new object
    /// replicating through Entra), so the pass waits up to the replication deadline.
    Unresolved {
        reason: String,
        message: String,
        replicating: bool,
    },
    /// The resolver refused it (e.g. a ServiceAccount without a federated credential).
    Denied { reason: String, message: String },
}

/// One OpenAIAccess on the account, live or being deleted.
#[derive(Clone, Debug)]
pub struct AccessInput {
    pub key: ObjectKey,
    pub generation: Option<i64>,
    pub spec: OpenAIAccessSpec,
    pub being_deleted: bool,
    /// The status written by the previous pass: pinned group ids, replication clocks, and the
    /// object ids principals had (so a principal that fails to resolve still protects its grant).
    pub previous: Option<OpenAIAccessStatus>,
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
    /// Complete once these writes (indexes into `Plan::writes`) succeed.
    AfterWrites(Vec<usize>),
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
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.writes.is_empty()
    }
}

fn lower(id: &str) -> String {
    id.to_ascii_lowercase()
}

/// Plans one pass over one account scope.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let scope = input.scope;
    let observed: Option<&[ObservedAssignment]> = match input.observation {
        Observation::Complete(list) | Observation::Incomplete(list) => Some(list),
        Observation::AccountGone | Observation::Unavailable { .. } => None,
    };
    // Normalized (principal, role) of every assignment at exactly this scope with a known role.
    let observed: Vec<(String, RoleName, &ObservedAssignment)> = observed
        .unwrap_or_default()
        .iter()
        .filter(|a| scope.matches(&a.scope))
        .filter_map(|a| {
            RoleName::from_definition_id(&a.role_definition_id)
                .map(|r| (lower(&a.principal_id), r, a))
        })
        .collect();
    // Looked up once per principal: indexed, since a scope can hold thousands of assignments.
    let mut by_grant: HashMap<(&str, RoleName), &ObservedAssignment> =
        HashMap::with_capacity(observed.len());
    for (principal_id, role, assignment) in &observed {
        by_grant
            .entry((principal_id.as_str(), *role))
            .or_insert(assignment);
    }
    let find = |principal_id: &str, role: RoleName| by_grant.get(&(principal_id, role)).copied();

    let account_deleting = input.account.being_deleted;

    // Pass 1: what each principal of each object wants, and who declares each grant.
    let mut desired: BTreeMap<(String, RoleName), (Vec<ObjectKey>, PrincipalType)> =
        BTreeMap::new();
    let mut protected: BTreeSet<String> = BTreeSet::new();
    let mut block_all_deletes: Option<String> = None;
    // (object key, principal_id, role) for grants of objects being deleted or expired, and their policy.
    let mut intents: Vec<Vec<PrincipalIntent>> = Vec::with_capacity(input.accesses.len());

    for access in input.accesses {
        let spec = &access.spec;
        let expired = spec.expires_at.as_ref().is_some_and(|t| t.0 <= input.now);
        let live = !access.being_deleted && !expired && !account_deleting;
        let mut principal_intents = Vec::with_capacity(spec.principals.len());
        for (index, principal) in spec.principals.iter().enumerate() {
            let reference = principal.reference();
            let label = reference
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| format!("principals[{index}]"));
            let previous = access
                .previous
                .as_ref()
                .and_then(|s| s.principals.iter().find(|p| p.principal == label));
            let previous_oid = previous.and_then(|p| p.object_id.as_deref()).map(lower);
            let resolution = access.resolutions.get(index);
            let intent = match (reference, resolution) {
                (None, _) => PrincipalIntent::invalid(label, index),
                (Some(_), None) => PrincipalIntent::unresolved(
                    label,
                    reasons::RESOLUTION_FAILED,
                    "not resolved in this pass".into(),
                    previous_oid,
                    None,
                ),
                (Some(_), Some(Resolution::Denied { reason, message })) => {
                    PrincipalIntent::denied(label, reason.clone(), message.clone(), previous_oid)
                }
                (
                    Some(_),
                    Some(Resolution::Unresolved {
                        reason,
                        message,
                        replicating,
                    }),
                ) => {
                    let since = previous
                        .and_then(|p| p.pending_since.as_ref())
                        .map(|t| t.0)
                        .unwrap_or(input.now);
                    let waited = input.now.duration_since(since).unsigned_abs();
                    let still_waiting = *replicating && waited < input.replication_deadline;
                    PrincipalIntent::unresolved(
                        label,
                        if *replicating {
                            reasons::REPLICATING
                        } else {
                            reason.as_str()
                        },
                        if *replicating && !still_waiting {
                            format!(
                                "{message}; gave up waiting for replication after {}s (still retried every pass)",
                                input.replication_deadline.as_secs()
                            )
                        } else {
                            message.clone()
                        },
                        previous_oid,
                        replicating.then_some((since, still_waiting)),
                    )
                }
                (
                    Some(reference),
                    Some(Resolution::Resolved {
                        object_id,
                        principal_type,
                    }),
                ) => {
                    let policy = policy::check(
                        &input.account.name,
                        &input.account.spec,
                        &access.key.namespace,
                        input.namespaces,
                        spec.role,
                        reference.kind(),
                    );
                    match policy {
                        Err(denial) => PrincipalIntent::denied(
                            label,
                            denial.reason.to_string(),
                            denial.message,
                            Some(lower(object_id)),
                        ),
                        Ok(()) => PrincipalIntent::resolved(
                            label,
                            lower(object_id),
                            *principal_type,
                            access.generation,
                        ),
                    }
                }
            };
            match &intent.grant {
                Some((oid, principal_type)) if live => {
                    let entry = desired
                        .entry((oid.clone(), spec.role))
                        .or_insert_with(|| (Vec::new(), *principal_type));
                    entry.0.push(access.key.clone());
                }
                _ => {}
            }
            if intent.unresolved {
                match &intent.previous_oid {
                    Some(oid) => {
                        protected.insert(oid.clone());
                    }
                    None => {
                        block_all_deletes.get_or_insert_with(|| {
                            format!(
                                "{} in {} could not be resolved and has no known object id: deleting nothing this pass",
                                intent.status.principal, access.key
                            )
                        });
                    }
                }
            }
            principal_intents.push(intent);
        }
        intents.push(principal_intents);
    }

    let deletions_blocked = match input.observation {
        Observation::Complete(_) => block_all_deletes,
        Observation::Incomplete(_) => {
            Some("the role assignment LIST was incomplete: deleting nothing this pass".into())
        }
        Observation::Unavailable { message } => Some(format!(
            "the account could not be read ({message}): changing nothing this pass"
        )),
        Observation::AccountGone => None,
    };

    // Pass 2: writes.
    let mut creates = Vec::new();
    if observed_available(input.observation) {
        for ((oid, role), (declared_by, principal_type)) in &desired {
            if find(oid, *role).is_none() {
                let declared = declared_by
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                creates.push(Write::Create {
                    assignment: NewAssignment {
                        scope: scope.clone(),
                        name: assignment_name(scope, oid, *role),
                        principal_id: oid.clone(),
                        principal_type: *principal_type,
                        role: *role,
                        description: ownership_marker(input.instance, &declared),
                    },
                    declared_by: declared_by.clone(),
                });
            }
        }
    }

    let mut releases = Vec::new();
    let mut deletes = Vec::new();
    let mut deferred_deletes = 0;
    if deletions_blocked.is_none() && matches!(input.observation, Observation::Complete(_)) {
        for (oid, role, assignment) in &observed {
            if !is_owned_by(assignment.description.as_deref(), input.instance)
                || desired.contains_key(&(oid.clone(), *role))
                || protected.contains(oid)
            {
                continue;
            }
            let retain = if account_deleting {
                input.account.spec.deletion_policy == DeletionPolicy::Retain
            } else {
                retained_by_a_deleted_object(input, &intents, oid, *role)
            };
            // ARM names are GUIDs; anything else cannot be re-PUT, so it is left alone.
            let name = uuid::Uuid::parse_str(&assignment.name).ok();
            if let (true, Some(name)) = (retain, name) {
                let principal_type = assignment
                    .principal_type
                    .as_deref()
                    .and_then(PrincipalType::from_arm)
                    .unwrap_or(PrincipalType::ServicePrincipal);
                releases.push(Write::Release {
                    assignment: NewAssignment {
                        scope: scope.clone(),
                        name,
                        principal_id: assignment.principal_id.clone(),
                        principal_type,
                        role: *role,
                        description: released_marker(&declared_by_of(assignment)),
                    },
                    id: assignment.id.clone(),
                });
                continue;
            }
            if retain {
                continue;
            }
            if deletes.len() >= input.max_deletes {
                deferred_deletes += 1;
                continue;
            }
            // An object that declared this grant in its last status and now declares another
            // principal: its new grant must exist before the old one goes.
            let after_creates_of = input
                .accesses
                .iter()
                .filter(|access| !access.being_deleted && access.spec.role == *role)
                .filter(|access| {
                    access.previous.as_ref().is_some_and(|s| {
                        s.principals.iter().any(|p| {
                            p.object_id
                                .as_deref()
                                .is_some_and(|o| o.eq_ignore_ascii_case(oid))
                        })
                    })
                })
                .map(|access| access.key.clone())
                .collect();
            deletes.push(Write::Delete {
                assignment: (*assignment).clone(),
                reason: delete_reason(input, &intents, oid, *role),
                after_creates_of,
            });
        }
    }
    let mut writes = creates;
    writes.extend(releases);
    writes.extend(deletes);

    // Pass 3: status of every object, and whether objects being deleted are clean.
    let mut removal_index: HashMap<(String, RoleName), usize> = HashMap::new();
    for (index, write) in writes.iter().enumerate() {
        let key = match write {
            Write::Delete { assignment, .. } => {
                RoleName::from_definition_id(&assignment.role_definition_id)
                    .map(|role| (lower(&assignment.principal_id), role))
            }
            Write::Release { assignment, .. } => {
                Some((lower(&assignment.principal_id), assignment.role))
            }
            Write::Create { .. } => None,
        };
        if let Some(key) = key {
            removal_index.entry(key).or_insert(index);
        }
    }
    let write_index =
        |oid: &str, role: RoleName| removal_index.get(&(oid.to_string(), role)).copied();
    let mut accesses = Vec::with_capacity(input.accesses.len());
    for (access, principal_intents) in input.accesses.iter().zip(intents) {
        let role = access.spec.role;
        let expired = access
            .spec
            .expires_at
            .as_ref()
            .is_some_and(|t| t.0 <= input.now);
        let mut statuses = Vec::with_capacity(principal_intents.len());
        let mut cleanup_writes = Vec::new();
        let mut cleanup_blocked: Option<String> = None;
        for intent in principal_intents {
            let mut status = intent.status;
            let grant_oid = intent
                .grant
                .as_ref()
                .map(|(oid, _)| oid.clone())
                .or(intent.previous_oid.clone());
            let existing = grant_oid.as_deref().and_then(|oid| find(oid, role));
            let owned =
                existing.is_some_and(|a| is_owned_by(a.description.as_deref(), input.instance));
            let declared_elsewhere = grant_oid.as_deref().and_then(|oid| {
                desired
                    .get(&(oid.to_string(), role))
                    .and_then(|(by, _)| by.iter().find(|k| **k != access.key).cloned())
            });
            if matches!(input.observation, Observation::AccountGone) {
                set(
                    &mut status,
                    GrantState::Failed,
                    reasons::AZURE_ACCOUNT_NOT_FOUND,
                    format!("the Azure account {scope} does not exist"),
                );
            } else if account_deleting {
                let (reason, message) = match input.account.spec.deletion_policy {
                    DeletionPolicy::Delete => (
                        reasons::REVOKED,
                        format!("OpenAIAccount {} is being deleted", input.account.name),
                    ),
                    DeletionPolicy::Retain => (
                        reasons::RETAINED,
                        format!(
                            "OpenAIAccount {} is being deleted with deletionPolicy Retain: the grant stays",
                            input.account.name
                        ),
                    ),
                };
                set(&mut status, GrantState::Revoked, reason, message);
            } else if expired && !intent.unresolved && status.state != Some(GrantState::Denied) {
                match &declared_elsewhere {
                    Some(other) => set(
                        &mut status,
                        GrantState::Revoked,
                        reasons::STILL_DECLARED,
                        format!(
                            "expired; the role assignment stays because {other} still declares it"
                        ),
                    ),
                    None => set(
                        &mut status,
                        GrantState::Revoked,
                        reasons::EXPIRED,
                        "expiresAt has passed: the grant is revoked".into(),
                    ),
                }
            } else if access.being_deleted && !intent.unresolved {
                match (&declared_elsewhere, access.spec.deletion_policy) {
                    (Some(other), _) => set(
                        &mut status,
                        GrantState::Revoked,
                        reasons::STILL_DECLARED,
                        format!("the role assignment stays because {other} still declares it"),
                    ),
                    (None, DeletionPolicy::Retain) => set(
                        &mut status,
                        GrantState::Revoked,
                        reasons::RETAINED,
                        "deletionPolicy Retain: the role assignment stays".into(),
                    ),
                    (None, DeletionPolicy::Delete) => set(
                        &mut status,
                        GrantState::Revoked,
                        reasons::REVOKED,
                        "the object is being deleted".into(),
                    ),
                }
            } else if status.state == Some(GrantState::Denied) {
                if owned && declared_elsewhere.is_none() {
                    let message = format!(
                        "{}; revoking the role assignment keyless had made",
                        status.message.clone().unwrap_or_default()
                    );
                    status.message = Some(message);
                }
            } else if let Some((_, _)) = &intent.grant {
                match existing {
                    Some(assignment) => {
                        let reason = if owned {
                            reasons::GRANTED
                        } else {
                            reasons::ADOPTED
                        };
                        let message = if owned {
                            "role assignment in place".to_string()
                        } else {
                            format!(
                                "an existing role assignment ({}) already grants this; keyless adopts it and will never delete it",
                                assignment.name
                            )
                        };
                        set(&mut status, GrantState::Granted, reason, message);
                        status.role_assignment_id = Some(assignment.id.clone());
                        status.granted_at = assignment.created_on.map(Time);
                    }
                    None => {
                        set(
                            &mut status,
                            GrantState::Pending,
                            reasons::PENDING,
                            "role assignment to be created".into(),
                        );
                        if let Some((oid, _)) = &intent.grant {
                            status.role_assignment_id = Some(super::model::assignment_id(
                                scope,
                                &assignment_name(scope, oid, role).to_string(),
                            ));
                        }
                    }
                }
            }
            if status.state != Some(GrantState::Granted)
                && status.state != Some(GrantState::Pending)
            {
                status.granted_at = None;
                if status.state != Some(GrantState::Revoked) || existing.is_none() {
                    status.role_assignment_id = existing
                        .map(|a| a.id.clone())
                        .filter(|_| status.state == Some(GrantState::Denied) && owned);
                }
            }

            // Cleanup bookkeeping for an object being deleted.
            if access.being_deleted {
                if intent.unresolved && intent.previous_oid.is_none() {
                    cleanup_blocked.get_or_insert_with(|| {
                        format!("{} could not be resolved", status.principal)
                    });
                } else if let Some(oid) = &grant_oid
                    && owned
                    && declared_elsewhere.is_none()
                {
                    match write_index(oid, role) {
                        Some(index) => cleanup_writes.push(index),
                        None => {
                            cleanup_blocked.get_or_insert_with(|| {
                                deletions_blocked.clone().unwrap_or_else(|| {
                                    if protected.contains(oid) {
                                        format!("{} is protected by a principal that failed to resolve", status.principal)
                                    } else {
                                        "the per-pass delete limit was reached; the rest waits for the next pass".into()
                                    }
                                })
                            });
                        }
                    }
                }
            }
            statuses.push(status);
        }
        let cleanup = if !access.being_deleted {
            Cleanup::NotDeleting
        } else if matches!(input.observation, Observation::AccountGone) {
            Cleanup::Complete
        } else if let Some(message) = cleanup_blocked.or_else(|| {
            (!matches!(input.observation, Observation::Complete(_)))
                .then(|| deletions_blocked.clone().unwrap_or_default())
        }) {
            Cleanup::Blocked(message)
        } else if cleanup_writes.is_empty() {
            Cleanup::Complete
        } else {
            Cleanup::AfterWrites(cleanup_writes)
        };
        accesses.push(AccessOutcome {
            key: access.key.clone(),
            generation: access.generation,
            principals: statuses,
            cleanup,
        });
    }

    let account_cleanup = if !account_deleting {
        Cleanup::NotDeleting
    } else {
        match input.observation {
            Observation::AccountGone => Cleanup::Complete,
            Observation::Complete(_) if deferred_deletes == 0 && deletions_blocked.is_none() => {
                let pending: Vec<usize> = (0..writes.len())
                    .filter(|i| !matches!(writes[*i], Write::Create { .. }))
                    .collect();
                if pending.is_empty() {
                    Cleanup::Complete
                } else {
                    Cleanup::AfterWrites(pending)
                }
            }
            _ => Cleanup::Blocked(
                deletions_blocked
                    .clone()
                    .unwrap_or_else(|| "the per-pass delete limit was reached".into()),
            ),
        }
    };

    Plan {
        writes,
        accesses,
        account_cleanup,
        deferred_deletes,
        deletions_blocked,
    }
}

fn observed_available(observation: &Observation) -> bool {
    matches!(
        observation,
        Observation::Complete(_) | Observation::Incomplete(_)
    )
}

fn set(status: &mut PrincipalStatus, state: GrantState, reason: &str, message: String) {
    status.state = Some(state);
    status.reason = Some(reason.to_string());
    status.message = Some(message);
}

fn declared_by_of(assignment: &ObservedAssignment) -> String {
    assignment
        .description
        .as_deref()
        .and_then(|d| d.split(' ').find_map(|w| w.strip_prefix("declared-by=")))
        .unwrap_or("unknown")
        .to_string()
}

// A grant nobody live declares is kept (released) when an object being deleted with Retain
// declared it and had not expired: expiry revokes even under Retain.
fn retained_by_a_deleted_object(
    input: &PlanInput<'_>,
    intents: &[Vec<PrincipalIntent>],
    oid: &str,
    role: RoleName,
) -> bool {
    input
        .accesses
        .iter()
        .zip(intents)
        .any(|(access, principal_intents)| {
            let expired = access
                .spec
                .expires_at
                .as_ref()
                .is_some_and(|t| t.0 <= input.now);
            access.being_deleted
                && !expired
                && access.spec.deletion_policy == DeletionPolicy::Retain
                && access.spec.role == role
                && principal_intents.iter().any(|i| i.object_id() == Some(oid))
        })
}

fn delete_reason(
    input: &PlanInput<'_>,
    intents: &[Vec<PrincipalIntent>],
    oid: &str,
    role: RoleName,
) -> &'static str {
    if input.account.being_deleted {
        return reasons::REVOKED;
    }
    for (access, principal_intents) in input.accesses.iter().zip(intents) {
        if access.spec.role != role {
            continue;
        }
        for intent in principal_intents
            .iter()
            .filter(|i| i.object_id() == Some(oid))
        {
            if access
                .spec
                .expires_at
                .as_ref()
                .is_some_and(|t| t.0 <= input.now)
            {
                return reasons::EXPIRED;
            }
            if let Some(reason) = intent.denial_reason {
                return reason;
            }
        }
    }
    reasons::REVOKED
}

/// What one principal of one object wants from this pass.
struct PrincipalIntent {
    status: PrincipalStatus,
    /// The grant it wants, if resolved and allowed.
    grant: Option<(String, PrincipalType)>,
    /// The object id the previous pass knew, or the one resolved now.
    previous_oid: Option<String>,
    unresolved: bool,
    denial_reason: Option<&'static str>,
}

impl PrincipalIntent {
    fn object_id(&self) -> Option<&str> {
        self.grant
            .as_ref()
            .map(|(oid, _)| oid.as_str())
            .or(self.previous_oid.as_deref())
    }

    fn base(label: String) -> PrincipalStatus {
        PrincipalStatus {
            principal: label,
            ..Default::default()
        }
    }

    fn invalid(label: String, index: usize) -> PrincipalIntent {
        let mut status = Self::base(label);
        set(
            &mut status,
            GrantState::Failed,
            reasons::INVALID_SPEC,
            format!(
                "principals[{index}]: set exactly one of user, groupName, appId, managedIdentity, serviceAccount or objectId (with principalType)"
            ),
        );
        PrincipalIntent {
            status,
            grant: None,
            previous_oid: None,
            unresolved: false,
            denial_reason: None,
        }
    }

    fn unresolved(
        label: String,
        reason: &str,
        message: String,
        previous_oid: Option<String>,
        replication: Option<(Timestamp, bool)>,
    ) -> PrincipalIntent {
        let mut status = Self::base(label);
        let state = match replication {
            Some((_, true)) => GrantState::Pending,
            _ => GrantState::Failed,
        };
        set(&mut status, state, reason, message);
        status.object_id = previous_oid.clone();
        status.pending_since = replication.map(|(since, _)| Time(since));
        PrincipalIntent {
            status,
            grant: None,
            previous_oid,
            unresolved: true,
            denial_reason: None,
        }
    }

    fn denied(
        label: String,
        reason: String,
        message: String,
        object_id: Option<String>,
    ) -> PrincipalIntent {
        let mut status = Self::base(label);
        set(&mut status, GrantState::Denied, &reason, message);
        status.object_id = object_id.clone();
        PrincipalIntent {
            status,
            grant: None,
            previous_oid: object_id,
            unresolved: false,
            denial_reason: Some(static_reason(&reason)),
        }
    }

    fn resolved(
        label: String,
        object_id: String,
        principal_type: PrincipalType,
        generation: Option<i64>,
    ) -> PrincipalIntent {
        let mut status = Self::base(label);
        status.object_id = Some(object_id.clone());
        status.principal_type = Some(principal_type);
        status.resolved_generation = generation;
        PrincipalIntent {
            status,
            grant: Some((object_id.clone(), principal_type)),
            previous_oid: Some(object_id),
            unresolved: false,
            denial_reason: None,
        }
    }
}

// Reasons are a bounded set; an unknown one (from a resolver) is reported as a generic denial.
fn static_reason(reason: &str) -> &'static str {
    [
        reasons::NAMESPACE_NOT_ALLOWED,
        reasons::ROLE_NOT_ALLOWED,
        reasons::PRINCIPAL_KIND_NOT_ALLOWED,
        reasons::FEDERATION_MISSING,
    ]
    .into_iter()
    .find(|r| *r == reason)
    .unwrap_or(reasons::REVOKED)
}

/// `"{granted}/{total} granted"` for an object's status.
pub fn summary(principals: &[PrincipalStatus]) -> String {
    let granted = principals
        .iter()
        .filter(|p| p.state == Some(GrantState::Granted))
        .count();
    format!("{granted}/{} granted", principals.len())
}

/// The status entries of an object whose principals resolved as `previous` says (used by the
/// resolver to keep a group name pinned to the object id it resolved to at this generation).
pub fn pinned_object_id<'a>(
    previous: Option<&'a OpenAIAccessStatus>,
    principal: &PrincipalRef,
    generation: Option<i64>,
) -> Option<(&'a str, PrincipalType)> {
    let label = principal.to_string();
    previous?
        .principals
        .iter()
        .find(|p| {
            p.principal == label
                && p.resolved_generation.is_some()
                && p.resolved_generation == generation
        })
        .and_then(|p| Some((p.object_id.as_deref()?, p.principal_type?)))
}
