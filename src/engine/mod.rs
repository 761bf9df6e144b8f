//! One pass over one account scope — resolve → observe → plan → apply → outcome — generic over the
//! Azure traits. File mode and the controller both run it; they differ only in where the objects
//! come from and where the outcome goes.

pub mod brake;
pub mod conditions;
pub mod resolve;

#[cfg(test)]
mod tests;

use crate::api::RoleName;
use crate::api::{
    GrantState, Management, OpenAIAccessSpec, OpenAIAccessStatus, OpenAIAccountSpec, PlannedWrite,
    PrincipalStatus, reasons,
};
use crate::azure::{
    AccountInfo, Accounts, AzureError, AzureErrorKind, Created, Directory, ManagedIdentities,
    RetryDecision, RoleAssignments,
};
use crate::plan::policy::NamespaceLabels;
use crate::plan::{
    AccessInput, AccountInput, AccountScope, Cleanup, InstanceId, NewAssignment, ObjectKey,
    Observation, Plan, PlanInput, Write, plan,
};
pub use crate::plan::{MalformedObject, ViewCompleteness};
use jiff::Timestamp;
pub use resolve::{CLIENT_ID_ANNOTATION, FederationCheck, ResolutionCache, ServiceAccountInfo};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// The Azure side, as the engine sees it.
#[derive(Clone, Copy)]
pub struct Azure<'a> {
    pub assignments: &'a dyn RoleAssignments,
    pub accounts: &'a dyn Accounts,
    pub identities: &'a dyn ManagedIdentities,
    pub directory: &'a dyn Directory,
}

/// Settings of a pass; every duration is a parameter.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub instance: InstanceId,
    pub max_deletes_per_pass: usize,
    pub replication_deadline: Duration,
    /// Role assignments take effect up to 10 minutes after creation; a grant counts as ready this
    /// long after ARM's createdOn.
    pub propagation_grace: Duration,
    pub federation_issuer: Option<String>,
    /// Plan only: observe and plan, write nothing.
    pub dry_run: bool,
    /// Management Observe on every account, whatever its `spec.management` (`keyless run
    /// --observe`): plan and report, send no ARM write.
    pub observe: bool,
    /// Resolutions kept across passes (the controller's); None resolves everything every pass.
    pub resolution_cache: Option<std::sync::Arc<resolve::ResolutionCache>>,
    /// Delete owned grants that no input object names any more. The controller always prunes (the
    /// informer store is the whole truth); file mode prunes only with `--prune`, because files may
    /// hold a part of what an instance manages. Without it, only grants whose principal an input
    /// object still names (now denied or expired) are revoked: see [`spared_without_prune`].
    pub prune: bool,
    /// The delete brake and its clocks (the controller's); None: only the pause switch, the
    /// view's completeness and malformed objects hold deletes.
    pub brake: Option<std::sync::Arc<brake::Brake>>,
    /// Checked just before each ARM write: a replica that may no longer lead writes nothing.
    pub fence: Option<std::sync::Arc<dyn Fence>>,
    /// Enforcement Exclusive: how long an assignment made outside keyless is reported
    /// (`status.exclusiveRevocations`) before it is revoked.
    pub exclusive_grace: Duration,
}

/// Whether this process may still write. The controller's is the leader lease: it answers Err
/// when the lease has less time left than one ARM attempt may take.
pub trait Fence: Send + Sync + std::fmt::Debug {
    fn may_write(&self) -> Result<(), String>;
}

/// One OpenAIAccess as the front end found it.
#[derive(Clone, Debug)]
pub struct AccessSource {
    pub key: ObjectKey,
    pub generation: Option<i64>,
    /// Shared, never copied: a pass over an account holds every object's spec and last status
    /// for as long as its writes take, and 20 accounts pass at once.
    pub spec: Arc<OpenAIAccessSpec>,
    pub being_deleted: bool,
    pub previous: Option<Arc<OpenAIAccessStatus>>,
}

/// Everything one pass over one account needs from the front end.
#[derive(Clone, Debug)]
pub struct ScopeSource {
    pub account_name: String,
    pub account_generation: Option<i64>,
    pub account: OpenAIAccountSpec,
    pub account_being_deleted: bool,
    pub accesses: Vec<AccessSource>,
    pub service_accounts: BTreeMap<ObjectKey, ServiceAccountInfo>,
    pub namespaces: NamespaceLabels,
    /// Whether `accesses` is every OpenAIAccess on this account (see [`ViewCompleteness`]).
    pub view: ViewCompleteness,
    /// Objects that may name this account but could not be decoded (see [`MalformedObject`]).
    pub malformed: Vec<MalformedObject>,
    /// `keyless.dev/paused: "true"` on the account: no writes at all.
    pub paused: bool,
    /// `keyless.dev/confirm-revocations` on the account, when it is a number.
    pub confirmed_revocations: Option<usize>,
    /// The account's `status.exclusiveRevocations` from the previous pass: enforcement
    /// Exclusive's clocks (empty in file mode, which keeps no status).
    pub exclusive_reported: Vec<crate::api::ExclusiveRevocation>,
}

/// What happened to one write.
#[derive(Debug)]
pub enum WriteResult {
    /// A delete or release succeeded.
    Done,
    /// ARM created (or confirmed) the assignment under our name.
    Created(crate::plan::ObservedAssignment),
    /// Created under another name already (409): adopted.
    Adopted(crate::plan::ObservedAssignment),
    /// Created already (409) by this instance, under another name (a grant named the old way, or
    /// one a lagging LIST did not show): ours, so Granted, not Adopted.
    Confirmed(crate::plan::ObservedAssignment),
    Skipped(String),
    Failed(AzureError),
    /// Not attempted: a plan-only pass, or the pass stopped early (throttled).
    NotAttempted,
    /// Not sent because the account is under management Observe: a Manage pass would send it.
    Observed,
}

/// A thing worth a Kubernetes Event or a log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineEvent {
    /// The OpenAIAccess it concerns, or None for the account.
    pub object: Option<ObjectKey>,
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

#[derive(Debug)]
pub struct AccessResult {
    pub key: ObjectKey,
    pub status: OpenAIAccessStatus,
    /// For an object being deleted: its finalizer may go.
    pub cleanup_complete: bool,
}

#[derive(Debug)]
pub struct PassOutcome {
    pub scope: Option<AccountScope>,
    pub account: Option<AccountInfo>,
    pub plan: Option<Plan>,
    pub results: Vec<WriteResult>,
    pub accesses: Vec<AccessResult>,
    pub account_cleanup_complete: bool,
    pub events: Vec<EngineEvent>,
    /// Set when the pass must be retried sooner than the resync interval.
    pub retry: Option<RetryDecision>,
    /// Set when the account's spec is invalid: wait for a change.
    pub invalid_spec: Option<String>,
    /// Everything the pass's one `atScope()` LIST returned, inherited assignments included: what
    /// the access report classifies. None when the LIST was not made or failed.
    pub listing: Option<crate::azure::ScopeListing>,
    /// A read failure (account or LIST) that stopped the pass.
    pub read_error: Option<AzureError>,
    /// When this scope must be looked at again regardless of changes, on time: an OpenAIAccess
    /// expires, an Exclusive revocation is due, a brake's hold lifts.
    pub requeue_at: Option<Timestamp>,
    /// The earliest moment a grant's propagation grace ends and its object turns Ready. Only a
    /// status changes then, so the controller may batch it ([`requeue_at`](Self::requeue_at) it
    /// may not).
    pub ready_at: Option<Timestamp>,
    /// Deletes the brake (or the view) held this pass: the first hold and how many it held.
    pub held: Option<(brake::Hold, usize)>,
    /// The fence refused a write: this replica may no longer lead, so the pass stopped and its
    /// outcome must not be written anywhere.
    pub fenced: Option<String>,
    /// The management the pass ran under: the account's `spec.management`, or Observe on every
    /// account with [`EngineConfig::observe`].
    pub management: Management,
    /// Under Observe: the writes a Manage pass would have sent, in order (empty under Manage).
    pub planned_writes: Vec<PlannedWrite>,
}

impl PassOutcome {
    /// Whether anything was (or, in a plan-only pass, would be) written.
    pub fn changed(&self) -> bool {
        self.plan.as_ref().is_some_and(|p| !p.writes.is_empty())
    }
}

/// Runs one pass over one account scope.
pub async fn run_pass(
    azure: Azure<'_>,
    source: &ScopeSource,
    config: &EngineConfig,
    now: Timestamp,
) -> PassOutcome {
    let mut outcome = PassOutcome {
        scope: None,
        account: None,
        plan: None,
        results: Vec::new(),
        accesses: Vec::new(),
        account_cleanup_complete: false,
        events: Vec::new(),
        retry: None,
        invalid_spec: None,
        read_error: None,
        listing: None,
        requeue_at: None,
        ready_at: None,
        held: None,
        fenced: None,
        management: management(source, config),
        planned_writes: Vec::new(),
    };
    // Decided once, before anything runs: the one gate of every ARM write below.
    let observing = outcome.management == Management::Observe;
    let scope = match AccountScope::parse(&source.account.resource_id) {
        Ok(scope) => scope,
        Err(error) => {
            outcome.invalid_spec = Some(format!("spec.resourceId: {error}"));
            return outcome;
        }
    };
    outcome.scope = Some(scope.clone());

    // Observe the account first: a 404 means every assignment at its scope is gone too. With a
    // fresh cached posture the LIST alone tells: it is a 404 when the account is gone.
    let cache = config.resolution_cache.as_deref();
    let cached_account = cache.and_then(|c| c.account(&scope));
    let account = match cached_account {
        Some(info) => Ok(Some(info)),
        None => azure.accounts.get_account(&scope).await,
    };
    let observation = match account {
        Ok(None) => {
            cache.inspect(|c| c.forget_account(&scope));
            Observation::AccountGone
        }
        Ok(Some(info)) => {
            if let Some(cache) = cache {
                cache.put_account(&scope, &info);
            }
            outcome.account = Some(info);
            match azure.assignments.observe_scope_listing(&scope).await {
                Ok(listing) => {
                    let list = listing.at_scope.clone();
                    outcome.listing = Some(listing);
                    Observation::Complete(list)
                }
                Err(error) if error.kind == AzureErrorKind::NotFound => {
                    cache.inspect(|c| c.forget_account(&scope));
                    outcome.account = None;
                    Observation::AccountGone
                }
                Err(error) => {
                    let message = error.to_string();
                    outcome.retry = Some(error.retry());
                    outcome.read_error = Some(error);
                    Observation::Unavailable { message }
                }
            }
        }
        Err(error) => {
            let message = error.to_string();
            outcome.retry = Some(error.retry());
            outcome.read_error = Some(error);
            Observation::Unavailable { message }
        }
    };

    // Eligibility, then resolution of the eligible principals only (and only when there is
    // something to compare against): a namespace the account does not allow learns nothing about
    // the directory, and costs no lookup.
    let mut resolver = resolve::Resolver::new(
        azure.directory,
        azure.identities,
        &source.service_accounts,
        FederationCheck {
            issuer: config.federation_issuer.clone(),
        },
        config.resolution_cache.as_deref(),
    );
    let readable = !matches!(observation, Observation::Unavailable { .. });
    let mut accesses = Vec::with_capacity(source.accesses.len());
    for access in &source.accesses {
        let eligibility = crate::plan::eligibility::eligibility(
            &source.account_name,
            &source.account,
            &access.key,
            &access.spec,
            &source.namespaces,
        );
        let mut resolutions = Vec::with_capacity(access.spec.principals.len());
        for eligible in &eligibility.principals {
            let resolution = match eligible.reference() {
                Some(reference) if readable => {
                    resolver
                        .resolve(&access.key, reference, access.previous.as_deref())
                        .await
                }
                _ => crate::plan::Resolution::NotLookedUp,
            };
            resolutions.push(resolution);
        }
        accesses.push(AccessInput {
            key: access.key.clone(),
            generation: access.generation,
            spec: access.spec.clone(),
            being_deleted: access.being_deleted,
            previous: access.previous.clone(),
            resolutions,
        });
    }
    for (object, note) in std::mem::take(&mut resolver.findings) {
        outcome.events.push(EngineEvent {
            object: Some(object),
            warning: true,
            reason: "FederationFinding",
            action: "Resolve",
            note,
        });
    }

    let account = AccountInput {
        name: source.account_name.clone(),
        spec: source.account.clone(),
        being_deleted: source.account_being_deleted,
    };
    let exclusive = crate::plan::exclusive::ExclusiveContext {
        created_by: outcome
            .listing
            .as_ref()
            .map(|l| l.created_by.clone())
            .unwrap_or_default(),
        reported: source.exclusive_reported.clone(),
        grace: config.exclusive_grace,
        observing,
    };
    let plan_input = PlanInput {
        scope: &scope,
        account: &account,
        accesses: &accesses,
        namespaces: &source.namespaces,
        observation: &observation,
        instance: &config.instance,
        now,
        max_deletes: config.max_deletes_per_pass,
        replication_deadline: config.replication_deadline,
        propagation_grace: config.propagation_grace,
        view: &source.view,
        malformed: &source.malformed,
        exclusive: &exclusive,
    };
    let plan = plan(&plan_input);
    for (object, note) in &plan.findings {
        outcome.events.push(EngineEvent {
            object: Some(object.clone()),
            warning: true,
            reason: "FederationFinding",
            action: "Authorise",
            note: note.clone(),
        });
    }

    // The brake: which deletes wait, and why.
    let holds = delete_holds(source, &plan, &observation, config, now);
    let mut first_hold: Option<(brake::Hold, usize)> = None;
    for hold in holds.values() {
        match &mut first_hold {
            Some((_, count)) => *count += 1,
            None => first_hold = Some((hold.clone(), 1)),
        }
    }
    // The planner itself deletes nothing from an incomplete view and nothing a malformed object
    // protects; it cannot say how many deletes that held. Planning the same pass as if the view
    // were whole (pure, no IO) counts them, so a held revocation is visible in status and metrics.
    if first_hold.is_none() {
        let view_held = deletes_held_by_the_view(&plan, source, |view, malformed| {
            crate::plan::plan(&PlanInput {
                view,
                malformed,
                ..plan_input.clone()
            })
        });
        if let Some(held) = view_held {
            first_hold = Some(held);
        }
    }

    // Apply, one write at a time: writes on a scope are never concurrent.
    let mut failed_creates_of: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut stop: Option<RetryDecision> = None;
    let spared = |write: &Write| !config.prune && spared_without_prune(write, &plan, source);
    for (index, write) in plan.writes.iter().enumerate() {
        if source.paused {
            outcome.results.push(WriteResult::Skipped(
                brake::Hold::Paused.message(&source.account_name),
            ));
            continue;
        }
        if let Some(hold) = holds.get(&index) {
            outcome
                .results
                .push(WriteResult::Skipped(hold.message(&source.account_name)));
            continue;
        }
        if spared(write) {
            outcome
                .results
                .push(WriteResult::Skipped(NOT_PRUNED.into()));
            continue;
        }
        if config.dry_run {
            outcome.results.push(WriteResult::NotAttempted);
            continue;
        }
        if observing {
            outcome.results.push(WriteResult::Observed);
            continue;
        }
        if stop.is_some() || outcome.fenced.is_some() {
            outcome.results.push(WriteResult::NotAttempted);
            continue;
        }
        // Just before the attempt: a replica whose lease may end during it writes nothing more.
        if let Some(fence) = &config.fence
            && let Err(why) = fence.may_write()
        {
            tracing::warn!(account = %source.account_name, %why, "fenced: stopping the pass");
            outcome.fenced = Some(why);
            outcome.results.push(WriteResult::NotAttempted);
            continue;
        }
        audit(&source.account_name, write);
        let result = match write {
            Write::Create {
                assignment,
                declared_by,
            } => match azure.assignments.create_assignment(assignment).await {
                Ok(Created::Created(created)) => {
                    outcome.events.push(EngineEvent {
                        object: declared_by.first().cloned(),
                        warning: false,
                        reason: "RoleAssignmentCreated",
                        action: "Create",
                        note: format!(
                            "granted {} to {} ({})",
                            assignment.role, assignment.principal_id, assignment.principal_type
                        ),
                    });
                    WriteResult::Created(created)
                }
                Ok(Created::AlreadyExists(existing))
                    if crate::plan::ownership::is_owned_by(
                        existing.description.as_deref(),
                        &config.instance,
                    ) =>
                {
                    WriteResult::Confirmed(existing)
                }
                Ok(Created::AlreadyExists(existing)) => WriteResult::Adopted(existing),
                Err(error) if error.kind == AzureErrorKind::Fenced => {
                    fenced_by_the_client(&mut outcome, &source.account_name, error)
                }
                Err(error) => {
                    failed_creates_of.extend(declared_by.iter().cloned());
                    if matches!(error.retry(), RetryDecision::After(_)) {
                        stop = Some(error.retry());
                    }
                    outcome.events.push(EngineEvent {
                        object: declared_by.first().cloned(),
                        warning: true,
                        reason: "RoleAssignmentFailed",
                        action: "Create",
                        note: format!(
                            "could not grant {} to {}: {error}",
                            assignment.role, assignment.principal_id
                        ),
                    });
                    WriteResult::Failed(error)
                }
            },
            Write::Release { assignment, .. } => {
                match azure.assignments.create_assignment(assignment).await {
                    Ok(_) => WriteResult::Done,
                    Err(error) if error.kind == AzureErrorKind::Fenced => {
                        fenced_by_the_client(&mut outcome, &source.account_name, error)
                    }
                    Err(error) => {
                        if matches!(error.retry(), RetryDecision::After(_)) {
                            stop = Some(error.retry());
                        }
                        WriteResult::Failed(error)
                    }
                }
            }
            Write::Delete {
                assignment,
                reason,
                after_creates_of,
            } => {
                if let Some(blocked) = after_creates_of
                    .iter()
                    .find(|k| failed_creates_of.contains(k))
                {
                    WriteResult::Skipped(format!(
                        "kept until the replacement grant for {blocked} exists (make-before-break)"
                    ))
                } else {
                    match azure.assignments.delete_assignment(&assignment.id).await {
                        Ok(_) => {
                            if let Some(brake) = &config.brake {
                                brake.deleted(&source.account_name, &assignment.id, now);
                            }
                            let note = if *reason == reasons::NOT_DECLARED {
                                let created_by = exclusive
                                    .created_by
                                    .get(&assignment.id.to_ascii_lowercase())
                                    .map_or("unknown", String::as_str);
                                format!(
                                    "enforcement Exclusive revoked role assignment {} of {} (role {}), created by {created_by}, which no OpenAIAccess declares",
                                    assignment.name,
                                    assignment.principal_id,
                                    crate::plan::observe::role_guid(&assignment.role_definition_id)
                                )
                            } else {
                                format!(
                                    "revoked role assignment {} of {} ({reason})",
                                    assignment.name, assignment.principal_id
                                )
                            };
                            outcome.events.push(EngineEvent {
                                object: None,
                                warning: *reason == reasons::NOT_DECLARED,
                                reason: if *reason == reasons::NOT_DECLARED {
                                    "ExclusiveRevocation"
                                } else {
                                    "RoleAssignmentDeleted"
                                },
                                action: "Delete",
                                note,
                            });
                            WriteResult::Done
                        }
                        Err(error) if error.kind == AzureErrorKind::Fenced => {
                            fenced_by_the_client(&mut outcome, &source.account_name, error)
                        }
                        Err(error) => {
                            if matches!(error.retry(), RetryDecision::After(_)) {
                                stop = Some(error.retry());
                            }
                            outcome.events.push(EngineEvent {
                                object: None,
                                warning: true,
                                reason: "RoleAssignmentFailed",
                                action: "Delete",
                                note: format!(
                                    "could not revoke role assignment {}: {error}",
                                    assignment.name
                                ),
                            });
                            WriteResult::Failed(error)
                        }
                    }
                }
            }
        };
        outcome.results.push(result);
    }
    if let Some(decision) = stop {
        outcome.retry = Some(decision);
    }

    // Outcomes: the plan's statuses, corrected by what the writes did. The planner keeps the
    // objects in input order, so each plan entry pairs with its source.
    let mut creates: HashMap<(String, RoleName), (&NewAssignment, &WriteResult)> = HashMap::new();
    for (write, result) in plan.writes.iter().zip(&outcome.results) {
        if let Write::Create { assignment, .. } = write {
            creates.insert(
                (
                    assignment.principal_id.to_ascii_lowercase(),
                    assignment.role,
                ),
                (assignment, result),
            );
        }
    }
    // Results of releases and deletes, by grant: cleanup waits on grants, not positions.
    let removals: HashMap<crate::plan::GrantKey, &WriteResult> = plan
        .writes
        .iter()
        .zip(&outcome.results)
        .filter(|(write, _)| !matches!(write, Write::Create { .. }))
        .filter_map(|(write, result)| write.grant().map(|g| (g, result)))
        .collect();
    let removed = |grants: &[crate::plan::GrantKey]| {
        grants
            .iter()
            .all(|g| matches!(removals.get(g), Some(WriteResult::Done)))
    };
    let would_send: Vec<&Write> = plan
        .writes
        .iter()
        .zip(&outcome.results)
        .filter(|(_, result)| matches!(result, WriteResult::Observed))
        .map(|(write, _)| write)
        .collect();
    outcome.planned_writes = would_send
        .iter()
        .map(|w| crate::plan::observe::planned_write(w))
        .collect();
    for (access_plan, source_access) in plan.accesses.iter().zip(&source.accesses) {
        let mut principals = access_plan.principals.clone();
        for status in principals.iter_mut() {
            apply_write_results(status, source_access.spec.role, &creates, now);
        }
        if observing {
            crate::plan::observe::label(&mut principals, source_access.spec.role, &would_send);
        }
        // Under Observe an object being deleted has nothing to wait for: keyless sends no
        // DELETE, so its finalizer goes at once.
        let cleanup_complete = observing && source_access.being_deleted
            || match &access_plan.cleanup {
                Cleanup::Complete => true,
                Cleanup::AfterWrites(grants) => removed(grants),
                Cleanup::NotDeleting | Cleanup::Blocked(_) => false,
            };
        let previous = source_access.previous.as_deref();
        let mut status = conditions::access_status(
            access_plan.generation,
            &scope,
            principals,
            previous,
            &plan,
            config,
            now,
        );
        // Azure's current name for the role, whichever name (current or pre-rename alias) the spec used.
        status.role_display_name = Some(source_access.spec.role.display_name().to_string());
        for principal in status
            .principals
            .iter()
            .filter(|p| p.state == Some(GrantState::Denied))
        {
            let was_denied = previous
                .and_then(|s| {
                    s.principals
                        .iter()
                        .find(|q| q.principal == principal.principal)
                })
                .is_some_and(|q| q.state == Some(GrantState::Denied));
            if !was_denied {
                outcome.events.push(EngineEvent {
                    object: Some(access_plan.key.clone()),
                    warning: true,
                    reason: "AccessDenied",
                    action: "Plan",
                    note: format!(
                        "{}: {}",
                        principal.principal,
                        principal.message.as_deref().unwrap_or_default()
                    ),
                });
            }
        }
        outcome.accesses.push(AccessResult {
            key: access_plan.key.clone(),
            status,
            cleanup_complete,
        });
    }
    outcome.account_cleanup_complete = observing && source.account_being_deleted
        || match &plan.account_cleanup {
            Cleanup::Complete => true,
            Cleanup::AfterWrites(grants) => removed(grants),
            Cleanup::NotDeleting | Cleanup::Blocked(_) => false,
        };
    if outcome.retry.is_none()
        && outcome.results.iter().any(
            |r| matches!(r, WriteResult::Failed(e) if e.retry() != RetryDecision::WaitForChange),
        )
    {
        outcome.retry = Some(RetryDecision::Backoff);
    }
    outcome.held = first_hold;
    if source.paused && !plan.writes.is_empty() {
        outcome.held = Some((brake::Hold::Paused, plan.writes.len()));
    }
    if outcome.retry.is_none() && plan.deferred_deletes > 0 && !observing {
        // The rest of the deletes wait for the next pass; do not wait a whole resync for it.
        outcome.retry = Some(RetryDecision::Backoff);
    }
    outcome.requeue_at = next_expiry(source, now);
    outcome.ready_at = next_ready(&outcome.accesses, config, now);
    if let Some(next) = plan.exclusive.next_revocation() {
        outcome.requeue_at = Some(outcome.requeue_at.map_or(next, |at| at.min(next)));
    }
    if let Some(lifts) = holds.values().filter_map(brake::Hold::lifts_at).min() {
        outcome.requeue_at = Some(outcome.requeue_at.map_or(lifts, |at| at.min(lifts)));
    }
    outcome.plan = Some(plan);
    outcome
}

// The client's own fence (checked after pacing, just before the attempt) refused the write:
// nothing reached ARM, and the pass stops as if the engine's check had refused it.
fn fenced_by_the_client(
    outcome: &mut PassOutcome,
    account: &str,
    error: AzureError,
) -> WriteResult {
    tracing::warn!(%account, why = %error, "fenced in the Azure client: stopping the pass");
    outcome.fenced = Some(error.message);
    WriteResult::NotAttempted
}

/// The management a pass runs under: `--observe` forces Observe on every account.
pub fn management(source: &ScopeSource, config: &EngineConfig) -> Management {
    if config.observe {
        Management::Observe
    } else {
        source.account.management
    }
}

// The audit trail: every ARM write at info, naming the grant (events collapse per account).
fn audit(account: &str, write: &Write) {
    match write {
        Write::Create {
            assignment,
            declared_by,
        } => tracing::info!(
            account,
            object = %declared_by.first().map(ToString::to_string).unwrap_or_default(),
            principal = %assignment.principal_id,
            role = %assignment.role,
            assignment = %assignment.name,
            "arm write: create role assignment"
        ),
        Write::Release { assignment, .. } => tracing::info!(
            account,
            principal = %assignment.principal_id,
            role = %assignment.role,
            assignment = %assignment.name,
            "arm write: release role assignment (retained)"
        ),
        Write::Delete {
            assignment, reason, ..
        } => tracing::info!(
            account,
            principal = %assignment.principal_id,
            role = %assignment.role_definition_id,
            assignment = %assignment.name,
            reason,
            "arm write: delete role assignment"
        ),
    }
}

/// How many deletes the view (incomplete, or a malformed object's protection) held this pass,
/// found by planning again as if the view were whole; `None` when it held none.
fn deletes_held_by_the_view(
    plan: &Plan,
    source: &ScopeSource,
    replan: impl Fn(&ViewCompleteness, &[MalformedObject]) -> Plan,
) -> Option<(brake::Hold, usize)> {
    if matches!(source.view, ViewCompleteness::Complete) && source.malformed.is_empty() {
        return None;
    }
    let deletes = |p: &Plan| {
        p.writes
            .iter()
            .filter(|w| matches!(w, Write::Delete { .. }))
            .count()
    };
    let whole = replan(&ViewCompleteness::Complete, &[]);
    let held = deletes(&whole).saturating_sub(deletes(plan));
    if held == 0 {
        return None;
    }
    let why = match &source.view {
        ViewCompleteness::Incomplete { reason } => reason.clone(),
        ViewCompleteness::Complete => {
            let names: Vec<String> = source.malformed.iter().map(|m| m.key.to_string()).collect();
            format!(
                "OpenAIAccess {} cannot be read and may name these principals",
                names.join(", ")
            )
        }
    };
    Some((brake::Hold::ViewIncomplete(why), held))
}

/// The deletes of a plan the brake holds back, by write index. Those an incomplete view or a
/// malformed object protects never reach the plan (the planner's rule); `deletes_held_by_the_view`
/// counts them.
fn delete_holds(
    source: &ScopeSource,
    plan: &Plan,
    observation: &Observation,
    config: &EngineConfig,
    now: Timestamp,
) -> HashMap<usize, brake::Hold> {
    let deletes: Vec<(usize, &crate::plan::ObservedAssignment, &'static str)> = plan
        .writes
        .iter()
        .enumerate()
        .filter_map(|(i, w)| match w {
            Write::Delete {
                assignment, reason, ..
            } => Some((i, assignment, *reason)),
            _ => None,
        })
        .collect();
    let mut holds = HashMap::new();
    if deletes.is_empty() {
        return holds;
    }
    let view_incomplete = match &source.view {
        ViewCompleteness::Complete => None,
        ViewCompleteness::Incomplete { reason } => Some(reason.clone()),
    };
    let mut candidates = Vec::new();
    let mut candidate_index = Vec::new();
    for (index, assignment, reason) in &deletes {
        let explained = source.account_being_deleted
            || *reason != reasons::REVOKED
            || source.accesses.iter().any(|a| {
                a.previous.as_ref().is_some_and(|s| {
                    s.principals.iter().any(|p| {
                        p.object_id
                            .as_deref()
                            .is_some_and(|o| o.eq_ignore_ascii_case(&assignment.principal_id))
                    })
                })
            });
        candidates.push(brake::Candidate {
            id: assignment.id.clone(),
            explained,
        });
        candidate_index.push(*index);
    }
    let owned = match observation {
        Observation::Complete(list) | Observation::Incomplete(list) => list
            .iter()
            .filter(|a| {
                crate::plan::ownership::is_owned_by(a.description.as_deref(), &config.instance)
            })
            .count(),
        _ => 0,
    };
    let facts = brake::PassFacts {
        now,
        paused: source.paused,
        view_incomplete: view_incomplete.as_deref(),
        confirmed: source.confirmed_revocations,
        owned,
        account_deleting: source.account_being_deleted,
        candidates: &candidates,
    };
    let decisions = match &config.brake {
        Some(brake) => brake.decide(&source.account_name, &facts),
        // Without the brake's clocks and budget: only the pause switch and the view.
        None => candidates
            .iter()
            .map(|_| {
                if source.paused {
                    Some(brake::Hold::Paused)
                } else {
                    view_incomplete.clone().map(brake::Hold::ViewIncomplete)
                }
            })
            .collect(),
    };
    for (index, decision) in candidate_index.into_iter().zip(decisions) {
        if let Some(hold) = decision {
            holds.insert(index, hold);
        }
    }
    holds
}

/// Why a delete was not made by a pass without `prune`.
pub const NOT_PRUNED: &str = "no input object names this principal any more; kept without --prune";

/// True for a delete of a grant no input object names (an object absent from the input, or a
/// principal removed from one): a pass without `prune` leaves it. Deletes of grants an input
/// object still names — denied by the account's policy, or expired — are always made: the input
/// itself asks for them.
pub fn spared_without_prune(write: &Write, plan: &Plan, source: &ScopeSource) -> bool {
    let Write::Delete { assignment, .. } = write else {
        return false;
    };
    let Some(role) = crate::api::RoleName::from_definition_id(&assignment.role_definition_id)
    else {
        return true;
    };
    // An input object that declared it (its marker says so): a denied namespace is never looked
    // up, so its principals carry no object id, but the request still names the grant.
    let declarer = crate::plan::ownership::declared_by(assignment.description.as_deref());
    if source
        .accesses
        .iter()
        .any(|a| declarer == Some(a.key.to_string().as_str()) && a.spec.role == role)
    {
        return false;
    }
    let named = plan.accesses.iter().any(|access| {
        source
            .accesses
            .iter()
            .find(|a| a.key == access.key)
            .is_some_and(|a| a.spec.role == role)
            && access.principals.iter().any(|p| {
                p.object_id
                    .as_deref()
                    .is_some_and(|o| o.eq_ignore_ascii_case(&assignment.principal_id))
            })
    });
    !named
}

// The earliest future moment an OpenAIAccess expires: its grants must go then, not later.
fn next_expiry(source: &ScopeSource, now: Timestamp) -> Option<Timestamp> {
    source
        .accesses
        .iter()
        .filter_map(|a| a.spec.expires_at.as_ref().map(|t| t.0))
        .filter(|t| *t > now)
        .min()
}

// The earliest future moment a grant's propagation grace ends (only a status changes then).
fn next_ready(
    accesses: &[AccessResult],
    config: &EngineConfig,
    now: Timestamp,
) -> Option<Timestamp> {
    accesses
        .iter()
        .flat_map(|a| a.status.principals.iter())
        .filter_map(|p| p.granted_at.as_ref())
        .filter_map(|t| conditions::ready_at(t.0, config.propagation_grace))
        .filter(|t| *t > now)
        .min()
}

// A principal's planned status, corrected by the result of the write that concerned it.
fn apply_write_results(
    status: &mut PrincipalStatus,
    role: RoleName,
    creates: &HashMap<(String, RoleName), (&NewAssignment, &WriteResult)>,
    now: Timestamp,
) {
    let Some(object_id) = status.object_id.as_deref() else {
        return;
    };
    if status.state == Some(GrantState::Pending)
        && let Some((assignment, result)) = creates.get(&(object_id.to_ascii_lowercase(), role))
    {
        match result {
            WriteResult::Created(created) => {
                status.state = Some(GrantState::Granted);
                status.reason = Some(reasons::GRANTED.into());
                status.message = Some(crate::plan::status::GRANTED_MESSAGE.into());
                status.role_assignment_id = Some(assignment.id());
                // ARM's createdOn, so the time survives restarts and never churns status.
                status.granted_at =
                    Some(crate::api::common::Time(created.created_on.unwrap_or(now)));
            }
            WriteResult::Confirmed(existing) => {
                status.state = Some(GrantState::Granted);
                status.reason = Some(reasons::GRANTED.into());
                status.message = Some(crate::plan::status::GRANTED_MESSAGE.into());
                status.role_assignment_id = Some(existing.id.clone());
                status.granted_at = existing.created_on.map(crate::api::common::Time);
            }
            WriteResult::Adopted(existing) => {
                status.state = Some(GrantState::Granted);
                status.reason = Some(reasons::ADOPTED.into());
                status.message = Some(format!(
                    "an existing role assignment ({}) already grants this; keyless adopts it and will never delete it",
                    existing.name
                ));
                status.role_assignment_id = Some(existing.id.clone());
                status.granted_at = existing.created_on.map(crate::api::common::Time);
            }
            // The directory object is not of the type the spec declared: a spec to correct, not a
            // failure to retry. Nothing was created.
            WriteResult::Failed(error) if error.kind == AzureErrorKind::UnmatchedPrincipalType => {
                let expected = crate::azure::arm::actual_principal_type(&error.message);
                status.state = Some(GrantState::Denied);
                status.reason = Some(AzureErrorKind::UnmatchedPrincipalType.as_str().into());
                status.message = Some(match expected {
                    Some(expected) => format!(
                        "ARM refused principalType {sent}: object {object_id} is a {expected}; set principalType: {expected} on this principal",
                        sent = assignment.principal_type,
                    ),
                    None => format!(
                        "ARM refused principalType {sent}: object {object_id} is not a {sent}; set the principalType it has ({error})",
                        sent = assignment.principal_type,
                    ),
                });
                status.role_assignment_id = None;
                status.granted_at = None;
                status.pending_since = None;
            }
            WriteResult::Failed(error) => {
                let replicating = error.kind == AzureErrorKind::PrincipalNotFound;
                status.state = Some(if replicating {
                    GrantState::Pending
                } else {
                    GrantState::Failed
                });
                status.reason = Some(if replicating {
                    reasons::REPLICATING.to_string()
                } else {
                    error.kind.as_str().to_string()
                });
                status.message = Some(error.to_string());
                status.granted_at = None;
                if replicating && status.pending_since.is_none() {
                    status.pending_since = Some(crate::api::common::Time(now));
                }
            }
            WriteResult::Done
            | WriteResult::Skipped(_)
            | WriteResult::NotAttempted
            | WriteResult::Observed => {}
        }
    }
    if status.state == Some(GrantState::Granted) {
        status.pending_since = None;
    }
}
