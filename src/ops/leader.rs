//! Leader election on a `coordination.k8s.io/v1` Lease: with several replicas, only the one holding
//! the lease reconciles and writes; the others stand by with warm caches.
//!
//! The protocol is client-go's `leaderelection` with a Lease lock:
//! - absent lease: create it naming ourselves (the apiserver rejects a second create with 409);
//! - lease held by us: renew it every `renew_interval`;
//! - lease with no holder (released): take it at once;
//! - lease held by someone else: take it only once its record has not changed for the holder's
//!   `leaseDurationSeconds`, measured on *our* monotonic clock from when *we* first saw that record.
//!   Comparing the record's `renewTime` with our wall clock would trust clock sync between nodes; a
//!   new record (any write changes `resourceVersion`) restarts the wait.
//!
//! Every write is a PUT carrying the `resourceVersion` we last saw, so two replicas racing for the
//! same lease cannot both win: the loser gets 409 Conflict, re-reads, and sees the winner.
//!
//! A leader that cannot renew steps down (its [`LeaderElection::watch`] turns false) once
//! `lease_duration` has passed since its last successful renewal *request was sent*: that is before
//! any other replica, whose wait starts when it sees the renewed record, can take over. On shutdown a
//! leader releases the lease (clears the holder) so a standby takes over at once instead of after a
//! full lease duration.
//!
//! Why not the `kube-lease-manager` crate that issue 9 suggests (0.13.1 does support kube 5 without
//! pulling `ring`): its durations are whole seconds with fixed, unconfigurable backoffs (1–30 s after
//! errors, a random 0.1–1 s pause while taking over); it decides expiry from `renewTime` against the
//! local wall clock; taking over an expired lease is two writes (a forced release, then a
//! server-side apply) without a `resourceVersion` precondition; and it brings rand 0.10 beside our
//! rand 0.9. The loop below is short, has every duration as a parameter, and is tested against a
//! mock API server request by request.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

use super::metrics::Metrics;

/// The field manager recorded on the Lease, so `managedFields` shows who wrote it.
pub const FIELD_MANAGER: &str = "keyless";

/// Where the lease lives, who we are, and the timings. Every duration is a parameter; the chart
/// passes them as flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The Lease's name, e.g. `keyless-leader`.
    pub name: String,
    /// The Lease's namespace: the operator's own.
    pub namespace: String,
    /// This replica's identity, unique among replicas: the Pod name.
    pub holder_id: String,
    /// How long a lease stays ours after a renewal; written to the Lease as `leaseDurationSeconds`
    /// (rounded up to whole seconds) so others know how long to wait for us.
    pub lease_duration: Duration,
    /// How often the leader renews; must be shorter than `lease_duration`.
    pub renew_interval: Duration,
    /// How often a standby (or a leader after a failed renewal) tries again.
    pub retry_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("invalid leader election settings: {0}")]
    InvalidConfig(&'static str),
    #[error("cannot read lease {namespace}/{name}")]
    ReadLease {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot create lease {namespace}/{name}")]
    CreateLease {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot update lease {namespace}/{name}")]
    UpdateLease {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl LeaseConfig {
    fn validate(&self) -> Result<(), LeaderError> {
        if self.name.is_empty() || self.namespace.is_empty() {
            return Err(LeaderError::InvalidConfig(
                "the lease needs a name and a namespace",
            ));
        }
        if self.holder_id.is_empty() {
            // An empty holderIdentity means "released": we could never tell our lease from a free one.
            return Err(LeaderError::InvalidConfig(
                "the holder id must not be empty",
            ));
        }
        if self.lease_duration.is_zero()
            || self.renew_interval.is_zero()
            || self.retry_interval.is_zero()
        {
            return Err(LeaderError::InvalidConfig(
                "the lease duration, renew interval and retry interval must be positive",
            ));
        }
        if self.renew_interval >= self.lease_duration {
            return Err(LeaderError::InvalidConfig(
                "the renew interval must be shorter than the lease duration, or the lease lapses between renewals",
            ));
        }
        if i32::try_from(self.lease_duration_seconds_u64()).is_err() {
            return Err(LeaderError::InvalidConfig("the lease duration is too long"));
        }
        Ok(())
    }

    fn lease_duration_seconds_u64(&self) -> u64 {
        // Rounded up: telling others to wait longer than we hold on is safe; shorter is not.
        let secs = self.lease_duration.as_secs();
        if self.lease_duration.subsec_nanos() > 0 {
            secs.saturating_add(1)
        } else {
            secs
        }
    }

    fn lease_duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration_seconds_u64()).unwrap_or(i32::MAX)
    }
}

/// Leader election for one replica. Subscribe with [`watch`](Self::watch), then drive it with
/// [`run`](Self::run) on a task of its own.
pub struct LeaderElection {
    api: Api<Lease>,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
    metrics: Option<Metrics>,
    // The lease as we last read or wrote it: a leader renews from it without a GET first.
    cached: Option<Lease>,
    // The resourceVersion of the record held by someone else, and when we first saw it.
    observed: Option<(String, Instant)>,
    // While leading: when the last successful acquire or renew request was sent.
    renewed_at: Option<Instant>,
}

impl std::fmt::Debug for LeaderElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElection")
            .field("config", &self.config)
            .field("leading", &*self.leading.borrow())
            .finish_non_exhaustive()
    }
}

enum Attempt {
    Leading,
    Standing,
    // Our write lost a race (409): re-read before deciding again.
    Conflict,
}

impl LeaderElection {
    /// Validates the settings; nothing is sent to the API until [`run`](Self::run).
    pub fn new(client: Client, config: LeaseConfig) -> Result<Self, LeaderError> {
        config.validate()?;
        let (leading, _) = watch::channel(false);
        Ok(Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            leading,
            metrics: None,
            cached: None,
            observed: None,
            renewed_at: None,
        })
    }

    /// Also reports leadership as the `keyless_leader` gauge.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        metrics.leader(*self.leading.borrow());
        self.metrics = Some(metrics);
        self
    }

    /// `true` while this replica leads. Starts `false`; changes are sent only when the value changes.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Campaigns for, holds and renews the lease until `shutdown` completes, then releases it if held.
    /// API errors are logged and retried every `retry_interval`; only the release can fail the call.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), LeaderError> {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let deadline = self.deadline();
            let started = Instant::now();
            let attempt = tokio::select! {
                () = &mut shutdown => break,
                () = sleep_until_opt(deadline) => {
                    self.step_down("the lease could not be renewed within its duration");
                    continue;
                }
                attempt = self.attempt_with_reread(started) => attempt,
            };
            let wait = match attempt {
                Ok(true) => {
                    self.renewed_at = Some(started);
                    self.set_leading(true);
                    self.config.renew_interval
                }
                Ok(false) => {
                    self.renewed_at = None;
                    self.set_leading(false);
                    self.config.retry_interval
                }
                Err(error) => {
                    // Still leading until the deadline: one failed renewal is not a lost lease.
                    tracing::warn!(error = %error, source = ?std::error::Error::source(&error), "leader election: lease request failed");
                    self.config.retry_interval
                }
            };
            let deadline = self.deadline();
            tokio::select! {
                () = &mut shutdown => break,
                () = sleep_until_opt(deadline) => {
                    self.step_down("the lease could not be renewed within its duration");
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
        self.release().await
    }

    fn deadline(&self) -> Option<Instant> {
        self.renewed_at.map(|at| at + self.config.lease_duration)
    }

    fn set_leading(&self, leading: bool) {
        let changed = self.leading.send_if_modified(|current| {
            let changed = *current != leading;
            *current = leading;
            changed
        });
        if changed {
            if leading {
                tracing::info!(holder = %self.config.holder_id, lease = %self.config.name, "became the leader");
            } else {
                tracing::info!(holder = %self.config.holder_id, lease = %self.config.name, "no longer the leader");
            }
        }
        if let Some(metrics) = &self.metrics {
            metrics.leader(leading);
        }
    }

    fn step_down(&mut self, why: &'static str) {
        tracing::warn!(holder = %self.config.holder_id, reason = why, "stepping down as leader");
        self.renewed_at = None;
        self.cached = None;
        self.set_leading(false);
    }

    // One round: try, and after a lost race re-read once and decide again.
    async fn attempt_with_reread(&mut self, now: Instant) -> Result<bool, LeaderError> {
        for _ in 0..2 {
            match self.attempt(now).await? {
                Attempt::Leading => return Ok(true),
                Attempt::Standing => return Ok(false),
                Attempt::Conflict => self.cached = None,
            }
        }
        // Lost two races in a row: someone else is writing; look again after retry_interval.
        Ok(false)
    }

    async fn attempt(&mut self, now: Instant) -> Result<Attempt, LeaderError> {
        let current = match (self.renewed_at, self.cached.take()) {
            (Some(_), Some(lease)) => Some(lease),
            _ => self.read().await?,
        };
        let Some(mut lease) = current else {
            return self.create().await;
        };
        let holder = lease
            .spec
            .as_ref()
            .and_then(|spec| spec.holder_identity.clone())
            .filter(|holder| !holder.is_empty());
        let wall_now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        match holder {
            Some(holder) if holder == self.config.holder_id => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                spec.renew_time = Some(wall_now);
                spec.lease_duration_seconds = Some(self.config.lease_duration_seconds());
            }
            Some(holder) => {
                if !self.expired(&lease, now) {
                    tracing::debug!(%holder, "the lease is held by another replica");
                    self.cached = Some(lease);
                    return Ok(Attempt::Standing);
                }
                tracing::info!(%holder, "taking over a lease its holder stopped renewing");
                self.take(&mut lease, wall_now);
            }
            None => self.take(&mut lease, wall_now),
        }
        self.replace(lease).await
    }

    fn take(&self, lease: &mut Lease, now: MicroTime) {
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(self.config.holder_id.clone());
        spec.acquire_time = Some(now.clone());
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(self.config.lease_duration_seconds());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }

    // Whether someone else's lease has gone unrenewed for its duration, by our own clock (see the
    // module docs).
    fn expired(&mut self, lease: &Lease, now: Instant) -> bool {
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let first_seen = match &self.observed {
            Some((seen, at)) if *seen == version => *at,
            _ => {
                self.observed = Some((version, now));
                now
            }
        };
        let duration = lease
            .spec
            .as_ref()
            .and_then(|spec| spec.lease_duration_seconds)
            .and_then(|secs| u64::try_from(secs).ok())
            .filter(|secs| *secs > 0)
            .map(Duration::from_secs)
            .unwrap_or(self.config.lease_duration);
        now.saturating_duration_since(first_seen) >= duration
    }

    async fn read(&self) -> Result<Option<Lease>, LeaderError> {
        self.api
            .get_opt(&self.config.name)
            .await
            .map_err(|source| LeaderError::ReadLease {
                namespace: self.config.namespace.clone(),
                name: self.config.name.clone(),
                source,
            })
    }

    async fn create(&mut self) -> Result<Attempt, LeaderError> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                namespace: Some(self.config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.holder_id.clone()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_duration_seconds: Some(self.config.lease_duration_seconds()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.api.create(&post_params(), &lease).await {
            Ok(created) => {
                self.cached = Some(created);
                Ok(Attempt::Leading)
            }
            // Another replica created it first (AlreadyExists).
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
            Err(source) => Err(LeaderError::CreateLease {
                namespace: self.config.namespace.clone(),
                name: self.config.name.clone(),
                source,
            }),
        }
    }

    async fn replace(&mut self, lease: Lease) -> Result<Attempt, LeaderError> {
        match self
            .api
            .replace(&self.config.name, &post_params(), &lease)
            .await
        {
            Ok(written) => {
                self.cached = Some(written);
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
            Err(source) => Err(LeaderError::UpdateLease {
                namespace: self.config.namespace.clone(),
                name: self.config.name.clone(),
                source,
            }),
        }
    }

    // Gives the lease up so a standby need not wait out a full lease duration. Leadership is
    // withdrawn (the watch turns false) before the write, so this replica's leader work stops first.
    async fn release(&mut self) -> Result<(), LeaderError> {
        if self.renewed_at.take().is_none() {
            return Ok(());
        }
        self.set_leading(false);
        for _ in 0..2 {
            let lease = match self.cached.take() {
                Some(lease) => Some(lease),
                None => self.read().await?,
            };
            let Some(mut lease) = lease else {
                return Ok(());
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.config.holder_id.as_str()) {
                // Someone else holds it already: nothing of ours to release.
                return Ok(());
            }
            spec.holder_identity = None;
            spec.acquire_time = None;
            spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
            // The API requires a positive duration; 1 s is the shortest promise.
            spec.lease_duration_seconds = Some(1);
            match self.replace(lease).await? {
                Attempt::Conflict => continue,
                Attempt::Leading | Attempt::Standing => {
                    tracing::info!(holder = %self.config.holder_id, "released the lease");
                    return Ok(());
                }
            }
        }
        tracing::warn!("could not release the lease: it kept changing; it will expire instead");
        Ok(())
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
