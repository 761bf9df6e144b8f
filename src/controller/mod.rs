//! `keyless run`: the controller. Reconciliation is keyed by OpenAIAccount (one account = one
//! scope); OpenAIAccess, ServiceAccount and Namespace changes are mapped to the accounts they affect.
//! A second, light controller over OpenAIAccess reports what the account controller cannot see:
//! malformed objects and references to accounts that do not exist.

pub mod args;
pub mod events;
pub mod export;
pub mod index;
pub mod kube_io;
pub mod lenient;
pub mod limits;
pub mod namespaces;
pub mod reconcile;
pub mod records;
pub mod service_accounts;
pub mod trim;
pub mod view;

use crate::api::OpenAIAccount;
use crate::api::crd_compat::missing_in_installed;
use crate::azure::AzureClients;
use crate::engine::EngineConfig;
use crate::ops::health::{self, Readiness};
use crate::ops::leader::LeaderElection;
use crate::ops::leader::LeaseFence;
use crate::ops::metrics::{Metrics, status_class};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use futures::{StreamExt, TryStreamExt};
use index::{AccessIndex, Accounts, ChangeFilter};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::Config as ControllerRuntimeConfig;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use lenient::LenientAccess;
use namespaces::{NamespaceRecord, Namespaces};
use records::{RecordMap, RecordWriter};
use service_accounts::ServiceAccounts;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use trim::WorkloadServiceAccount;
use view::ViewHealth;

/// Settings of the controller; every interval is a parameter.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub engine: EngineConfig,
    /// Each account is reconciled at least this often (one LIST per account per resync).
    pub resync_interval: Duration,
    /// While grants wait out the propagation grace, an account is passed again for them no sooner
    /// than this after a pass (expiries and revocations are never delayed).
    pub propagation_check_interval: Duration,
    /// How long a repeated event is folded into the first one's series (kube's `Recorder` uses
    /// six minutes).
    pub event_series_window: Duration,
    /// How many recent events are remembered for that: a bound on the recorder's memory (a few
    /// hundred bytes each), where kube's keeps every event published (issue 18: 33 MB at 10,000
    /// grants). One that falls out comes back as a new Event, not a series.
    pub event_memory: usize,
    /// How often the heap's free memory is handed back to the OS ([`crate::ops::memory`]); None:
    /// never.
    pub memory_trim_interval: Option<Duration>,
    /// Accounts reconciled at once (each account's writes stay sequential).
    pub concurrency: u16,
    /// Backoff after a transient failure: doubles from `retry_initial` up to `retry_max`, with jitter.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub enable_configmap_export: bool,
    /// Where /metrics, /healthz and /readyz are served; none in tests that do not need them.
    pub http_addr: Option<std::net::SocketAddr>,
    /// Leader election; without it this replica always reconciles.
    pub leader: Option<crate::ops::leader::LeaseConfig>,
    /// How often role assignments per subscription are counted against ARM's limit of 4,000
    /// (one unfiltered LIST per subscription); None turns the count off.
    pub assignment_count_interval: Option<Duration>,
    /// Consecutive watch errors after which a store counts as failing (a 403 at once).
    pub view_failure_threshold: u32,
    /// How long a watch error counts; longer than the watcher's longest backoff (30 s).
    pub view_failure_ttl: Duration,
    /// How often a pass waiting for the stores' first lists looks again.
    pub view_poll_interval: Duration,
    /// The longest one ARM write attempt may take: the lease must have this much left before each
    /// write (the fence), and it must be shorter than the lease duration minus the renew interval.
    pub arm_attempt_timeout: Duration,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub azure: AzureClients,
    pub config: ControllerConfig,
    pub accounts: Store<DeserializeGuard<OpenAIAccount>>,
    pub accesses: Store<LenientAccess>,
    /// Which OpenAIAccess objects each account has, kept beside `accesses`.
    pub access_index: AccessIndex,
    /// Whether each ServiceAccount exists, and its client-id annotation: nothing else is read.
    pub service_accounts: ServiceAccounts,
    /// Each Namespace's labels: nothing else is read.
    pub namespaces: Namespaces,
    pub recorder: events::EventRecorder,
    pub backoff: reconcile::Backoffs,
    /// What this term applied of each export, so an unchanged ConfigMap is not applied again.
    pub exports: export::ExportMemo,
    pub metrics: Metrics,
    /// Whether each store has listed and is watching.
    pub view: ViewHealth,
    /// The leader lease's fence; None without leader election.
    pub fence: Option<LeaseFence>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "the keyless CRDs are not installed (or not readable): install them with `keyless crd | kubectl apply -f -` or the Helm chart"
    )]
    CrdsMissing(#[source] kube::Error),
    #[error(
        "the installed keyless CRDs are older than this keyless: {gaps}. To start, {UPGRADE_CRDS}"
    )]
    CrdsOutdated { gaps: String },
    #[error(
        "read the CustomResourceDefinition {name} (keyless needs get on it, which the chart grants by name)"
    )]
    ReadCrd {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("connect to the Kubernetes API (in-cluster config or KUBECONFIG)")]
    Connect(#[source] kube::Error),
    #[error("set up the Azure clients")]
    Azure(#[source] crate::azure::AzureSetupError),
    #[error("serve the health and metrics endpoints")]
    Health(#[source] crate::ops::health::HealthError),
    #[error("leader election")]
    Leader(#[source] crate::ops::leader::LeaderError),
}

/// How to upgrade the CRDs; Helm will not (it installs `crds/` on the first install only).
pub const UPGRADE_CRDS: &str = "upgrade them with `keyless crd | kubectl apply -f -` (Helm installs charts/keyless/crds/ on the first install only and never upgrades them)";

/// Checks before starting that the CRDs are installed, carry every field and enum value this
/// binary reads and writes (an older CRD would silently drop them), and are served.
pub async fn check_crds(client: &Client) -> Result<(), RunError> {
    let definitions: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut outdated = Vec::new();
    for required in crate::api::crds() {
        let name = required.metadata.name.clone().unwrap_or_default();
        let installed = match definitions.get(&name).await {
            Ok(installed) => installed,
            Err(kube::Error::Api(response)) if response.code == 404 => {
                return Err(RunError::CrdsMissing(kube::Error::Api(response)));
            }
            Err(source) => return Err(RunError::ReadCrd { name, source }),
        };
        let gaps = missing_in_installed(&required, &installed);
        if !gaps.is_empty() {
            let gaps = gaps.iter().map(ToString::to_string).collect::<Vec<_>>();
            outdated.push(format!("{name} lacks {}", gaps.join(", ")));
        }
    }
    if !outdated.is_empty() {
        return Err(RunError::CrdsOutdated {
            gaps: outdated.join("; "),
        });
    }
    let accounts: Api<OpenAIAccount> = Api::all(client.clone());
    accounts
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .map(|_| ())
        .map_err(RunError::CrdsMissing)
}

/// Runs the controller until `shutdown` resolves: the health endpoints always, the reconcilers
/// only while this replica leads (always, without leader election).
pub async fn run(
    client: Client,
    azure: AzureClients,
    config: ControllerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), RunError> {
    check_crds(&client).await?;
    let config = with_cluster_fingerprint(&client, config).await;
    let shutdown: Shared<BoxFuture<'static, ()>> = shutdown.boxed().shared();
    let metrics = Metrics::new();
    let observed = metrics.clone();
    azure.observe_requests(Arc::new(move |service, operation, status| {
        let service = match service {
            crate::azure::http::Service::Arm => "arm",
            crate::azure::http::Service::Graph => "graph",
        };
        observed.azure_request(service, operation, status_class(status));
    }));
    let readiness = Readiness::new();
    let health = match config.http_addr {
        Some(addr) => Some(
            health::serve(addr, metrics.clone(), readiness.clone(), shutdown.clone())
                .await
                .map_err(RunError::Health)?,
        ),
        None => None,
    };
    // The stores run on every replica from the start, leader or not: a standby that takes over
    // already holds a complete view.
    let views = Views::start(&client, &config, &metrics, shutdown.clone());
    if let Some(interval) = config.memory_trim_interval {
        tokio::spawn(crate::ops::memory::purge_periodically(
            interval,
            shutdown.clone(),
        ));
    }
    match config.leader.clone() {
        None => {
            // Ready once every store has its first list (a pass needs them all), not just the
            // accounts': the OpenAIAccess list of a large cluster takes seconds more.
            let view = views.health.clone();
            let accounts = views.accounts.clone();
            let recheck = config.view_poll_interval;
            tokio::spawn(async move {
                wait_until_listed(&view, &accounts, recheck).await;
                readiness.set_ready(true);
            });
            run_controllers(
                client,
                azure,
                config,
                &views,
                None,
                metrics,
                shutdown.clone(),
            )
            .await
        }
        Some(lease) => {
            lease
                .validate_fencing(config.arm_attempt_timeout)
                .map_err(RunError::Leader)?;
            let holders = watch_lease_holder(&client, &lease, shutdown.clone());
            let election = LeaderElection::new(client.clone(), lease)
                .map_err(RunError::Leader)?
                .with_metrics(metrics.clone())
                .with_holder_watch(holders);
            let fence = election.fence(config.arm_attempt_timeout);
            // The same fence once more inside the ARM client, after pacing and backoff: a wait
            // there can outlive the lease between the engine's check and the attempt.
            let client_fence = fence.clone();
            azure.fence_writes(Arc::new(move || client_fence.check()));
            let mut leading = election.watch();
            let election_task = tokio::spawn(election.run(shutdown.clone()));
            // A standby is ready too, so rolling updates complete.
            readiness.set_ready(true);
            loop {
                tokio::select! {
                    _ = shutdown.clone() => break,
                    changed = leading.wait_for(|leader| *leader) => if changed.is_err() { break },
                }
                tracing::info!("leading: reconciling");
                let mut lost = leading.clone();
                let term = futures::future::select(
                    Box::pin(async move {
                        let _ = lost.wait_for(|leader| !*leader).await;
                    }),
                    shutdown.clone(),
                )
                .map(|_| ());
                run_controllers(
                    client.clone(),
                    azure.clone(),
                    config.clone(),
                    &views,
                    Some(fence.clone()),
                    metrics.clone(),
                    term,
                )
                .await;
                tracing::info!("no longer leading");
                if shutdown.peek().is_some() {
                    break;
                }
            }
            match election_task.await {
                Ok(result) => result.map_err(RunError::Leader)?,
                Err(error) => tracing::warn!(%error, "leader election task ended abnormally"),
            }
        }
    }
    if let Some(health) = health {
        health.stopped().await;
    }
    Ok(())
}

/// Watches the one Lease and publishes its holder, so a leader learns at once that another
/// replica overwrote its lease (see `LeaderElection::with_holder_watch`). A failing watch only
/// loses the shortcut: the leader still finds out at its next renewal.
fn watch_lease_holder(
    client: &Client,
    lease: &crate::ops::leader::LeaseConfig,
    shutdown: Shared<BoxFuture<'static, ()>>,
) -> tokio::sync::watch::Receiver<Option<String>> {
    let (holders, seen) = tokio::sync::watch::channel(None);
    let api = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        client.clone(),
        &lease.namespace,
    );
    // By name: the chart grants list and watch on this Lease only.
    let config = watcher::Config::default().fields(&format!("metadata.name={}", lease.name));
    let stream = watcher(api, config)
        .default_backoff()
        .applied_objects()
        .take_until(shutdown);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(lease) => {
                    let holder = lease.spec.and_then(|spec| spec.holder_identity);
                    holders.send_replace(holder);
                }
                Err(error) => tracing::debug!(%error, "lease watch"),
            }
        }
    });
    seen
}

/// Objects per page of a store's list (kube's default).
const WATCH_PAGE_SIZE: u32 = 500;

/// How many touched objects each store's broadcast holds for a term's controllers; a controller
/// that falls further behind is handed the whole store instead (nothing is lost, only merged).
const CHANGES_BUFFER: usize = 1024;

/// The cluster as this replica sees it: one reflector per kind, running for the whole process on
/// every replica (leader or standby), so a standby that takes over already holds a complete view
/// and lists nothing. Each reflector broadcasts the objects it touched to the controllers of the
/// current term.
struct Views {
    accounts: Store<DeserializeGuard<OpenAIAccount>>,
    accesses: Store<LenientAccess>,
    access_index: AccessIndex,
    service_accounts: ServiceAccounts,
    namespaces: Namespaces,
    /// Whether each store has listed and is watching; kept across terms with the stores.
    health: ViewHealth,
    account_changes: broadcast::Sender<Touched<DeserializeGuard<OpenAIAccount>>>,
    access_changes: broadcast::Sender<Touched<LenientAccess>>,
    service_account_changes: broadcast::Sender<Touched<WorkloadServiceAccount>>,
    namespace_changes: broadcast::Sender<Touched<NamespaceRecord>>,
}

impl Views {
    /// Starts the reflectors; they run until `shutdown`.
    fn start(
        client: &Client,
        config: &ControllerConfig,
        metrics: &Metrics,
        shutdown: Shared<BoxFuture<'static, ()>>,
    ) -> Views {
        // Paged lists of the most recent state (the default semantic), not `any_semantic`: the
        // API server ignores `limit` for a list at resourceVersion 0 and answers it whole from its
        // cache, so 20,000 ServiceAccounts arrived as one 24 MB body, decoded at once, before a
        // single object could be trimmed. In pages of WATCH_PAGE_SIZE, at most one page is held
        // untrimmed; the view still completes only with the list's last page.
        let watcher_config = watcher::Config::default().page_size(WATCH_PAGE_SIZE);
        let health = ViewHealth::new(
            &[ACCESS_STORE, SERVICE_ACCOUNT_STORE, NAMESPACE_STORE],
            view::FailureLimits {
                threshold: config.view_failure_threshold,
                ttl: config.view_failure_ttl,
            },
        );
        let (accounts, account_changes) = reflect(
            watcher(
                Api::<DeserializeGuard<OpenAIAccount>>::all(client.clone()),
                watcher_config.clone(),
            )
            .default_backoff(),
            trim::managed_fields,
            forget_deleted_accounts(metrics.clone()),
            shutdown.clone(),
        );
        let access_index = AccessIndex::new();
        let (accesses, access_changes) = reflect(
            watcher(
                Api::<LenientAccess>::all(client.clone()),
                watcher_config.clone(),
            )
            .default_backoff(),
            trim::access,
            {
                let health = health.clone();
                let index = access_index.clone();
                move |event| {
                    if let Ok(event) = event {
                        index.apply(event);
                    }
                    health.observe(ACCESS_STORE, event);
                }
            },
            shutdown.clone(),
        );
        // ServiceAccounts and Namespaces by their metadata only: the most numerous kinds of a
        // cluster, of which keyless reads an annotation and the labels.
        let service_accounts = ServiceAccounts::default();
        let service_account_changes = reflect_records(
            watcher(
                Api::<PartialObjectMeta<ServiceAccount>>::all(client.clone()),
                watcher_config.clone(),
            )
            .default_backoff()
            .map_ok(|event| map_event(event, WorkloadServiceAccount::of)),
            service_accounts.writer(),
            {
                let health = health.clone();
                move |event| health.observe(SERVICE_ACCOUNT_STORE, event)
            },
            shutdown.clone(),
        );
        let namespaces = Namespaces::default();
        let namespace_changes = reflect_records(
            watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                watcher_config,
            )
            .default_backoff()
            .map_ok(|event| map_event(event, NamespaceRecord::of)),
            namespaces.writer(),
            {
                let health = health.clone();
                move |event| health.observe(NAMESPACE_STORE, event)
            },
            shutdown,
        );
        Views {
            accounts,
            accesses,
            access_index,
            service_accounts,
            namespaces,
            health,
            account_changes,
            access_changes,
            service_account_changes,
            namespace_changes,
        }
    }
}

/// The accounts' observer: a deleted account's metric series go with it, whether the deletion is
/// seen as an event or (after the watch was down) as its absence from a relist.
fn forget_deleted_accounts(
    metrics: Metrics,
) -> impl FnMut(&Result<watcher::Event<DeserializeGuard<OpenAIAccount>>, watcher::Error>) + Send + 'static
{
    let mut relisted = std::collections::BTreeSet::new();
    move |event| match event {
        Ok(watcher::Event::Delete(account)) => metrics.forget_account(&account.name_any()),
        Ok(watcher::Event::Init) => relisted.clear(),
        Ok(watcher::Event::InitApply(account)) => {
            relisted.insert(account.name_any());
        }
        Ok(watcher::Event::InitDone) => {
            metrics.forget_accounts_except(&std::mem::take(&mut relisted));
        }
        Ok(watcher::Event::Apply(_)) | Err(_) => {}
    }
}

/// An object a store touched, and whether it came with the store's first list. Nothing reads a
/// store before its first list is complete (a pass waits for every store; a term starts with
/// every account), so what the first list brings is no change to anyone: a change filter only
/// learns it, and a cold start costs each account one pass, not one per kind that listed late.
#[derive(Clone)]
struct Touched<K> {
    object: Arc<K>,
    first_list: bool,
}

/// One reflector on a task of its own: the store, and a broadcast of every object it touched.
/// `observe` sees each event after the reflector applied it (the view's health, an index), so
/// "listed" is never seen before the list is in the store. `trim` drops what keyless never reads
/// before the store keeps it (see [`trim`]).
fn reflect<K>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    trim: fn(&mut K),
    observe: impl FnMut(&Result<watcher::Event<K>, watcher::Error>) + Send + 'static,
    shutdown: Shared<BoxFuture<'static, ()>>,
) -> (Store<K>, broadcast::Sender<Touched<K>>)
where
    K: reflector::Lookup<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let (changes, _) = broadcast::channel(CHANGES_BUFFER);
    let sender = changes.clone();
    let reader = store.clone();
    // The free function, not `.reflect()`: that one wants a `Resource`, which the stores' own
    // records ([`trim`]) are not.
    let stream = reflector::reflector(writer, events.modify(trim))
        .inspect(observe)
        .take_until(shutdown);
    crate::ops::memory::spawn_on_the_stores_thread(async move {
        let mut stream = std::pin::pin!(stream);
        let mut listed = false;
        // The objects of a list in progress, by key: the store takes them only at its end.
        let mut listing: Vec<ObjectRef<K>> = Vec::new();
        while let Some(event) = stream.next().await {
            // Each touched object is sent as the store's own Arc, never a second copy: the
            // broadcast's buffer keeps its last 1,024 entries for as long as nothing else is
            // sent, which after a list of 10,000 objects was 1,024 copies (~6 MB; issue 18).
            let touched = match event {
                // Watch errors are already counted by the view; the watcher retries with backoff.
                Ok(watcher::Event::Init) | Err(_) => {
                    listing.clear();
                    continue;
                }
                Ok(watcher::Event::InitApply(object)) => {
                    listing.push(ObjectRef::from_obj(&object));
                    continue;
                }
                // A relist's objects are changes (the watch may have missed them); the first
                // list's are not ([`Touched`]).
                Ok(watcher::Event::InitDone) => {
                    let first_list = !listed;
                    listed = true;
                    std::mem::take(&mut listing)
                        .into_iter()
                        .filter_map(|key| reader.get(&key))
                        .map(|object| Touched { object, first_list })
                        .collect()
                }
                Ok(watcher::Event::Apply(object)) => {
                    let object = reader
                        .get(&ObjectRef::from_obj(&object))
                        .unwrap_or_else(|| Arc::new(object));
                    vec![Touched {
                        object,
                        first_list: false,
                    }]
                }
                // Gone from the store: the event's copy is all there is.
                Ok(watcher::Event::Delete(object)) => vec![Touched {
                    object: Arc::new(object),
                    first_list: false,
                }],
            };
            for touched in touched {
                // No receiver (no term running, on a standby) is fine: the store holds it.
                let _ = sender.send(touched);
            }
        }
    });
    (store, changes)
}

/// [`reflect`] into one of keyless's own compact maps ([`ServiceAccounts`], [`Namespaces`]) instead
/// of a kube store, through its `writer`. What it touched is broadcast as records made per event
/// (a few dozen bytes; the maps keep no `Arc` to share).
fn reflect_records<M, R>(
    events: impl futures::Stream<Item = Result<watcher::Event<R>, watcher::Error>> + Send + 'static,
    mut writer: RecordWriter<M>,
    mut observe: impl FnMut(&Result<watcher::Event<R>, watcher::Error>) + Send + 'static,
    shutdown: Shared<BoxFuture<'static, ()>>,
) -> broadcast::Sender<Touched<R>>
where
    M: RecordMap<Record = R> + Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
{
    let (changes, _) = broadcast::channel(CHANGES_BUFFER);
    let sender = changes.clone();
    let stream = events.take_until(shutdown);
    crate::ops::memory::spawn_on_the_stores_thread(async move {
        let mut stream = std::pin::pin!(stream);
        let mut listed = false;
        while let Some(event) = stream.next().await {
            let (touched, first_list) = match &event {
                Ok(event) => {
                    let first_list = matches!(event, watcher::Event::InitDone) && !listed;
                    listed |= matches!(event, watcher::Event::InitDone);
                    (writer.apply(event), first_list)
                }
                // Counted by the view; the watcher retries with backoff.
                Err(_) => (Vec::new(), false),
            };
            // After the map took it: "listed" is never seen before the list is in the map.
            observe(&event);
            for record in touched {
                // No receiver (no term running, on a standby) is fine: the map holds it.
                let _ = sender.send(Touched {
                    object: Arc::new(record),
                    first_list,
                });
            }
        }
    });
    changes
}

/// What a term's change streams read of a store: every object, and whether one is still in it.
trait ObjectView<K>: Clone + Send + Sync + 'static {
    fn everything(&self) -> Vec<Arc<K>>;
    fn holds(&self, object: &K) -> bool;
}

impl<K> ObjectView<K> for Store<K>
where
    K: reflector::Lookup<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    fn everything(&self) -> Vec<Arc<K>> {
        self.state()
    }
    fn holds(&self, object: &K) -> bool {
        self.get(&ObjectRef::from_obj(object)).is_some()
    }
}

impl ObjectView<NamespaceRecord> for Namespaces {
    fn everything(&self) -> Vec<Arc<NamespaceRecord>> {
        self.state()
    }
    fn holds(&self, object: &NamespaceRecord) -> bool {
        self.contains(object)
    }
}

impl ObjectView<WorkloadServiceAccount> for ServiceAccounts {
    fn everything(&self) -> Vec<Arc<WorkloadServiceAccount>> {
        self.state()
    }
    fn holds(&self, object: &WorkloadServiceAccount) -> bool {
        self.contains(object)
    }
}

/// A watch event about one type as the same event about another (the store's own record of it).
fn map_event<A, B>(event: watcher::Event<A>, into: impl Fn(A) -> B) -> watcher::Event<B> {
    match event {
        watcher::Event::Apply(object) => watcher::Event::Apply(into(object)),
        watcher::Event::Delete(object) => watcher::Event::Delete(into(object)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(object) => watcher::Event::InitApply(into(object)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// What the store touched from now on, for one term's controller. A receiver that fell behind
/// the buffer gets every object in the store instead of the ones it missed.
fn changes<K>(
    changes: &broadcast::Sender<Touched<K>>,
    store: impl ObjectView<K>,
) -> impl futures::Stream<Item = Touched<K>> + Send + 'static
where
    K: Clone + Send + Sync + 'static,
{
    // Subscribed now, before the caller reads the store, so nothing falls in between.
    let receiver = changes.subscribe();
    futures::stream::unfold(receiver, move |mut receiver| {
        let store = store.clone();
        async move {
            match receiver.recv().await {
                Ok(touched) => Some((vec![touched], receiver)),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let everything = store.everything().into_iter().map(|object| Touched {
                        object,
                        first_list: false,
                    });
                    Some((everything.collect(), receiver))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        }
    })
    .flat_map(futures::stream::iter)
}

/// Every object in the store once it and every store of the view have listed
/// ([`wait_until_listed`]), then `later` (a term's changes, subscribed before this is called): a
/// term starts by reconciling everything, from the stores the replica kept warm.
fn everything_then_changes<K>(
    later: impl futures::Stream<Item = Arc<K>> + Send + 'static,
    store: Store<K>,
    view: ViewHealth,
    recheck: Duration,
) -> impl futures::Stream<Item = Arc<K>> + Send + 'static
where
    K: kube::runtime::reflector::Lookup + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    futures::stream::once(async move {
        wait_until_listed(&view, &store, recheck).await;
        futures::stream::iter(store.state())
    })
    .flatten()
    .chain(later)
}

/// Every touched object, those of the first list included.
fn objects<K>(
    stream: impl futures::Stream<Item = Touched<K>> + Send + 'static,
) -> impl futures::Stream<Item = Arc<K>> + Send + 'static {
    stream.map(|touched| touched.object)
}

/// A shared stream as the `watches_stream` input the mappers take (owned objects).
fn owned<K: Clone>(
    stream: impl futures::Stream<Item = Arc<K>> + Send + 'static,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    stream.map(|object| Ok(K::clone(&object)))
}

/// Both controllers, until `term` resolves. Passes in flight when it does are dropped at once
/// (not drained): after a lost lease, nothing this replica started may go on writing. The stores
/// are the process's (`views`), warm from before the term began; the view must still be complete
/// before a pass revokes anything, exactly as at a cold start.
async fn run_controllers(
    client: Client,
    azure: AzureClients,
    mut config: ControllerConfig,
    views: &Views,
    fence: Option<LeaseFence>,
    metrics: Metrics,
    term: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    if let Some(fence) = &fence {
        config.engine.fence = Some(Arc::new(fence.clone()));
    }
    let account_store = views.accounts.clone();
    let access_store = views.accesses.clone();

    let shutdown = term.boxed().shared();
    let recorder = events::EventRecorder::new(
        client.clone(),
        "keyless",
        std::env::var("POD_NAME").ok(),
        config.event_series_window,
        config.event_memory,
    );
    let context = Arc::new(Context {
        client: client.clone(),
        azure,
        config,
        accounts: account_store.clone(),
        accesses: access_store.clone(),
        access_index: views.access_index.clone(),
        service_accounts: views.service_accounts.clone(),
        namespaces: views.namespaces.clone(),
        recorder,
        backoff: reconcile::Backoffs::default(),
        exports: export::ExportMemo::default(),
        metrics,
        view: views.health.clone(),
        fence,
    });

    // OpenAIAccess → its account (a malformed one: the account its raw reference names, or all).
    let accounts_for_access = account_store.clone();
    let access_to_account = move |access: LenientAccess| {
        let name = match &access.parsed {
            Ok(a) => Some(a.spec.account_ref.name.clone()),
            Err(unparsed) => unparsed.account_ref.clone(),
        };
        match name {
            Some(name) => vec![ObjectRef::<DeserializeGuard<OpenAIAccount>>::new(&name)],
            None => accounts_for_access
                .state()
                .iter()
                .map(|a| ObjectRef::new(&a.name_any()))
                .collect(),
        }
    };
    // ServiceAccount → the accounts of the OpenAIAccess objects in its namespace that name it
    // (from the index: no scan of the OpenAIAccess store per event).
    let index_for_sa = views.access_index.clone();
    let accounts_for_sa = account_store.clone();
    let sa_to_accounts = move |sa: PartialObjectMeta<ServiceAccount>| {
        account_refs(
            &accounts_for_sa,
            index_for_sa.accounts_using_service_account(
                &sa.namespace().unwrap_or_default(),
                &sa.name_any(),
            ),
        )
    };
    // Namespace → the accounts with OpenAIAccess objects in it: its labels matter to no other.
    let index_for_ns = views.access_index.clone();
    let accounts_for_ns = account_store.clone();
    let ns_to_accounts = move |ns: PartialObjectMeta<Namespace>| {
        account_refs(
            &accounts_for_ns,
            index_for_ns.accounts_in_namespace(&ns.name_any()),
        )
    };

    if let Some(interval) = context.config.assignment_count_interval {
        tokio::spawn(limits::count_assignments_periodically(
            context.clone(),
            interval,
            shutdown.clone(),
        ));
    }

    // Accounts and accesses: only changes a pass reads (not keyless's own status writes, which
    // would each cost an echo pass and an ARM LIST).
    let account_controller = Controller::for_shared_stream(
        everything_then_changes(
            only_changes(
                changes(&views.account_changes, account_store.clone()),
                account_store.clone(),
                PassInputs::of,
            ),
            account_store.clone(),
            views.health.clone(),
            context.config.view_poll_interval,
        ),
        account_store.clone(),
    )
    .with_config(ControllerRuntimeConfig::default().concurrency(context.config.concurrency))
    .watches_stream(
        owned(only_changes(
            changes(&views.access_changes, access_store.clone()),
            access_store.clone(),
            PassInputs::of,
        )),
        access_to_account,
    )
    // Only what keyless reads of them: a ServiceAccount's client-id annotation, a Namespace's
    // labels (and their creation and deletion). CI's churn of anything else costs nothing.
    .watches_stream(
        only_changes(
            changes(
                &views.service_account_changes,
                views.service_accounts.clone(),
            ),
            views.service_accounts.clone(),
            |sa: &WorkloadServiceAccount| sa.client_id.clone(),
        )
        .map(|sa| Ok(sa.trigger())),
        sa_to_accounts,
    )
    .watches_stream(
        only_changes(
            changes(&views.namespace_changes, views.namespaces.clone()),
            views.namespaces.clone(),
            |ns: &NamespaceRecord| ns.labels.clone(),
        )
        .map(|ns| Ok(ns.trigger())),
        ns_to_accounts,
    )
    .graceful_shutdown_on(shutdown.clone())
    .run(
        reconcile::reconcile_account,
        reconcile::account_error_policy,
        context.clone(),
    )
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(%error, "account reconcile");
        }
    });

    // The light controller over OpenAIAccess: malformed objects and missing accounts.
    let accesses_for_account = views.access_index.clone();
    // The light reconcile only has work for an object no account passes (its account is missing
    // or going) or that does not parse; every other object is the account pass's. Filtering its
    // triggers keeps 10,000 no-op reconciles off it at each start (and their scheduler entries:
    // kube's queue keeps the capacity of its largest burst, ~5 MB at issue 18's population),
    // and the 500 that each account status write used to trigger.
    let accounts_for_filter = account_store.clone();
    let needs_light = move |access: &Arc<LenientAccess>| {
        futures::future::ready(reconcile::needs_light_reconcile(
            access,
            &accounts_for_filter,
        ))
    };
    let accounts_gone = account_store.clone();
    let access_controller = Controller::for_shared_stream(
        everything_then_changes(
            objects(changes(&views.access_changes, access_store.clone())),
            access_store.clone(),
            views.health.clone(),
            context.config.view_poll_interval,
        )
        .filter(needs_light),
        access_store.clone(),
    )
    .watches_stream(
        owned(objects(changes(
            &views.account_changes,
            account_store.clone(),
        ))),
        // An account that is deleted (or going without its finalizer) leaves its objects to the
        // light reconcile; a change to one that stays concerns only the account pass.
        move |account| {
            let name = account.name_any();
            if reconcile::account_manages(&accounts_gone, &name) {
                return Vec::new();
            }
            accesses_referencing(&accesses_for_account, &name)
        },
    )
    .graceful_shutdown_on(shutdown.clone())
    .run(
        reconcile::reconcile_access,
        reconcile::access_error_policy,
        context,
    )
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(%error, "access reconcile");
        }
    });

    let both = Box::pin(async move {
        futures::join!(account_controller, access_controller);
    });
    // Dropping the controllers drops their passes in flight.
    futures::future::select(both, shutdown).await;
}

/// The store names of the view (in conditions and logs).
pub const ACCESS_STORE: &str = "OpenAIAccess";
pub const SERVICE_ACCOUNT_STORE: &str = "ServiceAccount";
pub const NAMESPACE_STORE: &str = "Namespace";

fn accesses_referencing(index: &AccessIndex, account: &str) -> Vec<ObjectRef<LenientAccess>> {
    index
        .objects_of(account)
        .into_iter()
        .map(|key| ObjectRef::new(&key.name).within(&key.namespace))
        .collect()
}

/// The accounts an index lookup names (every account, when a malformed object may name any).
fn account_refs(
    accounts: &Store<DeserializeGuard<OpenAIAccount>>,
    found: Accounts,
) -> Vec<ObjectRef<DeserializeGuard<OpenAIAccount>>> {
    if found.any {
        return accounts
            .state()
            .iter()
            .map(|a| ObjectRef::new(&a.name_any()))
            .collect();
    }
    found
        .named
        .iter()
        .map(|name| ObjectRef::new(name))
        .collect()
}

/// What an account pass reads of an OpenAIAccount or OpenAIAccess besides what the store gives it
/// at pass time: a change to any of these is a reason for a pass. The generation moves with the
/// spec and on deletion (the API server bumps it when it sets `deletionTimestamp`); annotations
/// (pause, confirmed revocations) are metadata. Keyless's own writes move none of them: the
/// status at the end of a pass that changed something, and the finalizer it adds on first sight
/// (one someone removed by hand comes back at the next pass; its removal is no reason for one).
#[derive(PartialEq, Hash)]
struct PassInputs {
    generation: Option<i64>,
    deleting: bool,
    annotations: std::collections::BTreeMap<String, String>,
}

impl PassInputs {
    fn of<K: kube::Resource>(object: &K) -> PassInputs {
        let meta = object.meta();
        PassInputs {
            generation: meta.generation,
            deleting: meta.deletion_timestamp.is_some(),
            annotations: meta.annotations.clone().unwrap_or_default(),
        }
    }
}

/// The objects of `stream` whose `read` part changed since this term last saw them (or since the
/// store held them when the term began), or that are new, or gone from the store (deleted).
/// `stream` must be subscribed before this is called (it is, as an argument).
fn only_changes<K, V>(
    stream: impl futures::Stream<Item = Touched<K>> + Send + 'static,
    store: impl ObjectView<K>,
    read: impl Fn(&K) -> V + Send + 'static,
) -> impl futures::Stream<Item = Arc<K>> + Send + 'static
where
    K: reflector::Lookup<DynamicType = ()> + Clone + Send + Sync + 'static,
    V: std::hash::Hash + Send + 'static,
{
    let key_of = |object: &K| crate::plan::ObjectKey {
        namespace: object.namespace().map(String::from).unwrap_or_default(),
        name: object.name().map(String::from).unwrap_or_default(),
    };
    // Seeded from the store as it is now, after `stream` subscribed: an object the term has not
    // seen change is not "new" to it (its first unrelated event would cost a pass). A change
    // already in the store at this moment is seen by the term's first pass of every account,
    // which reads the store later.
    let mut seen = ChangeFilter::default();
    for object in store.everything() {
        seen.changed(key_of(&object), Some(read(&object)));
    }
    stream.filter_map(move |Touched { object, first_list }| {
        let key = key_of(&object);
        let changed = if first_list {
            seen.changed(key, Some(read(&object)));
            false
        } else {
            let present = store.holds(object.as_ref());
            let current = present.then(|| read(&object));
            seen.changed(key, current)
        };
        futures::future::ready(changed.then_some(object))
    })
}

/// Puts this cluster's fingerprint, the `kube-system` namespace's UID, beside the instance id in
/// every marker (unless the config already carries one): two clusters installed with one instance
/// id then see each other's markers as a collision instead of as their own grants. Without it
/// (the namespace cannot be read) markers carry no fingerprint and keyless behaves as before.
async fn with_cluster_fingerprint(
    client: &Client,
    mut config: ControllerConfig,
) -> ControllerConfig {
    if config.engine.instance.fingerprint().is_some() {
        return config;
    }
    match Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await
    {
        Ok(namespace) => match namespace
            .metadata
            .uid
            .as_deref()
            .map(|uid| config.engine.instance.clone().with_fingerprint(uid))
        {
            Some(Ok(instance)) => {
                tracing::info!(fingerprint = instance.fingerprint(), "cluster fingerprint");
                config.engine.instance = instance;
            }
            _ => tracing::warn!(
                "the kube-system namespace has no usable UID: markers carry no cluster fingerprint"
            ),
        },
        Err(error) => {
            tracing::warn!(%error, "could not read the kube-system namespace: markers carry no cluster fingerprint, so two clusters given one instance id are not told apart")
        }
    }
    config
}

/// `keyless run`: connect to the cluster and Azure, then reconcile until SIGTERM or Ctrl-C.
pub async fn run_from_args(args: args::RunArgs) -> Result<(), RunError> {
    // Every request counted by verb and resource (`keyless_kube_requests_total`).
    let kube_config = kube::Config::infer()
        .await
        .map_err(|e| RunError::Connect(kube::Error::InferConfig(e)))?;
    let client = kube::client::ClientBuilder::try_from(kube_config)
        .map_err(RunError::Connect)?
        .with_layer(&crate::ops::kube_requests::layer())
        .build();
    let azure = AzureClients::from_config(&args.azure.to_config()).map_err(RunError::Azure)?;
    if let Some(decision) = &azure.credential {
        tracing::info!(credential = ?decision, "azure credential chosen");
    }
    let issuer = match &args.service_account_issuer {
        Some(issuer) => Some(issuer.clone()),
        None => discover_issuer(&client).await,
    };
    let config = args.controller_config(issuer);
    tracing::info!(instance = %config.engine.instance, "keyless controller starting");
    run(client, azure, config, shutdown_signal()).await
}

/// The cluster's service account issuer, from the API server's OIDC discovery document.
pub async fn discover_issuer(client: &Client) -> Option<String> {
    let request = http::Request::get("/.well-known/openid-configuration")
        .body(Vec::new())
        .ok()?;
    match client.request::<serde_json::Value>(request).await {
        Ok(document) => document
            .get("issuer")
            .and_then(|i| i.as_str())
            .map(str::to_string),
        Err(error) => {
            tracing::warn!(%error, "could not discover the service account issuer; federated credentials are checked by subject only (set --service-account-issuer)");
            None
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Waits until every store of the view and `store` have their first full lists: woken by the view
/// the moment its last list completes; `recheck` only bounds each wait. The view does not track
/// the accounts' store, so `store` is waited for too (it lists first and is small: by then it
/// nearly always has, and that wait returns at once).
async fn wait_until_listed<K>(view: &ViewHealth, store: &Store<K>, recheck: Duration)
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    while !view
        .wait_listed(recheck.max(Duration::from_millis(10)))
        .await
    {}
    wait_until_ready(store).await;
}

/// Waits until a reflector store has its first full list. Re-polled every second: a single long
/// wait on the store's readiness was seen to miss its wake-up in tests, and a missed wake-up here
/// would hold readiness (or a reconcile) forever.
pub async fn wait_until_ready<K>(store: &Store<K>)
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(1), store.wait_until_ready()).await {
            Ok(_) => return,
            Err(_) => continue,
        }
    }
}
