//! The controller's memory at the issue's population, measured by hand (ignored: it takes minutes).
//!
//! It fills the test control plane with `KEYLESS_MEM_NAMESPACES` Namespaces (default 2,000),
//! `KEYLESS_MEM_SERVICE_ACCOUNTS` ServiceAccounts (20,000, spread over them, a fifth carrying the
//! workload-identity client-id annotation), `KEYLESS_MEM_ACCOUNTS` OpenAIAccounts (20, over 20
//! emulator accounts) and `KEYLESS_MEM_ACCESSES` OpenAIAccess objects (10,000, one grant each),
//! created with bounded concurrency. Then, for each variant, it starts a fresh emulator (throttling
//! off: this measures memory, not pacing), runs the `keyless run` binary as a child and samples its
//! `/proc/PID/status` until every grant exists and the process has been idle (under 2 % of a core
//! over 5 s) for `KEYLESS_MEM_SETTLE_SECS` (default 20). It prints, and appends to
//! `target/tmp/memory.rows`, one row per variant: peak RSS (VmHWM) and steady RSS (VmRSS when idle).
//!
//! Variants (`KEYLESS_MEM_VARIANTS`, `;`-separated) are `label|binary|KEY=VALUE,...|extra args`;
//! the default is this build's binary as is. The first run writes the objects' status and
//! finalizers, so later runs see larger objects: compare variants after the first.
//!
//! `KEYLESS_MEM_VARIANTS="base|target/release/keyless||;base|target/release/keyless||" cargo test --test memory -- --ignored --nocapture`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use keyless::api::{OpenAIAccess, OpenAIAccount};
use keyless_emulator::config::EmulatorConfig;
use keyless_emulator::seed::{Seed, SeedAccount};
use kube::api::{Api, PostParams};
use serde_json::json;
use support::cluster::{ISSUER, TestEnv};

const SUBSCRIPTION: &str = "3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f";
const INSTANCE: &str = "memory";
/// Creates in flight at once while filling the cluster.
const CREATES_IN_FLIGHT: usize = 48;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Sizes {
    namespaces: usize,
    service_accounts: usize,
    accounts: usize,
    accesses: usize,
    settle: Duration,
    deadline: Duration,
}

struct Variant {
    label: String,
    binary: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

fn variants() -> Vec<Variant> {
    let default_binary = env!("CARGO_BIN_EXE_keyless").to_string();
    let spec =
        std::env::var("KEYLESS_MEM_VARIANTS").unwrap_or(format!("default|{default_binary}||"));
    spec.split(';')
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            let parts: Vec<&str> = v.trim().split('|').collect();
            let binary = parts
                .get(1)
                .copied()
                .filter(|b| !b.is_empty())
                .unwrap_or(&default_binary);
            Variant {
                label: parts[0].to_string(),
                binary: PathBuf::from(binary),
                env: parts
                    .get(2)
                    .map(|e| {
                        e.split(',')
                            .filter(|kv| !kv.is_empty())
                            .map(|kv| {
                                let (k, v) = kv.split_once('=').unwrap();
                                (k.to_string(), v.to_string())
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                args: parts
                    .get(3)
                    .map(|a| a.split_whitespace().map(str::to_string).collect())
                    .unwrap_or_default(),
            }
        })
        .collect()
}

fn guid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn emulator_account(i: usize) -> String {
    format!("oai-mem-{i}")
}

fn seed(sizes: &Sizes) -> Seed {
    let mut seed = Seed::example().unwrap();
    for i in 0..sizes.accounts {
        seed.accounts.push(SeedAccount {
            subscription_id: SUBSCRIPTION.into(),
            resource_group: "rg-ai-prod".into(),
            name: emulator_account(i),
            kind: "OpenAI".into(),
            location: "swedencentral".into(),
            custom_sub_domain_name: Some(emulator_account(i)),
            disable_local_auth: true,
            endpoint: None,
        });
    }
    seed
}

async fn create_all<K>(api_for: impl Fn(&K) -> Api<K>, objects: Vec<K>)
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    futures::stream::iter(objects)
        .map(|object| {
            let api = api_for(&object);
            async move {
                match api.create(&PostParams::default(), &object).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(CREATES_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
}

async fn populate(env: &TestEnv, sizes: &Sizes) {
    let started = Instant::now();
    let client = env.client.clone();
    let namespace_name = |i: usize| format!("mem-{i}");
    let namespaces: Vec<Namespace> = (0..sizes.namespaces)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"name": namespace_name(i), "labels": {
                    "keyless.dev/tenant": "yes", "team": format!("team-{}", i % 50),
                    "kubernetes.io/metadata.name": namespace_name(i)}}
            }))
            .unwrap()
        })
        .collect();
    let all = client.clone();
    create_all(move |_| Api::<Namespace>::all(all.clone()), namespaces).await;
    eprintln!(
        "memory: {} namespaces in {:?}",
        sizes.namespaces,
        started.elapsed()
    );

    let service_accounts: Vec<ServiceAccount> = (0..sizes.service_accounts)
        .map(|i| {
            let mut annotations = serde_json::Map::new();
            if i % 5 == 0 {
                annotations.insert("azure.workload.identity/client-id".into(), json!(guid()));
            }
            annotations.insert("team.example.com/owner".into(), json!(format!("owner-{}", i % 97)));
            serde_json::from_value(json!({
                "metadata": {"name": format!("sa-{i}"), "namespace": namespace_name(i % sizes.namespaces),
                    "labels": {"app.kubernetes.io/name": format!("app-{}", i % 13), "app.kubernetes.io/part-of": "bench"},
                    "annotations": annotations}
            }))
            .unwrap()
        })
        .collect();
    let sa_client = client.clone();
    create_all(
        move |sa: &ServiceAccount| {
            Api::namespaced(sa_client.clone(), sa.metadata.namespace.as_deref().unwrap())
        },
        service_accounts,
    )
    .await;
    eprintln!(
        "memory: {} service accounts in {:?}",
        sizes.service_accounts,
        started.elapsed()
    );

    let accounts: Vec<OpenAIAccount> = (0..sizes.accounts)
        .map(|i| {
            serde_json::from_value(json!({
                "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccount",
                "metadata": {"name": format!("mem-account-{i}")},
                "spec": {"resourceId": format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-ai-prod/providers/Microsoft.CognitiveServices/accounts/{}", emulator_account(i)),
                         "allowedNamespaces": {"selector": {"matchLabels": {"keyless.dev/tenant": "yes"}}},
                         "deletionPolicy": "Delete"}
            }))
            .unwrap()
        })
        .collect();
    let account_client = client.clone();
    create_all(
        move |_| Api::<OpenAIAccount>::all(account_client.clone()),
        accounts,
    )
    .await;

    let accesses: Vec<OpenAIAccess> = (0..sizes.accesses)
        .map(|i| {
            serde_json::from_value(json!({
                "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess",
                "metadata": {"name": format!("access-{i}"), "namespace": namespace_name(i % sizes.namespaces)},
                "spec": {"accountRef": {"name": format!("mem-account-{}", i % sizes.accounts)}, "role": "OpenAIUser",
                         "deletionPolicy": "Delete",
                         "principals": [{"objectId": guid(), "principalType": "ServicePrincipal"}]}
            }))
            .unwrap()
        })
        .collect();
    let access_client = client.clone();
    create_all(
        move |a: &OpenAIAccess| {
            Api::namespaced(
                access_client.clone(),
                a.metadata.namespace.as_deref().unwrap(),
            )
        },
        accesses,
    )
    .await;
    eprintln!("memory: population created in {:?}", started.elapsed());
}

/// (VmRSS, VmHWM, RssAnon) in KiB. RssAnon is the heap and stacks without the binary's mapped
/// pages (RssFile, about 20 MiB of a release build and twice that of a debug one), so builds
/// compare by it.
fn rss_of(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?, field("RssAnon:")?))
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn measure(env: &TestEnv, sizes: &Sizes, variant: &Variant) -> String {
    // A binary still being built (by hand, beside this run) is waited for.
    let waited = Instant::now();
    while !variant.binary.exists() {
        assert!(
            waited.elapsed() < sizes.deadline,
            "{} never appeared",
            variant.binary.display()
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let mut config = EmulatorConfig::new(seed(sizes));
    config.replication_window = Duration::ZERO;
    config.throttling.enabled = false;
    config.assignment_limit = 1_000_000;
    let emulator = keyless_emulator::Emulator::start(config).await.unwrap();
    let before = emulator.role_assignments().len();
    let endpoint = emulator.endpoint().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut args: Vec<String> = [
        "run",
        "--instance-id",
        INSTANCE,
        "--propagation-grace",
        "0s",
        "--http-addr",
        &format!("127.0.0.1:{port}"),
        "--service-account-issuer",
        ISSUER,
        "--arm-endpoint",
        &endpoint,
        "--graph-endpoint",
        &endpoint,
        "--authority-host",
        &endpoint,
        "--ca-file",
        &emulator.ca_file().display().to_string(),
        "--credential",
        "workload-identity",
        "--tenant-id",
        &emulator.tenant_id(),
        "--client-id",
        emulator.operator_client_id().unwrap(),
        "--federated-token-file",
        &emulator
            .federated_token_file()
            .unwrap()
            .display()
            .to_string(),
        "--no-assignment-count",
        // The emulator does not throttle here: client pacing off too, so 10,000 grants converge
        // in minutes (memory does not depend on the pace).
        "--arm-pacing-writes",
        "1000000:1000000",
        "--arm-pacing-reads",
        "1000000:1000000",
        "--concurrency",
        "4",
        "--mass-revocation-percent",
        "100",
        "--delete-budget",
        "100000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(variant.args.iter().cloned());
    let mut child = Command::new(&variant.binary)
        .args(&args)
        .env("KUBECONFIG", env.cluster.kubeconfig_path())
        .env("KEYLESS_LOG_LEVEL", "error")
        .envs(variant.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let started = Instant::now();
    let mut converged: Option<Duration> = None;
    let mut idle_since: Option<Instant> = None;
    let mut last_ticks = cpu_ticks(pid).unwrap_or(0);
    let mut last_sample = Instant::now();
    let target = before + sizes.accesses;
    let (peak, steady, steady_anon) = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some((rss, hwm, anon)) = rss_of(pid) else {
            panic!("{}: the controller exited", variant.label);
        };
        if converged.is_none() && emulator.role_assignments().len() >= target {
            converged = Some(started.elapsed());
        }
        if last_sample.elapsed() >= Duration::from_secs(5) {
            let ticks = cpu_ticks(pid).unwrap_or(0);
            // 2 % of a core over 5 s is 10 ticks of 100 Hz.
            let busy = ticks.saturating_sub(last_ticks) > 10;
            last_ticks = ticks;
            last_sample = Instant::now();
            match (busy, converged, idle_since) {
                (false, Some(_), None) => idle_since = Some(Instant::now()),
                (true, _, _) => idle_since = None,
                _ => {}
            }
            eprintln!(
                "memory: {} t={:?} rss={:.1} MiB hwm={:.1} MiB anon={:.1} MiB assignments={} busy={busy}",
                variant.label,
                started.elapsed(),
                mib(rss),
                mib(hwm),
                mib(anon),
                emulator.role_assignments().len() - before
            );
        }
        if let Some(since) = idle_since
            && since.elapsed() >= sizes.settle
        {
            break (hwm, rss, anon);
        }
        assert!(
            started.elapsed() < sizes.deadline,
            "{}: not converged and idle within {:?}",
            variant.label,
            sizes.deadline
        );
    };
    let _ = child.kill();
    let _ = child.wait();
    format!(
        "{:<24} peak {:>6.1} MiB  steady {:>6.1} MiB (anonymous {:>6.1} MiB)  converged in {:>6.1} s  ({} namespaces, {} service accounts, {} accounts, {} accesses)",
        variant.label,
        mib(peak),
        mib(steady),
        mib(steady_anon),
        converged.unwrap_or_default().as_secs_f64(),
        sizes.namespaces,
        sizes.service_accounts,
        sizes.accounts,
        sizes.accesses
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long, by hand: the controller's memory at the issue's population"]
async fn controller_memory_at_scale() {
    let sizes = Sizes {
        namespaces: env_number("KEYLESS_MEM_NAMESPACES", 2_000),
        service_accounts: env_number("KEYLESS_MEM_SERVICE_ACCOUNTS", 20_000),
        accounts: env_number("KEYLESS_MEM_ACCOUNTS", 20),
        accesses: env_number("KEYLESS_MEM_ACCESSES", 10_000),
        settle: Duration::from_secs(env_number("KEYLESS_MEM_SETTLE_SECS", 20) as u64),
        deadline: Duration::from_secs(env_number("KEYLESS_MEM_DEADLINE_SECS", 1_200) as u64),
    };
    let Some(env) = TestEnv::start().await else {
        return;
    };
    populate(&env, &sizes).await;
    let rows_file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("memory.rows");
    for variant in variants() {
        let row = measure(&env, &sizes, &variant).await;
        println!("{row}");
        // What the OpenAIAccess store keeps of each object's status (its compact JSON).
        let sample: OpenAIAccess = Api::namespaced(env.client.clone(), "mem-0")
            .get("access-0")
            .await
            .unwrap();
        let status = serde_json::to_string(&sample.status).unwrap();
        println!(
            "memory: a status is {} bytes of JSON: {status}",
            status.len()
        );
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&rows_file)
            .unwrap();
        writeln!(file, "{row}").unwrap();
    }
}
