//! Stage 5, the diff: the desired set against ARM's observation, as writes keyed by grant.
//!
//! - A grant is (scope, principal object id, role). An observed assignment with that triple is the
//!   grant whatever its name: kept if ours, adopted (never touched) otherwise; one carrying an ABAC
//!   `condition` is neither adopted nor PUT over nor deleted (status reports it).
//! - Only this instance's assignments are ever deleted or released.
//! - Deletes need a complete LIST and a complete view; at most `max_deletes` per pass.
//! - What is protected (stage 4) stays; a deleted object's honoured Retain releases its grants;
//!   unregistering an account follows the account's deletion policy.
//! - Make-before-break: the old grant of a changed principal or role goes only once the object's new
//!   grants are past their propagation grace (the wait ends if the replacement is refused); status
//!   carries the grant being replaced (`replaces`) from pass to pass until then.

use super::desired::{Decision, Desired, ObjectDecisions};
use super::eligibility::NamespaceVerdict;
use super::model::{NewAssignment, ObservedAssignment, PrincipalType};
use super::ownership::{
    Marker, declared_by, grant_name, is_owned_by, marker_of, ownership_marker, released_marker,
};
use super::planner::{GrantKey, ObjectKey, Observation, PlanInput, Write};
use crate::api::{DeletionPolicy, RoleName, reasons};
use std::collections::{BTreeMap, BTreeSet, HashMap};

pub struct Diff<'a> {
    /// Creates first, then releases, then deletes.
    pub writes: Vec<Write>,
    pub deferred_deletes: usize,
    pub deletions_blocked: Option<String>,
    /// Every assignment at the scope with a known role, by grant (the first ARM listed).
    pub observed: HashMap<GrantKey, &'a ObservedAssignment>,
    /// Owned assignments nobody declares that stay this pass, and why.
    pub kept: BTreeMap<GrantKey, String>,
    /// Another installation writes markers with our instance id (and another fingerprint).
    pub instance_collision: Option<String>,
}

impl Diff<'_> {
    pub fn find(&self, grant: &GrantKey) -> Option<&ObservedAssignment> {
        self.observed.get(grant).copied()
    }
}

/// Why this pass deletes nothing, when it does not.
pub fn deletions_blocked(input: &PlanInput<'_>) -> Option<String> {
    match input.observation {
        Observation::Unavailable { message } => Some(format!(
            "the account could not be read ({message}): changing nothing this pass"
        )),
        Observation::Incomplete(_) => {
            Some("the role assignment LIST was incomplete: deleting nothing this pass".into())
        }
        Observation::AccountGone => None,
        Observation::Complete(_) => match input.view {
            super::view::ViewCompleteness::Complete => None,
            super::view::ViewCompleteness::Incomplete { reason } => Some(format!(
                "keyless's view of the cluster is incomplete ({reason}): deleting nothing this pass"
            )),
        },
    }
}

/// Stage 5.
pub fn diff<'a>(
    input: &PlanInput<'a>,
    decisions: &[ObjectDecisions],
    desired: &Desired,
) -> Diff<'a> {
    let scope = input.scope;
    let listed: &'a [ObservedAssignment] = match input.observation {
        Observation::Complete(list) | Observation::Incomplete(list) => list,
        Observation::AccountGone | Observation::Unavailable { .. } => &[],
    };
    let mut observed: HashMap<GrantKey, &'a ObservedAssignment> =
        HashMap::with_capacity(listed.len());
    let mut at_scope: Vec<(GrantKey, &'a ObservedAssignment)> = Vec::with_capacity(listed.len());
    for assignment in listed.iter().filter(|a| scope.matches(&a.scope)) {
        if let Some(role) = RoleName::from_definition_id(&assignment.role_definition_id) {
            let grant = GrantKey::new(&assignment.principal_id, role);
            observed.entry(grant.clone()).or_insert(assignment);
            at_scope.push((grant, assignment));
        }
    }

    let mut creates = Vec::new();
    let readable = matches!(
        input.observation,
        Observation::Complete(_) | Observation::Incomplete(_)
    );
    if readable {
        for (grant, declared) in &desired.grants {
            if observed.contains_key(grant) {
                continue;
            }
            let first = declared
                .by
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            creates.push(Write::Create {
                assignment: NewAssignment {
                    scope: scope.clone(),
                    name: grant_name(input.instance, scope, &grant.principal_id, grant.role),
                    principal_id: grant.principal_id.clone(),
                    principal_type: declared.principal_type,
                    role: grant.role,
                    description: ownership_marker(input.instance, &first),
                },
                declared_by: declared.by.clone(),
            });
        }
    }

    // Two installations given one id would each take the other's grants for its own: an
    // assignment with our id and another fingerprint stops every delete and release here.
    let instance_collision = at_scope.iter().find_map(|(_, assignment)| {
        match marker_of(assignment.description.as_deref(), input.instance) {
            Marker::Collision { fingerprint } => Some(format!(
                "another keyless installation uses instance id {} (role assignment {} carries fingerprint {fingerprint}, this installation's is {}): deleting nothing on this account until one of them gets another instance id",
                input.instance,
                assignment.name,
                input.instance.fingerprint().unwrap_or("none"),
            )),
            Marker::Ours | Marker::NotOurs => None,
        }
    });
    let blocked = deletions_blocked(input).or_else(|| instance_collision.clone());
    let mut releases = Vec::new();
    let mut deletes = Vec::new();
    let mut deferred_deletes = 0;
    let mut kept = BTreeMap::new();
    if blocked.is_none() && matches!(input.observation, Observation::Complete(_)) {
        let waiting = replacements_waiting(input, decisions, &observed);
        for (grant, assignment) in &at_scope {
            let description = assignment.description.as_deref();
            if !is_owned_by(description, input.instance)
                || assignment.condition.is_some()
                || desired.grants.contains_key(grant)
            {
                continue;
            }
            if let Some(by) = desired
                .protection
                .protector(grant, declared_by(description))
            {
                kept.insert(
                    grant.clone(),
                    format!("kept: {by} could not be resolved or read this pass"),
                );
                continue;
            }
            let retain = if input.account.being_deleted {
                input.account.spec.deletion_policy == DeletionPolicy::Retain
            } else {
                desired.retained.contains(grant)
            };
            if retain {
                // ARM names are GUIDs; anything else cannot be re-PUT, so it is left alone.
                if let Ok(name) = uuid::Uuid::parse_str(&assignment.name) {
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
                            role: grant.role,
                            description: released_marker(
                                declared_by(description).unwrap_or("unknown"),
                            ),
                        },
                        id: assignment.id.clone(),
                    });
                }
                continue;
            }
            let replaced_by: Vec<ObjectKey> = input
                .accesses
                .iter()
                .zip(decisions)
                .filter(|(access, object)| {
                    object.live
                        && object.eligibility.namespace == NamespaceVerdict::Allowed
                        && (object
                            .principals
                            .iter()
                            .any(|p| p.replacing.as_ref() == Some(grant))
                            || access.previous.as_ref().is_some_and(|s| {
                                s.principals.iter().any(|p| {
                                    p.object_id.as_deref().is_some_and(|o| {
                                        o.eq_ignore_ascii_case(&grant.principal_id)
                                    }) && p.role.unwrap_or(access.spec.role) == grant.role
                                })
                            }))
                })
                .map(|(access, _)| access.key.clone())
                .collect();
            if let Some(object) = replaced_by.iter().find(|k| waiting.contains(*k)) {
                kept.insert(
                    grant.clone(),
                    format!(
                        "kept until the replacement grant of {object} is past its propagation grace (make-before-break)"
                    ),
                );
                continue;
            }
            if deletes.len() >= input.max_deletes {
                deferred_deletes += 1;
                continue;
            }
            deletes.push(Write::Delete {
                assignment: (*assignment).clone(),
                reason: delete_reason(input, decisions, grant),
                after_creates_of: replaced_by,
            });
        }
    }
    let mut writes = creates;
    writes.extend(releases);
    writes.extend(deletes);
    Diff {
        writes,
        deferred_deletes,
        deletions_blocked: blocked,
        observed,
        kept,
        instance_collision,
    }
}

// Live objects with a new grant (one their previous status did not record) that is not yet in
// place past the propagation grace: their old grants wait.
fn replacements_waiting(
    input: &PlanInput<'_>,
    decisions: &[ObjectDecisions],
    observed: &HashMap<GrantKey, &ObservedAssignment>,
) -> BTreeSet<ObjectKey> {
    let grace = jiff::SignedDuration::try_from(input.propagation_grace).unwrap_or_default();
    let mut waiting = BTreeSet::new();
    for (access, object) in input.accesses.iter().zip(decisions) {
        if !object.live {
            continue;
        }
        let fresh = object.principals.iter().any(|principal| {
            let Decision::Authorised { object_id, .. } = &principal.decision else {
                return false;
            };
            if principal.replacing.is_none()
                && principal.previous_oid.as_deref() == Some(object_id.as_str())
            {
                return false;
            }
            match observed.get(&GrantKey::new(object_id, access.spec.role)) {
                None => true,
                Some(existing) => existing
                    .created_on
                    .and_then(|created| created.checked_add(grace).ok())
                    .is_some_and(|ready| ready > input.now),
            }
        });
        if fresh {
            waiting.insert(access.key.clone());
        }
    }
    waiting
}

fn delete_reason(
    input: &PlanInput<'_>,
    decisions: &[ObjectDecisions],
    grant: &GrantKey,
) -> &'static str {
    if input.account.being_deleted {
        return reasons::REVOKED;
    }
    for (access, object) in input.accesses.iter().zip(decisions) {
        if access.spec.role != grant.role {
            continue;
        }
        for principal in &object.principals {
            if principal.object_id() != Some(grant.principal_id.as_str()) {
                continue;
            }
            if object.expired {
                return reasons::EXPIRED;
            }
            match &principal.decision {
                Decision::Ineligible { reason, .. } | Decision::Denied { reason, .. } => {
                    return reason;
                }
                _ => {}
            }
        }
    }
    reasons::REVOKED
}
