//! `keyless bench --controller --kubeconfig FILE`: the controller at scale on a real API server.
//!
//! The bench starts the Azure emulator in this process (ARM's token buckets, a chosen latency, a
//! seed generated for the workload), creates the workload through the kubeconfig (the CRDs from
//! this binary when absent), and runs the real controller as a child process (`keyless run`, this
//! same executable) pointed at the emulator, so `/proc/<pid>/status` is the controller's own. It
//! never starts a control plane: `.ci/bench-controller.sh` does, from `../shared/k8s`.
//!
//! Phases, in order (each a block of rows in the table and the JSON):
//!
//! 1. **converge**: N accounts over S subscriptions × M OpenAIAccess × K principals (by objectId,
//!    so Graph is not measured), all created before the controller starts; wall time against the
//!    bound of ARM's write buckets, requests against the floor (one PUT per grant + one LIST page
//!    per account). The controller runs with a resync far longer than the run (child A).
//! 2. **churn**: with child A still running and quiet, label changes of namespaces without objects
//!    and updates of ServiceAccounts no object names, in namespaces that hold objects: ARM
//!    requests caused and reconciles triggered. Child A stops; its peak RSS is the converge peak.
//! 3. **start-up**: a fresh process (child B, with the benchmark's resync interval) on the
//!    converged cluster: process start → `/readyz`, → first reconcile (`keyless_reconciles_total`).
//! 4. **grace** and **steady**: first, until every converged grant is past its propagation grace,
//!    the passes that turn them Ready (a batch per --propagation-check-interval): LIST pages and
//!    status PATCHes, shown, not checked. Then R resyncs of every account: LIST pages per pass,
//!    writes, status PATCHes (`keyless_kube_requests_total`), Graph requests.
//! 5. **drift**: 1 % of the assignments deleted through the emulator's admin API: time until
//!    the next resync repaired them, and what it cost.
//! 6. **memory**: the population topped up to the memory figures (default 10,000 OpenAIAccess,
//!    20,000 ServiceAccounts, 2,000 Namespaces; the added objects name principals the accounts
//!    already grant, so they cost passes and status, not ARM writes); child B's peak and steady RSS.
//! 7. **takeover**: two replicas with leader election; the leader SIGKILLed and one assignment
//!    deleted at once: time until the new leader's first ARM write.
//!
//! Only request ratios are checked (`--check` makes a failed one the exit status); time and
//! memory are printed against their targets, never asserted.

use super::figures::{self, Row, Sample};
use super::{Counts, Rss};
use crate::api::{OpenAIAccess, OpenAIAccount};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use keyless_emulator::{Emulator, EmulatorConfig, EmulatorError, EmulatorHandle};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Resource};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ISSUER: &str = "https://oidc.bench.example/";
const INSTANCE: &str = "keyless-bench";
const TENANT_LABEL: &str = "bench.keyless.dev/tenant";
const LEASE_NAMESPACE: &str = "keyless-system";

/// A phase that can be skipped with `--skip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Churn,
    Steady,
    Drift,
    Memory,
    Takeover,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ControllerBenchArgs {
    /// Measure the controller (`keyless run`) on the cluster of --kubeconfig instead of file mode.
    #[arg(long)]
    pub controller: bool,
    /// The cluster to run against (a fresh one: the bench creates its objects and leaves them).
    #[arg(long, value_name = "FILE", requires = "controller")]
    pub kubeconfig: Option<PathBuf>,
    /// Subscriptions the accounts are spread over (ARM's buckets are per subscription).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub subscriptions: u32,
    /// OpenAIAccess objects per account.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u32).range(1..))]
    pub objects: u32,
    /// Principals per OpenAIAccess object (distinct within an account).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub principals: u32,
    /// Namespaces the converge population's objects are spread over.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub workload_namespaces: u32,
    /// Resyncs measured in the steady phase.
    #[arg(long, default_value_t = 3)]
    pub resyncs: u32,
    /// The controller's --resync-interval from the start-up phase on.
    #[arg(long, value_parser = crate::azure::config::parse_duration, default_value = "30s")]
    pub resync_interval: Duration,
    /// The controllers' --propagation-grace: the steady phase starts once every converged grant
    /// is past it (the passes until then are the grace rows).
    #[arg(long, value_parser = crate::azure::config::parse_duration, default_value = "5m")]
    pub propagation_grace: Duration,
    /// The controllers' --propagation-check-interval.
    #[arg(long, value_parser = crate::azure::config::parse_duration, default_value = "30s")]
    pub propagation_check_interval: Duration,
    /// The controllers' --memory-trim-interval. The memory phase reads the steady RSS one interval
    /// after the controller went quiet, as a deployed one settles.
    #[arg(long, value_parser = crate::azure::config::parse_duration, default_value = "60s")]
    pub memory_trim_interval: Duration,
    /// Namespaces (without objects) whose labels the churn changes.
    #[arg(long, default_value_t = 100)]
    pub churn_namespaces: u32,
    /// ServiceAccounts (no object names them) the churn updates, in the workload's namespaces.
    #[arg(long, default_value_t = 100)]
    pub churn_service_accounts: u32,
    /// Rounds of churn: each changes every churn namespace's labels and every churn SA once.
    #[arg(long, default_value_t = 10)]
    pub churn_rounds: u32,
    /// Share of the assignments deleted behind keyless's back, in percent (at least one).
    #[arg(long, default_value_t = 1.0)]
    pub drift_percent: f64,
    /// OpenAIAccess objects in the cluster for the memory phase (the converge population counts).
    #[arg(long, default_value_t = 10_000)]
    pub memory_objects: u32,
    /// ServiceAccounts in the cluster for the memory phase.
    #[arg(long, default_value_t = 20_000)]
    pub memory_service_accounts: u32,
    /// Namespaces in the cluster for the memory phase.
    #[arg(long, default_value_t = 2_000)]
    pub memory_namespaces: u32,
    /// Kubernetes writes the bench sends at once while it creates and changes objects.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub kube_concurrency: u16,
    /// The controller's --concurrency (default: one per account, so ARM's buckets set the pace).
    #[arg(long)]
    pub controller_concurrency: Option<u16>,
    /// A phase ends once the controller finished no reconcile and sent no Azure request for this.
    #[arg(long, value_parser = crate::azure::config::parse_duration, default_value = "3s")]
    pub settle: Duration,
    /// How often the bench looks at the emulator and the controller's /metrics.
    #[arg(long, value_parser = crate::azure::config::parse_duration, default_value = "100ms")]
    pub poll_interval: Duration,
    /// The longest any one phase may take before the bench gives up.
    #[arg(long, value_parser = crate::azure::config::parse_duration, default_value = "45m")]
    pub phase_timeout: Duration,
    /// The replicas' --lease-duration in the takeover phase (renewal a third of it).
    #[arg(long, value_parser = crate::azure::config::parse_duration, default_value = "15s")]
    pub lease_duration: Duration,
    /// Phases to leave out.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub skip: Vec<Phase>,
    /// Also write the figures as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Exit non-zero when a request ratio misses its target (time and memory never fail it).
    #[arg(long)]
    pub check: bool,
    /// The controller processes' --log-level (their logs go to --log-dir).
    #[arg(long, default_value = "warn")]
    pub controller_log_level: String,
    /// Where the controller processes' logs go (default: a new directory under the temp dir).
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerBenchError {
    #[error("{0}")]
    Usage(String),
    #[error("start the emulator")]
    Emulator(#[from] EmulatorError),
    #[error("read the kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("start the controller process")]
    Spawn(#[source] std::io::Error),
    #[error("the controller process exited ({0}); see its log in {1}")]
    ControllerExited(std::process::ExitStatus, PathBuf),
    #[error("{phase}: {what} within {timeout:?}")]
    Timeout {
        phase: &'static str,
        what: &'static str,
        timeout: Duration,
    },
    #[error("write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("generate a manifest")]
    Manifest(#[source] serde_json::Error),
}

type Result<T, E = ControllerBenchError> = std::result::Result<T, E>;

fn kube_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ControllerBenchError {
    let what = what.into();
    move |source| ControllerBenchError::Kube { what, source }
}

/// The generated workload, by name.
struct Workload {
    accounts: u32,
    objects: u32,
    principals: u32,
    namespaces: u32,
    grants: u64,
    /// Subscription of each account.
    account_subscriptions: Vec<String>,
}

impl Workload {
    fn account(&self, a: u32) -> String {
        format!("oai-bench-{a:03}")
    }
    fn namespace(&self, i: u32) -> String {
        format!("kb-w-{i}")
    }
    /// The namespace of account `a`'s `o`-th object.
    fn object_namespace(&self, a: u32, o: u32) -> u32 {
        (a * self.objects + o) % self.namespaces
    }
    /// The accounts with objects in workload namespace `i`.
    fn accounts_in_namespace(&self, i: u32) -> BTreeSet<u32> {
        (0..self.accounts)
            .filter(|a| (0..self.objects).any(|o| self.object_namespace(*a, o) == i))
            .collect()
    }
}

/// A `keyless run` child process and its /metrics port.
struct Controller {
    child: std::process::Child,
    port: u16,
    started: Instant,
    log: PathBuf,
}

impl Controller {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss(&self) -> Option<Rss> {
        Rss::of(Some(self.pid()))
    }

    fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(ControllerBenchError::ControllerExited(
                status,
                self.log.clone(),
            )),
            _ => Ok(()),
        }
    }

    /// SIGTERM (a graceful shutdown), then wait.
    fn terminate(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Bench<'a> {
    args: &'a ControllerBenchArgs,
    kubeconfig: PathBuf,
    client: Client,
    emulator: EmulatorHandle,
    http: reqwest::Client,
    log_dir: PathBuf,
    workload: Workload,
}

/// Runs the controller benchmark, prints the table, writes the JSON; the failed checks.
pub async fn run(
    args: &ControllerBenchArgs,
    accounts: u32,
    latency: Duration,
    page_size: usize,
    throttling_enabled: bool,
) -> Result<Vec<String>> {
    let kubeconfig = args.kubeconfig.clone().ok_or_else(|| {
        ControllerBenchError::Usage("--controller needs --kubeconfig FILE".into())
    })?;
    let accounts_per_subscription = accounts.div_ceil(args.subscriptions);
    let per_subscription =
        u64::from(accounts_per_subscription) * u64::from(args.objects) * u64::from(args.principals);
    if per_subscription >= 4000 {
        return Err(ControllerBenchError::Usage(format!(
            "{per_subscription} assignments per subscription: ARM allows 4,000 (with keyless's own grant); add --subscriptions or lower --objects/--principals"
        )));
    }
    let pool = args.objects * args.principals;
    let mut seed = super::seed(args.subscriptions, pool, ISSUER);
    let workload = Workload {
        accounts,
        objects: args.objects,
        principals: args.principals,
        namespaces: args.workload_namespaces,
        grants: u64::from(accounts) * u64::from(pool),
        account_subscriptions: (0..accounts)
            .map(|a| super::subscription(a / accounts_per_subscription))
            .collect(),
    };
    for a in 0..accounts {
        super::add_account(
            &mut seed,
            &workload.account_subscriptions[a as usize],
            &workload.account(a),
        );
    }
    let mut config = EmulatorConfig::new(seed);
    config.page_size = page_size.max(1);
    config.faults.latency = latency;
    config.throttling.enabled = throttling_enabled;
    let throttling = config.throttling;
    let emulator = Emulator::start(config).await?;

    let client = connect(&kubeconfig).await?;
    let log_dir = match &args.log_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("keyless-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| ControllerBenchError::Write(log_dir.clone(), e))?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|_| ControllerBenchError::Usage("build an HTTP client".into()))?;
    let bench = Bench {
        args,
        kubeconfig,
        client,
        emulator,
        http,
        log_dir,
        workload,
    };
    let settings = serde_json::json!({
        "accounts": accounts,
        "subscriptions": args.subscriptions,
        "objects_per_account": args.objects,
        "principals_per_object": args.principals,
        "grants": bench.workload.grants,
        "latency_ms": latency.as_millis() as u64,
        "arm_buckets": throttling_enabled,
        "resyncs": args.resyncs,
        "resync_interval_s": args.resync_interval.as_secs_f64(),
        "memory_objects": args.memory_objects,
        "memory_service_accounts": args.memory_service_accounts,
        "memory_namespaces": args.memory_namespaces,
        "memory_trim_interval_s": args.memory_trim_interval.as_secs_f64(),
    });
    println!(
        "keyless bench --controller: {accounts} accounts over {} subscriptions × {} objects × {} principals = {} grants; latency {} ms; ARM buckets {}; logs in {}",
        args.subscriptions,
        args.objects,
        args.principals,
        bench.workload.grants,
        latency.as_millis(),
        if throttling_enabled {
            format!(
                "writes {}+{}/s per subscription",
                throttling.writes.capacity, throttling.writes.refill_per_second
            )
        } else {
            "off".into()
        },
        bench.log_dir.display()
    );

    let mut rows: Vec<Row> = Vec::new();
    let result = bench.phases(&mut rows, throttling.writes).await;
    print!("\n{}", figures::table(&rows));
    let failed = figures::failures(&rows);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&figures::json(settings, &rows))
            .map_err(ControllerBenchError::Manifest)?;
        std::fs::write(path, text + "\n")
            .map_err(|e| ControllerBenchError::Write(path.clone(), e))?;
    }
    bench.emulator.shutdown().await;
    result?;
    if failed.is_empty() {
        println!("\nall request checks passed");
    } else {
        println!("\nfailed checks:");
        for f in &failed {
            println!("  {f}");
        }
    }
    Ok(failed)
}

async fn connect(path: &Path) -> Result<Client> {
    let boxed = |e: Box<dyn std::error::Error + Send + Sync>| ControllerBenchError::Kubeconfig {
        path: path.to_path_buf(),
        source: e,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| boxed(Box::new(e)))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| boxed(Box::new(e)))?;
    Client::try_from(config).map_err(kube_error("connect to the cluster"))
}

/// Creates every object, `concurrency` at a time; one that already exists is left as it is.
async fn create_all<K>(
    api: impl Fn(&K) -> Api<K>,
    objects: Vec<K>,
    concurrency: u16,
    what: &str,
) -> Result<()>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = PostParams::default();
    futures::stream::iter(objects)
        .map(|object| {
            let api = api(&object);
            let params = &params;
            async move {
                match api.create(params, &object).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(usize::from(concurrency))
        .try_collect::<Vec<()>>()
        .await
        .map_err(kube_error(format!("create {what}")))?;
    Ok(())
}

/// Merge-patches every (api, name, patch), `concurrency` at a time.
async fn patch_all<K>(
    patches: Vec<(Api<K>, String, serde_json::Value)>,
    concurrency: u16,
    what: &str,
) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = PatchParams::default();
    futures::stream::iter(patches)
        .map(|(api, name, patch)| {
            let params = &params;
            async move {
                api.patch(&name, params, &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(usize::from(concurrency))
        .try_collect::<Vec<()>>()
        .await
        .map_err(kube_error(format!("change {what}")))?;
    Ok(())
}

fn namespace(name: &str, tenant: bool) -> Result<Namespace> {
    let labels = if tenant {
        serde_json::json!({ TENANT_LABEL: "yes" })
    } else {
        serde_json::json!({})
    };
    serde_json::from_value(serde_json::json!({ "metadata": { "name": name, "labels": labels } }))
        .map_err(ControllerBenchError::Manifest)
}

fn service_account(namespace: &str, name: &str) -> Result<ServiceAccount> {
    serde_json::from_value(
        serde_json::json!({ "metadata": { "name": name, "namespace": namespace } }),
    )
    .map_err(ControllerBenchError::Manifest)
}

fn access(namespace: &str, name: &str, account: &str, principals: &[u32]) -> Result<OpenAIAccess> {
    let principals: Vec<serde_json::Value> =
        principals.iter().map(|g| super::principal(*g)).collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "keyless.dev/v1alpha1",
        "kind": "OpenAIAccess",
        "metadata": { "name": name, "namespace": namespace },
        "spec": { "accountRef": { "name": account }, "principals": principals }
    }))
    .map_err(ControllerBenchError::Manifest)
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Bench<'_> {
    async fn phases(
        &self,
        rows: &mut Vec<Row>,
        writes: keyless_emulator::config::Bucket,
    ) -> Result<()> {
        let args = self.args;
        let skip = |p: Phase| args.skip.contains(&p);
        self.apply_crds().await?;
        self.create_workload().await?;

        // 1. converge (child A: no resync during the run).
        let long = Duration::from_secs(24 * 3600);
        self.emulator.reset_request_counts();
        // Child A passes again for nothing (no resync, no batch of grants turning Ready), so
        // whatever the churn triggers is the churn's.
        let mut a = self.spawn("converge", long, long, &[])?;
        let started = Instant::now();
        self.wait_for("converge", "every grant created", &mut a, async || {
            self.managed_assignments() >= self.workload.grants
        })
        .await?;
        let wall = started.elapsed();
        let converged_at = Instant::now();
        self.wait_quiet("converge", &mut a).await?;
        let samples = self.scrape(a.port).await?;
        let azure = self.emulator.request_counts();
        let (account_pages, subscription_pages) = self.list_pages();
        let mut writes_per_subscription: BTreeMap<&str, u64> = BTreeMap::new();
        let per_account = u64::from(self.workload.objects * self.workload.principals);
        for sub in &self.workload.account_subscriptions {
            *writes_per_subscription.entry(sub).or_default() += per_account;
        }
        rows.extend(figures::converge_rows(&figures::Converge {
            accounts: u64::from(self.workload.accounts),
            grants: self.workload.grants,
            wall_seconds: seconds(wall),
            bucket_bound_seconds: super::bucket_bound(writes_per_subscription.values(), writes),
            azure,
            account_list_pages: account_pages,
            subscription_list_pages: subscription_pages,
            kube_by_verb: figures::kube_requests_by_verb(&samples),
            reconciles: reconciles(&samples),
        }));
        print_rows(rows, "converge");

        // 2. churn (child A, still without resync).
        if !skip(Phase::Churn) {
            rows.extend(figures::churn_rows(&self.churn(&mut a).await?));
            print_rows(rows, "churn");
        }
        let converge_peak = a.rss().map(|r| r.peak_kib).unwrap_or(0);
        a.terminate();

        // 3. start-up (child B, with the benchmark's resync interval). The first reconcile is the
        // first LIST at an account scope: a pass that only finds the stores not yet listed counts
        // in keyless_reconciles_total but does no work.
        self.emulator.reset_request_counts();
        let mut b = self.spawn(
            "steady",
            args.resync_interval,
            args.propagation_check_interval,
            &[],
        )?;
        let port = b.port;
        let b_started = b.started;
        let mut ready_at = None;
        let mut first_reconcile_at = None;
        self.wait_for("start-up", "the first reconcile", &mut b, async || {
            if ready_at.is_none() && self.ready(port).await {
                ready_at = Some(b_started.elapsed());
            }
            if first_reconcile_at.is_none() && self.list_pages().0 > 0 {
                first_reconcile_at = Some(b_started.elapsed());
            }
            ready_at.is_some() && first_reconcile_at.is_some()
        })
        .await?;
        rows.extend(figures::startup_rows(&figures::Startup {
            to_ready_seconds: ready_at.map(seconds).unwrap_or(0.0),
            to_first_reconcile_seconds: first_reconcile_at.map(seconds).unwrap_or(0.0),
        }));
        print_rows(rows, "start-up");
        // The restart's own pass over every account, then quiet.
        let accounts = u64::from(self.workload.accounts);
        self.wait_for(
            "start-up",
            "one pass over every account",
            &mut b,
            async || self.scrape(port).await.map(|s| reconciles(&s)).unwrap_or(0) >= accounts,
        )
        .await?;
        self.wait_quiet("start-up", &mut b).await?;

        // 4. steady: R resyncs once no converged grant is in its propagation grace any more. Until
        // then a pass every --propagation-check-interval turns the next batch Ready: the grace
        // rows.
        if !skip(Phase::Steady) && args.resyncs > 0 {
            let grace_ends = converged_at
                + args.propagation_grace
                + args.propagation_check_interval
                + args.settle;
            self.wait_for("grace", "the propagation grace", &mut b, async || {
                Instant::now() >= grace_ends
            })
            .await?;
            self.wait_quiet("grace", &mut b).await?;
            let since_restart = self.scrape(port).await?;
            rows.extend(figures::grace_rows(&figures::Grace {
                accounts,
                objects: u64::from(self.workload.accounts * self.workload.objects),
                seconds: seconds(b_started.elapsed()),
                check_interval_seconds: seconds(args.propagation_check_interval),
                reconciles: reconciles(&since_restart),
                account_list_pages: self.list_pages().0,
                status_patches: status_patches(&since_restart),
            }));
            print_rows(rows, "grace");

            self.emulator.reset_request_counts();
            let before = self.scrape(port).await?;
            let want = accounts * u64::from(args.resyncs);
            self.wait_for("steady", "the resyncs", &mut b, async || {
                self.scrape(port)
                    .await
                    .map(|s| reconciles(&s) - reconciles(&before))
                    .unwrap_or(0)
                    >= want
            })
            .await?;
            self.wait_quiet("steady", &mut b).await?;
            let after = self.scrape(port).await?;
            let azure = self.emulator.request_counts();
            let (account_pages, _) = self.list_pages();
            let writes = super::total(&azure, "RoleAssignments_Create")
                + super::total(&azure, "RoleAssignments_Delete");
            let graph = super::graph_requests(&azure);
            let all: u64 = azure.values().sum();
            rows.extend(figures::steady_rows(&figures::Steady {
                accounts,
                resyncs: u64::from(args.resyncs),
                reconciles: reconciles(&after) - reconciles(&before),
                account_list_pages: account_pages,
                writes,
                status_patches: status_patches(&after) - status_patches(&before),
                graph,
                other_azure: all - account_pages - writes - graph,
            }));
            print_rows(rows, "steady");
        }

        // 5. drift.
        if !skip(Phase::Drift) {
            rows.extend(figures::drift_rows(&self.drift(&mut b).await?));
            print_rows(rows, "drift");
        }

        // 6. memory.
        if !skip(Phase::Memory) {
            let started = Instant::now();
            let (objects, service_accounts, namespaces) = self.populate_memory().await?;
            let population = started.elapsed();
            self.wait_quiet("memory", &mut b).await?;
            // Steady: after the controller's next hand-back of free heap (--memory-trim-interval),
            // sampled over one resync interval: a resync's passes allocate for as long as they
            // run, so the lowest sample is the controller between passes and the highest is what
            // a resync adds (one reading alone lands on either).
            tokio::time::sleep(self.args.memory_trim_interval).await;
            let (rss, heap, during_passes_kib) = self.sample_memory(&b).await;
            rows.extend(figures::memory_rows(&figures::Memory {
                converge_peak_kib: converge_peak,
                objects,
                service_accounts,
                namespaces,
                population_seconds: seconds(population),
                peak_kib: rss.peak_kib,
                steady_kib: rss.current_kib,
                steady_anon_kib: rss.anon_kib,
                steady_file_kib: rss.file_kib,
                during_passes_kib,
                heap_allocated_bytes: figures::metric_sum(
                    &heap,
                    "keyless_heap_allocated_bytes",
                    &[],
                ),
                heap_resident_bytes: figures::metric_sum(&heap, "keyless_heap_resident_bytes", &[]),
            }));
            print_rows(rows, "memory");
        }
        b.terminate();

        // 7. takeover.
        if !skip(Phase::Takeover) {
            rows.extend(figures::takeover_rows(&self.takeover().await?));
            print_rows(rows, "takeover");
        }
        Ok(())
    }

    async fn apply_crds(&self) -> Result<()> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in crate::api::crds() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            match crds.create(&PostParams::default(), &crd).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(e) => return Err(kube_error("create the CRDs")(e)),
            }
            let deadline = Instant::now() + self.args.phase_timeout;
            loop {
                let established = crds
                    .get(&name)
                    .await
                    .map_err(kube_error("read the CRDs"))?
                    .status
                    .and_then(|s| s.conditions)
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    });
                if established {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(ControllerBenchError::Timeout {
                        phase: "set-up",
                        what: "the CRDs Established",
                        timeout: self.args.phase_timeout,
                    });
                }
                tokio::time::sleep(self.args.poll_interval).await;
            }
        }
        Ok(())
    }

    async fn create_workload(&self) -> Result<()> {
        let w = &self.workload;
        let c = self.args.kube_concurrency;
        let started = Instant::now();
        let mut namespaces = vec![namespace(LEASE_NAMESPACE, false)?];
        for i in 0..w.namespaces {
            namespaces.push(namespace(&w.namespace(i), true)?);
        }
        create_all(
            |_| Api::all(self.client.clone()),
            namespaces,
            c,
            "namespaces",
        )
        .await?;
        let mut accounts = Vec::new();
        for a in 0..w.accounts {
            let name = w.account(a);
            accounts.push(
                serde_json::from_value::<OpenAIAccount>(serde_json::json!({
                    "apiVersion": "keyless.dev/v1alpha1",
                    "kind": "OpenAIAccount",
                    "metadata": { "name": name },
                    "spec": {
                        "resourceId": super::account_resource_id(&w.account_subscriptions[a as usize], &name),
                        "allowedNamespaces": { "selector": { "matchLabels": { TENANT_LABEL: "yes" } } },
                    }
                }))
                .map_err(ControllerBenchError::Manifest)?,
            );
        }
        create_all(
            |_| Api::all(self.client.clone()),
            accounts,
            c,
            "OpenAIAccounts",
        )
        .await?;
        let mut objects = Vec::new();
        for a in 0..w.accounts {
            for o in 0..w.objects {
                let principals: Vec<u32> = (o * w.principals..(o + 1) * w.principals).collect();
                objects.push(access(
                    &w.namespace(w.object_namespace(a, o)),
                    &format!("a{a}-o{o}"),
                    &w.account(a),
                    &principals,
                )?);
            }
        }
        let count = objects.len();
        create_all(
            |o: &OpenAIAccess| {
                Api::namespaced(
                    self.client.clone(),
                    o.metadata.namespace.as_deref().unwrap_or_default(),
                )
            },
            objects,
            c,
            "OpenAIAccess objects",
        )
        .await?;
        eprintln!(
            "created {} namespaces, {} accounts, {count} OpenAIAccess objects in {:.1} s",
            w.namespaces,
            w.accounts,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn spawn(
        &self,
        name: &str,
        resync: Duration,
        propagation_check: Duration,
        extra: &[String],
    ) -> Result<Controller> {
        let port = free_port().map_err(ControllerBenchError::Spawn)?;
        let exe = std::env::current_exe().map_err(ControllerBenchError::Spawn)?;
        let log = self.log_dir.join(format!("{name}.log"));
        let log_file =
            std::fs::File::create(&log).map_err(|e| ControllerBenchError::Write(log.clone(), e))?;
        let endpoint = self.emulator.endpoint().to_string();
        let concurrency = self
            .args
            .controller_concurrency
            .unwrap_or(u16::try_from(self.workload.accounts).unwrap_or(u16::MAX))
            .max(1);
        let mut args: Vec<String> = vec![
            "run".into(),
            format!("--instance-id={INSTANCE}"),
            format!("--service-account-issuer={ISSUER}"),
            format!("--arm-endpoint={endpoint}"),
            format!("--graph-endpoint={endpoint}"),
            format!("--authority-host={endpoint}"),
            format!("--ca-file={}", self.emulator.ca_file().display()),
            "--credential=workload-identity".into(),
            format!("--tenant-id={}", self.emulator.tenant_id()),
            format!(
                "--client-id={}",
                self.emulator.operator_client_id().unwrap_or_default()
            ),
            format!(
                "--federated-token-file={}",
                self.emulator
                    .federated_token_file()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
            format!("--http-addr=127.0.0.1:{port}"),
            format!("--resync-interval={}s", resync.as_secs().max(1)),
            format!(
                "--propagation-grace={}ms",
                self.args.propagation_grace.as_millis()
            ),
            format!(
                "--propagation-check-interval={}ms",
                propagation_check.as_millis()
            ),
            format!("--concurrency={concurrency}"),
            format!(
                "--memory-trim-interval={}ms",
                self.args.memory_trim_interval.as_millis()
            ),
        ];
        args.extend(extra.iter().cloned());
        let child = Command::new(exe)
            .args(&args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KEYLESS_LOG_LEVEL", &self.args.controller_log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .map_err(ControllerBenchError::Spawn)?;
        Ok(Controller {
            child,
            port,
            started: Instant::now(),
            log,
        })
    }

    /// The samples of the /metrics page on `port` (none while it does not answer yet).
    /// Samples the controller's RSS for one resync interval: the lowest sample with the heap
    /// metrics read right after it, and the highest RSS.
    async fn sample_memory(&self, controller: &Controller) -> (Rss, Vec<Sample>, u64) {
        const EVERY: Duration = Duration::from_millis(250);
        let until = Instant::now() + self.args.resync_interval;
        let mut lowest: Option<(Rss, Vec<Sample>)> = None;
        let mut highest = 0;
        while Instant::now() < until {
            if let Some(rss) = controller.rss() {
                highest = highest.max(rss.current_kib);
                if lowest
                    .as_ref()
                    .is_none_or(|(low, _)| rss.current_kib < low.current_kib)
                {
                    let heap = self.scrape(controller.port).await.unwrap_or_default();
                    lowest = Some((rss, heap));
                }
            }
            tokio::time::sleep(EVERY).await;
        }
        let (rss, heap) = lowest.unwrap_or_default();
        (rss, heap, highest)
    }

    async fn scrape(&self, port: u16) -> Result<Vec<Sample>> {
        let text = self
            .http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .and_then(|r| r.error_for_status());
        match text {
            Ok(response) => Ok(figures::parse_metrics(
                &response.text().await.unwrap_or_default(),
            )),
            Err(_) => Ok(Vec::new()),
        }
    }

    async fn ready(&self, port: u16) -> bool {
        self.http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Polls `done` until it holds, failing when the controller exits or the phase times out.
    async fn wait_for(
        &self,
        phase: &'static str,
        what: &'static str,
        controller: &mut Controller,
        mut done: impl AsyncFnMut() -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + self.args.phase_timeout;
        loop {
            if done().await {
                return Ok(());
            }
            controller.check_alive()?;
            if Instant::now() > deadline {
                return Err(ControllerBenchError::Timeout {
                    phase,
                    what,
                    timeout: self.args.phase_timeout,
                });
            }
            tokio::time::sleep(self.args.poll_interval).await;
        }
    }

    /// Waits until, for `--settle`, the controller finished no reconcile and sent no Azure or
    /// Kubernetes request (a pass that made its grants still writes their statuses).
    async fn wait_quiet(&self, phase: &'static str, controller: &mut Controller) -> Result<()> {
        let deadline = Instant::now() + self.args.phase_timeout;
        let mut last = (u64::MAX, u64::MAX, u64::MAX);
        loop {
            let samples = self.scrape(controller.port).await?;
            let now = (
                reconciles(&samples),
                self.emulator.request_counts().values().sum::<u64>(),
                figures::metric_sum(&samples, "keyless_kube_requests_total", &[]),
            );
            if now == last {
                return Ok(());
            }
            last = now;
            controller.check_alive()?;
            if Instant::now() > deadline {
                return Err(ControllerBenchError::Timeout {
                    phase,
                    what: "a quiet controller",
                    timeout: self.args.phase_timeout,
                });
            }
            tokio::time::sleep(self.args.settle).await;
        }
    }

    /// Role assignments at the workload's account scopes.
    fn managed_assignments(&self) -> u64 {
        self.emulator
            .role_assignments()
            .iter()
            .filter(|r| {
                r.scope
                    .to_ascii_lowercase()
                    .contains("/accounts/oai-bench-")
            })
            .count() as u64
    }

    /// LIST pages since the last reset: at account scopes (a pass's) and elsewhere (the count).
    fn list_pages(&self) -> (u64, u64) {
        let mut account = 0;
        let mut other = 0;
        for r in self.emulator.requests() {
            if r.operation == "RoleAssignments_ListForScope" {
                if r.target.to_ascii_lowercase().contains("/accounts/") {
                    account += 1;
                } else {
                    other += 1;
                }
            }
        }
        (account, other)
    }

    async fn churn(&self, a: &mut Controller) -> Result<figures::Churn> {
        let args = self.args;
        let w = &self.workload;
        let c = args.kube_concurrency;
        let churn_ns: Vec<String> = (0..args.churn_namespaces)
            .map(|i| format!("kb-churn-{i}"))
            .collect();
        let namespaces = churn_ns
            .iter()
            .map(|n| namespace(n, false))
            .collect::<Result<Vec<_>>>()?;
        create_all(
            |_| Api::all(self.client.clone()),
            namespaces,
            c,
            "churn namespaces",
        )
        .await?;
        let sas: Vec<(String, String)> = (0..args.churn_service_accounts)
            .map(|i| (w.namespace(i % w.namespaces), format!("kb-churn-{i}")))
            .collect();
        let objects = sas
            .iter()
            .map(|(ns, n)| service_account(ns, n))
            .collect::<Result<Vec<_>>>()?;
        create_all(
            |sa: &ServiceAccount| {
                Api::namespaced(
                    self.client.clone(),
                    sa.metadata.namespace.as_deref().unwrap_or_default(),
                )
            },
            objects,
            c,
            "churn ServiceAccounts",
        )
        .await?;
        let affected: BTreeSet<u32> = (0..args.churn_service_accounts.min(w.namespaces))
            .flat_map(|i| w.accounts_in_namespace(i % w.namespaces))
            .collect();
        self.wait_quiet("churn", a).await?;
        let before = reconciles(&self.scrape(a.port).await?);
        self.emulator.reset_request_counts();
        for round in 0..args.churn_rounds {
            let ns_patches = churn_ns
                .iter()
                .map(|n| {
                    (
                        Api::<Namespace>::all(self.client.clone()),
                        n.clone(),
                        serde_json::json!({"metadata": {"labels": {"bench.keyless.dev/churn": round.to_string()}}}),
                    )
                })
                .collect();
            patch_all(ns_patches, c, "churn namespaces").await?;
            let sa_patches = sas
                .iter()
                .map(|(ns, n)| {
                    (
                        Api::<ServiceAccount>::namespaced(self.client.clone(), ns),
                        n.clone(),
                        serde_json::json!({"metadata": {"annotations": {"bench.keyless.dev/churn": round.to_string()}}}),
                    )
                })
                .collect();
            patch_all(sa_patches, c, "churn ServiceAccounts").await?;
        }
        self.wait_quiet("churn", a).await?;
        let after = reconciles(&self.scrape(a.port).await?);
        let azure = self.emulator.request_counts();
        Ok(figures::Churn {
            namespace_changes: u64::from(args.churn_rounds) * churn_ns.len() as u64,
            service_account_changes: u64::from(args.churn_rounds) * sas.len() as u64,
            affected_accounts: affected.len() as u64,
            arm_requests: azure.values().sum(),
            arm_list_pages: super::total(&azure, "RoleAssignments_ListForScope"),
            reconciles: after - before,
        })
    }

    /// Every `1/share`-th workload assignment, at least one.
    fn drift_victims(&self) -> Vec<String> {
        let managed: Vec<String> = self
            .emulator
            .role_assignments()
            .into_iter()
            .filter(|r| {
                r.scope
                    .to_ascii_lowercase()
                    .contains("/accounts/oai-bench-")
            })
            .map(|r| r.name)
            .collect();
        let share = (self.args.drift_percent / 100.0).clamp(0.0, 1.0);
        let count =
            ((managed.len() as f64 * share).round() as usize).clamp(1, managed.len().max(1));
        let step = (managed.len() / count).max(1);
        managed.into_iter().step_by(step).take(count).collect()
    }

    async fn drift(&self, b: &mut Controller) -> Result<figures::Drift> {
        let victims = self.drift_victims();
        self.emulator.reset_request_counts();
        let started = Instant::now();
        for name in &victims {
            // Gone already is as good as deleted here.
            let _ = self.emulator.delete_role_assignment(name);
        }
        self.wait_for("drift", "the deleted assignments repaired", b, async || {
            self.managed_assignments() >= self.workload.grants
        })
        .await?;
        let repair = started.elapsed();
        self.wait_quiet("drift", b).await?;
        let azure: Counts = self.emulator.request_counts();
        Ok(figures::Drift {
            deleted: victims.len() as u64,
            repair_seconds: seconds(repair),
            resync_interval_seconds: seconds(self.args.resync_interval),
            creates: super::total(&azure, "RoleAssignments_Create"),
            list_pages: self.list_pages().0,
        })
    }

    /// Tops the cluster up to the memory population; the totals.
    async fn populate_memory(&self) -> Result<(u64, u64, u64)> {
        let args = self.args;
        let w = &self.workload;
        let c = args.kube_concurrency;
        // Namespaces: the workload's, the churn's (when it ran) and the lease's count.
        let churned = !args.skip.contains(&Phase::Churn);
        let churn_namespaces = if churned { args.churn_namespaces } else { 0 };
        let churn_service_accounts = if churned {
            args.churn_service_accounts
        } else {
            0
        };
        let existing_ns = w.namespaces + churn_namespaces + 1;
        let extra_ns = args.memory_namespaces.saturating_sub(existing_ns);
        let names: Vec<String> = (0..extra_ns).map(|i| format!("kb-m-{i}")).collect();
        let namespaces = names
            .iter()
            .map(|n| namespace(n, true))
            .collect::<Result<Vec<_>>>()?;
        create_all(
            |_| Api::all(self.client.clone()),
            namespaces,
            c,
            "memory namespaces",
        )
        .await?;
        let all_ns: Vec<String> = (0..w.namespaces)
            .map(|i| w.namespace(i))
            .chain(names.iter().cloned())
            .collect();
        // ServiceAccounts: the churn's count; the API server adds no `default` one without
        // kube-controller-manager, so none is assumed.
        let extra_sa = args
            .memory_service_accounts
            .saturating_sub(churn_service_accounts);
        let sas = (0..extra_sa)
            .map(|i| service_account(&all_ns[i as usize % all_ns.len()], &format!("kb-m-{i}")))
            .collect::<Result<Vec<_>>>()?;
        create_all(
            |sa: &ServiceAccount| {
                Api::namespaced(
                    self.client.clone(),
                    sa.metadata.namespace.as_deref().unwrap_or_default(),
                )
            },
            sas,
            c,
            "memory ServiceAccounts",
        )
        .await?;
        // Objects: principals each account already grants, so the added objects cost passes and
        // status, not ARM writes.
        let existing = w.accounts * w.objects;
        let extra = args.memory_objects.saturating_sub(existing);
        let objects = (0..extra)
            .map(|i| {
                let a = i % w.accounts;
                let o = (i / w.accounts) % w.objects;
                let principals: Vec<u32> = (o * w.principals..(o + 1) * w.principals).collect();
                access(
                    &all_ns[i as usize % all_ns.len()],
                    &format!("m{i}"),
                    &w.account(a),
                    &principals,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        create_all(
            |o: &OpenAIAccess| {
                Api::namespaced(
                    self.client.clone(),
                    o.metadata.namespace.as_deref().unwrap_or_default(),
                )
            },
            objects,
            c,
            "memory OpenAIAccess objects",
        )
        .await?;
        Ok((
            u64::from(existing.max(args.memory_objects)),
            u64::from(churn_service_accounts + extra_sa),
            u64::from(existing_ns + extra_ns),
        ))
    }

    async fn takeover(&self) -> Result<figures::Takeover> {
        let lease = self.args.lease_duration;
        let renew = lease / 3;
        let replica = |holder: &str| -> Vec<String> {
            vec![
                "--leader-election".into(),
                format!("--lease-holder={holder}"),
                format!("--lease-namespace={LEASE_NAMESPACE}"),
                format!("--lease-duration={}ms", lease.as_millis()),
                format!("--lease-renew-interval={}ms", renew.as_millis()),
                format!(
                    "--lease-retry-interval={}ms",
                    (renew / 2).as_millis().max(100)
                ),
            ]
        };
        let long = Duration::from_secs(24 * 3600);
        let mut first = self.spawn("takeover-1", long, long, &replica("bench-1"))?;
        let second = self.spawn("takeover-2", long, long, &replica("bench-2"))?;
        let (first_port, second_port) = (first.port, second.port);
        let mut leader_is_first = None;
        self.wait_for("takeover", "a leader", &mut first, async || {
            let one = figures::metric_sum(
                &self.scrape(first_port).await.unwrap_or_default(),
                "keyless_leader",
                &[],
            );
            let two = figures::metric_sum(
                &self.scrape(second_port).await.unwrap_or_default(),
                "keyless_leader",
                &[],
            );
            leader_is_first = match (one, two) {
                (1, _) => Some(true),
                (_, 1) => Some(false),
                _ => None,
            };
            leader_is_first.is_some()
        })
        .await?;
        let (leader, mut standby) = if leader_is_first == Some(true) {
            (first, second)
        } else {
            (second, first)
        };
        // The leader's first pass over every account, then quiet.
        let accounts = u64::from(self.workload.accounts);
        let mut leader = leader;
        let leader_port = leader.port;
        self.wait_for(
            "takeover",
            "the leader's first pass",
            &mut leader,
            async || {
                self.scrape(leader_port)
                    .await
                    .map(|s| reconciles(&s))
                    .unwrap_or(0)
                    >= accounts
            },
        )
        .await?;
        self.wait_quiet("takeover", &mut leader).await?;
        // Kill the leader, then give the new one a write to do.
        let victim = self.drift_victims().into_iter().next();
        leader.kill_9();
        self.emulator.reset_request_counts();
        let killed = Instant::now();
        if let Some(name) = victim {
            let _ = self.emulator.delete_role_assignment(&name);
        }
        self.wait_for(
            "takeover",
            "the new leader's first ARM write",
            &mut standby,
            async || self.emulator.requests_of("RoleAssignments_Create") > 0,
        )
        .await?;
        let took = killed.elapsed();
        standby.terminate();
        Ok(figures::Takeover {
            lease_duration_seconds: seconds(lease),
            to_first_write_seconds: seconds(took),
        })
    }
}

fn reconciles(samples: &[Sample]) -> u64 {
    figures::metric_sum(samples, "keyless_reconciles_total", &[])
}

fn status_patches(samples: &[Sample]) -> u64 {
    figures::metric_sum(
        samples,
        "keyless_kube_requests_total",
        &[("verb", "patch"), ("resource", "openaiaccesses/status")],
    ) + figures::metric_sum(
        samples,
        "keyless_kube_requests_total",
        &[("verb", "patch"), ("resource", "openaiaccounts/status")],
    ) + figures::metric_sum(
        samples,
        "keyless_kube_requests_total",
        &[("verb", "update"), ("resource", "openaiaccesses/status")],
    ) + figures::metric_sum(
        samples,
        "keyless_kube_requests_total",
        &[("verb", "update"), ("resource", "openaiaccounts/status")],
    )
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn print_rows(rows: &[Row], phase: &str) {
    let these: Vec<Row> = rows.iter().filter(|r| r.phase == phase).cloned().collect();
    eprint!("{}", figures::table(&these));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn bench_args(args: &[&str]) -> Result<crate::files::bench::BenchArgs, clap::Error> {
        let mut argv = vec!["keyless", "bench"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Bench(args) => Ok(args),
            other => panic!("not bench: {other:?}"),
        }
    }

    #[test]
    fn the_defaults_are_the_issues_full_size() {
        let args = bench_args(&["--controller", "--kubeconfig", "kc"]).unwrap();
        let c = &args.controller;
        assert!(c.controller);
        assert_eq!(args.accounts, None, "20 accounts is --controller's default");
        assert_eq!(
            (c.subscriptions, c.objects, c.principals),
            (5, 250, 2),
            "20 accounts over 5 subscriptions × 250 objects × 2 principals"
        );
        assert_eq!(
            (
                c.memory_objects,
                c.memory_service_accounts,
                c.memory_namespaces
            ),
            (10_000, 20_000, 2_000)
        );
        assert_eq!(
            (
                c.churn_namespaces * c.churn_rounds,
                c.churn_service_accounts * c.churn_rounds
            ),
            (1000, 1000)
        );
        assert!(!c.check);
    }

    #[test]
    fn kubeconfig_is_a_controller_flag_and_phases_can_be_skipped() {
        assert!(bench_args(&["--kubeconfig", "kc"]).is_err());
        let args = bench_args(&[
            "--controller",
            "--kubeconfig",
            "kc",
            "--skip",
            "takeover,memory",
        ])
        .unwrap();
        assert_eq!(args.controller.skip, vec![Phase::Takeover, Phase::Memory]);
        // File mode is unchanged.
        let file_mode = bench_args(&["--grants", "10"]).unwrap();
        assert!(!file_mode.controller.controller);
    }

    #[test]
    fn objects_are_spread_over_the_workload_namespaces_and_their_accounts_known() {
        let w = Workload {
            accounts: 2,
            objects: 3,
            principals: 1,
            namespaces: 4,
            grants: 6,
            account_subscriptions: vec![],
        };
        // Account 0's objects in namespaces 0, 1, 2; account 1's in 3, 0, 1.
        assert_eq!(w.accounts_in_namespace(0), BTreeSet::from([0, 1]));
        assert_eq!(w.accounts_in_namespace(2), BTreeSet::from([0]));
        assert_eq!(w.accounts_in_namespace(3), BTreeSet::from([1]));
    }
}
