//! `keyless bench`: converges a generated workload (default 50 accounts × 1,000 grants) against the
//! in-process emulator with ARM's token buckets and a per-request latency, twice, and prints what it
//! cost: requests by operation against the floor (G PUTs + S LIST pages), 429s provoked, wall time
//! against the bounds ARM's buckets and the latency set, and peak RSS. Figures are printed, never
//! asserted: they depend on the machine.
//!
//! Principals are named by `objectId`, so the workload measures ARM and the engine, not Graph.

use super::emulated;
use super::load::{LoadedAccess, LoadedAccount, Manifests, Origin};
use super::{Mode, Settings, converge};
use crate::api::{OpenAIAccess, OpenAIAccount};
use crate::azure::{AzureClients, AzureConfig};
use crate::bench::{
    Counts, Rss, add_account, bucket_bound, principal, subscription, throttled, total,
};
use crate::plan::{InstanceId, ObjectKey};
use keyless_emulator::seed::Seed;
use keyless_emulator::{Emulator, EmulatorConfig, EmulatorError};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Accounts in the workload (default: 50; 20 with --controller).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub accounts: Option<u32>,
    /// Grants (distinct principals) per account.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=3999))]
    pub grants: u32,
    /// Accounts per subscription. ARM's buckets and its 4,000 assignments limit are per
    /// subscription, so accounts × grants per subscription must stay under 4,000.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub accounts_per_subscription: u32,
    /// Latency the emulator adds to every request. ARM answers a role assignment PUT in roughly
    /// 0.3–1 s; the default keeps the run short.
    #[arg(long, default_value_t = 100)]
    pub latency_ms: u64,
    /// Accounts converged at once (default: all of them).
    #[arg(long)]
    pub concurrency: Option<u16>,
    /// Items per page of ARM lists (the emulator's default is 1,000).
    #[arg(long, default_value_t = 1000)]
    pub page_size: usize,
    /// Turn off the emulator's ARM token buckets (then keyless's own pacing is all that remains).
    #[arg(long)]
    pub no_throttling: bool,
    #[command(flatten)]
    pub controller: crate::bench::controller::ControllerBenchArgs,
    /// How often progress is printed on stderr.
    #[arg(long, value_parser = crate::azure::config::parse_duration, default_value = "3s")]
    pub progress_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Workload(String),
    #[error("start the emulator")]
    Emulator(#[from] EmulatorError),
    #[error("set up the Azure clients")]
    Azure(#[from] crate::azure::AzureSetupError),
}

const INSTANCE: &str = "keyless-bench";

/// The workload: a seed for the emulator and the manifests keyless converges.
pub struct Workload {
    pub seed: Seed,
    pub manifests: Manifests,
    /// Subscription of each account, in account order.
    pub account_subscriptions: Vec<String>,
}

/// Generates `accounts` accounts with `grants` principals each (users and service principals,
/// alternately), spread over subscriptions, and keyless's operator identity with its ABAC-limited
/// grant at every subscription.
pub fn workload(
    accounts: u32,
    grants: u32,
    accounts_per_subscription: u32,
) -> Result<Workload, BenchError> {
    let subscriptions = accounts.div_ceil(accounts_per_subscription);
    let per_subscription = u64::from(accounts_per_subscription.min(accounts)) * u64::from(grants);
    if per_subscription >= 4000 {
        return Err(BenchError::Workload(format!(
            "{per_subscription} assignments per subscription: ARM allows 4,000 (with keyless's own grant), lower --grants or --accounts-per-subscription"
        )));
    }
    let mut seed = crate::bench::seed(subscriptions, grants, "https://oidc.bench.example/");
    let mut manifests = Manifests::default();
    manifests
        .namespaces
        .insert("bench".into(), BTreeMap::default());
    let origin = Origin {
        file: "(generated)".into(),
        document: 1,
    };
    let mut account_subscriptions = Vec::new();
    for a in 0..accounts {
        let sub = subscription(a / accounts_per_subscription);
        let name = format!("oai-bench-{a:03}");
        add_account(&mut seed, &sub, &name);
        account_subscriptions.push(sub.clone());
        let account: OpenAIAccount = serde_json::from_value(serde_json::json!({
            "apiVersion": "keyless.dev/v1alpha1",
            "kind": "OpenAIAccount",
            "metadata": { "name": name },
            "spec": {
                "resourceId": crate::bench::account_resource_id(&sub, &name),
                "allowedNamespaces": { "names": ["bench"] },
            }
        }))
        .map_err(|e| BenchError::Workload(e.to_string()))?;
        manifests.accounts.insert(
            name.clone(),
            LoadedAccount {
                name: name.clone(),
                object: account,
                origin: origin.clone(),
            },
        );
        // 250 principals per object (the CRD allows 256).
        let indexes: Vec<u32> = (0..grants).collect();
        for (chunk_index, chunk) in indexes.chunks(250).enumerate() {
            let principals: Vec<serde_json::Value> = chunk.iter().map(|g| principal(*g)).collect();
            let object_name = format!("{name}-{chunk_index}");
            let access: OpenAIAccess = serde_json::from_value(serde_json::json!({
                "apiVersion": "keyless.dev/v1alpha1",
                "kind": "OpenAIAccess",
                "metadata": { "name": object_name, "namespace": "bench" },
                "spec": { "accountRef": { "name": name }, "principals": principals }
            }))
            .map_err(|e| BenchError::Workload(e.to_string()))?;
            manifests.accesses.push(LoadedAccess {
                key: ObjectKey {
                    namespace: "bench".into(),
                    name: object_name,
                },
                object: access,
                origin: origin.clone(),
            });
        }
    }
    Ok(Workload {
        seed,
        manifests,
        account_subscriptions,
    })
}

fn print_counts(label: &str, counts: &Counts) {
    println!("  {label}");
    for ((operation, status), n) in counts {
        println!("    {operation:<40} {status:>3}  {n:>7}");
    }
}

/// Runs the bench and prints the figures.
pub async fn run(args: &BenchArgs) -> Result<(), BenchError> {
    let started = Instant::now();
    let account_count = args.accounts.unwrap_or(50);
    let workload = workload(account_count, args.grants, args.accounts_per_subscription)?;
    let accounts = u64::from(account_count);
    let grants_total = accounts * u64::from(args.grants);
    let subscriptions = workload.seed.subscriptions.len();
    let mut config = EmulatorConfig::new(workload.seed.clone());
    config.page_size = args.page_size.max(1);
    config.faults.latency = Duration::from_millis(args.latency_ms);
    config.throttling.enabled = !args.no_throttling;
    let throttling = config.throttling;
    let handle = Emulator::start(config).await?;
    let azure: AzureConfig = emulated::config_for(&handle, AzureConfig::default());
    let clients = AzureClients::from_config_with_env(&azure, &emulated::no_env)?;
    let concurrency = args
        .concurrency
        .map(usize::from)
        .unwrap_or(account_count as usize);
    let settings = Settings {
        instance: InstanceId::new(INSTANCE).ok(),
        prune: false,
        max_deletes_per_pass: 50,
        federation_issuer: None,
        concurrency,
        progress: Some(args.progress_interval),
    };
    println!(
        "keyless bench: {} accounts × {} grants = {grants_total} grants, {subscriptions} subscription(s), latency {} ms, ARM buckets {}, concurrency {concurrency}",
        account_count,
        args.grants,
        args.latency_ms,
        if throttling.enabled {
            format!(
                "writes {}+{}/s, reads {}+{}/s per subscription",
                throttling.writes.capacity,
                throttling.writes.refill_per_second,
                throttling.reads.capacity,
                throttling.reads.refill_per_second
            )
        } else {
            "off".into()
        }
    );
    let setup = started.elapsed();

    handle.reset_request_counts();
    let first_started = Instant::now();
    let first = converge(&clients, &workload.manifests, &settings, Mode::Apply).await;
    let first_wall = first_started.elapsed();
    let first_counts = handle.request_counts();

    handle.reset_request_counts();
    let second_started = Instant::now();
    let second = converge(&clients, &workload.manifests, &settings, Mode::Apply).await;
    let second_wall = second_started.elapsed();
    let second_counts = handle.request_counts();

    let page = args.page_size.max(1) as u64;
    // At the first LIST a scope holds only keyless's grant at the subscription (inherited).
    let first_pages = accounts;
    let second_pages = accounts * (u64::from(args.grants) + 1).div_ceil(page);
    let puts = total(&first_counts, "RoleAssignments_Create");
    let lists = total(&first_counts, "RoleAssignments_ListForScope");
    let floor = grants_total + first_pages;
    // ARM's write bucket per subscription: the first `capacity` writes are free, then `refill`/s.
    let mut writes_per_subscription: BTreeMap<&str, u64> = BTreeMap::new();
    for sub in &workload.account_subscriptions {
        *writes_per_subscription.entry(sub).or_default() += u64::from(args.grants);
    }
    let bucket_bound = bucket_bound(writes_per_subscription.values(), throttling.writes);
    // Writes within one account are sequential: each costs at least one round trip.
    let rounds = (account_count as usize).div_ceil(concurrency.max(1)) as f64;
    let latency_bound =
        rounds * (u64::from(args.grants) + 2) as f64 * args.latency_ms as f64 / 1000.0;

    println!();
    println!("first apply (converge from nothing):");
    println!(
        "  created {} grants in {:.1} s ({:.0} writes/s); {} problem(s)",
        first.summary.create,
        first_wall.as_secs_f64(),
        first.summary.create as f64 / first_wall.as_secs_f64().max(0.001),
        first.summary.problems
    );
    print_counts("requests by operation and status:", &first_counts);
    println!(
        "  role assignment requests: {puts} PUTs + {lists} LIST pages = {} against the floor G + S = {grants_total} + {first_pages} = {floor}: ratio {:.3}",
        puts + lists,
        (puts + lists) as f64 / floor as f64
    );
    println!(
        "  GETs of role assignments: {}",
        total(&first_counts, "RoleAssignments_Get")
    );
    println!("  429s provoked: {}", throttled(&first_counts));
    println!(
        "  wall time {:.1} s against the bounds: ARM write buckets {:.1} s, latency × sequential writes per account {:.1} s ⇒ lower bound {:.1} s",
        first_wall.as_secs_f64(),
        bucket_bound,
        latency_bound,
        bucket_bound.max(latency_bound)
    );
    println!();
    println!("second apply (nothing to change):");
    print_counts("requests by operation and status:", &second_counts);
    println!(
        "  role assignment requests: {} PUTs, {} DELETEs, {} LIST pages (floor: {second_pages} LIST pages); {} change(s); {:.1} s",
        total(&second_counts, "RoleAssignments_Create"),
        total(&second_counts, "RoleAssignments_Delete"),
        total(&second_counts, "RoleAssignments_ListForScope"),
        second.changes(),
        second_wall.as_secs_f64()
    );
    println!("  429s provoked: {}", throttled(&second_counts));
    println!();
    match Rss::of(None) {
        Some(rss) => println!(
            "peak RSS (VmHWM, keyless and the in-process emulator together): {:.1} MiB",
            rss.peak_kib as f64 / 1024.0
        ),
        None => println!("peak RSS: /proc/self/status not readable here"),
    }
    println!(
        "set-up (workload and emulator) {:.1} s, total {:.1} s",
        setup.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    handle.shutdown().await;
    Ok(())
}
