//! Stage 6, status: every object's per-principal status, projected once from the decisions, the
//! desired set and the diff (the engine then corrects it with the write results).
//!
//! - An adopted or released assignment that still grants access is reported as granting, never as
//!   revoked.
//! - An assignment with an ABAC condition for a declared grant is Failed
//!   (`ConditionalAssignmentExists`).
//! - A refused Retain is a warning on the object's status.
//! - An object being deleted is clean once nothing of its own is left to revoke; a temporary
//!   failure or a blocked pass holds it, a lasting failure does not.

use super::desired::{Decision, Desired, ObjectDecisions, PrincipalDecision};
use super::diff::Diff;
use super::model::assignment_id;
use super::ownership::{grant_name, is_owned_by};
use super::planner::{AccessOutcome, Cleanup, GrantKey, Observation, PlanInput, Write};
use super::resolution::FailureClass;
use crate::api::common::Time;
use crate::api::{DeletionPolicy, GrantState, PrincipalStatus, ReplacedGrant, reasons};

/// Reason for a declared grant held by an assignment with an ABAC condition.
pub const CONDITIONAL_ASSIGNMENT_EXISTS: &str = "ConditionalAssignmentExists";
/// A granted principal's message, whether the pass created the assignment, found its own after a
/// conflict, or found it in place: status says what is, the RoleAssignmentCreated event what
/// happened, so the pass after a create does not rewrite every status it wrote.
pub const GRANTED_MESSAGE: &str = "role assignment in place";

fn set(status: &mut PrincipalStatus, state: GrantState, reason: &str, message: String) {
    status.state = Some(state);
    status.reason = Some(reason.to_string());
    status.message = Some(message);
}

/// Stage 6: one outcome per object, in input order.
pub fn project(
    input: &PlanInput<'_>,
    decisions: &[ObjectDecisions],
    desired: &Desired,
    diff: &Diff<'_>,
) -> Vec<AccessOutcome> {
    let scope = input.scope;
    let removal: std::collections::HashMap<GrantKey, ()> = diff
        .writes
        .iter()
        .filter(|w| !matches!(w, Write::Create { .. }))
        .filter_map(Write::grant)
        .map(|g| (g, ()))
        .collect();
    let account_deleting = input.account.being_deleted;
    let mut outcomes = Vec::with_capacity(input.accesses.len());
    for (access, object) in input.accesses.iter().zip(decisions) {
        let role = access.spec.role;
        let mut statuses = Vec::with_capacity(object.principals.len());
        let mut cleanup_writes = Vec::new();
        let mut cleanup_blocked: Option<String> = None;
        for principal in &object.principals {
            let mut status = base_status(principal, access.generation);
            // The role of the grant the recorded object id holds: the spec's for a decision made
            // now, the one recorded before for an object id only carried over.
            if status.object_id.is_some() {
                status.role = Some(match principal.decision {
                    Decision::Authorised { .. } | Decision::Denied { .. } => role,
                    _ => principal.previous_role.unwrap_or(role),
                });
            }
            // Carried until the old grant is gone or deleted by this pass's writes.
            status.replaces = principal
                .replacing
                .as_ref()
                .filter(|old| diff.find(old).is_some() && !removal.contains_key(*old))
                .map(|old| ReplacedGrant {
                    object_id: old.principal_id.clone(),
                    role: old.role,
                });
            let grant = principal.object_id().map(|oid| GrantKey::new(oid, role));
            let existing = grant.as_ref().and_then(|g| diff.find(g));
            let owned =
                existing.is_some_and(|a| is_owned_by(a.description.as_deref(), input.instance));
            let conditional = existing.is_some_and(|a| a.condition.is_some());
            let declared_elsewhere = grant.as_ref().and_then(|g| {
                desired
                    .grants
                    .get(g)
                    .and_then(|d| d.by.iter().find(|k| **k != access.key).cloned())
            });
            let unresolved = matches!(principal.decision, Decision::Unresolved { .. });
            let refused = principal.is_refused()
                || matches!(
                    principal.decision,
                    Decision::Invalid { .. } | Decision::Unknown { .. }
                );
            if matches!(input.observation, Observation::AccountGone) {
                set(
                    &mut status,
                    GrantState::Failed,
                    reasons::AZURE_ACCOUNT_NOT_FOUND,
                    format!("the Azure account {scope} does not exist"),
                );
            } else if account_deleting && !unresolved {
                let retained = input.account.spec.deletion_policy == DeletionPolicy::Retain;
                if existing.is_some() && (!owned || retained) {
                    still_granted(
                        &mut status,
                        existing,
                        owned,
                        &format!(
                            "OpenAIAccount {} is being deleted{}",
                            input.account.name,
                            if retained {
                                " with deletionPolicy Retain: keyless releases it"
                            } else {
                                ""
                            }
                        ),
                    );
                } else {
                    set(
                        &mut status,
                        GrantState::Revoked,
                        reasons::REVOKED,
                        format!("OpenAIAccount {} is being deleted", input.account.name),
                    );
                }
            } else if (object.expired || access.being_deleted) && !unresolved && !refused {
                let why = if object.expired {
                    "expiresAt has passed"
                } else {
                    "the object is being deleted"
                };
                let retained = access.being_deleted
                    && !object.expired
                    && object.eligibility.deletion_policy == DeletionPolicy::Retain;
                match (&declared_elsewhere, existing) {
                    (Some(other), _) => set(
                        &mut status,
                        GrantState::Revoked,
                        reasons::STILL_DECLARED,
                        format!(
                            "{why}; the role assignment stays because {other} still declares it"
                        ),
                    ),
                    (None, Some(_)) if !owned || retained => {
                        still_granted(&mut status, existing, owned, why)
                    }
                    (None, _) => set(
                        &mut status,
                        GrantState::Revoked,
                        if object.expired {
                            reasons::EXPIRED
                        } else {
                            reasons::REVOKED
                        },
                        format!("{why}: the grant is revoked"),
                    ),
                }
            } else if refused {
                if owned && declared_elsewhere.is_none() {
                    let message = format!(
                        "{}; revoking the role assignment keyless had made",
                        status.message.clone().unwrap_or_default()
                    );
                    status.message = Some(message);
                } else if existing.is_some() && !owned && principal.is_refused() {
                    let message = format!(
                        "{}; an assignment keyless did not make ({}) still grants it, and keyless never deletes it",
                        status.message.clone().unwrap_or_default(),
                        existing.map(|a| a.name.as_str()).unwrap_or_default()
                    );
                    status.message = Some(message);
                }
            } else if let Decision::Authorised { object_id, .. } = &principal.decision {
                match existing {
                    Some(assignment) if conditional => {
                        set(
                            &mut status,
                            GrantState::Failed,
                            CONDITIONAL_ASSIGNMENT_EXISTS,
                            format!(
                                "role assignment {} grants this role only under an ABAC condition: keyless neither adopts nor overwrites it; remove it or its condition",
                                assignment.name
                            ),
                        );
                    }
                    Some(assignment) => {
                        let (reason, message) = if owned {
                            (reasons::GRANTED, GRANTED_MESSAGE.to_string())
                        } else {
                            (
                                reasons::ADOPTED,
                                format!(
                                    "an existing role assignment ({}) already grants this; keyless adopts it and will never delete it",
                                    assignment.name
                                ),
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
                        status.role_assignment_id = Some(assignment_id(
                            scope,
                            &grant_name(input.instance, scope, object_id, role).to_string(),
                        ));
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

            if access.being_deleted {
                if principal.is_temporary_failure()
                    || matches!(principal.decision, Decision::Unknown { .. })
                {
                    cleanup_blocked.get_or_insert_with(|| {
                        format!(
                            "{} could not be resolved or checked: its grants are kept",
                            status.principal
                        )
                    });
                } else if let Some(grant) = &grant
                    && owned
                    && declared_elsewhere.is_none()
                {
                    if removal.contains_key(grant) {
                        cleanup_writes.push(grant.clone());
                    } else if object.eligibility.deletion_policy != DeletionPolicy::Retain
                        || object.expired
                        || diff.deletions_blocked.is_some()
                        || diff.kept.contains_key(grant)
                    {
                        cleanup_blocked.get_or_insert_with(|| {
                            diff.deletions_blocked
                                .clone()
                                .or_else(|| diff.kept.get(grant).cloned())
                                .unwrap_or_else(|| {
                                    "the per-pass delete limit was reached; the rest waits for the next pass".into()
                                })
                        });
                    }
                }
            }
            statuses.push(status);
        }
        if let Some(warning) = &object.eligibility.retain_refused
            && access.spec.deletion_policy == DeletionPolicy::Retain
            && let Some(first) = statuses.first_mut()
            && first.state == Some(GrantState::Granted)
        {
            let message = format!(
                "{} ({}: {warning})",
                first.message.clone().unwrap_or_default(),
                reasons::RETAIN_NOT_ALLOWED
            );
            first.message = Some(message);
        }
        let cleanup = if !access.being_deleted {
            Cleanup::NotDeleting
        } else if matches!(input.observation, Observation::AccountGone) {
            Cleanup::Complete
        } else if let Some(message) = cleanup_blocked.or_else(|| {
            (!matches!(input.observation, Observation::Complete(_)))
                .then(|| diff.deletions_blocked.clone().unwrap_or_default())
        }) {
            Cleanup::Blocked(message)
        } else if cleanup_writes.is_empty() {
            Cleanup::Complete
        } else {
            Cleanup::AfterWrites(cleanup_writes)
        };
        outcomes.push(AccessOutcome {
            key: access.key.clone(),
            generation: access.generation,
            principals: statuses,
            cleanup,
        });
    }
    outcomes
}

// An assignment keyless does not (or no longer) manage that still grants access: say so.
fn still_granted(
    status: &mut PrincipalStatus,
    existing: Option<&super::model::ObservedAssignment>,
    owned: bool,
    why: &str,
) {
    let Some(assignment) = existing else {
        return;
    };
    let message = if owned {
        format!(
            "{why}; deletionPolicy Retain: keyless releases role assignment {}, which still grants access",
            assignment.name
        )
    } else {
        format!(
            "{why}; role assignment {} was not made by this keyless and still grants access: keyless never deletes it",
            assignment.name
        )
    };
    set(status, GrantState::Granted, reasons::STILL_GRANTED, message);
    status.role_assignment_id = Some(assignment.id.clone());
    status.granted_at = assignment.created_on.map(Time);
}

fn base_status(principal: &PrincipalDecision, generation: Option<i64>) -> PrincipalStatus {
    let mut status = PrincipalStatus {
        principal: principal.label.clone(),
        ..Default::default()
    };
    match &principal.decision {
        Decision::Invalid { index } => set(
            &mut status,
            GrantState::Failed,
            reasons::INVALID_SPEC,
            format!(
                "principals[{index}]: set exactly one of user, groupName, appId, managedIdentity, serviceAccount or objectId (with principalType)"
            ),
        ),
        // A refused namespace learns nothing: no object id is recorded for it.
        Decision::Ineligible { reason, message } => {
            set(&mut status, GrantState::Denied, reason, message.clone())
        }
        Decision::Unknown { message } => set(
            &mut status,
            GrantState::Pending,
            reasons::NAMESPACE_UNKNOWN,
            message.clone(),
        ),
        Decision::Unresolved {
            reason,
            message,
            class,
            pending_since,
        } => {
            let state = match class {
                FailureClass::Temporary { pending: true } => GrantState::Pending,
                _ => GrantState::Failed,
            };
            set(&mut status, state, reason, message.clone());
            // A lasting failure holds nothing, so it records no object id either.
            if matches!(class, FailureClass::Temporary { .. }) {
                status.object_id = principal.previous_oid.clone();
            }
            status.pending_since = pending_since.map(Time);
        }
        Decision::Denied {
            reason,
            message,
            object_id,
        } => {
            set(&mut status, GrantState::Denied, reason, message.clone());
            status.object_id = Some(object_id.clone());
        }
        Decision::Authorised {
            object_id,
            principal_type,
            ..
        } => {
            status.object_id = Some(object_id.clone());
            status.principal_type = Some(*principal_type);
            status.resolved_generation = generation;
        }
    }
    status
}

/// Whether the OpenAIAccount itself, when being deleted, may lose its finalizer.
pub fn account_cleanup(input: &PlanInput<'_>, diff: &Diff<'_>) -> Cleanup {
    if !input.account.being_deleted {
        return Cleanup::NotDeleting;
    }
    match input.observation {
        Observation::AccountGone => Cleanup::Complete,
        Observation::Complete(_)
            if diff.deferred_deletes == 0
                && diff.deletions_blocked.is_none()
                && diff.kept.is_empty() =>
        {
            let pending: Vec<GrantKey> = diff
                .writes
                .iter()
                .filter(|w| !matches!(w, Write::Create { .. }))
                .filter_map(Write::grant)
                .collect();
            if pending.is_empty() {
                Cleanup::Complete
            } else {
                Cleanup::AfterWrites(pending)
            }
        }
        _ => Cleanup::Blocked(
            diff.deletions_blocked
                .clone()
                .or_else(|| diff.kept.values().next().cloned())
                .unwrap_or_else(|| "the per-pass delete limit was reached".into()),
        ),
    }
}
