//! The flags of `keyless run`. Each has an environment variable `KEYLESS_<FLAG>` (the Helm chart
//! sets them), and every interval is a flag so tests can shrink it.

use super::ControllerConfig;
use crate::azure::config::{AzureArgs, parse_duration};
use crate::engine::brake::{Brake, BrakeConfig};
use crate::engine::{EngineConfig, ResolutionCache};
use crate::ops::leader::LeaseConfig;
use crate::plan::InstanceId;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// This installation's id, written into every role assignment keyless creates; an assignment is
    /// keyless's only if it names this id. Keep it stable, and unique per cluster and pipeline.
    #[arg(long, env = "KEYLESS_INSTANCE_ID", value_parser = parse_instance_id)]
    pub instance_id: InstanceId,
    /// How often every account is reconciled without a change (one LIST per account).
    #[arg(long, env = "KEYLESS_RESYNC_INTERVAL", value_parser = parse_duration, default_value = "10m")]
    pub resync_interval: Duration,
    /// Accounts reconciled at once; writes within one account are always sequential.
    #[arg(long, env = "KEYLESS_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// A grant counts as ready this long after ARM created it (role assignments take up to 10 minutes).
    #[arg(long, env = "KEYLESS_PROPAGATION_GRACE", value_parser = parse_duration, default_value = "5m")]
    pub propagation_grace: Duration,
    /// While grants wait out --propagation-grace, their account is passed again (one LIST) no
    /// sooner than this after a pass, so grants made one after another turn Ready together instead
    /// of a pass each; the resync comes first when shorter. Expiries are never delayed.
    #[arg(long, env = "KEYLESS_PROPAGATION_CHECK_INTERVAL", value_parser = parse_duration, default_value = "30s")]
    pub propagation_check_interval: Duration,
    /// A repeated Event within this window is counted in the first one's series instead of being
    /// written again (kube's recorder uses 6 minutes).
    #[arg(long, env = "KEYLESS_EVENT_SERIES_WINDOW", value_parser = parse_duration, default_value = "6m")]
    pub event_series_window: Duration,
    /// How many recent Events are remembered for their series: a bound on the memory that takes
    /// (a few hundred bytes each); an Event that falls out is written anew when it repeats.
    #[arg(long, env = "KEYLESS_EVENT_MEMORY", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub event_memory: u32,
    /// How often every arena of the allocator (jemalloc) hands its freed pages back to the OS at
    /// once; between, it does so gradually on its own. 0s turns the periodic purge off.
    #[arg(long, env = "KEYLESS_MEMORY_TRIM_INTERVAL", value_parser = parse_duration, default_value = "60s")]
    pub memory_trim_interval: Duration,
    /// How long a principal Entra does not know yet is waited for before it is reported Failed.
    #[arg(long, env = "KEYLESS_REPLICATION_DEADLINE", value_parser = parse_duration, default_value = "10m")]
    pub replication_deadline: Duration,
    /// How long a principal's resolved object id is reused before Graph or ARM is asked again, so a
    /// resync of an unchanged account costs its one LIST (a restart always looks up afresh).
    #[arg(long, env = "KEYLESS_RESOLUTION_CACHE_TTL", value_parser = parse_duration, default_value = "30m")]
    pub resolution_cache_ttl: Duration,
    /// The most role assignments one pass over one account deletes; the rest wait for the next pass.
    #[arg(long, env = "KEYLESS_MAX_DELETES_PER_PASS", default_value_t = 50)]
    pub max_deletes_per_pass: usize,
    /// First retry delay after a transient failure (doubles up to --retry-max, with jitter).
    #[arg(long, env = "KEYLESS_RETRY_INITIAL", value_parser = parse_duration, default_value = "5s")]
    pub retry_initial: Duration,
    #[arg(long, env = "KEYLESS_RETRY_MAX", value_parser = parse_duration, default_value = "5m")]
    pub retry_max: Duration,
    /// This cluster's service account issuer; discovered from the API server when not set.
    #[arg(long, env = "KEYLESS_SERVICE_ACCOUNT_ISSUER")]
    pub service_account_issuer: Option<String>,
    /// Let OpenAIAccess objects export the endpoint into a ConfigMap (needs ConfigMap RBAC).
    #[arg(long, env = "KEYLESS_ENABLE_CONFIGMAP_EXPORT")]
    pub enable_configmap_export: bool,
    /// Serves /metrics, /healthz and /readyz.
    #[arg(long, env = "KEYLESS_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Only the holder of a coordination.k8s.io Lease reconciles; other replicas stand by.
    #[arg(long, env = "KEYLESS_LEADER_ELECTION")]
    pub leader_election: bool,
    #[arg(long, env = "KEYLESS_LEASE_NAME", default_value = "keyless")]
    pub lease_name: String,
    /// The Lease's namespace (the chart passes the release namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "keyless-system")]
    pub lease_namespace: String,
    /// This replica's name in the Lease (the chart passes the Pod name).
    #[arg(long, env = "POD_NAME")]
    pub lease_holder: Option<String>,
    /// How long a lease stays the holder's after a renewal.
    #[arg(long, env = "KEYLESS_LEASE_DURATION", value_parser = parse_duration, default_value = "15s")]
    pub lease_duration: Duration,
    /// How often the leader renews the lease (shorter than --lease-duration).
    #[arg(long, env = "KEYLESS_LEASE_RENEW_INTERVAL", value_parser = parse_duration, default_value = "5s")]
    pub lease_renew_interval: Duration,
    /// How often a standby tries to take the lease.
    #[arg(long, env = "KEYLESS_LEASE_RETRY_INTERVAL", value_parser = parse_duration, default_value = "2s")]
    pub lease_retry_interval: Duration,
    /// How often role assignments per subscription are counted against ARM's limit of 4,000 (a
    /// Warning event at 80 %); needs roleAssignments/read at the subscription.
    #[arg(long, env = "KEYLESS_ASSIGNMENT_COUNT_INTERVAL", value_parser = parse_duration, default_value = "1h")]
    pub assignment_count_interval: Duration,
    /// Turn the per-subscription count off.
    #[arg(long, env = "KEYLESS_NO_ASSIGNMENT_COUNT")]
    pub no_assignment_count: bool,
    /// The most role assignments keyless deletes on one account per --delete-budget-window,
    /// whatever the number of passes.
    #[arg(long, env = "KEYLESS_DELETE_BUDGET", default_value_t = 50)]
    pub delete_budget: usize,
    #[arg(long, env = "KEYLESS_DELETE_BUDGET_WINDOW", value_parser = parse_duration, default_value = "10m")]
    pub delete_budget_window: Duration,
    /// A pass that would revoke more than this percentage of an account's owned grants (and at
    /// least --mass-revocation-minimum) holds all its deletes until a person confirms with the
    /// keyless.dev/confirm-revocations annotation on the OpenAIAccount.
    #[arg(long, env = "KEYLESS_MASS_REVOCATION_PERCENT", default_value_t = 20, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub mass_revocation_percent: u8,
    #[arg(long, env = "KEYLESS_MASS_REVOCATION_MINIMUM", default_value_t = 10)]
    pub mass_revocation_minimum: usize,
    /// How long a delete no present OpenAIAccess explains waits (default: twice --resync-interval).
    #[arg(long, env = "KEYLESS_PRUNE_GRACE", value_parser = parse_duration)]
    pub prune_grace: Option<Duration>,
    /// Consecutive watch errors after which a store counts as failing (a 403 counts at once):
    /// while one does, keyless revokes nothing.
    #[arg(long, env = "KEYLESS_WATCH_FAILURE_THRESHOLD", default_value_t = 3)]
    pub watch_failure_threshold: u32,
    /// How long a watch error keeps the view incomplete when no newer event shows the watch works
    /// again; longer than the watcher's longest backoff (30 s).
    #[arg(long, env = "KEYLESS_WATCH_FAILURE_TTL", value_parser = parse_duration, default_value = "60s")]
    pub watch_failure_ttl: Duration,
    /// How often a pass waiting for the first lists looks again.
    #[arg(long, env = "KEYLESS_VIEW_POLL_INTERVAL", value_parser = parse_duration, default_value = "1s")]
    pub view_poll_interval: Duration,
    /// Management Observe on every account, whatever its spec.management says: keyless resolves,
    /// plans and reports in status, events and metrics, and sends no role assignment write. For a
    /// first install on a live tenant.
    #[arg(long, env = "KEYLESS_OBSERVE")]
    pub observe: bool,
    /// Enforcement Exclusive: how long an assignment made outside keyless is listed in the
    /// account's status.exclusiveRevocations (condition ExclusiveRevocationsPending) before it is
    /// revoked. The time it was first listed is kept in status, so a restart does not reset it.
    #[arg(long, env = "KEYLESS_EXCLUSIVE_GRACE", value_parser = parse_duration, default_value = "10m")]
    pub exclusive_grace: Duration,
    #[command(flatten)]
    pub azure: AzureArgs,
}

fn parse_instance_id(value: &str) -> Result<InstanceId, String> {
    InstanceId::new(value).map_err(|e| e.to_string())
}

impl RunArgs {
    pub fn controller_config(&self, federation_issuer: Option<String>) -> ControllerConfig {
        ControllerConfig {
            engine: EngineConfig {
                instance: self.instance_id.clone(),
                max_deletes_per_pass: self.max_deletes_per_pass,
                replication_deadline: self.replication_deadline,
                propagation_grace: self.propagation_grace,
                federation_issuer,
                dry_run: false,
                observe: self.observe,
                resolution_cache: Some(std::sync::Arc::new(ResolutionCache::new(
                    self.resolution_cache_ttl,
                ))),
                prune: true,
                brake: Some(std::sync::Arc::new(Brake::new(BrakeConfig {
                    budget: self.delete_budget,
                    window: self.delete_budget_window,
                    mass_share: f64::from(self.mass_revocation_percent) / 100.0,
                    mass_minimum: self.mass_revocation_minimum,
                    prune_grace: self
                        .prune_grace
                        .unwrap_or(self.resync_interval.saturating_mul(2)),
                }))),
                // Set by `run` from the leader election, when there is one.
                fence: None,
                exclusive_grace: self.exclusive_grace,
            },
            view_failure_threshold: self.watch_failure_threshold,
            view_failure_ttl: self.watch_failure_ttl,
            view_poll_interval: self.view_poll_interval,
            arm_attempt_timeout: self.azure.to_config().timeout,
            resync_interval: self.resync_interval,
            propagation_check_interval: self.propagation_check_interval,
            event_series_window: self.event_series_window,
            event_memory: self.event_memory as usize,
            memory_trim_interval: (!self.memory_trim_interval.is_zero())
                .then_some(self.memory_trim_interval),
            concurrency: self.concurrency,
            retry_initial: self.retry_initial,
            retry_max: self.retry_max,
            enable_configmap_export: self.enable_configmap_export,
            http_addr: Some(self.http_addr),
            assignment_count_interval: (!self.no_assignment_count)
                .then_some(self.assignment_count_interval),
            leader: self.leader_election.then(|| LeaseConfig {
                name: self.lease_name.clone(),
                namespace: self.lease_namespace.clone(),
                holder_id: self
                    .lease_holder
                    .clone()
                    .unwrap_or_else(|| format!("keyless-{}", uuid::Uuid::new_v4())),
                lease_duration: self.lease_duration,
                renew_interval: self.lease_renew_interval,
                retry_interval: self.lease_retry_interval,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn run_args(args: &[&str]) -> super::RunArgs {
        let mut argv = vec!["keyless", "run", "--instance-id=cluster-1"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(args) => *args,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn the_default_timeouts_pass_the_fences_start_up_rule() {
        let config = run_args(&["--leader-election"]).controller_config(None);
        let lease = config.leader.clone().unwrap();
        assert!(
            config.arm_attempt_timeout < lease.lease_duration - lease.renew_interval,
            "attempt {:?}, lease {:?}, renewal {:?}",
            config.arm_attempt_timeout,
            lease.lease_duration,
            lease.renew_interval
        );
        lease
            .validate_fencing(config.arm_attempt_timeout)
            .expect("the defaults start");
    }

    #[test]
    fn an_attempt_timeout_the_lease_cannot_cover_is_refused_from_the_flags() {
        // The control: the rule does look at the flags.
        let config =
            run_args(&["--leader-election", "--azure-timeout=10s"]).controller_config(None);
        let lease = config.leader.unwrap();
        assert!(lease.validate_fencing(config.arm_attempt_timeout).is_err());
    }

    #[test]
    fn the_prune_grace_defaults_to_two_resyncs() {
        let args = run_args(&["--resync-interval=3m"]);
        assert_eq!(args.prune_grace, None);
        let config = args.controller_config(None);
        let brake = config.engine.brake.unwrap();
        assert_eq!(
            brake.config.prune_grace,
            std::time::Duration::from_secs(360)
        );
    }
}
