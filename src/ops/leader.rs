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

/// Lets a write through only while this replica's lease has at least one write attempt's time
/// left, so a write can never land after the lease ended (and another replica took over).
#[derive(Clone, Debug)]
pub struct LeaseFence {
    valid_until: watch::Receiver<Option<Instant>>,
    margin: Duration,
}

impl LeaseFence {
    /// Ok while the lease has at least the margin left; otherwise why not.
    pub fn check(&self) -> Result<(), String> {
        fence_verdict(*self.valid_until.borrow(), Instant::now(), self.margin)
    }
}

fn fence_verdict(
    valid_until: Option<Instant>,
    now: Instant,
    margin: Duration,
) -> Result<(), String> {
    match valid_until {
        None => Err("this replica does not hold the lease".into()),
        Some(until) => {
            let left = until.saturating_duration_since(now);
            if left >= margin {
                Ok(())
            } else {
                Err(format!(
                    "the lease has {}ms left, less than one write attempt ({}ms)",
                    left.as_millis(),
                    margin.as_millis()
                ))
            }
        }
    }
}

impl crate::engine::Fence for LeaseFence {
    fn may_write(&self) -> Result<(), String> {
        self.check()
    }
}

impl LeaseConfig {
    /// A leader renews every `renew_interval` and keeps the lease `lease_duration` after a renewal,
    /// so right after a renewal it has `lease_duration`, and just before the next one
    /// `lease_duration - renew_interval`. A write attempt longer than that would be refused by the
    /// fence before nearly every write: refuse the settings at start-up instead.
    pub fn validate_fencing(&self, attempt_timeout: Duration) -> Result<(), LeaderError> {
        if attempt_timeout >= self.lease_duration.saturating_sub(self.renew_interval) {
            return Err(LeaderError::InvalidConfig(
                "the Azure request timeout must be shorter than --lease-duration minus --lease-renew-interval, so a leader can always finish a write before its lease ends",
            ));
        }
        Ok(())
    }

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
    // The end of the lease as this replica knows it (None when not leading): the fence reads it.
    valid_until: watch::Sender<Option<Instant>>,
    // The holder a watch on the Lease last saw, when the caller runs one (see `with_holder_watch`).
    holders: Option<watch::Receiver<Option<String>>>,
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
            valid_until: watch::channel(None).0,
            holders: None,
        })
    }

    /// Lets a watch on the Lease (run by the caller: the holder it last saw) cut a leader's wait
    /// short. When it shows another holder while this replica leads — someone overwrote a lease
    /// that had not expired — the leader renews at once instead of at its next interval: the
    /// renewal, made against the version it last wrote, fails with a conflict if the lease really
    /// changed hands, and the leader steps down (closing the fence) within a round trip rather
    /// than a renew interval. A stale event only costs one early renewal.
    pub fn with_holder_watch(mut self, holders: watch::Receiver<Option<String>>) -> Self {
        self.holders = Some(holders);
        self
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
            // biased: shutdown first, then the deadline, so that a renewal due at the very moment the
            // lease runs out is never sent by a replica that must already have stepped down.
            let attempt = tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = sleep_until_opt(deadline) => {
                    self.step_down("the lease could not be renewed within its duration");
                    continue;
                }
                attempt = self.attempt_with_reread() => attempt,
            };
            let wait = match attempt {
                Ok(true) => {
                    self.renewed_at = Some(started);
                    self.publish_deadline();
                    self.set_leading(true);
                    self.config.renew_interval
                }
                Ok(false) => {
                    self.renewed_at = None;
                    self.publish_deadline();
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
            let holders = self.holders.clone();
            let leading = self.renewed_at.is_some();
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = sleep_until_opt(deadline) => {
                    self.step_down("the lease could not be renewed within its duration");
                }
                () = another_holder_seen(holders, leading, &self.config.holder_id) => {
                    tracing::info!(holder = %self.config.holder_id, "the lease shows another holder: renewing at once");
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
        // Bounded by the lease duration: past it the lease has lapsed anyway, and a hung API server
        // must not hold up the process's exit.
        match tokio::time::timeout(self.config.lease_duration, self.release()).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!("releasing the lease timed out; it will expire instead");
                Ok(())
            }
        }
    }

    /// A fence over this election's lease: it lets a write through only while the lease has at
    /// least `margin` (one write attempt's timeout) left.
    pub fn fence(&self, margin: Duration) -> LeaseFence {
        LeaseFence {
            valid_until: self.valid_until.subscribe(),
            margin,
        }
    }

    fn publish_deadline(&self) {
        let deadline = self.deadline();
        self.valid_until.send_if_modified(|current| {
            let changed = *current != deadline;
            *current = deadline;
            changed
        });
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
        self.publish_deadline();
        self.cached = None;
        self.set_leading(false);
    }

    // One round: try, and after a lost race re-read once and decide again.
    async fn attempt_with_reread(&mut self) -> Result<bool, LeaderError> {
        for _ in 0..2 {
            match self.attempt().await? {
                Attempt::Leading => return Ok(true),
                Attempt::Standing => return Ok(false),
                Attempt::Conflict => self.cached = None,
            }
        }
        // Lost two races in a row: someone else is writing. Not knowing who holds the lease, stop
        // leading (the safe side) and look again after retry_interval.
        Ok(false)
    }

    async fn attempt(&mut self) -> Result<Attempt, LeaderError> {
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
                // Observed now, after the read returned: the holder's renewal was written before
                // this, so its own deadline (counted from before it sent the renewal) comes first.
                if !self.expired(&lease, Instant::now()) {
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
        let held = self.renewed_at.take();
        self.publish_deadline();
        if held.is_none() {
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

// Resolves when the holder watch shows a holder other than `me` while this replica leads; never
// without a watch or while standing by.
async fn another_holder_seen(
    holders: Option<watch::Receiver<Option<String>>>,
    leading: bool,
    me: &str,
) {
    let Some(mut holders) = holders.filter(|_| leading) else {
        return std::future::pending().await;
    };
    loop {
        if holders.changed().await.is_err() {
            return std::future::pending().await;
        }
        let seen = holders.borrow_and_update().clone();
        if seen.is_some_and(|holder| !holder.is_empty() && holder != me) {
            return;
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use std::collections::BTreeMap;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;
    use tower_test::mock::{self, Handle, SendResponse};

    const NAMESPACE: &str = "keyless-system";
    const NAME: &str = "keyless-leader";
    const ME: &str = "keyless-7d9f-abcde";
    const OTHER: &str = "keyless-7d9f-zyxwv";
    const LEASE_PATH: &str =
        "/apis/coordination.k8s.io/v1/namespaces/keyless-system/leases/keyless-leader";
    const COLLECTION_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/keyless-system/leases";
    const LEASE_DURATION: Duration = Duration::from_secs(15);
    const RENEW_INTERVAL: Duration = Duration::from_secs(5);
    const RETRY_INTERVAL: Duration = Duration::from_secs(2);

    fn config() -> LeaseConfig {
        LeaseConfig {
            name: NAME.to_owned(),
            namespace: NAMESPACE.to_owned(),
            holder_id: ME.to_owned(),
            lease_duration: LEASE_DURATION,
            renew_interval: RENEW_INTERVAL,
            retry_interval: RETRY_INTERVAL,
        }
    }

    /// The mock API server's side of one request, parsed: tests assert on method, path, query
    /// parameters and the decoded body, never on raw URI strings.
    struct Exchange {
        method: Method,
        path: String,
        query: BTreeMap<String, String>,
        body: Option<Lease>,
        at: Instant,
        respond: SendResponse<Response<Body>>,
    }

    impl Exchange {
        fn expect_get(self) -> Self {
            assert_eq!(self.method, Method::GET, "expected a read");
            assert_eq!(self.path, LEASE_PATH);
            assert!(self.query.is_empty(), "query {:?}", self.query);
            self
        }

        fn expect_create(self) -> (Lease, Self) {
            assert_eq!(self.method, Method::POST, "expected a create");
            assert_eq!(self.path, COLLECTION_PATH);
            assert_eq!(self.query, field_manager_query());
            let lease = self.body.clone().expect("a create carries the lease");
            (lease, self)
        }

        fn expect_replace(self) -> (Lease, Self) {
            assert_eq!(self.method, Method::PUT, "expected an update");
            assert_eq!(self.path, LEASE_PATH);
            assert_eq!(self.query, field_manager_query());
            let lease = self.body.clone().expect("an update carries the lease");
            (lease, self)
        }

        fn ok(self, lease: &Lease) {
            self.send(StatusCode::OK, serde_json::to_vec(lease).unwrap());
        }

        fn fail(self, code: u16, reason: &str) {
            let status = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("leases.coordination.k8s.io \"{NAME}\": {reason}"),
                "reason": reason, "code": code,
            });
            self.send(
                StatusCode::from_u16(code).unwrap(),
                serde_json::to_vec(&status).unwrap(),
            );
        }

        fn send(self, status: StatusCode, body: Vec<u8>) {
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            self.respond.send_response(response);
        }
    }

    fn field_manager_query() -> BTreeMap<String, String> {
        BTreeMap::from([("fieldManager".to_owned(), FIELD_MANAGER.to_owned())])
    }

    struct ApiServer {
        handle: Handle<Request<Body>, Response<Body>>,
    }

    impl ApiServer {
        async fn next(&mut self) -> Exchange {
            let (request, respond) = self
                .handle
                .next_request()
                .await
                .expect("another request to the API");
            let at = Instant::now();
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let query = url::form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body = (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap());
            Exchange {
                method,
                path,
                query,
                body,
                at,
                respond,
            }
        }

        /// After the election has finished, no request may be left: the client is gone.
        async fn expect_no_more_requests(&mut self) {
            assert!(self.handle.next_request().await.is_none());
        }
    }

    struct Running {
        api: ApiServer,
        leading: watch::Receiver<bool>,
        metrics: Metrics,
        stop: oneshot::Sender<()>,
        task: JoinHandle<Result<(), LeaderError>>,
    }

    impl Running {
        async fn shut_down(self) -> (ApiServer, Result<(), LeaderError>) {
            self.stop.send(()).unwrap();
            let result = self.task.await.unwrap();
            (self.api, result)
        }
    }

    fn start() -> Running {
        start_with(|election| election)
    }

    fn start_with(extra: impl FnOnce(LeaderElection) -> LeaderElection) -> Running {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, NAMESPACE);
        let metrics = Metrics::new();
        let election = extra(
            LeaderElection::new(client, config())
                .unwrap()
                .with_metrics(metrics.clone()),
        );
        let leading = election.watch();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(election.run(async move {
            let _ = stopped.await;
        }));
        Running {
            api: ApiServer { handle },
            leading,
            metrics,
            stop,
            task,
        }
    }

    fn lease(holder: Option<&str>, resource_version: &str, transitions: i32) -> Lease {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        Lease {
            metadata: ObjectMeta {
                name: Some(NAME.to_owned()),
                namespace: Some(NAMESPACE.to_owned()),
                resource_version: Some(resource_version.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                acquire_time: holder.map(|_| now.clone()),
                renew_time: holder.map(|_| now),
                lease_duration_seconds: holder.map(|_| 15),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
        }
    }

    /// What the apiserver stores and returns for a write: the body with a new resourceVersion.
    fn stored(mut written: Lease, resource_version: &str) -> Lease {
        written.metadata.resource_version = Some(resource_version.to_owned());
        written
    }

    fn spec(lease: &Lease) -> &LeaseSpec {
        lease.spec.as_ref().unwrap()
    }

    /// Drives the first round for an absent lease: GET 404, then a create that succeeds with
    /// resourceVersion "1". Returns the stored lease and when the create arrived.
    async fn acquire_by_creating(running: &mut Running) -> (Lease, Instant) {
        running.api.next().await.expect_get().fail(404, "NotFound");
        let (created, exchange) = running.api.next().await.expect_create();
        let at = exchange.at;
        let created = stored(created, "1");
        exchange.ok(&created);
        running.leading.changed().await.unwrap();
        assert!(*running.leading.borrow_and_update());
        (created, at)
    }

    #[tokio::test(start_paused = true)]
    async fn an_absent_lease_is_created_naming_this_replica() {
        let mut running = start();
        assert!(
            !*running.leading.borrow(),
            "nobody leads before the lease is held"
        );

        running.api.next().await.expect_get().fail(404, "NotFound");
        let (created, exchange) = running.api.next().await.expect_create();
        assert_eq!(created.metadata.name.as_deref(), Some(NAME));
        assert_eq!(created.metadata.namespace.as_deref(), Some(NAMESPACE));
        assert_eq!(created.metadata.resource_version, None);
        let spec_created = spec(&created);
        assert_eq!(spec_created.holder_identity.as_deref(), Some(ME));
        assert_eq!(spec_created.lease_duration_seconds, Some(15));
        assert_eq!(spec_created.lease_transitions, Some(0));
        assert!(spec_created.acquire_time.is_some());
        assert_eq!(spec_created.acquire_time, spec_created.renew_time);
        exchange.ok(&stored(created, "1"));

        running.leading.changed().await.unwrap();
        assert!(*running.leading.borrow_and_update());
        assert!(running.metrics.encode().contains("\nkeyless_leader 1\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_leader_renews_every_renew_interval_without_reading_first() {
        let mut running = start();
        let (created, created_at) = acquire_by_creating(&mut running).await;

        let mut previous = created;
        let mut previous_at = created_at;
        for version in ["2", "3", "4"] {
            let (renewed, exchange) = running.api.next().await.expect_replace();
            assert_eq!(exchange.at - previous_at, RENEW_INTERVAL);
            // Optimistic concurrency: the update carries the version we last wrote.
            assert_eq!(
                renewed.metadata.resource_version,
                previous.metadata.resource_version
            );
            let (renewed_spec, previous_spec) = (spec(&renewed), spec(&previous));
            assert_eq!(renewed_spec.holder_identity.as_deref(), Some(ME));
            assert_eq!(renewed_spec.acquire_time, previous_spec.acquire_time);
            assert_eq!(
                renewed_spec.lease_transitions,
                previous_spec.lease_transitions
            );
            assert!(
                renewed_spec.renew_time.as_ref().unwrap().0
                    >= previous_spec.renew_time.as_ref().unwrap().0
            );
            previous_at = exchange.at;
            previous = stored(renewed, version);
            exchange.ok(&previous);
        }
        assert!(*running.leading.borrow(), "still leading");
        assert!(!running.leading.has_changed().unwrap(), "never flapped");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_releases_a_held_lease() {
        let mut running = start();
        let (created, _) = acquire_by_creating(&mut running).await;
        let mut leading = running.leading.clone();
        let metrics = running.metrics.clone();

        running.stop.send(()).unwrap();
        let (released, exchange) = running.api.next().await.expect_replace();
        // Leadership is withdrawn before the lease is given up, so no two replicas lead at once.
        assert!(!*leading.borrow_and_update());
        assert_eq!(released.metadata.resource_version.as_deref(), Some("1"));
        let released_spec = spec(&released);
        assert_eq!(released_spec.holder_identity, None);
        assert_eq!(released_spec.lease_duration_seconds, Some(1));
        assert_eq!(
            released_spec.lease_transitions,
            spec(&created).lease_transitions
        );
        exchange.ok(&stored(released, "2"));

        let result = running.task.await.unwrap();
        assert!(result.is_ok(), "{result:?}");
        assert!(metrics.encode().contains("\nkeyless_leader 0\n"));
        running.api.expect_no_more_requests().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_that_conflicts_re_reads_and_releases_the_fresh_copy() {
        let mut running = start();
        acquire_by_creating(&mut running).await;

        running.stop.send(()).unwrap();
        running
            .api
            .next()
            .await
            .expect_replace()
            .1
            .fail(409, "Conflict");
        running
            .api
            .next()
            .await
            .expect_get()
            .ok(&lease(Some(ME), "4", 0));
        let (released, exchange) = running.api.next().await.expect_replace();
        assert_eq!(released.metadata.resource_version.as_deref(), Some("4"));
        assert_eq!(spec(&released).holder_identity, None);
        exchange.ok(&stored(released, "5"));

        assert!(running.task.await.unwrap().is_ok());
        running.api.expect_no_more_requests().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_already_taken_over_writes_nothing() {
        let mut running = start();
        acquire_by_creating(&mut running).await;

        running.stop.send(()).unwrap();
        running
            .api
            .next()
            .await
            .expect_replace()
            .1
            .fail(409, "Conflict");
        running
            .api
            .next()
            .await
            .expect_get()
            .ok(&lease(Some(OTHER), "4", 1));

        assert!(running.task.await.unwrap().is_ok());
        running.api.expect_no_more_requests().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_api_server_cannot_hold_up_shutdown_past_the_lease_duration() {
        let mut running = start();
        acquire_by_creating(&mut running).await;

        running.stop.send(()).unwrap();
        let (_, unanswered) = running.api.next().await.expect_replace();
        let result = running.task.await.unwrap();
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(Instant::now() - unanswered.at, LEASE_DURATION);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_held_by_a_live_holder_is_left_alone() {
        let mut running = start();
        let first = running.api.next().await.expect_get();
        let mut previous_at = first.at;
        first.ok(&lease(Some(OTHER), "5", 1));

        // The other replica keeps renewing (a new resourceVersion each time) for well over one lease
        // duration: this replica only ever reads, every retry interval.
        for version in 6..16 {
            let exchange = running.api.next().await.expect_get();
            assert_eq!(exchange.at - previous_at, RETRY_INTERVAL);
            previous_at = exchange.at;
            exchange.ok(&lease(Some(OTHER), &version.to_string(), 1));
        }
        assert!(!*running.leading.borrow());
        assert!(!running.leading.has_changed().unwrap());

        let (mut api, result) = running.shut_down().await;
        assert!(result.is_ok(), "{result:?}");
        // A standby has nothing to release.
        api.expect_no_more_requests().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_whose_holder_stopped_renewing_is_taken_over_after_its_duration() {
        let mut running = start();
        let first = running.api.next().await.expect_get();
        let first_seen = first.at;
        // Its renewTime is now by the wall clock, but it is never renewed again.
        let stale = lease(Some(OTHER), "5", 3);
        first.ok(&stale);

        let mut last_read_at = first_seen;
        let (taken, exchange) = loop {
            let exchange = running.api.next().await;
            if exchange.method == Method::GET {
                assert_eq!(exchange.at - last_read_at, RETRY_INTERVAL);
                // Fails rather than loops forever if the expired lease is never taken.
                assert!(
                    exchange.at - first_seen < LEASE_DURATION + RETRY_INTERVAL,
                    "still only reading {:?} after first seeing the lease",
                    exchange.at - first_seen
                );
                last_read_at = exchange.at;
                exchange.expect_get().ok(&stale);
                continue;
            }
            break exchange.expect_replace();
        };
        // The take-over follows the read that found the record unchanged for a lease duration.
        assert_eq!(exchange.at, last_read_at);
        let waited = exchange.at - first_seen;
        assert!(waited >= LEASE_DURATION, "took over after {waited:?}");
        assert!(
            waited < LEASE_DURATION + RETRY_INTERVAL,
            "took over after {waited:?}"
        );
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("5"));
        let taken_spec = spec(&taken);
        assert_eq!(taken_spec.holder_identity.as_deref(), Some(ME));
        assert_eq!(taken_spec.lease_transitions, Some(4));
        assert_ne!(taken_spec.acquire_time, spec(&stale).acquire_time);
        assert_eq!(taken_spec.acquire_time, taken_spec.renew_time);
        exchange.ok(&stored(taken, "6"));

        running.leading.changed().await.unwrap();
        assert!(*running.leading.borrow_and_update());
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_lease_is_taken_at_once() {
        let mut running = start();
        let read = running.api.next().await.expect_get();
        let read_at = read.at;
        read.ok(&lease(None, "9", 2));

        let (taken, exchange) = running.api.next().await.expect_replace();
        assert_eq!(exchange.at, read_at, "no waiting for a free lease");
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("9"));
        assert_eq!(spec(&taken).holder_identity.as_deref(), Some(ME));
        assert_eq!(spec(&taken).lease_transitions, Some(3));
        exchange.ok(&stored(taken, "10"));

        running.leading.changed().await.unwrap();
        assert!(*running.leading.borrow_and_update());
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_on_renewal_makes_it_re_read_and_yield_to_the_new_holder() {
        let mut running = start();
        acquire_by_creating(&mut running).await;

        let (_, renewal) = running.api.next().await.expect_replace();
        let conflict_at = renewal.at;
        renewal.fail(409, "Conflict");

        // Re-read at once, not after a retry interval.
        let reread = running.api.next().await.expect_get();
        assert_eq!(reread.at, conflict_at);
        reread.ok(&lease(Some(OTHER), "7", 1));

        running.leading.changed().await.unwrap();
        assert!(
            !*running.leading.borrow_and_update(),
            "yields to the holder it read"
        );
        assert!(running.metrics.encode().contains("\nkeyless_leader 0\n"));

        // From now on it stands by: reads only.
        let next = running.api.next().await.expect_get();
        assert_eq!(next.at - conflict_at, RETRY_INTERVAL);
        next.ok(&lease(Some(OTHER), "8", 1));

        let (mut api, result) = running.shut_down().await;
        assert!(result.is_ok(), "{result:?}");
        api.expect_no_more_requests().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_overwritten_by_another_holder_is_given_up_at_once_not_at_the_next_renewal() {
        let (holders, seen) = watch::channel(None::<String>);
        let mut running = start_with(|election| election.with_holder_watch(seen));
        let (_, acquired_at) = acquire_by_creating(&mut running).await;
        // Our own renewals show up on the watch too: they change nothing.
        holders.send_replace(Some(ME.to_owned()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Someone overwrites the lease 1 s into a 5 s renew interval.
        holders.send_replace(Some(OTHER.to_owned()));
        let (_, renewal) = running.api.next().await.expect_replace();
        assert!(
            renewal.at - acquired_at < RENEW_INTERVAL,
            "renewed at once ({:?} after acquiring), not at the interval",
            renewal.at - acquired_at
        );
        renewal.fail(409, "Conflict");
        running
            .api
            .next()
            .await
            .expect_get()
            .ok(&lease(Some(OTHER), "7", 1));
        running.leading.changed().await.unwrap();
        assert!(
            !*running.leading.borrow_and_update(),
            "yields to the new holder"
        );
        let next = running.api.next().await.expect_get();
        next.ok(&lease(Some(OTHER), "8", 1));
        let (mut api, result) = running.shut_down().await;
        assert!(result.is_ok(), "{result:?}");
        api.expect_no_more_requests().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_on_renewal_with_the_lease_still_ours_renews_from_the_fresh_copy() {
        let mut running = start();
        acquire_by_creating(&mut running).await;

        // Something else touched the lease (a label, say) without taking it.
        running
            .api
            .next()
            .await
            .expect_replace()
            .1
            .fail(409, "Conflict");
        running.api.next().await.expect_get().ok(&stored(
            {
                let mut ours = lease(Some(ME), "x", 0);
                ours.metadata.labels = Some(BTreeMap::from([("team".into(), "ops".into())]));
                ours
            },
            "8",
        ));
        let (renewed, exchange) = running.api.next().await.expect_replace();
        assert_eq!(renewed.metadata.resource_version.as_deref(), Some("8"));
        assert_eq!(spec(&renewed).holder_identity.as_deref(), Some(ME));
        exchange.ok(&stored(renewed, "9"));

        assert!(*running.leading.borrow());
        assert!(
            !running.leading.has_changed().unwrap(),
            "never stepped down"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn losing_the_race_to_create_makes_it_read_the_winner() {
        let mut running = start();
        running.api.next().await.expect_get().fail(404, "NotFound");
        let (_, create) = running.api.next().await.expect_create();
        let lost_at = create.at;
        create.fail(409, "AlreadyExists");

        let reread = running.api.next().await.expect_get();
        assert_eq!(reread.at, lost_at);
        reread.ok(&lease(Some(OTHER), "3", 0));

        let next = running.api.next().await.expect_get();
        assert_eq!(next.at - lost_at, RETRY_INTERVAL);
        next.ok(&lease(Some(OTHER), "4", 0));
        assert!(!*running.leading.borrow());
        assert!(!running.leading.has_changed().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_renew_steps_down_before_anyone_may_take_over() {
        let mut running = start();
        // The create request left at the same instant the round started (paused clock).
        let (_, acquired_at) = acquire_by_creating(&mut running).await;

        let stepped_down_at = loop {
            // biased: once it has stepped down it reads the lease again at once; see the step-down
            // before that read.
            tokio::select! {
                biased;
                changed = running.leading.changed() => {
                    changed.unwrap();
                    assert!(!*running.leading.borrow_and_update());
                    break Instant::now();
                }
                exchange = running.api.next() => {
                    // The API server is down: renewals and the re-reads after them all fail.
                    assert!(
                        [Method::PUT, Method::GET].contains(&exchange.method),
                        "{}",
                        exchange.method
                    );
                    assert_eq!(exchange.path, LEASE_PATH);
                    // Fails rather than loops forever if it never steps down.
                    assert!(exchange.at - acquired_at < LEASE_DURATION, "still trying to renew");
                    exchange.fail(500, "InternalError");
                }
            }
        };
        // Another replica starts its wait when it first reads our last renewal, no earlier than
        // the renewal was sent, so stepping down by then is always in time.
        assert_eq!(stepped_down_at - acquired_at, LEASE_DURATION);
        assert!(running.metrics.encode().contains("\nkeyless_leader 0\n"));

        // Having stepped down, it reads the lease again rather than trusting its copy.
        running
            .api
            .next()
            .await
            .expect_get()
            .ok(&lease(Some(OTHER), "20", 1));
        let (mut api, result) = running.shut_down().await;
        assert!(result.is_ok(), "{result:?}");
        api.expect_no_more_requests().await;
    }

    #[tokio::test(start_paused = true)]
    async fn errors_while_standing_by_are_retried() {
        let mut running = start();
        let first = running.api.next().await.expect_get();
        let failed_at = first.at;
        first.fail(503, "ServiceUnavailable");
        let retry = running.api.next().await.expect_get();
        assert_eq!(retry.at - failed_at, RETRY_INTERVAL);
        retry.fail(404, "NotFound");
        let (_, create) = running.api.next().await.expect_create();
        create.fail(403, "Forbidden");
        running
            .api
            .next()
            .await
            .expect_get()
            .ok(&lease(Some(OTHER), "2", 0));
        assert!(!*running.leading.borrow());
    }

    fn client() -> Client {
        let (service, _handle) = mock::pair::<Request<Body>, Response<Body>>();
        Client::new(service, NAMESPACE)
    }

    #[tokio::test]
    async fn settings_that_would_let_the_lease_lapse_are_rejected() {
        type Change = fn(&mut LeaseConfig);
        let cases: [(&str, Change); 6] = [
            ("renew equal to duration", |c| {
                c.renew_interval = c.lease_duration
            }),
            ("renew longer than duration", |c| {
                c.renew_interval = c.lease_duration * 2
            }),
            ("zero retry", |c| c.retry_interval = Duration::ZERO),
            ("zero duration", |c| c.lease_duration = Duration::ZERO),
            ("empty holder", |c| c.holder_id.clear()),
            ("empty name", |c| c.name.clear()),
        ];
        for (case, change) in cases {
            let mut config = config();
            change(&mut config);
            let result = LeaderElection::new(client(), config);
            assert!(
                matches!(result, Err(LeaderError::InvalidConfig(_))),
                "{case}: {result:?}"
            );
        }
        assert!(LeaderElection::new(client(), config()).is_ok());
    }

    #[test]
    fn the_lease_duration_is_written_rounded_up_to_whole_seconds() {
        let mut config = config();
        config.lease_duration = Duration::from_millis(1500);
        assert_eq!(config.lease_duration_seconds(), 2);
        config.lease_duration = Duration::from_secs(15);
        assert_eq!(config.lease_duration_seconds(), 15);
    }

    #[test]
    fn the_fence_lets_writes_through_only_with_a_whole_attempt_of_lease_left() {
        let now = Instant::now();
        let margin = Duration::from_secs(5);
        assert!(fence_verdict(Some(now + Duration::from_secs(6)), now, margin).is_ok());
        assert!(fence_verdict(Some(now + Duration::from_secs(5)), now, margin).is_ok());
        let short = fence_verdict(Some(now + Duration::from_secs(4)), now, margin);
        assert!(
            short.as_ref().is_err_and(|e| e.contains("4000ms")),
            "{short:?}"
        );
        assert!(fence_verdict(Some(now), now + Duration::from_secs(1), margin).is_err());
        assert!(fence_verdict(None, now, margin).is_err(), "not leading");
    }

    #[test]
    fn an_attempt_timeout_longer_than_the_renewal_slack_is_refused_at_start_up() {
        let mut config = config();
        config.lease_duration = Duration::from_secs(15);
        config.renew_interval = Duration::from_secs(5);
        assert!(config.validate_fencing(Duration::from_secs(9)).is_ok());
        assert!(config.validate_fencing(Duration::from_secs(10)).is_err());
        assert!(config.validate_fencing(Duration::from_secs(30)).is_err());
    }
}
