//! One reconcile of one OpenAIAccount: finalizers, the engine's pass over its scope, status and
//! events for the account and every OpenAIAccess on it. And the light reconcile of an OpenAIAccess
//! the account controller cannot see (malformed, or naming no existing account).

use super::Context;
use super::kube_io::{
    KubeWriteError, apply_access_status, apply_account_status, publish, set_finalizer,
};
use super::lenient::{Field, LenientAccess, ParsedAccess, Unparsed};
use crate::api::{
    CLEANUP_FINALIZER, OpenAIAccess, OpenAIAccessStatus, OpenAIAccount, OpenAIAccountStatus,
    condition_types, reasons,
};
use crate::azure::RetryDecision;
use crate::engine::conditions::{Verdict, condition};
use crate::engine::{self, AccessSource, Azure, PassOutcome, ScopeSource, ServiceAccountInfo};
use crate::plan::{AccountScope, ObjectKey};
use jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("write to the Kubernetes API")]
    Kube(#[from] KubeWriteError),
    /// The lease has less than one write attempt's time left: this replica writes nothing more.
    #[error("fenced: {0}")]
    Fenced(String),
}

impl ReconcileError {
    /// A bounded name for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::Kube(e) if e.is_conflict() => "KubeConflict",
            ReconcileError::Kube(_) => "KubeWrite",
            ReconcileError::Fenced(_) => "Fenced",
        }
    }
}

/// Per-account exponential backoff, reset on success. Losing it on restart only makes the first
/// retry sooner, so it may live in memory.
#[derive(Default)]
pub struct Backoffs(Mutex<HashMap<String, u32>>);

impl Backoffs {
    fn next(&self, key: &str, initial: Duration, max: Duration) -> Duration {
        let mut attempts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let attempt = attempts.entry(key.to_string()).or_insert(0);
        *attempt = attempt.saturating_add(1);
        let base = initial
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16)))
            .min(max);
        // Full jitter over the upper half, so many accounts failing together spread out.
        let jitter = rand::random_range(0.5..=1.0);
        base.mul_f64(jitter)
    }

    fn reset(&self, key: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// Just before a status or finalizer write: the lease must still have one attempt's time left.
fn fence(ctx: &Context) -> Result<(), ReconcileError> {
    match &ctx.fence {
        Some(fence) => fence.check().map_err(ReconcileError::Fenced),
        None => Ok(()),
    }
}

/// Now, to the whole second: status times are whole seconds (RFC 3339 as the API server stores
/// them), so a status computed again compares equal to the one it wrote and sends no PATCH.
pub fn whole_second_now() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

fn has_finalizer<K: Resource>(object: &K) -> bool {
    object
        .meta()
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == CLEANUP_FINALIZER)
}

/// The status an OpenAIAccess had when the pass began, as the pass unpacked it then
/// (`previous_of`, by key), so the writes after the pass do not unpack it again. Every result is
/// for an object the pass took; were one not, its own status is unpacked here rather than taken
/// as none, since a status write compares against it (what changed, and since when).
fn status_before_pass<'a>(
    previous_of: &HashMap<&ObjectKey, Option<&'a OpenAIAccessStatus>>,
    key: &ObjectKey,
    access: &ParsedAccess,
) -> Option<Cow<'a, OpenAIAccessStatus>> {
    match previous_of.get(key) {
        Some(previous) => previous.map(Cow::Borrowed),
        None => access.status().map(Cow::Owned),
    }
}

// Each reconcile gets its own trace id, so one pass's log lines can be found together.
#[tracing::instrument(skip_all, fields(account = %guard.name_any(), trace_id = %uuid::Uuid::new_v4().simple()))]
pub async fn reconcile_account(
    guard: Arc<DeserializeGuard<OpenAIAccount>>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    // Records on drop, so a reconcile cancelled by shutdown is counted too.
    let mut timer = ReconcileTimer {
        metrics: ctx.metrics.clone(),
        started: std::time::Instant::now(),
        result: "cancelled",
    };
    let mut result = "ok";
    let action = reconcile_account_pass(guard, ctx, &mut result).await;
    timer.result = if action.is_err() { "error" } else { result };
    action
}

async fn reconcile_account_pass(
    guard: Arc<DeserializeGuard<OpenAIAccount>>,
    ctx: Arc<Context>,
    timer: &mut &'static str,
) -> Result<Action, ReconcileError> {
    tracing::debug!("pass starts");
    let api: Api<OpenAIAccount> = Api::all(ctx.client.clone());
    let account = match &guard.0 {
        Ok(account) => account,
        Err(invalid) => {
            // Reported by status only; the spec cannot be read, so nothing else can be done.
            let name = invalid.metadata.name.clone().unwrap_or_default();
            let status = stalled_account_status(
                invalid.metadata.generation,
                None,
                reasons::INVALID_SPEC,
                format!(
                    "the object does not match the OpenAIAccount schema: {} — fix the spec",
                    invalid.error
                ),
            );
            apply_account_status(&api, &name, None, &status).await?;
            *timer = "invalid";
            return Ok(Action::await_change());
        }
    };
    let name = account.name_any();
    let being_deleted = account.metadata.deletion_timestamp.is_some();
    if being_deleted && !has_finalizer(account) {
        return Ok(Action::await_change());
    }
    // No pass before every store has its first complete list: a partial list would look like
    // deleted objects.
    if !ctx.view.wait_listed(ctx.config.view_poll_interval).await {
        tracing::debug!("waiting for the first lists of every store");
        *timer = "waiting";
        return Ok(Action::requeue(Duration::ZERO));
    }
    fence(&ctx)?;
    if !being_deleted && !has_finalizer(account) {
        // The pass goes on in the same reconcile: the finalizer is in place before any grant
        // (the patch's own watch event is no reason for another pass, see `PassInputs`).
        set_finalizer(&api, account, true).await?;
    }

    let Ok(scope) = AccountScope::parse(&account.spec.resource_id) else {
        let status = stalled_account_status(
            account.metadata.generation,
            account.status.as_ref(),
            reasons::INVALID_SPEC,
            format!(
                "spec.resourceId {:?} is not a Cognitive Services account id",
                account.spec.resource_id
            ),
        );
        apply_account_status(&api, &name, account.status.as_ref(), &status).await?;
        return Ok(Action::await_change());
    };

    // Two registrations of one account: the newer does nothing, so they cannot fight.
    if let Some(older) = older_registration(&ctx, account, &scope) {
        let mut status = stalled_account_status(
            account.metadata.generation,
            account.status.as_ref(),
            reasons::CONFLICT,
            format!("OpenAIAccount {older} already registers {scope}; delete one of them"),
        );
        status.conditions.push(condition(
            condition_types::CONFLICT,
            (
                true,
                reasons::CONFLICT,
                format!("OpenAIAccount {older} already registers {scope}"),
            ),
            account.metadata.generation,
            account
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default(),
            whole_second_now(),
        ));
        if apply_account_status(&api, &name, account.status.as_ref(), &status).await? {
            publish(
                &ctx.recorder,
                &account.object_ref(&()),
                true,
                reasons::CONFLICT,
                "Reconcile",
                format!("OpenAIAccount {older} already registers {scope}: this one does nothing"),
            )
            .await;
        }
        if being_deleted {
            // A duplicate never managed grants: it may go at once.
            set_finalizer(&api, account, false).await?;
        }
        return Ok(Action::requeue(ctx.config.resync_interval));
    }

    // Every live OpenAIAccess on this account that could get a grant carries the finalizer
    // before it gets one, so its deletion cannot skip the cleanup. One object's failed finalizer
    // write stays its own: that object gets no create this pass (its recorded grants are kept,
    // as for a malformed object) and the others go on.
    // Its own objects from the index, not a scan of every object in the cluster; each one read
    // from the store (an object the index names but the store no longer holds is gone).
    let mut access_objects: Vec<Arc<LenientAccess>> = Vec::new();
    let mut malformed: Vec<engine::MalformedObject> = Vec::new();
    for key in ctx.access_index.objects_of(&name) {
        let Some(lenient) = ctx
            .accesses
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
        else {
            continue;
        };
        match &lenient.parsed {
            Ok(access) if access.spec.account_ref.name == name => access_objects.push(lenient),
            Ok(_) => {}
            Err(_) => {
                if lenient.may_name(&name)
                    && let Some(object) = lenient.malformed()
                {
                    malformed.push(object);
                }
            }
        }
    }
    let access_objects: Vec<(&LenientAccess, &ParsedAccess)> = access_objects
        .iter()
        .filter_map(|a| Some((a.as_ref(), a.parsed.as_ref().ok()?)))
        .collect();
    // The labels of the namespaces its objects live in: the only ones its policy is asked about.
    // Each namespace once (an account's 500 objects live in a few), then its labels.
    let namespace_labels: crate::plan::policy::NamespaceLabels = access_objects
        .iter()
        .filter_map(|(object, _)| object.metadata.namespace.as_deref())
        .chain(malformed.iter().map(|m| m.key.namespace.as_str()))
        .collect::<std::collections::BTreeSet<&str>>()
        .into_iter()
        .filter_map(|namespace| {
            ctx.namespaces
                .labels(namespace)
                .map(|labels| (namespace.to_string(), labels))
        })
        .collect();
    let mut accesses = Vec::with_capacity(access_objects.len());
    for (object, access) in access_objects.iter().copied() {
        let deleting = object.metadata.deletion_timestamp.is_some();
        if deleting && !has_finalizer(object) {
            continue;
        }
        let key = object.key();
        let previous = access.status().map(Arc::new);
        let grant_possible = crate::plan::policy::namespace_allowed(
            &account.spec,
            &key.namespace,
            &namespace_labels,
        ) && account.spec.allowed_roles.contains(&access.spec.role);
        if !deleting && !has_finalizer(object) && grant_possible {
            fence(&ctx)?;
            let namespaced: Api<LenientAccess> =
                Api::namespaced(ctx.client.clone(), &key.namespace);
            if let Err(error) = set_finalizer(&namespaced, object, true).await {
                tracing::warn!(object = %key, %error, "could not add the finalizer: no grant for it this pass");
                ctx.metrics.object_write_failed("finalizer");
                malformed.push(engine::MalformedObject {
                    key: key.clone(),
                    account_ref: Some(name.clone()),
                    recorded_object_ids: previous
                        .iter()
                        .flat_map(|s| &s.principals)
                        .filter_map(|p| p.object_id.clone())
                        .collect(),
                    error: format!("its finalizer could not be added: {error}"),
                });
                continue;
            }
        }
        accesses.push(AccessSource {
            key,
            generation: object.metadata.generation,
            spec: access.spec.clone(),
            being_deleted: deleting,
            previous,
        });
    }

    let source = ScopeSource {
        account_name: name.clone(),
        account_generation: account.metadata.generation,
        account: account.spec.clone(),
        account_being_deleted: being_deleted,
        service_accounts: service_accounts(&ctx, &accesses),
        namespaces: namespace_labels,
        accesses,
        view: ctx.view.completeness(),
        malformed,
        paused: account
            .annotations()
            .get(engine::brake::PAUSED_ANNOTATION)
            .is_some_and(|v| v == "true"),
        confirmed_revocations: account
            .annotations()
            .get(engine::brake::CONFIRM_ANNOTATION)
            .and_then(|v| v.trim().parse().ok()),
        exclusive_reported: account
            .status
            .as_ref()
            .map(|s| s.exclusive_revocations.clone())
            .unwrap_or_default(),
    };
    let azure = Azure {
        assignments: ctx.azure.role_assignments.as_ref(),
        accounts: ctx.azure.accounts.as_ref(),
        identities: ctx.azure.identities.as_ref(),
        directory: ctx.azure.directory.as_ref(),
    };
    let now = whole_second_now();
    let outcome = engine::run_pass(azure, &source, &ctx.config.engine, now).await;
    if let Some(why) = outcome.fenced {
        // Another replica may lead by now: write nothing about this pass.
        return Err(ReconcileError::Fenced(why));
    }
    *timer = match outcome.retry {
        None | Some(RetryDecision::WaitForChange) => "ok",
        Some(RetryDecision::After(_)) => "throttled",
        Some(RetryDecision::Backoff) => "retry",
    };
    record_pass_metrics(&ctx, &name, &scope, &outcome);

    // Status and finalizers of every OpenAIAccess; results paired with objects by key.
    // The status each object had is the pass's own (unpacked once, when the pass began).
    let previous_of: HashMap<&ObjectKey, Option<&OpenAIAccessStatus>> = source
        .accesses
        .iter()
        .map(|a| (&a.key, a.previous.as_deref()))
        .collect();
    let by_key: HashMap<ObjectKey, (&LenientAccess, &ParsedAccess)> = access_objects
        .iter()
        .map(|(object, access)| (object.key(), (*object, *access)))
        .collect();
    let mut waiting_finalizers = Vec::new();
    let mut exporting = std::collections::HashSet::new();
    for result in &outcome.accesses {
        let Some((object, access)) = by_key.get(&result.key).copied() else {
            continue;
        };
        let namespaced: Api<OpenAIAccess> =
            Api::namespaced(ctx.client.clone(), &result.key.namespace);
        if object.metadata.deletion_timestamp.is_none() {
            fence(&ctx)?;
            let previous = status_before_pass(&previous_of, &result.key, access);
            if let Err(error) = apply_access_status(
                &namespaced,
                &result.key.name,
                previous.as_deref(),
                &result.status,
            )
            .await
            {
                // This object's failure stays its own: the others still get their status.
                tracing::warn!(object = %result.key, %error, "could not write the status");
                ctx.metrics.object_write_failed("status");
                continue;
            }
            if ctx.config.enable_configmap_export
                && let Some(export_to) = &access.spec.export_to
            {
                let endpoint = outcome.account.as_ref().and_then(|a| a.endpoint.as_deref());
                let data = super::export::export_data(
                    &result.key.namespace,
                    &access.spec,
                    endpoint,
                    &ctx.service_accounts,
                    ctx.azure.identities.as_ref(),
                    ctx.config.engine.resolution_cache.as_deref(),
                )
                .await;
                let export = super::export::ExportKey::of(object, &export_to.config_map_name);
                exporting.insert(export.clone());
                if ctx.exports.is_applied(&name, &export, &data) {
                    continue;
                }
                match super::export::apply_config_map(
                    &ctx.client,
                    object,
                    &export_to.config_map_name,
                    data.clone(),
                )
                .await
                {
                    Ok(()) => ctx.exports.applied(&name, export, data),
                    Err(error) => {
                        publish(
                            &ctx.recorder,
                            &object.object_ref(&()),
                            true,
                            "ExportFailed",
                            "Export",
                            format!(
                                "could not apply ConfigMap {}: {error}",
                                export_to.config_map_name
                            ),
                        )
                        .await;
                    }
                }
            }
        } else if result.cleanup_complete {
            fence(&ctx)?;
            let namespaced: Api<LenientAccess> =
                Api::namespaced(ctx.client.clone(), &result.key.namespace);
            if let Err(error) = set_finalizer(&namespaced, object, false).await {
                tracing::warn!(object = %result.key, %error, "could not remove the finalizer");
                ctx.metrics.object_write_failed("finalizer");
            }
        } else {
            waiting_finalizers.push((access, object.metadata.generation, result));
        }
    }
    ctx.exports.retain(&name, &exporting);
    for event in &outcome.events {
        let reference = match &event.object {
            Some(key) => by_key
                .get(key)
                .map(|(object, _)| object.object_ref(&()))
                .unwrap_or_else(|| account.object_ref(&())),
            None => account.object_ref(&()),
        };
        publish(
            &ctx.recorder,
            &reference,
            event.warning,
            event.reason,
            event.action,
            event.note.clone(),
        )
        .await;
    }

    // An object being deleted says what its finalizer waits for (written only when that changes).
    for (access, generation, result) in &waiting_finalizers {
        let blocked = outcome.plan.as_ref().and_then(|plan| {
            plan.accesses
                .iter()
                .find(|a| a.key == result.key)
                .and_then(|a| match &a.cleanup {
                    crate::plan::Cleanup::Blocked(why) => Some(why.clone()),
                    _ => None,
                })
        });
        let waits_for = match (&outcome.held, blocked, &outcome.read_error) {
            (Some((hold, _)), _, _) => hold.message(&name),
            (None, Some(why), _) => why,
            (None, None, Some(error)) => format!("the account could not be read: {error}"),
            (None, None, None) => "its revocations, retried at the next pass".to_string(),
        };
        let mut status = result.status.clone();
        let message = format!(
            "being deleted: the finalizer {CLEANUP_FINALIZER} stays until keyless has revoked its grants; waiting for {waits_for}"
        );
        let previous_status = status_before_pass(&previous_of, &result.key, access);
        let previous = previous_status
            .as_deref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        status
            .conditions
            .retain(|c| c.type_ != condition_types::READY);
        status.conditions.insert(
            0,
            condition(
                condition_types::READY,
                (false, "Terminating", message),
                *generation,
                previous,
                now,
            ),
        );
        let namespaced: Api<OpenAIAccess> =
            Api::namespaced(ctx.client.clone(), &result.key.namespace);
        fence(&ctx)?;
        if let Err(error) = apply_access_status(
            &namespaced,
            &result.key.name,
            previous_status.as_deref(),
            &status,
        )
        .await
        {
            tracing::warn!(object = %result.key, %error, "could not write the status");
            ctx.metrics.object_write_failed("status");
        }
    }
    let access = access_report(&ctx, &name, &scope, account, &outcome).await;
    let status = account_status(account, &scope, &outcome, access, now);
    ctx.metrics
        .set_revocations_held(&name, outcome.held.as_ref().map(|(h, _)| h.reason()));
    if let Some((hold, count)) = &outcome.held {
        let before = account
            .status
            .as_ref()
            .and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == condition_types::READY)
            })
            .map(|c| c.reason.clone());
        if before.as_deref() != Some(hold.reason()) {
            publish(
                &ctx.recorder,
                &account.object_ref(&()),
                true,
                hold.reason(),
                "Revoke",
                format!("{count} revocations held: {}", hold.message(&name)),
            )
            .await;
        }
    }
    fence(&ctx)?;
    let keys_enabled_news = status_turned(
        account.status.as_ref(),
        &status,
        condition_types::KEYLESS_ONLY,
        "False",
    );
    let planned_news = !status.planned_writes.is_empty()
        && account
            .status
            .as_ref()
            .is_none_or(|s| s.planned_writes != status.planned_writes);
    apply_account_status(&api, &name, account.status.as_ref(), &status).await?;
    if planned_news {
        publish(
            &ctx.recorder,
            &account.object_ref(&()),
            false,
            "WritesPlanned",
            "Observe",
            planned_summary(&outcome.planned_writes),
        )
        .await;
    }
    if keys_enabled_news {
        publish(&ctx.recorder, &account.object_ref(&()), true, "LocalAuthEnabled", "Reconcile", format!("the Azure account {scope} still accepts API keys: set disableLocalAuth to true so only Entra ID tokens work")).await;
    }
    if being_deleted && outcome.account_cleanup_complete {
        fence(&ctx)?;
        set_finalizer(&api, account, false).await?;
        ctx.metrics.forget_account(&name);
        return Ok(Action::await_change());
    }

    // Deleted while this pass ran (its deletion event already forgot it): forget what this pass
    // recorded too, or its series would outlive it.
    if ctx
        .accounts
        .get(&ObjectRef::<DeserializeGuard<OpenAIAccount>>::new(&name))
        .is_none()
    {
        ctx.metrics.forget_account(&name);
    }
    Ok(next_action(&ctx, &name, &outcome, now))
}

/// Records a reconcile's duration and result when it ends, however it ends.
struct ReconcileTimer {
    metrics: crate::ops::metrics::Metrics,
    started: std::time::Instant,
    result: &'static str,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.metrics
            .reconcile_finished(self.result, self.started.elapsed());
    }
}

fn record_pass_metrics(ctx: &Context, account: &str, scope: &AccountScope, outcome: &PassOutcome) {
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    for principal in outcome.accesses.iter().flat_map(|a| &a.status.principals) {
        if let Some(state) = principal.state {
            *counts.entry(state.as_str()).or_default() += 1;
        }
    }
    ctx.metrics.set_grants(account, &counts);
    let mut planned: BTreeMap<&'static str, u64> = BTreeMap::new();
    for write in &outcome.planned_writes {
        *planned.entry(write.action.as_str()).or_default() += 1;
    }
    ctx.metrics.set_planned_writes(account, &planned);
    let remaining = ctx.azure.arm.rate_limit_remaining(scope.subscription_id());
    for (kind, value) in [
        ("reads", remaining.reads),
        ("writes", remaining.writes),
        ("deletes", remaining.deletes),
    ] {
        if let Some(value) = value {
            ctx.metrics
                .ratelimit_remaining(kind, scope.subscription_id(), value);
        }
    }
}

fn next_action(ctx: &Context, name: &str, outcome: &PassOutcome, now: Timestamp) -> Action {
    match outcome.retry {
        Some(RetryDecision::After(wait)) => Action::requeue(wait.max(Duration::from_millis(100))),
        Some(RetryDecision::Backoff) => Action::requeue(ctx.backoff.next(
            name,
            ctx.config.retry_initial,
            ctx.config.retry_max,
        )),
        Some(RetryDecision::WaitForChange) | None => {
            ctx.backoff.reset(name);
            Action::requeue(next_look(
                Cadence {
                    resync: ctx.config.resync_interval,
                    propagation_check: ctx.config.propagation_check_interval,
                },
                outcome.requeue_at,
                outcome.ready_at,
                now,
            ))
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Cadence {
    resync: Duration,
    propagation_check: Duration,
}

// How long until an account that needs no retry is passed again: its resync, or sooner when
// something falls due. An expiry, a revocation or a lifted hold is due on time; a grant turning
// Ready only changes a status, so it waits at least --propagation-check-interval: grants made one
// after another during a long convergence then turn Ready a batch per pass, not a pass (and a
// LIST) each.
fn next_look(
    cadence: Cadence,
    due: Option<Timestamp>,
    ready: Option<Timestamp>,
    now: Timestamp,
) -> Duration {
    // A pass at the very moment would still see the deadline ahead (clocks, rounding).
    const PAST_THE_DEADLINE: Duration = Duration::from_millis(500);
    let until = |at: Timestamp| {
        Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO) + PAST_THE_DEADLINE
    };
    let due = due.map(until);
    let ready = ready.map(|at| until(at).max(cadence.propagation_check));
    [due, ready]
        .into_iter()
        .flatten()
        .fold(cadence.resync, Duration::min)
}

pub fn account_error_policy(
    guard: Arc<DeserializeGuard<OpenAIAccount>>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    tracing::warn!(account = %guard.name_any(), category = error.category(), error = %error, "reconcile failed");
    Action::requeue(ctx.backoff.next(
        &guard.name_any(),
        ctx.config.retry_initial,
        ctx.config.retry_max,
    ))
}

fn older_registration(
    ctx: &Context,
    account: &OpenAIAccount,
    scope: &AccountScope,
) -> Option<String> {
    let ours = (
        account.metadata.creation_timestamp.clone().map(|t| t.0),
        account.name_any(),
    );
    ctx.accounts
        .state()
        .iter()
        .filter_map(|a| a.0.as_ref().ok())
        .filter(|other| other.name_any() != account.name_any())
        .filter(|other| AccountScope::parse(&other.spec.resource_id).is_ok_and(|s| &s == scope))
        .filter(|other| {
            (
                other.metadata.creation_timestamp.clone().map(|t| t.0),
                other.name_any(),
            ) < ours
        })
        .map(|other| other.name_any())
        .next()
}

fn service_accounts(
    ctx: &Context,
    accesses: &[AccessSource],
) -> BTreeMap<ObjectKey, ServiceAccountInfo> {
    let mut wanted = BTreeMap::new();
    for access in accesses {
        for name in access
            .spec
            .principals
            .iter()
            .filter_map(|p| p.service_account.as_deref())
        {
            let key = ObjectKey {
                namespace: access.key.namespace.clone(),
                name: name.to_string(),
            };
            if let Some(client_id) = ctx.service_accounts.get(&access.key.namespace, name) {
                wanted.insert(key, ServiceAccountInfo { client_id });
            }
        }
    }
    wanted
}

fn status_turned(
    before: Option<&OpenAIAccountStatus>,
    after: &OpenAIAccountStatus,
    type_: &str,
    to: &str,
) -> bool {
    let find = |s: &OpenAIAccountStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.status.clone())
    };
    find(after).as_deref() == Some(to) && before.and_then(find).as_deref() != Some(to)
}

fn stalled_account_status(
    generation: Option<i64>,
    previous: Option<&OpenAIAccountStatus>,
    reason: &'static str,
    message: String,
) -> OpenAIAccountStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    status.conditions = stalled_conditions(
        generation,
        previous.map(|p| p.conditions.as_slice()),
        reason,
        message,
    );
    status
}

/// Ready=False, Reconciling=False, Stalled=True: a person must change something first.
fn stalled_conditions(
    generation: Option<i64>,
    previous: Option<&[crate::api::common::Condition]>,
    reason: &'static str,
    message: String,
) -> Vec<crate::api::common::Condition> {
    let now = whole_second_now();
    let previous = previous.unwrap_or_default();
    vec![
        condition(
            condition_types::READY,
            (false, reason, message.clone()),
            generation,
            previous,
            now,
        ),
        condition(
            condition_types::RECONCILING,
            (false, reason, "waiting for a change".into()),
            generation,
            previous,
            now,
        ),
        condition(
            condition_types::STALLED,
            (true, reason, message),
            generation,
            previous,
            now,
        ),
    ]
}

// Who can call the account, classified from the pass's own LIST (no extra LIST; role definitions
// are read through their cache). When the LIST failed the last report stands; when the account
// is gone there is nothing to report.
async fn access_report(
    ctx: &Context,
    name: &str,
    scope: &AccountScope,
    account: &OpenAIAccount,
    outcome: &PassOutcome,
) -> Option<crate::api::AccountAccess> {
    use crate::report::gather;
    let Some(listing) = &outcome.listing else {
        return if outcome.read_error.is_some() {
            account.status.as_ref().and_then(|s| s.access.clone())
        } else {
            ctx.metrics.set_access_origins(name, &BTreeMap::new());
            None
        };
    };
    let roles = gather::read_roles(ctx.azure.role_definitions.as_ref(), scope, listing).await;
    let declarations = gather::declarations(
        outcome
            .accesses
            .iter()
            .map(|a| (a.key.to_string(), &a.status)),
    );
    let grants = gather::classify_listing(
        scope,
        &ctx.config.engine.instance,
        listing,
        &roles,
        &declarations,
    );
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    for grant in &grants {
        *counts.entry(grant.origin.as_str()).or_default() += 1;
    }
    ctx.metrics.set_access_origins(name, &counts);
    Some(gather::account_access(&grants))
}

// The list enforcement Exclusive keeps in status: the pass's, or the previous one when the pass
// planned nothing (its clocks must survive a pass that could not read the account).
fn exclusive_revocations(
    account: &OpenAIAccount,
    outcome: &PassOutcome,
) -> Vec<crate::api::ExclusiveRevocation> {
    match &outcome.plan {
        Some(plan) => plan.exclusive.listed.clone(),
        None => account
            .status
            .as_ref()
            .map(|s| s.exclusive_revocations.clone())
            .unwrap_or_default(),
    }
}

// The two Exclusive conditions, only while the account asks for Exclusive.
fn exclusive_conditions(
    account: &OpenAIAccount,
    outcome: &PassOutcome,
) -> Vec<(&'static str, Verdict)> {
    use crate::plan::exclusive::ExclusiveVerdict;
    if account.spec.enforcement != crate::api::Enforcement::Exclusive {
        return Vec::new();
    }
    let Some(plan) = &outcome.plan else {
        return Vec::new();
    };
    let listed = &plan.exclusive.listed;
    let list = || {
        let mut names: Vec<String> = listed
            .iter()
            .take(10)
            .map(|r| {
                format!(
                    "{} (principal {}, created by {})",
                    r.assignment_name,
                    r.principal_id,
                    r.created_by.as_deref().unwrap_or("unknown")
                )
            })
            .collect();
        if listed.len() > 10 {
            names.push(format!("and {} more", listed.len() - 10));
        }
        names.join(", ")
    };
    let observing = outcome.management == crate::api::Management::Observe;
    let enforced: Verdict = match &plan.exclusive.verdict {
        ExclusiveVerdict::Off => return Vec::new(),
        ExclusiveVerdict::Refused(why) => (false, "OtherInstance", why.clone()),
        ExclusiveVerdict::Held(why) => (
            false,
            "Held",
            format!("enforcement Exclusive revokes nothing this pass: {why}"),
        ),
        _ if observing => (
            false,
            reasons::OBSERVE,
            "management Observe: enforcement Exclusive only plans its revocations (status.plannedWrites)"
                .to_string(),
        ),
        _ => (
            true,
            "Enforced",
            "only role assignments an OpenAIAccess declares (and exempt ones) stay on this account"
                .to_string(),
        ),
    };
    let pending: Verdict = match &plan.exclusive.verdict {
        ExclusiveVerdict::Pending { next } => (
            true,
            "GraceRunning",
            format!(
                "{} role assignments made outside keyless will be revoked, the first at {next}: {}",
                listed.len(),
                list()
            ),
        ),
        ExclusiveVerdict::Revoking { count } => (
            true,
            "Revoking",
            format!(
                "{count} role assignments made outside keyless revoked or due this pass; listed: {}",
                list()
            ),
        ),
        ExclusiveVerdict::Held(_) if !listed.is_empty() => (
            true,
            "Held",
            format!(
                "{} role assignments listed for revocation, held this pass: {}",
                listed.len(),
                list()
            ),
        ),
        _ => (
            false,
            "NothingPending",
            "no role assignment made outside keyless is waiting for revocation".to_string(),
        ),
    };
    vec![
        (condition_types::EXCLUSIVE_ENFORCED, enforced),
        (condition_types::EXCLUSIVE_REVOCATIONS_PENDING, pending),
    ]
}

fn account_status(
    account: &OpenAIAccount,
    scope: &AccountScope,
    outcome: &PassOutcome,
    access: Option<crate::api::AccountAccess>,
    now: Timestamp,
) -> OpenAIAccountStatus {
    let generation = account.metadata.generation;
    let previous = account
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let info = outcome.account.as_ref();
    let granted: usize = outcome
        .accesses
        .iter()
        .flat_map(|a| &a.status.principals)
        .filter(|p| p.state == Some(crate::api::GrantState::Granted))
        .count();
    let total: usize = outcome
        .accesses
        .iter()
        .map(|a| a.status.principals.len())
        .sum();
    let (ready, reconciling, stalled): (Verdict, Verdict, Verdict) =
        if let Some(error) = &outcome.read_error {
            let message = format!("could not read the account or its role assignments: {error}");
            let stalled = error.retry() == RetryDecision::WaitForChange;
            (
                (false, reasons::ARM_ERROR, message.clone()),
                (!stalled, reasons::ARM_ERROR, message.clone()),
                (stalled, reasons::ARM_ERROR, message),
            )
        } else if info.is_none() {
            let message = format!("the Azure account {scope} does not exist (ARM answered 404)");
            (
                (false, reasons::AZURE_ACCOUNT_NOT_FOUND, message.clone()),
                (false, reasons::AZURE_ACCOUNT_NOT_FOUND, message.clone()),
                (true, reasons::AZURE_ACCOUNT_NOT_FOUND, message),
            )
        } else {
            let failed = outcome
                .results
                .iter()
                .filter(|r| matches!(r, engine::WriteResult::Failed(_)))
                .count();
            let summary = format!("{granted}/{total} grants in place");
            if let Some((hold, count)) = &outcome.held {
                // Held revocations keep the account not Ready: a person may have to act
                // (Stalled for a mass revocation or a pause), or it lifts by itself (Reconciling).
                let message = format!(
                    "{count} revocations held: {}; {summary}",
                    hold.message(&account.name_any())
                );
                let needs_a_person = matches!(
                    hold,
                    engine::brake::Hold::MassRevocation { .. } | engine::brake::Hold::Paused
                );
                (
                    (false, hold.reason(), message.clone()),
                    (!needs_a_person, hold.reason(), message.clone()),
                    (needs_a_person, hold.reason(), message),
                )
            } else if failed > 0 {
                let message = format!("{failed} role assignment writes failed; {summary}");
                (
                    (false, reasons::ARM_ERROR, message.clone()),
                    (true, reasons::ARM_ERROR, message.clone()),
                    (false, reasons::ARM_ERROR, message),
                )
            } else {
                (
                    (true, reasons::RECONCILED, summary.clone()),
                    (false, reasons::RECONCILED, summary.clone()),
                    (false, reasons::RECONCILED, summary),
                )
            }
        };
    // Under Observe, writes keyless would send keep the account from Ready: not converged, on
    // purpose; nothing is in progress and nothing is broken.
    let (ready, reconciling, stalled) = if ready.0 && !outcome.planned_writes.is_empty() {
        let message = format!(
            "management Observe: {} role assignment writes planned and not sent (status.plannedWrites); {granted}/{total} grants in place",
            outcome.planned_writes.len()
        );
        (
            (false, reasons::OBSERVE, message.clone()),
            (false, reasons::OBSERVE, message.clone()),
            (false, reasons::OBSERVE, message),
        )
    } else {
        (ready, reconciling, stalled)
    };
    let mut conditions = vec![
        condition(condition_types::READY, ready, generation, previous, now),
        condition(
            condition_types::RECONCILING,
            reconciling,
            generation,
            previous,
            now,
        ),
        condition(condition_types::STALLED, stalled, generation, previous, now),
    ];
    if let Some(info) = info {
        let keyless = if info.local_auth_disabled {
            (
                true,
                "LocalAuthDisabled",
                "API keys are disabled: only Entra ID tokens work".to_string(),
            )
        } else {
            (
                false,
                "LocalAuthEnabled",
                "the account still accepts API keys: set disableLocalAuth to true".to_string(),
            )
        };
        conditions.push(condition(
            condition_types::KEYLESS_ONLY,
            keyless,
            generation,
            previous,
            now,
        ));
        let token = match info.custom_sub_domain_name.as_deref() {
            Some(sub) if !sub.is_empty() => (true, "CustomSubDomain", format!("custom subdomain {sub} accepts Entra ID tokens")),
            _ => (false, "NoCustomSubDomain", "the account has no custom subdomain, so Entra ID tokens cannot work: set customSubDomainName on it".to_string()),
        };
        conditions.push(condition(
            condition_types::TOKEN_AUTH_SUPPORTED,
            token,
            generation,
            previous,
            now,
        ));
    }
    // Only while it lasts: two installations with one id delete nothing on this account.
    if let Some(collision) = outcome
        .plan
        .as_ref()
        .and_then(|p| p.instance_collision.clone())
    {
        conditions.push(condition(
            condition_types::INSTANCE_ID_COLLISION,
            (true, "InstanceIdShared", collision),
            generation,
            previous,
            now,
        ));
    }
    conditions.push(condition(
        condition_types::MANAGED,
        managed_verdict(account, outcome),
        generation,
        previous,
        now,
    ));
    for (kind, verdict) in exclusive_conditions(account, outcome) {
        conditions.push(condition(kind, verdict, generation, previous, now));
    }
    let shown = outcome.planned_writes.len().min(MAX_PLANNED_WRITES_SHOWN);
    OpenAIAccountStatus {
        observed_generation: generation,
        conditions,
        planned_writes: outcome.planned_writes[..shown].to_vec(),
        planned_writes_omitted: u32::try_from(outcome.planned_writes.len() - shown)
            .unwrap_or(u32::MAX),
        exclusive_revocations: exclusive_revocations(account, outcome),
        scope: Some(scope.to_string()),
        account_name: Some(scope.account_name().to_string()),
        endpoint: info.and_then(|i| i.endpoint.clone()),
        kind: info.map(|i| i.kind.clone()),
        local_auth_disabled: info.map(|i| i.local_auth_disabled),
        custom_sub_domain_name: info.and_then(|i| i.custom_sub_domain_name.clone()),
        summary: Some(format!("{granted}/{total} granted")),
        access,
    }
}

// An event's note for the writes Observe holds back: counts by action.
fn planned_summary(writes: &[crate::api::PlannedWrite]) -> String {
    let count = |action| writes.iter().filter(|w| w.action == action).count();
    format!(
        "management Observe: keyless would send {} role assignment writes ({} creates, {} deletes, {} releases) and sends none",
        writes.len(),
        count(crate::api::PlannedAction::Create),
        count(crate::api::PlannedAction::Delete),
        count(crate::api::PlannedAction::Release),
    )
}

/// The most planned writes an OpenAIAccount's status lists (the CRD's maxItems).
const MAX_PLANNED_WRITES_SHOWN: usize = 100;

// The `Managed` condition: whether keyless writes on this account, and who decided it does not.
fn managed_verdict(account: &OpenAIAccount, outcome: &PassOutcome) -> Verdict {
    match outcome.management {
        crate::api::Management::Manage => (
            true,
            reasons::MANAGE,
            "management Manage: keyless creates, adopts and revokes role assignments".into(),
        ),
        crate::api::Management::Observe => {
            let why = if account.spec.management == crate::api::Management::Observe {
                "spec.management is Observe"
            } else {
                "keyless runs with --observe"
            };
            (
                false,
                reasons::OBSERVE,
                format!(
                    "management Observe ({why}): keyless plans and reports, and sends no role assignment write; status.plannedWrites lists what Manage would send now"
                ),
            )
        }
    }
}

/// Whether the account an OpenAIAccess names is registered and its controller passes it (it exists
/// and parses, and is not being deleted without keyless's finalizer): then the account pass writes
/// the object's status and finalizer, and the light reconcile below has nothing to do.
pub fn account_manages(accounts: &Store<DeserializeGuard<OpenAIAccount>>, name: &str) -> bool {
    accounts
        .get(&kube::runtime::reflector::ObjectRef::new(name))
        .is_some_and(|a| {
            a.0.as_ref()
                .is_ok_and(|a| a.metadata.deletion_timestamp.is_none() || has_finalizer(a))
        })
}

/// Whether an OpenAIAccess needs the light reconcile: it does not parse, or no account passes it.
pub fn needs_light_reconcile(
    access: &LenientAccess,
    accounts: &Store<DeserializeGuard<OpenAIAccount>>,
) -> bool {
    match &access.parsed {
        Ok(parsed) => !account_manages(accounts, &parsed.spec.account_ref.name),
        Err(_) => true,
    }
}

/// The light reconcile of an OpenAIAccess: reports what the account controller cannot.
#[tracing::instrument(skip_all, fields(access = %guard.name_any(), trace_id = %uuid::Uuid::new_v4().simple()))]
pub async fn reconcile_access(
    guard: Arc<LenientAccess>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let namespace = guard.namespace().unwrap_or_default();
    let api: Api<OpenAIAccess> = Api::namespaced(ctx.client.clone(), &namespace);
    let access = match &guard.parsed {
        Ok(access) => access,
        Err(unparsed) => {
            report_malformed(&ctx, &guard, unparsed).await?;
            return Ok(Action::await_change());
        }
    };
    super::wait_until_ready(&ctx.accounts).await;
    if account_manages(&ctx.accounts, &access.spec.account_ref.name) {
        return Ok(Action::await_change());
    }
    if guard.metadata.deletion_timestamp.is_some() {
        // No account, so keyless manages no grant for it (the account's own finalizer revoked or
        // retained them when it was unregistered).
        fence(&ctx)?;
        let lenient_api: Api<LenientAccess> = Api::namespaced(ctx.client.clone(), &namespace);
        set_finalizer(&lenient_api, guard.as_ref(), false).await?;
        return Ok(Action::await_change());
    }
    let message = format!(
        "OpenAIAccount {} does not exist: ask the platform team to register it, or fix spec.accountRef.name",
        access.spec.account_ref.name
    );
    let previous = access.status();
    let status = stalled_access_status(
        guard.metadata.generation,
        previous.as_ref(),
        reasons::ACCOUNT_NOT_FOUND,
        message.clone(),
    );
    fence(&ctx)?;
    if apply_access_status(&api, &guard.name_any(), previous.as_ref(), &status).await? {
        publish(
            &ctx.recorder,
            &guard.object_ref(&()),
            true,
            reasons::ACCOUNT_NOT_FOUND,
            "Reconcile",
            message,
        )
        .await;
    }
    Ok(Action::await_change())
}

/// A malformed OpenAIAccess gets Stalled conditions naming the field at fault, written once (only
/// when they differ from those it carries) and without touching the rest of its status. Its
/// finalizer stays: the account pass keeps the grants it records until it is fixed or deleted.
async fn report_malformed(
    ctx: &Context,
    object: &LenientAccess,
    unparsed: &Unparsed,
) -> Result<(), ReconcileError> {
    let field = unparsed.field.as_str();
    let message = format!(
        "the {field} does not match the OpenAIAccess schema: {} — fix the {field}; its grants are kept meanwhile",
        unparsed.error
    );
    let reason = match unparsed.field {
        Field::Spec => reasons::INVALID_SPEC,
        Field::Status => "InvalidStatus",
    };
    let previous: Vec<crate::api::common::Condition> = unparsed
        .raw_status
        .as_ref()
        .and_then(|s| s.get("conditions"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    let generation = object.metadata.generation;
    let conditions = stalled_conditions(generation, Some(&previous), reason, message.clone());
    if conditions == previous {
        return Ok(());
    }
    let name = object.metadata.name.clone().unwrap_or_default();
    let api: Api<LenientAccess> = Api::namespaced(ctx.client.clone(), &object.key().namespace);
    fence(ctx)?;
    super::kube_io::patch_conditions_only(&api, &name, generation, &conditions).await?;
    publish(
        &ctx.recorder,
        &object.object_ref(&()),
        true,
        reason,
        "Validate",
        message,
    )
    .await;
    Ok(())
}

pub fn access_error_policy(
    guard: Arc<LenientAccess>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    tracing::warn!(access = %guard.name_any(), category = error.category(), error = %error, "reconcile failed");
    Action::requeue(ctx.config.retry_initial)
}

fn stalled_access_status(
    generation: Option<i64>,
    previous: Option<&OpenAIAccessStatus>,
    reason: &'static str,
    message: String,
) -> OpenAIAccessStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    status.conditions = stalled_conditions(
        generation,
        previous.map(|p| p.conditions.as_slice()),
        reason,
        message,
    );
    for principal in status.principals.iter_mut() {
        principal.state = Some(crate::api::GrantState::Failed);
        principal.reason = Some(reason.to_string());
        principal.granted_at = None;
    }
    status.summary = Some(crate::plan::planner::summary(&status.principals));
    status
}

#[cfg(test)]
mod tests {
    use super::{Cadence, next_look};
    use jiff::{SignedDuration, Timestamp};
    use std::time::Duration;

    #[test]
    fn an_account_is_looked_at_again_at_its_resync_or_sooner_when_something_falls_due() {
        let now: Timestamp = "2026-12-07T06:00:00Z".parse().unwrap();
        let at = |secs: i64| Some(now + SignedDuration::from_secs(secs));
        let cadence = Cadence {
            resync: Duration::from_secs(600),
            propagation_check: Duration::from_secs(30),
        };
        let secs = |s: f64| Duration::from_secs_f64(s);
        // (case, due on time, turns Ready, wait)
        let cases = [
            ("nothing due: the resync", None, None, secs(600.0)),
            ("an expiry in 1 s is on time", at(1), None, secs(1.5)),
            (
                "a grant Ready in 1 s waits for the batch",
                None,
                at(1),
                secs(30.0),
            ),
            (
                "a grant Ready in 100 s: its deadline",
                None,
                at(100),
                secs(100.5),
            ),
            ("an expiry before the batch wins", at(5), at(1), secs(5.5)),
            (
                "a Ready batch before a later expiry",
                at(200),
                at(1),
                secs(30.0),
            ),
            (
                "a deadline past the resync: the resync",
                at(900),
                at(800),
                secs(600.0),
            ),
            (
                "a deadline already passed: at once",
                at(-5),
                None,
                secs(0.5),
            ),
        ];
        for (case, due, ready, want) in cases {
            assert_eq!(next_look(cadence, due, ready, now), want, "{case}");
        }
        let unbatched = Cadence {
            propagation_check: Duration::ZERO,
            ..cadence
        };
        assert_eq!(
            next_look(unbatched, None, at(1), now),
            secs(1.5),
            "a zero check interval keeps the exact deadline"
        );
        let short_resync = Cadence {
            resync: Duration::from_secs(10),
            ..cadence
        };
        assert_eq!(
            next_look(short_resync, None, at(1), now),
            secs(10.0),
            "the resync comes first when shorter than the batch"
        );
    }
}
