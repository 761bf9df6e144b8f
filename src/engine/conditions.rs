//! kstatus conditions for OpenAIAccess: `Ready` means usable (granted, and past the propagation
//! grace), `Reconciling` means keyless is still working on it, `Stalled` means a person must act.
//! Times only move when a condition's status does, so unchanged status never re-triggers watches.

use super::EngineConfig;
use crate::api::common::{Condition, Time};
use crate::api::{GrantState, OpenAIAccessStatus, PrincipalStatus, condition_types, reasons};
use crate::plan::planner::summary;
use crate::plan::{AccountScope, Plan};
use jiff::Timestamp;
use std::time::Duration;

/// When a grant created at `granted_at` counts as effective.
pub fn ready_at(granted_at: Timestamp, grace: Duration) -> Option<Timestamp> {
    let grace = jiff::SignedDuration::try_from(grace).ok()?;
    granted_at.checked_add(grace).ok()
}

pub(crate) fn access_status(
    generation: Option<i64>,
    scope: &AccountScope,
    principals: Vec<PrincipalStatus>,
    previous: Option<&OpenAIAccessStatus>,
    plan: &Plan,
    config: &EngineConfig,
    now: Timestamp,
) -> OpenAIAccessStatus {
    let (ready, reconciling, stalled) = evaluate(&principals, plan, config, now);
    let previous_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    let conditions = vec![
        condition(
            condition_types::READY,
            ready,
            generation,
            previous_conditions,
            now,
        ),
        condition(
            condition_types::RECONCILING,
            reconciling,
            generation,
            previous_conditions,
            now,
        ),
        condition(
            condition_types::STALLED,
            stalled,
            generation,
            previous_conditions,
            now,
        ),
    ];
    OpenAIAccessStatus {
        observed_generation: generation,
        conditions,
        summary: Some(summary(&principals)),
        scope: Some(scope.to_string()),
        // Set by the engine, which knows the spec.
        role_display_name: None,
        principals,
    }
}

/// (status, reason, message)
pub type Verdict = (bool, &'static str, String);

fn evaluate(
    principals: &[PrincipalStatus],
    plan: &Plan,
    config: &EngineConfig,
    now: Timestamp,
) -> (Verdict, Verdict, Verdict) {
    let count = |state| principals.iter().filter(|p| p.state == Some(state)).count();
    let first = |state| principals.iter().find(|p| p.state == Some(state));
    let total = principals.len();
    let granted = count(GrantState::Granted);
    let not_effective_until = principals
        .iter()
        .filter(|p| p.state == Some(GrantState::Granted))
        .filter_map(|p| {
            p.granted_at
                .as_ref()
                .and_then(|t| ready_at(t.0, config.propagation_grace))
        })
        .filter(|t| *t > now)
        .max();

    let blocked = first(GrantState::Failed).or(first(GrantState::Denied));
    let stalled = match blocked {
        Some(p) => (
            true,
            reason_of(p, reasons::ARM_ERROR),
            format!(
                "{}: {}",
                p.principal,
                p.message.as_deref().unwrap_or_default()
            ),
        ),
        None => (false, reasons::RECONCILED, "nothing needs a person".into()),
    };
    let pending = first(GrantState::Pending);
    let reconciling = match (pending, not_effective_until, plan.deferred_deletes) {
        (Some(p), _, _) => (
            true,
            reason_of(p, reasons::PENDING),
            format!(
                "{}: {}",
                p.principal,
                p.message.as_deref().unwrap_or_default()
            ),
        ),
        (None, Some(at), _) => (
            true,
            reasons::PROPAGATING,
            format!("role assignments take effect up to 10 minutes after creation; ready at {at}"),
        ),
        (None, None, n) if n > 0 => (
            true,
            reasons::DELETE_LIMIT,
            format!("{n} deletions wait for the next pass (per-pass delete limit)"),
        ),
        _ => (false, reasons::RECONCILED, "up to date".into()),
    };
    let ready = if granted == total && total > 0 && not_effective_until.is_none() {
        (true, reasons::GRANTED, format!("{granted}/{total} granted"))
    } else if let Some(at) = not_effective_until.filter(|_| granted == total) {
        (
            false,
            reasons::PROPAGATING,
            format!("{granted}/{total} granted; ready at {at}, after the propagation grace"),
        )
    } else if let Some(p) = blocked.or(pending).or(first(GrantState::Revoked)) {
        (
            false,
            reason_of(p, reasons::PENDING),
            format!(
                "{granted}/{total} granted; {}: {}",
                p.principal,
                p.message.as_deref().unwrap_or_default()
            ),
        )
    } else {
        (
            false,
            reasons::PENDING,
            format!("{granted}/{total} granted"),
        )
    };
    (ready, reconciling, stalled)
}

fn reason_of(status: &PrincipalStatus, fallback: &'static str) -> &'static str {
    // Condition reasons must be a bounded set: map the principal's reason onto the known ones.
    const KNOWN: &[&str] = &[
        reasons::GRANTED,
        reasons::PROPAGATING,
        reasons::ADOPTED,
        reasons::PENDING,
        reasons::REPLICATING,
        reasons::RESOLUTION_FAILED,
        reasons::NAMESPACE_NOT_ALLOWED,
        reasons::ROLE_NOT_ALLOWED,
        reasons::PRINCIPAL_KIND_NOT_ALLOWED,
        reasons::FEDERATION_MISSING,
        reasons::ACCOUNT_NOT_FOUND,
        reasons::AZURE_ACCOUNT_NOT_FOUND,
        reasons::EXPIRED,
        reasons::REVOKED,
        reasons::RETAINED,
        reasons::STILL_DECLARED,
        reasons::INVALID_SPEC,
        reasons::NAMESPACE_UNKNOWN,
        reasons::RETAIN_NOT_ALLOWED,
        reasons::ISSUER_UNKNOWN,
        reasons::STILL_GRANTED,
        reasons::REPLACEMENT_PROPAGATING,
        reasons::WOULD_CREATE,
        reasons::WOULD_ADOPT,
        reasons::WOULD_DELETE,
        reasons::WOULD_RELEASE,
        crate::plan::status::CONDITIONAL_ASSIGNMENT_EXISTS,
    ];
    status
        .reason
        .as_deref()
        .and_then(|r| KNOWN.iter().find(|k| **k == r).copied())
        .unwrap_or(fallback)
}

/// A condition that keeps its lastTransitionTime while its status does not change.
pub fn condition(
    type_: &str,
    (status, reason, message): Verdict,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}
