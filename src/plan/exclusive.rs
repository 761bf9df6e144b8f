//! Stage 6, enforcement Exclusive: the OpenAIAccess objects as the only way in. Under Exclusive,
//! an assignment made outside keyless at exactly the account's scope, of a role in keyless's role
//! table, that no eligible OpenAIAccess declares, is revoked — after it has been reported for the
//! grace. Pure: no IO, `now` is an input.
//!
//! - Never one inherited from above (its scope differs from the account's, compared
//!   case-insensitively), one this instance made (the diff owns those), one another keyless
//!   instance made, one keyless released (Retain promised no keyless deletes it), one with an ABAC
//!   `condition`, one whose principal is exempt, or one made by an exempt creator (PIM).
//! - Refused (nothing revoked, a condition says why) while another keyless instance's marker is on
//!   the account: its grants are declared somewhere keyless cannot see.
//! - Held (nothing revoked, nothing newly reported) unless the LIST and the view are complete, no
//!   object on the account is malformed, no declaration in an eligible (or not yet known)
//!   namespace is unresolved — its principal might be the foreign grant's — and no two
//!   installations share this instance id.
//! - The grace: an assignment is first listed with the time it was reported (kept in the account's
//!   status by the front end, not in memory) and revoked on a pass at least `grace` later. Under
//!   management Observe nothing is sent, so every listed one is shown as a delete at once.

use super::desired::{Decision, Desired, ObjectDecisions};
use super::eligibility::NamespaceVerdict;
use super::model::ObservedAssignment;
use super::ownership::{is_owned_by, is_released, other_instance};
use super::planner::{Observation, PlanInput, Write};
use crate::api::common::Time;
use crate::api::{Enforcement, ExclusiveRevocation, RoleName, reasons};
use jiff::Timestamp;
use std::collections::BTreeMap;
use std::time::Duration;

/// At most this many assignments are listed (and so revocable) at once; the rest wait for room.
pub const MAX_LISTED: usize = 100;

/// What the front end keeps for enforcement Exclusive between passes, and its settings.
#[derive(Clone, Debug, Default)]
pub struct ExclusiveContext {
    /// ARM's `createdBy` by lower-case assignment id.
    pub created_by: BTreeMap<String, String>,
    /// The previous pass's list (the account's `status.exclusiveRevocations`).
    pub reported: Vec<ExclusiveRevocation>,
    /// How long an assignment is listed before it is revoked.
    pub grace: Duration,
    /// Management Observe: nothing is sent, so listed assignments are planned as deletes at once.
    pub observing: bool,
}

/// What Exclusive decided this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExclusiveVerdict {
    /// Enforcement Additive, or the account is being unregistered or gone.
    Off,
    /// Another keyless instance has grants on the account.
    Refused(String),
    /// Not safe to decide this pass; the message says why.
    Held(String),
    /// Nothing made outside keyless to revoke.
    Clean,
    /// Listed and waiting for the grace; the earliest revocation time.
    Pending { next: Timestamp },
    /// Some are revoked this pass (the others, if any, wait).
    Revoking { count: usize },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExclusivePlan {
    pub verdict: ExclusiveVerdict,
    /// The list for the account's status.
    pub listed: Vec<ExclusiveRevocation>,
    /// Deletes past the grace, in list order, within the pass's delete limit.
    pub deletes: Vec<Write>,
    /// Deletes past the grace left to the next pass by the delete limit.
    pub deferred: usize,
}

impl ExclusivePlan {
    fn without_deletes(verdict: ExclusiveVerdict, listed: Vec<ExclusiveRevocation>) -> Self {
        ExclusivePlan {
            verdict,
            listed,
            deletes: Vec::new(),
            deferred: 0,
        }
    }

    /// When the first listed assignment's grace ends, if any is still waiting.
    pub fn next_revocation(&self) -> Option<Timestamp> {
        match self.verdict {
            ExclusiveVerdict::Pending { next } => Some(next),
            _ => None,
        }
    }
}

/// Stage 6. `deletes_so_far` are the diff's deletes, which count against the per-pass limit.
pub fn exclusive(
    input: &PlanInput<'_>,
    decisions: &[ObjectDecisions],
    desired: &Desired,
    instance_collision: Option<&str>,
    deletes_so_far: usize,
) -> ExclusivePlan {
    let context = input.exclusive;
    let spec = &input.account.spec;
    if spec.enforcement != Enforcement::Exclusive || input.account.being_deleted {
        return ExclusivePlan::without_deletes(ExclusiveVerdict::Off, Vec::new());
    }
    let keep = || context.reported.clone();
    let listed_assignments: &[ObservedAssignment] = match input.observation {
        Observation::Complete(list) => list,
        Observation::AccountGone => {
            return ExclusivePlan::without_deletes(ExclusiveVerdict::Off, Vec::new());
        }
        Observation::Incomplete(_) => {
            return ExclusivePlan::without_deletes(
                ExclusiveVerdict::Held("the role assignment LIST was incomplete".into()),
                keep(),
            );
        }
        Observation::Unavailable { message } => {
            return ExclusivePlan::without_deletes(
                ExclusiveVerdict::Held(format!("the account could not be read ({message})")),
                keep(),
            );
        }
    };
    let at_scope: Vec<&ObservedAssignment> = listed_assignments
        .iter()
        .filter(|a| input.scope.matches(&a.scope))
        .collect();

    // Another instance declares its grants somewhere this one cannot see.
    let others: Vec<String> = {
        let mut names: Vec<String> = at_scope
            .iter()
            .filter_map(|a| other_instance(a.description.as_deref(), input.instance))
            .collect();
        names.sort();
        names.dedup();
        names
    };
    if !others.is_empty() {
        return ExclusivePlan::without_deletes(
            ExclusiveVerdict::Refused(format!(
                "enforcement Exclusive is refused: keyless instance {} also has role assignments on this account, declared where this one cannot see; revoking nothing",
                others.join(", ")
            )),
            Vec::new(),
        );
    }
    if let Some(why) = held(input, decisions, instance_collision) {
        return ExclusivePlan::without_deletes(ExclusiveVerdict::Held(why), keep());
    }

    let exempt = |a: &ObservedAssignment| {
        spec.exclusive_exemptions
            .iter()
            .any(|p| p.eq_ignore_ascii_case(&a.principal_id))
            || context
                .created_by
                .get(&a.id.to_ascii_lowercase())
                .is_some_and(|by| {
                    spec.exclusive_exempt_creators
                        .iter()
                        .any(|c| c.eq_ignore_ascii_case(by))
                })
    };
    let candidates: Vec<&ObservedAssignment> = at_scope
        .into_iter()
        .filter(|a| {
            let Some(role) = RoleName::from_definition_id(&a.role_definition_id) else {
                return false;
            };
            let grant = super::planner::GrantKey::new(&a.principal_id, role);
            let description = a.description.as_deref();
            !is_owned_by(description, input.instance)
                && !is_released(description)
                && a.condition.is_none()
                && !desired.grants.contains_key(&grant)
                && desired.protection.protector(&grant, None).is_none()
                && !exempt(a)
        })
        .collect();

    // Previously reported ones keep their clock (and their place); new ones start now.
    let reported_at = |a: &ObservedAssignment| {
        context
            .reported
            .iter()
            .find(|r| r.assignment_name.eq_ignore_ascii_case(&a.name))
            .map(|r| r.reported_at.0)
    };
    let mut ordered: Vec<(&ObservedAssignment, Option<Timestamp>)> = candidates
        .into_iter()
        .map(|a| (a, reported_at(a)))
        .collect();
    ordered.sort_by_key(|(a, at)| (at.is_none(), *at, a.name.to_ascii_lowercase()));
    ordered.truncate(MAX_LISTED);

    let grace = jiff::SignedDuration::try_from(context.grace).unwrap_or(jiff::SignedDuration::MAX);
    let mut listed = Vec::with_capacity(ordered.len());
    let mut deletes = Vec::new();
    let mut deferred = 0;
    let mut next: Option<Timestamp> = None;
    let room = input.max_deletes.saturating_sub(deletes_so_far);
    for (assignment, at) in ordered {
        let reported = at.unwrap_or(input.now);
        let due = reported
            .checked_add(grace)
            .is_ok_and(|due_at| due_at <= input.now);
        listed.push(ExclusiveRevocation {
            assignment_name: assignment.name.clone(),
            principal_id: assignment.principal_id.to_ascii_lowercase(),
            role_definition_id: super::observe::role_guid(&assignment.role_definition_id),
            created_by: context
                .created_by
                .get(&assignment.id.to_ascii_lowercase())
                .cloned(),
            reported_at: Time(reported),
        });
        if due || context.observing {
            if deletes.len() < room {
                deletes.push(Write::Delete {
                    assignment: assignment.clone(),
                    reason: reasons::NOT_DECLARED,
                    after_creates_of: Vec::new(),
                });
            } else {
                deferred += 1;
            }
        } else {
            let due_at = reported.checked_add(grace).unwrap_or(Timestamp::MAX);
            next = Some(next.map_or(due_at, |n| n.min(due_at)));
        }
    }
    let verdict = if !deletes.is_empty() {
        ExclusiveVerdict::Revoking {
            count: deletes.len(),
        }
    } else if let Some(next) = next {
        ExclusiveVerdict::Pending { next }
    } else if listed.is_empty() {
        ExclusiveVerdict::Clean
    } else {
        // Due, but the delete limit left no room this pass.
        ExclusiveVerdict::Revoking { count: 0 }
    };
    ExclusivePlan {
        verdict,
        listed,
        deletes,
        deferred,
    }
}

// Why nothing may be decided this pass, if anything stops it.
fn held(
    input: &PlanInput<'_>,
    decisions: &[ObjectDecisions],
    instance_collision: Option<&str>,
) -> Option<String> {
    if let super::view::ViewCompleteness::Incomplete { reason } = input.view {
        return Some(format!(
            "keyless's view of the cluster is incomplete ({reason})"
        ));
    }
    if let Some(malformed) = input.malformed.first() {
        return Some(format!(
            "OpenAIAccess {} cannot be read and may declare any principal",
            malformed.key
        ));
    }
    if let Some(collision) = instance_collision {
        return Some(collision.to_string());
    }
    // A declaration not resolved this pass may be the very principal of a foreign grant.
    for (access, object) in input.accesses.iter().zip(decisions) {
        if object.eligibility.namespace == NamespaceVerdict::Denied {
            continue;
        }
        if object.eligibility.namespace == NamespaceVerdict::Unknown {
            return Some(format!(
                "the namespace of OpenAIAccess {} is not known yet",
                access.key
            ));
        }
        let unresolved = object.principals.iter().find(|p| {
            matches!(
                p.decision,
                Decision::Unresolved { .. } | Decision::Unknown { .. }
            )
        });
        if let Some(principal) = unresolved {
            return Some(format!(
                "{} of OpenAIAccess {} is not resolved",
                principal.label, access.key
            ));
        }
    }
    None
}
