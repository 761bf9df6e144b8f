//! The real API server harness: one kube-apiserver v1.36.2 + etcd (`../shared/k8s/up.sh`) per test
//! binary, started on first use and shared by that binary's tests.
//!
//! - **Lifetime.** [`TestEnv::start`] starts the control plane once (about five seconds) with
//!   `SA_ISSUER` set to the emulator seed's issuer ([`ISSUER`]) and installs `crds/`. Statics are
//!   never dropped, so a tiny reaper process (`sh`, in its own process group, deaf to SIGINT/SIGTERM)
//!   polls the test process and runs `down.sh` once it is gone — after a pass, a panic, or a
//!   `kill -9` alike. Logs stay in `target/tmp/kas-<pid>/` while the binary runs.
//! - **Skip or fail.** Without `../shared/k8s` (resolved from `CARGO_MANIFEST_DIR`) a test prints a
//!   notice and passes; with `KEYLESS_REQUIRE_SHARED=1` (CI) it fails instead. `KEYLESS_SHARED_DIR`
//!   points elsewhere (a git worktree has no `../shared`).
//! - **Isolation.** Tests run concurrently on the one control plane. Each test gets a unique id
//!   ([`TestEnv::id`]); it names its namespaces and its cluster-scoped objects with it
//!   ([`TestEnv::name`], [`TestEnv::namespace`]) and labels every object it creates
//!   `test.keyless.dev/scope=<id>` ([`TestEnv::create`]). The controller under test gets a client
//!   whose LISTs and WATCHes select that label ([`TestEnv::controller_client`], through the fault
//!   layer in [`super::kube_faults`]), so it never sees another test's objects. The product itself
//!   always watches the whole cluster; the label is the only test-only difference.
//! - **What the real server does not do here.** No kubelet (Pods never run), and no
//!   kube-controller-manager unless the binary asks for it ([`want_controller_manager`] before its
//!   first test starts; `WITH_KCM=1` in `up.sh`): without it namespaces are never emptied on
//!   deletion and nothing is garbage collected. [`Cluster::restart_apiserver`] stops and starts
//!   kube-apiserver (etcd keeps the data), as a control-plane upgrade does.
//! - **Controllers.** [`RunningController`] runs the real `controller::run` on a runtime of its own:
//!   [`RunningController::stop`] shuts it down gracefully, [`RunningController::kill`] drops the
//!   runtime mid-flight (every task it spawned, lease renewal included, dies at once, as in a crash
//!   without the process exit). [`KeylessProcess`] runs the real `keyless run` binary as a child
//!   that can be SIGKILLed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use keyless::azure::AzureClients;
use keyless::controller::{self, ControllerConfig, RunError};
use kube::api::{Api, PostParams};
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Resource};
use serde::{Serialize, de::DeserializeOwned};

use super::kube_faults::KubeFaults;

/// The issuer of the emulator's seed federated credentials; the API server's `SA_ISSUER`.
pub const ISSUER: &str = "https://oidc.keyless.example/cluster-1/";
/// The label that scopes a test's objects (see the module doc).
pub const SCOPE_LABEL: &str = "test.keyless.dev/scope";
/// How long the CRDs may take to be Established after they are created.
const CRDS_ESTABLISHED_WITHIN: Duration = Duration::from_secs(60);
/// How long kube-apiserver may take to stop, and to answer again after a restart.
const APISERVER_RESTART_WITHIN: Duration = Duration::from_secs(90);
/// Whether this binary's control plane runs kube-controller-manager too.
static WITH_CONTROLLER_MANAGER: AtomicBool = AtomicBool::new(false);

/// Asks for kube-controller-manager (namespace deletion, garbage collection) in this binary's
/// control plane. Only takes effect before the first [`TestEnv::start`] of the binary.
pub fn want_controller_manager() {
    WITH_CONTROLLER_MANAGER.store(true, Ordering::Relaxed);
}

/// How often the reaper checks whether the test process is still there.
const REAPER_POLL: &str = "0.5";

pub struct Cluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// `../shared`, beside the repository; `KEYLESS_SHARED_DIR` overrides it (e.g. in a git worktree
/// that does not sit beside `shared/`).
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("KEYLESS_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
}

/// Whether tests that need `../shared` must fail rather than skip (CI sets it).
pub fn shared_required() -> bool {
    std::env::var("KEYLESS_REQUIRE_SHARED").as_deref() == Ok("1")
}

impl Cluster {
    /// The binary's control plane, started on first use; `None` after a notice when `../shared/k8s`
    /// is absent (a failure under `KEYLESS_REQUIRE_SHARED=1`).
    pub fn shared() -> Option<&'static Cluster> {
        let k8s = shared_dir().join("k8s");
        if !k8s.join("up.sh").exists() {
            assert!(
                !shared_required(),
                "KEYLESS_REQUIRE_SHARED=1 but {} is missing",
                k8s.display()
            );
            eprintln!(
                "notice: {} is missing: skipping a test that needs the real API server",
                k8s.display()
            );
            return None;
        }
        match CLUSTER.get_or_init(|| Cluster::start(&k8s)) {
            Ok(cluster) => Some(cluster),
            Err(error) => panic!("the test control plane did not start: {error}"),
        }
    }

    fn start(k8s: &Path) -> Result<Cluster, String> {
        let dir =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("kas-{}", std::process::id()));
        // A directory left by an earlier process with the same pid holds nothing we want.
        let _ = std::fs::remove_dir_all(&dir);
        // The reaper first: whatever happens from here on, down.sh runs when this process is gone.
        spawn_reaper(std::process::id(), &k8s.join("down.sh"), &dir)?;
        let output = Command::new("bash")
            .arg(k8s.join("up.sh"))
            .arg(&dir)
            .env("SA_ISSUER", ISSUER)
            .env(
                "WITH_KCM",
                if WITH_CONTROLLER_MANAGER.load(Ordering::Relaxed) {
                    "1"
                } else {
                    "0"
                },
            )
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run up.sh: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "up.sh failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let cluster = Cluster {
            kubeconfig: dir.join("kubeconfig"),
            dir,
        };
        // The CRDs are installed on a runtime of their own: each test has its own runtime, and a
        // client must not outlive the runtime it was made on.
        let kubeconfig = cluster.kubeconfig.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("a runtime to install the CRDs: {e}"))?;
            runtime.block_on(install_crds(&kubeconfig))
        })
        .join()
        .map_err(|_| "installing the CRDs panicked".to_string())??;
        Ok(cluster)
    }

    /// Where up.sh keeps the logs, the PKI and the kubeconfig.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The admin (`system:masters`) configuration.
    pub async fn config(&self) -> kube::Config {
        config_from(&self.kubeconfig).await.unwrap()
    }

    /// Stops kube-apiserver (SIGTERM; SIGKILL if it has not stopped within `stop_within`: its
    /// graceful shutdown can wait a minute for long requests), waits `down_for`, starts it again
    /// with the same command line and returns once it answers. Every watch and request in flight
    /// breaks, as in a control-plane upgrade; etcd keeps every object.
    pub async fn restart_apiserver(
        &self,
        down_for: Duration,
        stop_within: Duration,
    ) -> Result<(), String> {
        let stopped = self.stop_apiserver(stop_within).await?;
        tokio::time::sleep(down_for).await;
        self.start_apiserver(stopped).await
    }

    /// The first half of [`Cluster::restart_apiserver`]: SIGTERM, SIGKILL past `stop_within`,
    /// returns once the process has stopped, with what [`Cluster::start_apiserver`] needs.
    pub async fn stop_apiserver(&self, stop_within: Duration) -> Result<StoppedApiServer, String> {
        let pid_file = self.dir.join("kube-apiserver.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .map_err(|e| format!("read {}: {e}", pid_file.display()))?
            .trim()
            .to_string();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map_err(|e| format!("the command line of kube-apiserver {pid}: {e}"))?;
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let (program, args) = argv.split_first().ok_or("an empty command line")?;
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map_err(|e| format!("kill {pid}: {e}"))?;
        let deadline = tokio::time::Instant::now() + APISERVER_RESTART_WITHIN;
        let kill_at = tokio::time::Instant::now() + stop_within;
        let mut killed = false;
        // Stopped: gone, or a zombie (its parent, the exited up.sh, left it to an init that may not
        // reap).
        let running = |pid: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit_once(')')
                        .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                })
                .unwrap_or(false)
        };
        while running(&pid) {
            if tokio::time::Instant::now() > deadline {
                return Err(format!("kube-apiserver {pid} did not stop"));
            }
            if !killed && tokio::time::Instant::now() > kill_at {
                killed = true;
                Command::new("kill")
                    .args(["-KILL", &pid])
                    .status()
                    .map_err(|e| format!("kill -9 {pid}: {e}"))?;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(StoppedApiServer {
            program: program.clone(),
            args: args.to_vec(),
            deadline,
        })
    }

    /// Starts kube-apiserver again with the command line it had; returns once it answers.
    pub async fn start_apiserver(&self, stopped: StoppedApiServer) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let StoppedApiServer {
            program,
            args,
            deadline,
        } = stopped;
        let pid_file = self.dir.join("kube-apiserver.pid");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.dir.join("kube-apiserver.log"))
            .map_err(|e| format!("open the log: {e}"))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("start kube-apiserver again: {e}"))?;
        // down.sh stops what the pid file names.
        std::fs::write(&pid_file, format!("{}\n", child.id())).map_err(|e| e.to_string())?;
        let client = Client::try_from(self.config().await).map_err(|e| e.to_string())?;
        loop {
            let readyz = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| e.to_string())?;
            if client.request_text(readyz).await.is_ok_and(|r| r == "ok") {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err("kube-apiserver did not answer after the restart".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A kube-apiserver [`Cluster::stop_apiserver`] stopped: its command line, and the deadline of
/// the whole restart.
pub struct StoppedApiServer {
    program: String,
    args: Vec<String>,
    deadline: tokio::time::Instant,
}

async fn config_from(kubeconfig: &Path) -> Result<kube::Config, String> {
    let kubeconfig =
        Kubeconfig::read_from(kubeconfig).map_err(|e| format!("read kubeconfig: {e}"))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("kubeconfig: {e}"))
}

/// `sh` waits for `pid` to exit, then runs `down.sh dir`. Own process group and ignored signals, so
/// a Ctrl-C to `cargo test` stops the tests but not the clean-up.
fn spawn_reaper(pid: u32, down: &Path, dir: &Path) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            r#"trap '' INT TERM HUP; while kill -0 "$1" 2>/dev/null; do sleep {REAPER_POLL}; done; exec bash "$2" "$3""#
        ))
        .arg("keyless-test-reaper")
        .arg(pid.to_string())
        .arg(down)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(|_| ())
        .map_err(|e| format!("spawn the reaper: {e}"))
}

/// Creates every CRD in `crds/` and waits until each is Established.
async fn install_crds(kubeconfig: &Path) -> Result<(), String> {
    let client = Client::try_from(config_from(kubeconfig).await?).map_err(|e| e.to_string())?;
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut names = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| format!("read {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
        let crds: Vec<CustomResourceDefinition> = serde_saphyr::from_multiple(&text)
            .map_err(|e| format!("parse {}: {e}", file.display()))?;
        for crd in crds {
            names.push(crd.metadata.name.clone().unwrap_or_default());
            api.create(&PostParams::default(), &crd)
                .await
                .map_err(|e| format!("create the CRD in {}: {e}", file.display()))?;
        }
    }
    let deadline = tokio::time::Instant::now() + CRDS_ESTABLISHED_WITHIN;
    for name in names {
        loop {
            let crd = api.get(&name).await.map_err(|e| e.to_string())?;
            let established = crd.status.and_then(|s| s.conditions).is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("the CRD {name} is not Established"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// One test's view of the shared control plane: its id, an admin client, its namespaces.
pub struct TestEnv {
    pub cluster: &'static Cluster,
    /// Unique in this binary; a DNS label.
    pub id: String,
    /// Admin, unscoped, without faults: the test's own hands.
    pub client: Client,
    config: kube::Config,
}

impl TestEnv {
    /// `None` (after a notice) when the test must skip; see the module doc.
    pub async fn start() -> Option<TestEnv> {
        // Starting the control plane blocks for seconds (once per binary).
        let cluster = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => Cluster::shared(),
            _ => tokio::task::block_in_place(Cluster::shared),
        }?;
        let config = cluster.config().await;
        let client = Client::try_from(config.clone()).unwrap();
        let id = format!("t{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
        Some(TestEnv {
            cluster,
            id,
            client,
            config,
        })
    }

    /// `base-<id>`: a name no other test uses (namespaces, cluster-scoped objects, lease names).
    pub fn name(&self, base: &str) -> String {
        format!("{base}-{}", self.id)
    }

    /// The scope label of this test's objects.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(SCOPE_LABEL.to_string(), self.id.clone())])
    }

    /// Creates the namespace `base-<id>` (labelled, so the controller sees it) and returns its name.
    pub async fn namespace(&self, base: &str) -> String {
        let name = self.name(base);
        let mut namespace = Namespace::default();
        namespace.metadata.name = Some(name.clone());
        self.create(&namespace).await;
        name
    }

    /// Creates `object` with the scope label added (in its own namespace, if it names one).
    pub async fn create<K>(&self, object: &K) -> K
    where
        K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    {
        let mut object = object.clone();
        object
            .meta_mut()
            .labels
            .get_or_insert_with(Default::default)
            .extend(self.labels());
        // Through DynamicObject: `Api<K>` cannot be built for "namespaced or not" generically.
        let resource = kube::api::ApiResource::erase::<K>(&());
        let api: Api<kube::api::DynamicObject> = match object.meta().namespace.as_deref() {
            Some(namespace) => Api::namespaced_with(self.client.clone(), namespace, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        };
        let dynamic: kube::api::DynamicObject =
            serde_json::from_value(serde_json::to_value(&object).unwrap()).unwrap();
        let created = api
            .create(&PostParams::default(), &dynamic)
            .await
            .unwrap_or_else(|e| panic!("create {:?}: {e}", object.meta().name));
        serde_json::from_value(serde_json::to_value(created).unwrap()).unwrap()
    }

    /// The admin configuration (to build clients with other layers or credentials).
    pub fn config(&self) -> kube::Config {
        self.config.clone()
    }

    /// An admin client through `faults` (counted, faults injected), not scoped.
    pub fn client_with(&self, faults: &KubeFaults) -> Client {
        client_with_layer(self.config.clone(), faults)
    }

    /// The client a controller under test gets: through `faults`, and scoped to this test's label.
    pub fn controller_client(&self, faults: &KubeFaults) -> Client {
        client_with_layer(
            self.config.clone(),
            &faults.scoped_to(SCOPE_LABEL, &self.id),
        )
    }
}

/// A client from `config` with the fault layer over kube's whole default stack.
pub fn client_with_layer(config: kube::Config, faults: &KubeFaults) -> Client {
    ClientBuilder::try_from(config)
        .unwrap()
        .with_layer(faults)
        .build()
}

/// The real `controller::run`, on a runtime of its own.
pub struct RunningController {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::sync::oneshot::Receiver<Result<(), RunError>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// How long a graceful stop may take before the test fails.
const STOP_WITHIN: Duration = Duration::from_secs(20);

impl RunningController {
    pub fn spawn(
        client: Client,
        azure: AzureClients,
        config: ControllerConfig,
    ) -> RunningController {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("keyless-controller")
            .enable_all()
            .build()
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (finished, done) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            let result = controller::run(client, azure, config, async move {
                let _ = stopped.await;
            })
            .await;
            let _ = finished.send(result);
        });
        RunningController {
            stop: Some(stop),
            done: Some(done),
            runtime: Some(runtime),
        }
    }

    /// Shuts down gracefully (as on SIGTERM) and returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), RunError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let done = self.done.take().unwrap();
        let result = tokio::time::timeout(STOP_WITHIN, done)
            .await
            .expect("the controller stops gracefully")
            .expect("the controller task finished");
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        result
    }

    /// What `run` returned, if it has returned (e.g. a start-up error).
    pub async fn finished_within(&mut self, within: Duration) -> Option<Result<(), RunError>> {
        let done = self.done.as_mut()?;
        match tokio::time::timeout(within, done).await {
            Ok(Ok(result)) => {
                self.done = None;
                Some(result)
            }
            _ => None,
        }
    }

    /// Drops everything at once: no release of the lease, no finishing of writes in flight.
    pub fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for RunningController {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The real `keyless run` binary as a child process: for tests that must `kill -9` a controller.
/// It reads the test's kubeconfig and is configured through `KEYLESS_*` variables given by the
/// caller. Note: the binary watches the whole cluster (no test scope label), so a test using it
/// must not expect the shared control plane to hold only its objects.
pub struct KeylessProcess {
    child: std::process::Child,
}

impl KeylessProcess {
    pub fn spawn(kubeconfig: &Path, args: &[&str], env: &[(&str, String)]) -> KeylessProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keyless"));
        command
            .arg("run")
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        KeylessProcess {
            child: command.spawn().unwrap(),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (a graceful shutdown), then wait for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for KeylessProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
