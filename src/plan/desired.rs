//! Stage 4, the desired set: what live, authorised principals declare, and what is protected from
//! deletion and by whom. Protection is scoped: only an object in an allowed namespace (or a
//! malformed object) protects, only its own grants, and never a grant its own policy refuses.
//!
//! - A live object's authorised principal declares its grant.
//! - A temporary failure protects the owned assignments whose marker says `declared-by=<object>`
//!   and the object ids its status records, in its role — nothing else. A lasting one holds nothing.
//! - An object in an unknown namespace keeps the owned assignments whose marker names it (no
//!   create, no delete for it); a denied namespace protects nothing.
//! - A malformed object protects the owned assignments declared by it and the object ids its raw
//!   status records.
//! - Expiry and policy always revoke: a grant the object itself is refused is never protected by it.

use super::authorise::{Authorisation, authorise};
use super::eligibility::{AccessEligibility, NamespaceVerdict, PrincipalEligibility, eligibility};
use super::model::PrincipalType;
use super::planner::{GrantKey, ObjectKey, PlanInput, Resolution};
use super::resolution::{FailureClass, classify};
use crate::api::{DeletionPolicy, PrincipalStatus, RoleName, reasons};
use jiff::Timestamp;
use std::collections::{BTreeMap, BTreeSet};

/// What stages 1–3 decided for one principal entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Invalid {
        index: usize,
    },
    /// Refused by eligibility (namespace, role, declared kind): never looked up.
    Ineligible {
        reason: &'static str,
        message: String,
    },
    /// The namespace is unknown.
    Unknown {
        message: String,
    },
    Unresolved {
        reason: String,
        message: String,
        class: FailureClass,
        /// When it was first seen replicating (for the deadline), if it is.
        pending_since: Option<Timestamp>,
    },
    /// Resolved, and refused by authorisation.
    Denied {
        reason: &'static str,
        message: String,
        object_id: String,
    },
    Authorised {
        object_id: String,
        principal_type: PrincipalType,
        finding: Option<String>,
    },
}

#[derive(Clone, Debug)]
pub struct PrincipalDecision {
    /// The principal as status names it.
    pub label: String,
    /// The object id the previous status recorded for it.
    pub previous_oid: Option<String>,
    /// The role the previous status recorded for it (none in statuses from before roles were).
    pub previous_role: Option<RoleName>,
    /// The object id the spec itself names (an `objectId` principal), known without a lookup.
    pub spec_oid: Option<String>,
    pub decision: Decision,
    /// The grant this entry held before its principal or role changed (the previous status's
    /// object id and role, or what it was already replacing): kept until the new grant is past its
    /// propagation grace. None unless the entry is authorised now (a refused replacement ends the
    /// wait).
    pub replacing: Option<GrantKey>,
}

impl PrincipalDecision {
    /// The object id now, or the one last known.
    pub fn object_id(&self) -> Option<&str> {
        match &self.decision {
            Decision::Authorised { object_id, .. } | Decision::Denied { object_id, .. } => {
                Some(object_id)
            }
            _ => self.previous_oid.as_deref().or(self.spec_oid.as_deref()),
        }
    }

    pub fn is_temporary_failure(&self) -> bool {
        matches!(
            self.decision,
            Decision::Unresolved {
                class: FailureClass::Temporary { .. },
                ..
            }
        )
    }

    /// Refused by the account's policy (eligibility or authorisation).
    pub fn is_refused(&self) -> bool {
        matches!(
            self.decision,
            Decision::Ineligible { .. } | Decision::Denied { .. }
        )
    }
}

#[derive(Clone, Debug)]
pub struct ObjectDecisions {
    pub eligibility: AccessEligibility,
    pub expired: bool,
    /// Declares grants in this pass: not being deleted, not expired, account not being deleted.
    pub live: bool,
    pub principals: Vec<PrincipalDecision>,
}

/// Stages 1–3 for every object.
pub fn decide(input: &PlanInput<'_>) -> Vec<ObjectDecisions> {
    input
        .accesses
        .iter()
        .map(|access| {
            let eligibility = eligibility(
                &input.account.name,
                &input.account.spec,
                &access.key,
                &access.spec,
                input.namespaces,
            );
            let expired = access
                .spec
                .expires_at
                .as_ref()
                .is_some_and(|t| t.0 <= input.now);
            let live = !access.being_deleted && !expired && !input.account.being_deleted;
            let principals = eligibility
                .principals
                .iter()
                .enumerate()
                .map(|(index, eligible)| {
                    let label = access.spec.principals[index]
                        .reference()
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| format!("principals[{index}]"));
                    let previous = access
                        .previous
                        .as_ref()
                        .and_then(|s| s.principals.iter().find(|p| p.principal == label));
                    let previous_oid = previous
                        .and_then(|p| p.object_id.as_deref())
                        .map(str::to_ascii_lowercase);
                    let decision = match eligible {
                        PrincipalEligibility::Invalid { index } => {
                            Decision::Invalid { index: *index }
                        }
                        PrincipalEligibility::Denied { reason, message } => Decision::Ineligible {
                            reason,
                            message: message.clone(),
                        },
                        PrincipalEligibility::Unknown { message } => Decision::Unknown {
                            message: message.clone(),
                        },
                        PrincipalEligibility::Eligible(reference) => resolved_decision(
                            input,
                            reference.kind(),
                            access.resolutions.get(index),
                            previous,
                        ),
                    };
                    let spec_oid = match access.spec.principals[index].reference() {
                        Some(crate::api::PrincipalRef::ObjectId(id, _)) => Some(id),
                        _ => None,
                    };
                    let replacing = replaced_grant(&decision, previous, access.spec.role);
                    PrincipalDecision {
                        label,
                        previous_oid,
                        previous_role: previous.and_then(|p| p.role),
                        spec_oid,
                        decision,
                        replacing,
                    }
                })
                .collect();
            ObjectDecisions {
                eligibility,
                expired,
                live,
                principals,
            }
        })
        .collect()
}

// A principal entry whose object id or role changed replaces the grant it held: the previous
// status's (object id, role), or what that status was itself still replacing. A status written
// before roles were recorded names no role: the current one is assumed (a role change from such a
// status is not recognised as a replacement, and the old grant goes at once, as it used to).
fn replaced_grant(
    decision: &Decision,
    previous: Option<&PrincipalStatus>,
    role: RoleName,
) -> Option<GrantKey> {
    let Decision::Authorised { object_id, .. } = decision else {
        return None;
    };
    let current = GrantKey::new(object_id, role);
    let previous = previous?;
    let held = previous
        .object_id
        .as_deref()
        .map(|oid| GrantKey::new(oid, previous.role.unwrap_or(role)));
    let carried = previous
        .replaces
        .as_ref()
        .map(|r| GrantKey::new(&r.object_id, r.role));
    held.filter(|h| *h != current)
        .or(carried)
        .filter(|r| *r != current)
}

fn resolved_decision(
    input: &PlanInput<'_>,
    declared: crate::api::PrincipalKind,
    resolution: Option<&Resolution>,
    previous: Option<&PrincipalStatus>,
) -> Decision {
    match resolution {
        None | Some(Resolution::NotLookedUp) => Decision::Unresolved {
            reason: reasons::RESOLUTION_FAILED.into(),
            message: "not resolved in this pass".into(),
            class: FailureClass::Temporary { pending: false },
            pending_since: None,
        },
        Some(Resolution::Unresolved {
            reason,
            message,
            failure,
        }) => {
            let replicating = *failure == super::resolution::Failure::Replicating;
            let since = previous
                .and_then(|p| p.pending_since.as_ref())
                .map(|t| t.0)
                .unwrap_or(input.now);
            let class = classify(*failure, since, input.now, input.replication_deadline);
            let message = if replicating && class == FailureClass::Lasting {
                format!(
                    "{message}; gave up waiting for replication after {}s (still retried every pass)",
                    input.replication_deadline.as_secs()
                )
            } else {
                message.clone()
            };
            Decision::Unresolved {
                reason: if replicating {
                    reasons::REPLICATING.into()
                } else {
                    reason.clone()
                },
                message,
                class,
                pending_since: replicating.then_some(since),
            }
        }
        Some(Resolution::Resolved {
            object_id,
            principal_type,
            federation,
        }) => {
            let object_id = object_id.to_ascii_lowercase();
            match authorise(
                &input.account.name,
                &input.account.spec,
                declared,
                federation.as_ref(),
            ) {
                Authorisation::Granted { finding } => Decision::Authorised {
                    object_id,
                    principal_type: *principal_type,
                    finding,
                },
                Authorisation::Denied { reason, message } => Decision::Denied {
                    reason,
                    message,
                    object_id,
                },
            }
        }
    }
}

/// Who declares a grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declared {
    pub by: Vec<ObjectKey>,
    pub principal_type: PrincipalType,
}

/// What must not be deleted this pass, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Protection {
    /// Grants protected by object id (role None: any role, for malformed objects), with the
    /// object that protects each.
    pub grants: BTreeMap<(String, Option<RoleName>), ObjectKey>,
    /// Owned assignments whose marker says `declared-by=<key>` (in the role, if given), except
    /// the grants that object itself is refused.
    pub declared_by: BTreeMap<String, DeclaredBy>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredBy {
    pub role: Option<RoleName>,
    pub key: ObjectKey,
    /// Grants the object is refused by policy: its marker does not keep them.
    pub refused: BTreeSet<GrantKey>,
}

impl Protection {
    /// The object protecting this owned assignment, if any.
    pub fn protector(&self, grant: &GrantKey, declared_by: Option<&str>) -> Option<&ObjectKey> {
        self.grants
            .get(&(grant.principal_id.clone(), Some(grant.role)))
            .or_else(|| self.grants.get(&(grant.principal_id.clone(), None)))
            .or_else(|| {
                declared_by
                    .and_then(|d| self.declared_by.get(d))
                    .filter(|by| by.role.is_none_or(|r| r == grant.role))
                    .filter(|by| !by.refused.contains(grant))
                    .map(|by| &by.key)
            })
    }
}

#[derive(Clone, Debug, Default)]
pub struct Desired {
    pub grants: BTreeMap<GrantKey, Declared>,
    pub protection: Protection,
    /// Grants an object being deleted (not expired) keeps under an honoured Retain.
    pub retained: BTreeSet<GrantKey>,
}

/// Stage 4.
pub fn desired(input: &PlanInput<'_>, decisions: &[ObjectDecisions]) -> Desired {
    let mut out = Desired::default();
    for (access, object) in input.accesses.iter().zip(decisions) {
        let role = access.spec.role;
        // Expiry and policy always revoke: what this object is refused, it cannot protect.
        let mut refused = BTreeSet::new();
        for principal in &object.principals {
            if let Decision::Authorised {
                object_id,
                principal_type,
                ..
            } = &principal.decision
            {
                let grant = GrantKey::new(object_id, role);
                if object.live {
                    out.grants
                        .entry(grant.clone())
                        .or_insert_with(|| Declared {
                            by: Vec::new(),
                            principal_type: *principal_type,
                        })
                        .by
                        .push(access.key.clone());
                } else if access.being_deleted
                    && !object.expired
                    && object.eligibility.deletion_policy == DeletionPolicy::Retain
                {
                    out.retained.insert(grant);
                }
            }
            if principal.is_refused()
                && let Some(oid) = principal.object_id()
            {
                refused.insert(GrantKey::new(oid, role));
            }
        }
        // Protection: only from an allowed namespace, never from an expired object.
        if object.expired {
            continue;
        }
        match object.eligibility.namespace {
            NamespaceVerdict::Denied => {}
            NamespaceVerdict::Unknown => {
                out.protection.declared_by.insert(
                    access.key.to_string(),
                    DeclaredBy {
                        role: Some(role),
                        key: access.key.clone(),
                        refused,
                    },
                );
            }
            NamespaceVerdict::Allowed => {
                if object
                    .principals
                    .iter()
                    .any(PrincipalDecision::is_temporary_failure)
                {
                    for oid in access
                        .previous
                        .iter()
                        .flat_map(|s| s.principals.iter())
                        .filter_map(|p| p.object_id.as_deref())
                    {
                        if refused.contains(&GrantKey::new(oid, role)) {
                            continue;
                        }
                        out.protection
                            .grants
                            .entry((oid.to_ascii_lowercase(), Some(role)))
                            .or_insert_with(|| access.key.clone());
                    }
                    out.protection.declared_by.insert(
                        access.key.to_string(),
                        DeclaredBy {
                            role: Some(role),
                            key: access.key.clone(),
                            refused,
                        },
                    );
                }
            }
        }
    }
    for malformed in input.malformed {
        out.protection.declared_by.insert(
            malformed.key.to_string(),
            DeclaredBy {
                role: None,
                key: malformed.key.clone(),
                refused: BTreeSet::new(),
            },
        );
        for oid in &malformed.recorded_object_ids {
            out.protection
                .grants
                .entry((oid.to_ascii_lowercase(), None))
                .or_insert_with(|| malformed.key.clone());
        }
    }
    out
}
