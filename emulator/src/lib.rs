//! The keyless Azure emulator: one HTTPS listener on loopback that answers as ARM (role
//! assignments, role definitions, Cognitive Services accounts, managed identities), Microsoft
//! Graph and the Entra token endpoint do, plus an admin API to change the world behind a client's
//! back and to inject faults. Its behaviour follows the official REST specification
//! (../shared/azure-specs) and ../shared/azure-facts.md; `tests/contract.rs` checks it against both.
//!
//! The API: [`Emulator::start`] with an [`EmulatorConfig`] (a [`Seed`]: the YAML world it starts
//! with; [`Faults`], [`Throttling`]) gives an [`EmulatorHandle`]: its endpoint and CA, tokens,
//! the admin operations (users, identities, accounts, role assignments), request counts and the
//! [`journal`] of writes, and faults to turn on and off. [`run`] is the `keyless-emulator` binary
//! (and `keyless emulator`).
//!
//! Inside: [`state`] is the world and its admin operations, with role assignments indexed in
//! `assignments`; `server` does TLS, dispatch by path, faults, throttling and counts; `token`
//! the token endpoint and JWTs; `authz` RBAC and ABAC conditions; `arm`, `graph` (with `odata`)
//! and `admin` the routes. The `internals` feature opens the parsers to other crates' fuzzing.

mod admin;
mod arm;
mod assignments;
mod authz;
pub mod config;
mod graph;
mod http;
pub mod journal;
mod odata;
pub mod roles;
pub mod seed;
mod server;
pub mod state;
mod tls;
mod token;

/// The emulator's parsers and evaluators, for fuzz targets and property tests in other crates
/// (keyless feeds them what its clients send). No stability promise.
#[cfg(feature = "internals")]
pub mod internals {
    pub use crate::arm::{parse_assignment_filter, route};
    pub use crate::authz::{AccessRequest, AssignmentAttributes, evaluate, parse_condition};
    pub use crate::graph::split;
    pub use crate::odata::{parse_filter, parse_key, parse_literal, quote};
    pub use crate::state::World;
    pub use crate::token::{Signer, check_token_request, decode_unverified};
}

pub use config::{
    Bucket, EmulatorConfig, FaultKind, Faults, OutageKind, ScriptedFault, Throttling,
};
pub use seed::{Seed, SeedError};
pub use server::RequestCounts;
pub use state::{
    Account, AdminError, AdminRoleAssignment, DirectoryObject, DirectoryObjectPatch,
    FederatedCredential, Group, Identity, NewGroup, NewIdentity, NewServicePrincipal, NewUser,
    RoleAssignment, ServicePrincipal, User,
};
pub use tls::TlsError;
pub use token::Audience;

use server::{Files, Shared};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("cannot load the seed")]
    Seed(#[from] SeedError),
    #[error("cannot set up TLS")]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on 127.0.0.1:{port}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build an HTTP client that trusts the emulator")]
    Client(#[source] reqwest::Error),
    #[error("no service principal {0} to issue a token for")]
    UnknownPrincipal(String),
    #[error("cannot wait for a shutdown signal")]
    Signal(#[source] std::io::Error),
}

/// Starts emulators.
pub struct Emulator;

/// The ids of the identity keyless runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorIdentity {
    pub resource_id: String,
    pub client_id: String,
    pub principal_id: String,
}

/// A running emulator. Dropping it stops the listener; [`EmulatorHandle::shutdown`] also waits.
pub struct EmulatorHandle {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    ca_pem: String,
    operator: Option<OperatorIdentity>,
    /// A directory the emulator made itself, removed when it stops.
    owned_dir: Option<PathBuf>,
}

fn write(path: &Path, contents: &str) -> Result<(), EmulatorError> {
    std::fs::write(path, contents).map_err(|source| EmulatorError::Write {
        path: path.display().to_string(),
        source,
    })
}

impl Emulator {
    pub async fn start(config: EmulatorConfig) -> Result<EmulatorHandle, EmulatorError> {
        let world = state::World::from_seed(&config.seed)?;
        let certificates = tls::generate()?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port))
            .await
            .map_err(|source| EmulatorError::Bind {
                port: config.port,
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| EmulatorError::Bind {
                port: config.port,
                source,
            })?
            .port();
        let endpoint = format!("https://127.0.0.1:{port}");

        let (dir, owned_dir) = match &config.state_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let dir = std::env::temp_dir().join(format!(
                    "keyless-emulator-{}",
                    uuid::Uuid::new_v4().simple()
                ));
                (dir.clone(), Some(dir))
            }
        };
        std::fs::create_dir_all(&dir).map_err(|source| EmulatorError::Write {
            path: dir.display().to_string(),
            source,
        })?;
        let ca_file = dir.join("emulator-ca.pem");
        write(&ca_file, &certificates.ca_pem)?;

        let operator = world
            .operator_identity
            .as_deref()
            .and_then(|id| world.identity_by_id(id))
            .map(|i| {
                (
                    OperatorIdentity {
                        resource_id: i.resource_id(),
                        client_id: i.client_id.clone(),
                        principal_id: i.principal_id.clone(),
                    },
                    i.federated_credentials.first().cloned(),
                )
            });
        let token_file = operator.as_ref().map(|_| dir.join("azure-identity-token"));
        let files = Files {
            ca_file,
            token_file: token_file.clone(),
        };
        let shared = Arc::new(Shared::new(config, endpoint, files, world));

        let (shutdown, receiver) = watch::channel(false);
        let acceptor = tokio_rustls::TlsAcceptor::from(certificates.server);
        let mut tasks = vec![tokio::spawn(server::accept_loop(
            listener,
            acceptor,
            shared.clone(),
            receiver.clone(),
        ))];

        if let (Some((_, Some(credential))), Some(path)) = (&operator, &token_file) {
            let lifetime = shared.config.federated_token_lifetime;
            let write_token = {
                let (shared, credential, path) = (shared.clone(), credential.clone(), path.clone());
                move || {
                    let lifetime_secs = i64::try_from(lifetime.as_secs()).unwrap_or(3600);
                    let audience = credential
                        .audiences
                        .first()
                        .cloned()
                        .unwrap_or_else(|| "api://AzureADTokenExchange".into());
                    let assertion = token::federated_assertion(
                        &shared.signer,
                        &credential.issuer,
                        &credential.subject,
                        &audience,
                        token::unix_now(),
                        lifetime_secs,
                    );
                    shared.record_secret(&assertion);
                    write(&path, &assertion)
                }
            };
            write_token()?;
            // Rewrite at half-life, as the kubelet does for projected tokens, so the file never
            // holds an expired assertion.
            let mut stop = receiver.clone();
            let period = (lifetime / 2).max(Duration::from_secs(1));
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(period) => {
                            if let Err(error) = write_token() {
                                tracing::warn!(%error, "cannot refresh the federated token file");
                            }
                        }
                        _ = stop.changed() => return,
                    }
                }
            }));
        }

        Ok(EmulatorHandle {
            shared,
            shutdown,
            tasks,
            ca_pem: certificates.ca_pem,
            operator: operator.map(|(ids, _)| ids),
            owned_dir,
        })
    }
}

impl EmulatorHandle {
    /// `https://127.0.0.1:PORT`: ARM, Graph (under `/v1.0`), the authority host and the admin API.
    pub fn endpoint(&self) -> &str {
        &self.shared.endpoint
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_file(&self) -> &Path {
        &self.shared.files.ca_file
    }

    pub fn tenant_id(&self) -> String {
        self.shared.lock_world().tenant_id.clone()
    }

    pub fn operator(&self) -> Option<&OperatorIdentity> {
        self.operator.as_ref()
    }

    /// The operator identity's client id (`AZURE_CLIENT_ID`).
    pub fn operator_client_id(&self) -> Option<&str> {
        self.operator.as_ref().map(|o| o.client_id.as_str())
    }

    /// The federated token file for the operator identity (`AZURE_FEDERATED_TOKEN_FILE`).
    pub fn federated_token_file(&self) -> Option<&Path> {
        self.shared.files.token_file.as_deref()
    }

    /// A reqwest client that trusts the emulator's CA (and nothing else).
    pub fn http_client(&self) -> Result<reqwest::Client, EmulatorError> {
        let certificate = reqwest::Certificate::from_pem(self.ca_pem.as_bytes())
            .map_err(EmulatorError::Client)?;
        reqwest::Client::builder()
            .tls_certs_only([certificate])
            .build()
            .map_err(EmulatorError::Client)
    }

    /// An access token for a service principal (by object id), as the token endpoint would issue.
    pub fn token_for(
        &self,
        principal_id: &str,
        audience: Audience,
    ) -> Result<String, EmulatorError> {
        self.shared
            .mint_token(principal_id, audience)
            .ok_or_else(|| EmulatorError::UnknownPrincipal(principal_id.to_string()))
    }

    /// A client assertion as a Kubernetes OIDC issuer would write it, valid for an hour.
    pub fn federated_assertion(&self, issuer: &str, subject: &str, audience: &str) -> String {
        let assertion = token::federated_assertion(
            &self.shared.signer,
            issuer,
            subject,
            audience,
            token::unix_now(),
            3600,
        );
        self.shared.record_secret(&assertion);
        assertion
    }

    /// Every access token, client assertion and federated token this emulator issued or read
    /// (including `Authorization` header values as sent): what no output may ever contain.
    pub fn secrets(&self) -> Vec<String> {
        self.shared.secrets()
    }

    pub fn request_counts(&self) -> RequestCounts {
        self.shared.counts()
    }

    /// How many requests of `operation` were answered with `status` (0 = connection dropped).
    pub fn request_count(&self, operation: &str, status: u16) -> u64 {
        self.shared
            .counts()
            .get(&(operation.to_string(), status))
            .copied()
            .unwrap_or(0)
    }

    /// How many requests of `operation` were seen, whatever the answer (or none yet): counted on
    /// arrival, so a test that observes a request's effect also sees it counted.
    pub fn requests_of(&self, operation: &str) -> u64 {
        self.shared.arrivals_of(operation)
    }

    /// Every role assignment write made through ARM so far, in order (see [`journal`]).
    pub fn assignment_writes(&self) -> Vec<journal::AssignmentWrite> {
        self.shared.journal()
    }

    /// Every request answered so far, oldest first: when it arrived, when it was answered, how.
    pub fn requests(&self) -> Vec<journal::RequestRecord> {
        self.shared.requests()
    }

    pub fn reset_request_counts(&self) {
        self.shared.reset_counts();
    }

    /// The whole world as JSON (what `GET /_emulator/state` returns).
    pub fn snapshot(&self) -> serde_json::Value {
        self.shared.snapshot()
    }

    // ---- admin operations (the same as the admin API) ----------------------------------------

    pub fn add_user(&self, user: NewUser) -> Result<User, AdminError> {
        self.shared.add_user(user)
    }

    pub fn add_group(&self, group: NewGroup) -> Result<Group, AdminError> {
        self.shared.add_group(group)
    }

    pub fn add_service_principal(
        &self,
        sp: NewServicePrincipal,
    ) -> Result<ServicePrincipal, AdminError> {
        self.shared.add_service_principal(sp)
    }

    /// Adds a user-assigned identity and its service principal (not replicated yet).
    pub fn add_identity(&self, identity: NewIdentity) -> Result<Identity, AdminError> {
        self.shared.add_identity(identity)
    }

    pub fn delete_identity(&self, resource_id: &str) -> Result<Identity, AdminError> {
        self.shared.delete_identity(resource_id)
    }

    pub fn delete_directory_object(&self, id: &str) -> Result<DirectoryObject, AdminError> {
        self.shared.delete_directory_object(id)
    }

    pub fn patch_directory_object(
        &self,
        id: &str,
        patch: DirectoryObjectPatch,
    ) -> Result<DirectoryObject, AdminError> {
        self.shared.patch_directory_object(id, patch)
    }

    pub fn rename_group(
        &self,
        id: &str,
        display_name: &str,
    ) -> Result<DirectoryObject, AdminError> {
        self.shared.patch_directory_object(
            id,
            DirectoryObjectPatch {
                display_name: Some(display_name.to_string()),
                ..Default::default()
            },
        )
    }

    pub fn add_federated_credential(
        &self,
        identity_id: &str,
        credential: FederatedCredential,
    ) -> Result<(), AdminError> {
        self.shared
            .add_federated_credential(identity_id, credential)
    }

    pub fn remove_federated_credential(
        &self,
        identity_id: &str,
        name: &str,
    ) -> Result<(), AdminError> {
        self.shared.remove_federated_credential(identity_id, name)
    }

    /// Adds (or replaces, by name) a federated credential on the app registration `app_id`.
    pub fn add_application_federated_credential(
        &self,
        app_id: &str,
        credential: FederatedCredential,
    ) -> Result<(), AdminError> {
        self.shared
            .add_application_federated_credential(app_id, credential)
    }

    pub fn remove_application_federated_credential(
        &self,
        app_id: &str,
        name: &str,
    ) -> Result<(), AdminError> {
        self.shared
            .remove_application_federated_credential(app_id, name)
    }

    pub fn put_account(&self, account: Account) -> Result<Account, AdminError> {
        self.shared.put_account(account)
    }

    pub fn delete_account(&self, resource_id: &str) -> Result<Account, AdminError> {
        self.shared.delete_account(resource_id)
    }

    /// Writes a role assignment without authorization or rule checks.
    pub fn put_role_assignment(
        &self,
        assignment: AdminRoleAssignment,
    ) -> Result<RoleAssignment, AdminError> {
        self.shared.put_role_assignment(assignment)
    }

    pub fn delete_role_assignment(&self, name_or_id: &str) -> Result<RoleAssignment, AdminError> {
        self.shared.delete_role_assignment(name_or_id)
    }

    pub fn role_assignments(&self) -> Vec<RoleAssignment> {
        self.shared.role_assignments()
    }

    pub fn grant_app_role(&self, principal_id: &str, role: &str) -> Result<(), AdminError> {
        self.shared.set_app_role(principal_id, role, true)
    }

    pub fn revoke_app_role(&self, principal_id: &str, role: &str) -> Result<(), AdminError> {
        self.shared.set_app_role(principal_id, role, false)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    pub fn clear_faults(&self) {
        self.shared.clear_faults();
    }

    /// Fails the next matching request(s).
    pub fn inject_fault(&self, fault: ScriptedFault) {
        self.shared.inject_fault(fault);
    }

    pub fn set_throttling(&self, throttling: Throttling) {
        self.shared.set_throttling(throttling);
    }

    pub fn start_token_outage(&self, duration: Option<Duration>, kind: OutageKind) {
        self.shared.start_token_outage(duration, kind);
    }

    pub fn end_token_outage(&self) {
        self.shared.end_token_outage();
    }

    /// Stops listening and waits for the server's tasks.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(dir) = &self.owned_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `keyless-emulator` (and `keyless emulator`): runs the Azure emulator on loopback until Ctrl-C
/// or SIGTERM.
#[derive(Debug, Clone, clap::Args)]
pub struct EmulatorArgs {
    /// The world to start with (YAML, see the emulator's src/seed.rs); the example tenant when absent.
    #[arg(long, value_name = "FILE")]
    pub seed: Option<PathBuf>,
    /// The port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Where to write the CA and the federated token file (a temporary directory by default).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Items per page of ARM lists.
    #[arg(long)]
    pub page_size: Option<usize>,
    /// Latency added to every ARM, Graph and token response.
    #[arg(long, value_name = "MS")]
    pub latency_ms: Option<u64>,
    /// Share of requests answered 429 with Retry-After (0..1).
    #[arg(long, value_name = "RATE")]
    pub throttle_rate: Option<f64>,
    /// Share of requests answered 500 (0..1).
    #[arg(long, value_name = "RATE")]
    pub server_error_rate: Option<f64>,
    /// Share of requests answered 503 (0..1).
    #[arg(long, value_name = "RATE")]
    pub unavailable_rate: Option<f64>,
    /// Share of requests whose connection is dropped (0..1).
    #[arg(long, value_name = "RATE")]
    pub connection_reset_rate: Option<f64>,
    /// Retry-After of injected 429s.
    #[arg(long, value_name = "SECONDS")]
    pub retry_after: Option<u64>,
    /// How long objects added through the admin API stay unreplicated.
    #[arg(long, value_name = "SECONDS")]
    pub replication_window: Option<u64>,
    /// How long a token endpoint outage started without a duration lasts.
    #[arg(long, value_name = "SECONDS")]
    pub token_outage: Option<u64>,
    /// Turn ARM's token-bucket throttling off.
    #[arg(long)]
    pub no_throttling: bool,
}

impl EmulatorArgs {
    pub fn config(&self) -> Result<EmulatorConfig, EmulatorError> {
        let seed = match &self.seed {
            Some(path) => Seed::from_file(path)?,
            None => Seed::example()?,
        };
        let mut config = EmulatorConfig::new(seed);
        config.port = self.port;
        config.state_dir = self.state_dir.clone();
        if let Some(size) = self.page_size {
            config.page_size = size;
        }
        let faults = &mut config.faults;
        faults.latency = Duration::from_millis(self.latency_ms.unwrap_or(0));
        faults.throttle_rate = self.throttle_rate.unwrap_or(0.0);
        faults.server_error_rate = self.server_error_rate.unwrap_or(0.0);
        faults.unavailable_rate = self.unavailable_rate.unwrap_or(0.0);
        faults.connection_reset_rate = self.connection_reset_rate.unwrap_or(0.0);
        faults.retry_after = Duration::from_secs(self.retry_after.unwrap_or(1));
        if let Some(seconds) = self.replication_window {
            config.replication_window = Duration::from_secs(seconds);
        }
        if let Some(seconds) = self.token_outage {
            config.token_outage = Duration::from_secs(seconds);
        }
        config.throttling.enabled = !self.no_throttling;
        Ok(config)
    }
}

/// What the emulator prints when it starts: where it is and how to point keyless at it.
pub fn describe(handle: &EmulatorHandle) -> String {
    let endpoint = handle.endpoint();
    let ca = handle.ca_file().display();
    let mut out = format!(
        "keyless Azure emulator listening on {endpoint}\n\
         \x20 ARM:            {endpoint}/subscriptions/...\n\
         \x20 Graph:          {endpoint}/v1.0/...\n\
         \x20 token endpoint: {endpoint}/{tenant}/oauth2/v2.0/token\n\
         \x20 admin API:      {endpoint}/_emulator/info\n\
         \x20 CA file:        {ca}\n",
        tenant = handle.tenant_id()
    );
    if let Some(token_file) = handle.federated_token_file() {
        out.push_str(&format!("  token file:     {}\n", token_file.display()));
    }
    out.push_str(&format!(
        "\nPoint keyless at it with the flags\n  --arm-endpoint {endpoint} --graph-endpoint {endpoint} --authority-host {endpoint} --ca-file {ca}\nand the environment\n  export AZURE_TENANT_ID={}\n",
        handle.tenant_id()
    ));
    if let (Some(client_id), Some(token_file)) =
        (handle.operator_client_id(), handle.federated_token_file())
    {
        out.push_str(&format!(
            "  export AZURE_CLIENT_ID={client_id}\n  export AZURE_FEDERATED_TOKEN_FILE={}\n",
            token_file.display()
        ));
    }
    out.push_str(&format!(
        "  export AZURE_AUTHORITY_HOST={endpoint}\n\nStop with Ctrl-C.\n"
    ));
    out
}

/// Runs the emulator until Ctrl-C or SIGTERM.
pub async fn run(args: EmulatorArgs) -> Result<(), EmulatorError> {
    let handle = Emulator::start(args.config()?).await?;
    print!("{}", describe(&handle));
    wait_for_stop().await?;
    handle.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_stop() -> Result<(), EmulatorError> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(EmulatorError::Signal)?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.map_err(EmulatorError::Signal),
        _ = terminate.recv() => Ok(()),
    }
}

#[cfg(not(unix))]
async fn wait_for_stop() -> Result<(), EmulatorError> {
    tokio::signal::ctrl_c().await.map_err(EmulatorError::Signal)
}
