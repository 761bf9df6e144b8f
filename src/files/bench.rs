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
use crate::api::roles::{RBAC_ADMINISTRATOR_GUID, delegation_condition};
use crate::api::{OpenAIAccess, OpenAIAccount, RoleName};
use crate::azure::{AzureClients, AzureConfig};
use crate::emulator::seed::{
    Seed, SeedAccount, SeedFederatedCredential, SeedIdentity, SeedOperator, SeedResourceGroup,
    SeedRoleAssignment, SeedServicePrincipal, SeedSubscription, SeedUser,
};
use crate::emulator::{Emulator, EmulatorConfig, EmulatorError};
use crate::plan::{InstanceId, ObjectKey};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Accounts in the workload.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub accounts: u32,
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

const TENANT: &str = "0b1e5c3a-7d2f-4e8b-9a6c-5f4d3e2c1b0a";
const INSTANCE: &str = "keyless-bench";

fn guid(kind: &str, index: u32) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("keyless-bench/{kind}/{index}").as_bytes(),
    )
    .to_string()
}

fn subscription(index: u32) -> String {
    guid("subscription", index)
}

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
    let mut seed = Seed {
        tenant_id: TENANT.into(),
        ..Seed::default()
    };
    for s in 0..subscriptions {
        seed.subscriptions.push(SeedSubscription {
            id: subscription(s),
            display_name: Some(format!("bench-{s}")),
            resource_groups: vec![SeedResourceGroup {
                name: "rg-bench".into(),
                location: "swedencentral".into(),
            }],
        });
    }
    for g in 0..grants {
        if g % 2 == 0 {
            seed.users.push(SeedUser {
                id: guid("user", g),
                user_principal_name: format!("user{g}@bench.example"),
                display_name: format!("User {g}"),
                mail: None,
            });
        } else {
            seed.service_principals.push(SeedServicePrincipal {
                id: guid("sp", g),
                app_id: guid("app", g),
                display_name: format!("app-{g}"),
                graph_app_roles: Vec::new(),
                federated_credentials: Vec::new(),
                app_owner_organization_id: None,
            });
        }
    }
    let operator_principal = guid("operator", 0);
    seed.identities.push(SeedIdentity {
        subscription_id: subscription(0),
        resource_group: "rg-bench".into(),
        name: "id-keyless-operator".into(),
        location: "swedencentral".into(),
        principal_id: operator_principal.clone(),
        client_id: guid("operator-client", 0),
        federated_credentials: vec![SeedFederatedCredential {
            name: "keyless".into(),
            issuer: "https://oidc.bench.example/".into(),
            subject: "system:serviceaccount:keyless-system:keyless".into(),
            audiences: vec!["api://AzureADTokenExchange".into()],
            claims_matching_expression: None,
        }],
        graph_app_roles: Vec::new(),
        tags: BTreeMap::new(),
    });
    seed.operator = Some(SeedOperator {
        identity: "id-keyless-operator".into(),
    });
    for s in 0..subscriptions {
        seed.role_assignments.push(SeedRoleAssignment {
            name: guid("operator-grant", s),
            scope: format!("/subscriptions/{}", subscription(s)),
            role_definition_id: RBAC_ADMINISTRATOR_GUID.into(),
            principal_id: operator_principal.clone(),
            principal_type: Some("ServicePrincipal".into()),
            description: Some("keyless bench operator".into()),
            condition: Some(delegation_condition(&RoleName::ALL)),
            condition_version: Some("2.0".into()),
            created_on: None,
            created_by: None,
        });
    }

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
        seed.accounts.push(SeedAccount {
            subscription_id: sub.clone(),
            resource_group: "rg-bench".into(),
            name: name.clone(),
            kind: "OpenAI".into(),
            location: "swedencentral".into(),
            custom_sub_domain_name: Some(name.clone()),
            disable_local_auth: true,
            endpoint: None,
        });
        account_subscriptions.push(sub.clone());
        let account: OpenAIAccount = serde_json::from_value(serde_json::json!({
            "apiVersion": "keyless.dev/v1alpha1",
            "kind": "OpenAIAccount",
            "metadata": { "name": name },
            "spec": {
                "resourceId": format!("/subscriptions/{sub}/resourceGroups/rg-bench/providers/Microsoft.CognitiveServices/accounts/{name}"),
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
            let principals: Vec<serde_json::Value> = chunk
                .iter()
                .map(|g| {
                    if g % 2 == 0 {
                        serde_json::json!({ "objectId": guid("user", *g), "principalType": "User" })
                    } else {
                        serde_json::json!({ "objectId": guid("sp", *g), "principalType": "ServicePrincipal" })
                    }
                })
                .collect();
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

/// Requests by (operation, status) in a run.
type Counts = BTreeMap<(String, u16), u64>;

fn total(counts: &Counts, operation: &str) -> u64 {
    counts
        .iter()
        .filter(|((op, _), _)| op == operation)
        .map(|(_, n)| n)
        .sum()
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
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
    let workload = workload(args.accounts, args.grants, args.accounts_per_subscription)?;
    let accounts = u64::from(args.accounts);
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
        .unwrap_or(args.accounts as usize);
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
        args.accounts,
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
    let throttled = |counts: &Counts| -> u64 {
        counts
            .iter()
            .filter(|((_, status), _)| *status == 429)
            .map(|(_, n)| n)
            .sum()
    };
    // ARM's write bucket per subscription: the first `capacity` writes are free, then `refill`/s.
    let mut writes_per_subscription: BTreeMap<&str, u64> = BTreeMap::new();
    for sub in &workload.account_subscriptions {
        *writes_per_subscription.entry(sub).or_default() += u64::from(args.grants);
    }
    let bucket_bound = writes_per_subscription
        .values()
        .map(|w| {
            w.saturating_sub(u64::from(throttling.writes.capacity)) as f64
                / throttling.writes.refill_per_second
        })
        .fold(0.0, f64::max);
    // Writes within one account are sequential: each costs at least one round trip.
    let rounds = (args.accounts as usize).div_ceil(concurrency.max(1)) as f64;
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
    match peak_rss_kib() {
        Some(kib) => println!(
            "peak RSS (VmHWM, keyless and the in-process emulator together): {:.1} MiB",
            kib as f64 / 1024.0
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
