//! File mode: `keyless plan -f` / `keyless apply -f` — the controller's engine without a cluster.
//!
//! The manifests come from files ([`load`]), ARM is the only state, and the outcome goes to a
//! table or JSON ([`render`]) instead of CR status. For every OpenAIAccount in the files one engine
//! pass runs over its scope (resolve → observe → plan → apply); accounts run concurrently, writes
//! within one account never do. `--emulator` ([`emulated`]) runs the same thing against an Azure
//! emulator inside the process. [`doctor`] checks a set-up before the first run; `bench` (with the `emulator`
//! feature) measures the engine against the emulator.

pub mod args;
#[cfg(feature = "emulator")]
pub mod bench;
pub mod doctor;
pub mod emulated;
pub mod load;
pub mod render;

pub use args::{DoctorArgs, FileModeArgs, OutputFormat};
pub use render::{Action, GrantRow, Report};

use crate::api::reasons;
use crate::azure::{AzureClients, AzureSetupError, RoleAssignments};
use crate::engine::{AccessSource, Azure, EngineConfig, ScopeSource, ViewCompleteness, run_pass};
use crate::plan::{AccountScope, InstanceId, NewAssignment, ObservedAssignment};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// `plan` reports what would change; `apply` changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Plan,
    Apply,
}

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("read the manifests")]
    Load(#[from] load::LoadError),
    #[error(transparent)]
    Emulator(#[from] emulated::EmulatedError),
    #[error("set up the Azure clients")]
    Azure(#[from] AzureSetupError),
    #[error(
        "apply needs --instance-id (or KEYLESS_INSTANCE_ID): the id this pipeline writes into the role assignments it creates. Later runs must reuse it; only assignments naming it are ever deleted"
    )]
    InstanceIdRequired,
    #[error("write the output")]
    Output(#[source] std::io::Error),
    #[error(
        "{accounts} say management: Observe, so apply writes nothing: run `keyless plan` to see what it would change, or pass --override-management to apply them as Manage"
    )]
    ObserveRefused { accounts: String },
    #[error(
        "{accounts} say enforcement: Exclusive, which revokes every assignment on the account the files do not declare: pass --prune to say the files hold everything declared for these accounts, or set enforcement: Additive"
    )]
    ExclusiveNeedsPrune { accounts: String },
}

/// Exclusive revokes what the input does not declare; files may hold only part of what is
/// declared, so it needs `--prune`, the pipeline's statement that they hold all of it.
pub fn exclusive_refused(manifests: &load::Manifests, prune: bool) -> Result<(), FilesError> {
    if prune {
        return Ok(());
    }
    let exclusive: Vec<String> = manifests
        .accounts
        .values()
        .filter(|a| a.object.spec.enforcement == crate::api::Enforcement::Exclusive)
        .map(|a| format!("OpenAIAccount {}", a.name))
        .collect();
    if exclusive.is_empty() {
        Ok(())
    } else {
        Err(FilesError::ExclusiveNeedsPrune {
            accounts: exclusive.join(", "),
        })
    }
}

// Plan without --instance-id: markers name an instance nobody uses, so no existing assignment counts
// as this run's and the plan deletes nothing. Never written: plan writes nothing.
const NO_INSTANCE: &str = "plan-without-instance-id";

/// Runs `plan` or `apply` and writes the result to stdout (progress to stderr). With `--emulator`,
/// an apply is followed by a plan against the same emulator, to show that nothing is left to change.
pub async fn run(args: &FileModeArgs, mode: Mode) -> Result<Report, FilesError> {
    let mut manifests = load::load(&args.manifests.paths, args.manifests.recursive)?;
    if mode == Mode::Apply {
        observe_refused(&mut manifests, args.override_management)?;
    }
    exclusive_refused(&manifests, args.prune)?;
    let instance = match (&args.instance_id, args.emulator.emulator, mode) {
        (Some(id), _, _) => Some(match &args.instance_fingerprint {
            // Validated by the argument parser.
            Some(fingerprint) => id
                .clone()
                .with_fingerprint(fingerprint)
                .unwrap_or(id.clone()),
            None => id.clone(),
        }),
        (None, true, _) => InstanceId::new(args::EMULATOR_INSTANCE_ID).ok(),
        (None, false, Mode::Apply) => return Err(FilesError::InstanceIdRequired),
        (None, false, Mode::Plan) => None,
    };
    let embedded = emulated::start(&args.emulator, &args.azure).await?;
    let clients = match &embedded {
        Some(embedded) => AzureClients::from_config_with_env(&embedded.config, &emulated::no_env)?,
        None => AzureClients::from_config(&args.azure.to_config())?,
    };
    let issuer = args.service_account_issuer.clone().or_else(|| {
        embedded
            .as_ref()
            .and_then(|embedded| embedded.cluster_issuer.clone())
    });
    let settings = Settings {
        instance,
        prune: args.prune,
        max_deletes_per_pass: args.max_deletes_per_pass,
        federation_issuer: issuer,
        concurrency: usize::from(args.concurrency),
        progress: (!args.quiet).then_some(args.progress_interval),
    };
    let mut report = converge(&clients, &manifests, &settings, mode).await;
    if mode == Mode::Apply && embedded.is_some() {
        // The quickstart's proof: the same manifests, planned again against what ARM now holds.
        let again = converge(&clients, &manifests, &settings, Mode::Plan).await;
        report.follow_up = Some(Box::new(again));
    }
    if let Some(embedded) = &embedded {
        report.emulator = Some(embedded.endpoint().to_string());
    }
    let mut stdout = std::io::stdout().lock();
    match args.output {
        OutputFormat::Table => render::table(&report, &mut stdout),
        OutputFormat::Json => render::json(&report, &mut stdout),
    }
    .map_err(FilesError::Output)?;
    drop(stdout);
    if let Some(embedded) = embedded {
        embedded.shutdown().await;
    }
    Ok(report)
}

/// `apply` and `management: Observe`: refused before anything is read from Azure, naming every
/// such account, unless `--override-management` makes them Manage for this run. Refusing the whole
/// run, not only those accounts, keeps a pipeline from half-applying what it was asked to apply.
fn observe_refused(
    manifests: &mut load::Manifests,
    override_management: bool,
) -> Result<(), FilesError> {
    let observed: Vec<String> = manifests
        .accounts
        .values()
        .filter(|a| a.object.spec.management == crate::api::Management::Observe)
        .map(|a| format!("OpenAIAccount {} ({})", a.name, a.origin))
        .collect();
    if observed.is_empty() {
        return Ok(());
    }
    if !override_management {
        return Err(FilesError::ObserveRefused {
            accounts: observed.join(", "),
        });
    }
    for account in manifests.accounts.values_mut() {
        account.object.spec.management = crate::api::Management::Manage;
    }
    Ok(())
}

/// What one run needs besides the manifests.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `None`: plan without an instance id (nothing counts as ours).
    pub instance: Option<InstanceId>,
    pub prune: bool,
    pub max_deletes_per_pass: usize,
    pub federation_issuer: Option<String>,
    pub concurrency: usize,
    /// How often to print progress on stderr; None prints none.
    pub progress: Option<Duration>,
}

/// One engine pass per account in the manifests, `concurrency` accounts at a time.
pub async fn converge(
    clients: &AzureClients,
    manifests: &load::Manifests,
    settings: &Settings,
    mode: Mode,
) -> Report {
    let instance = settings
        .instance
        .clone()
        .or_else(|| InstanceId::new(NO_INSTANCE).ok());
    let mut report = Report::new(mode, settings.instance.as_ref());
    report.notes.extend(manifests.skipped.iter().cloned());
    if settings.instance.is_none() {
        report.notes.push(
            "no --instance-id: no existing role assignment counts as this pipeline's, so this plan deletes nothing".into(),
        );
    }
    let Some(instance) = instance else {
        return report;
    };
    let config = EngineConfig {
        instance,
        max_deletes_per_pass: settings.max_deletes_per_pass,
        // Without a cluster there is no status to remember since when a principal has been
        // missing: each run reports it Pending and retries on the next run.
        replication_deadline: crate::azure::error::DEFAULT_REPLICATION_WINDOW,
        propagation_grace: Duration::from_secs(300),
        federation_issuer: settings.federation_issuer.clone(),
        dry_run: mode == Mode::Plan,
        observe: false,
        prune: settings.prune,
        // One run resolves each principal once anyway.
        resolution_cache: None,
        brake: None,
        fence: None,
        // No status keeps a clock between runs: `keyless plan` is the report, and an apply with
        // --prune revokes what it lists at once.
        exclusive_grace: std::time::Duration::ZERO,
    };

    // An OpenAIAccess naming an account the files do not register cannot be planned.
    for access in &manifests.accesses {
        let account = &access.object.spec.account_ref.name;
        if !manifests.accounts.contains_key(account) {
            report.orphan_accesses.push(GrantRow {
                account: account.clone(),
                object: access.key.to_string(),
                principal: String::new(),
                object_id: None,
                role: access.object.spec.role.as_str().to_string(),
                role_display_name: access.object.spec.role.display_name().to_string(),
                action: Action::Failed,
                state: Some(crate::api::GrantState::Failed),
                reason: reasons::ACCOUNT_NOT_FOUND.into(),
                message: format!(
                    "OpenAIAccount {account} is not in the files ({}): add its manifest",
                    access.origin
                ),
            });
        }
    }

    let sources: Vec<ScopeSource> = manifests
        .accounts
        .values()
        .map(|account| scope_source(manifests, account))
        .collect();

    let counting = Arc::new(Counting {
        inner: clients.role_assignments.clone(),
        writes: AtomicUsize::new(0),
    });
    let azure = Azure {
        assignments: counting.as_ref(),
        accounts: clients.accounts.as_ref(),
        identities: clients.identities.as_ref(),
        directory: clients.directory.as_ref(),
    };
    let total = sources.len();
    let done = AtomicUsize::new(0);
    let finished = Arc::new(AtomicBool::new(false));
    let ticker = settings.progress.map(|interval| {
        let (counting, finished) = (counting.clone(), finished.clone());
        let verb = match mode {
            Mode::Plan => "planned",
            Mode::Apply => "converged",
        };
        let done = Arc::new(AtomicUsize::new(0));
        let shown = done.clone();
        (
            done,
            tokio::spawn(async move {
                // Long runs only: nothing is printed for a run shorter than the first tick.
                loop {
                    tokio::time::sleep(interval).await;
                    if finished.load(Ordering::Relaxed) {
                        return;
                    }
                    eprintln!(
                        "… {}/{total} accounts {verb}, {} role assignment writes so far",
                        shown.load(Ordering::Relaxed),
                        counting.writes.load(Ordering::Relaxed)
                    );
                }
            }),
        )
    });
    let now = jiff::Timestamp::now();
    let progress_done = ticker.as_ref().map(|(done, _)| done.clone());
    let mut outcomes: Vec<_> = futures::stream::iter(sources.into_iter().map(|source| {
        let (config, done, progress_done) = (&config, &done, &progress_done);
        async move {
            let outcome = run_pass(azure, &source, config, now).await;
            done.fetch_add(1, Ordering::Relaxed);
            if let Some(progress) = progress_done {
                progress.fetch_add(1, Ordering::Relaxed);
            }
            (source, outcome)
        }
    }))
    .buffer_unordered(settings.concurrency.max(1))
    .collect()
    .await;
    finished.store(true, Ordering::Relaxed);
    if let Some((_, task)) = ticker {
        task.abort();
    }
    outcomes.sort_by(|a, b| a.0.account_name.cmp(&b.0.account_name));
    for (source, outcome) in &outcomes {
        report
            .accounts
            .push(render::account_report(source, outcome, mode));
    }
    report.finish();
    report
}

/// Counts role assignment writes for the progress lines.
struct Counting {
    inner: Arc<dyn RoleAssignments>,
    writes: AtomicUsize,
}

#[async_trait::async_trait]
impl RoleAssignments for Counting {
    async fn observe_scope(
        &self,
        scope: &AccountScope,
    ) -> Result<Vec<ObservedAssignment>, crate::azure::AzureError> {
        self.inner.observe_scope(scope).await
    }

    async fn observe_scope_listing(
        &self,
        scope: &AccountScope,
    ) -> Result<crate::azure::ScopeListing, crate::azure::AzureError> {
        self.inner.observe_scope_listing(scope).await
    }

    async fn create_assignment(
        &self,
        assignment: &NewAssignment,
    ) -> Result<crate::azure::Created, crate::azure::AzureError> {
        let result = self.inner.create_assignment(assignment).await;
        self.writes.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn delete_assignment(
        &self,
        assignment_id: &str,
    ) -> Result<crate::azure::Deleted, crate::azure::AzureError> {
        let result = self.inner.delete_assignment(assignment_id).await;
        self.writes.fetch_add(1, Ordering::Relaxed);
        result
    }
}

/// What one account's pass reads in file mode: its manifest and the accesses naming it. Manifests
/// are read whole or rejected, so the view is complete and nothing is malformed; ARM is the only
/// state, so there is no status from an earlier run.
pub(crate) fn scope_source(
    manifests: &load::Manifests,
    account: &load::LoadedAccount,
) -> ScopeSource {
    ScopeSource {
        account_name: account.name.clone(),
        account_generation: None,
        account: account.object.spec.clone(),
        account_being_deleted: false,
        accesses: manifests
            .accesses
            .iter()
            .filter(|a| a.object.spec.account_ref.name == account.name)
            .map(|a| AccessSource {
                key: a.key.clone(),
                generation: None,
                spec: std::sync::Arc::new(a.object.spec.clone()),
                being_deleted: false,
                previous: None,
            })
            .collect(),
        service_accounts: manifests.service_accounts.clone(),
        namespaces: manifests.namespaces.clone(),
        view: ViewCompleteness::Complete,
        malformed: Vec::new(),
        paused: false,
        confirmed_revocations: None,
        exclusive_reported: Vec::new(),
    }
}
