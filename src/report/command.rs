//! `keyless report`: the access matrix (principal × account) from files (`-f`, like `plan`, with
//! `--emulator` for a try-out) or from a cluster (`--kubeconfig`: the OpenAIAccounts and
//! OpenAIAccesses there, plus keyless's own LIST per account). Reads only; writes nothing.

use super::gather;
use super::render::{AccessReport, LIMITS, ReportRow};
use crate::api::{OpenAIAccess, OpenAIAccount};
use crate::azure::{AzureArgs, AzureClients, ScopeListing};
use crate::engine::{Azure, EngineConfig, run_pass};
use crate::files::args::EmulatorFlags;
use crate::files::{emulated, load};
use crate::plan::{AccountScope, InstanceId};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Aligned columns, for people.
    #[default]
    Table,
    Json,
    /// RFC 4180, one row per (account, assignment).
    Csv,
    /// One self-contained offline page with filters (preset them with ?origin=foreign or #keys=yes).
    Html,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Manifests to report on (a file, a directory, or `-`; repeatable), as `plan` reads them.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "PATH",
        conflicts_with = "kubeconfig",
        required_unless_present = "kubeconfig"
    )]
    pub paths: Vec<PathBuf>,
    /// Also read the directories inside directories.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Report on the OpenAIAccounts of the cluster this kubeconfig reaches.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The keyless instance whose grants count as `managed` (the controller's --instance-id).
    #[arg(long, env = "KEYLESS_INSTANCE_ID", value_parser = parse_instance_id)]
    pub instance_id: Option<InstanceId>,
    /// Do not look display names up in Microsoft Graph.
    #[arg(long)]
    pub no_names: bool,
    #[arg(short = 'o', long, value_enum, default_value_t = ReportFormat::Table)]
    pub output: ReportFormat,
    #[command(flatten)]
    pub emulator: EmulatorFlags,
    #[command(flatten)]
    pub azure: AzureArgs,
}

fn parse_instance_id(value: &str) -> Result<InstanceId, String> {
    InstanceId::new(value).map_err(|e| e.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("read the manifests")]
    Load(#[from] load::LoadError),
    #[error(transparent)]
    Emulator(#[from] crate::files::emulated::EmulatedError),
    #[error("set up the Azure clients")]
    Azure(#[from] crate::azure::AzureSetupError),
    #[error("connect to the cluster with {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("list {kind} in the cluster")]
    List {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("write the report")]
    Output(#[source] std::io::Error),
}

// Nothing counts as `managed` without an instance id: no real instance uses this one.
const NO_INSTANCE: &str = "report-without-instance-id";

/// One account to report on.
struct AccountToReport {
    name: String,
    scope: AccountScope,
    local_auth_disabled: bool,
    listing: ScopeListing,
    declarations: super::Declarations,
}

pub async fn run(args: &ReportArgs) -> Result<AccessReport, ReportError> {
    let embedded = emulated::start(&args.emulator, &args.azure).await?;
    let clients = match &embedded {
        Some(embedded) => AzureClients::from_config_with_env(&embedded.config, &emulated::no_env)?,
        None => AzureClients::from_config(&args.azure.to_config())?,
    };
    let instance = args
        .instance_id
        .clone()
        .or_else(|| {
            args.emulator
                .emulator
                .then(|| InstanceId::new(crate::files::args::EMULATOR_INSTANCE_ID).ok())
                .flatten()
        })
        .or_else(|| InstanceId::new(NO_INSTANCE).ok());
    let mut report = AccessReport {
        limits: LIMITS.iter().map(|s| (*s).to_string()).collect(),
        ..AccessReport::default()
    };
    if args.instance_id.is_none() && !args.emulator.emulator {
        report.notes.push(
            "no --instance-id: keyless-made grants show as otherInstance, none as managed".into(),
        );
    }
    let Some(instance) = instance else {
        return Ok(report);
    };
    let accounts = match &args.kubeconfig {
        Some(path) => from_cluster(path, &clients, &mut report).await?,
        None => from_files(args, &clients, &instance, &mut report).await?,
    };
    rows(&clients, &instance, &accounts, !args.no_names, &mut report).await;
    let mut stdout = std::io::stdout().lock();
    match args.output {
        ReportFormat::Table => super::render::table(&report, &mut stdout),
        ReportFormat::Json => super::render::json(&report, &mut stdout),
        ReportFormat::Csv => super::render::csv(&report, &mut stdout),
        ReportFormat::Html => super::render::html(&report, &mut stdout),
    }
    .map_err(ReportError::Output)?;
    drop(stdout);
    if let Some(embedded) = embedded {
        embedded.shutdown().await;
    }
    Ok(report)
}

/// The report on a cluster's OpenAIAccounts (the controller's statuses plus a LIST per account),
/// without printing it.
pub async fn report_from_cluster(
    kubeconfig: &PathBuf,
    clients: &AzureClients,
    instance: &InstanceId,
    names: bool,
) -> Result<AccessReport, ReportError> {
    let mut report = AccessReport {
        limits: LIMITS.iter().map(|s| (*s).to_string()).collect(),
        ..AccessReport::default()
    };
    let accounts = from_cluster(kubeconfig, clients, &mut report).await?;
    rows(clients, instance, &accounts, names, &mut report).await;
    Ok(report)
}

// Classifies each account's listing into rows, with display names from Graph when readable.
async fn rows(
    clients: &AzureClients,
    instance: &InstanceId,
    accounts: &[AccountToReport],
    look_up_names: bool,
    report: &mut AccessReport,
) {
    let mut names: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut unreadable_names = 0usize;
    for account in accounts {
        let roles = gather::read_roles(
            clients.role_definitions.as_ref(),
            &account.scope,
            &account.listing,
        )
        .await;
        let grants = gather::classify_listing(
            &account.scope,
            instance,
            &account.listing,
            &roles,
            &account.declarations,
        );
        for grant in &grants {
            if look_up_names && !names.contains_key(&grant.principal_id) {
                let name = match clients.directory.object_by_id(&grant.principal_id).await {
                    Ok(object) => object.display_name,
                    Err(_) => {
                        unreadable_names += 1;
                        None
                    }
                };
                names.insert(grant.principal_id.clone(), name);
            }
            let name = names.get(&grant.principal_id).cloned().flatten();
            report.rows.push(ReportRow::new(
                &account.name,
                grant,
                name,
                account.local_auth_disabled,
            ));
        }
    }
    if unreadable_names > 0 {
        report.notes.push(format!("{unreadable_names} display names could not be read from Microsoft Graph (the credential may lack Directory.Read.All, or the object is gone): object ids are shown"));
    }
}

// Files: one plan-only engine pass per account (the same LIST `plan` makes); which grants the
// files' objects declare comes from the planned statuses.
async fn from_files(
    args: &ReportArgs,
    clients: &AzureClients,
    instance: &InstanceId,
    report: &mut AccessReport,
) -> Result<Vec<AccountToReport>, ReportError> {
    let manifests = load::load(&args.paths, args.recursive)?;
    let config = EngineConfig {
        instance: instance.clone(),
        max_deletes_per_pass: 0,
        replication_deadline: crate::azure::error::DEFAULT_REPLICATION_WINDOW,
        propagation_grace: Duration::from_secs(300),
        federation_issuer: None,
        dry_run: true,
        observe: false,
        resolution_cache: None,
        prune: false,
        brake: None,
        fence: None,
        exclusive_grace: std::time::Duration::ZERO,
    };
    let azure = Azure {
        assignments: clients.role_assignments.as_ref(),
        accounts: clients.accounts.as_ref(),
        identities: clients.identities.as_ref(),
        directory: clients.directory.as_ref(),
    };
    let now = jiff::Timestamp::now();
    let mut accounts = Vec::new();
    for account in manifests.accounts.values() {
        let source = crate::files::scope_source(&manifests, account);
        let outcome = run_pass(azure, &source, &config, now).await;
        let (Some(scope), Some(listing)) = (outcome.scope.clone(), outcome.listing.clone()) else {
            report.notes.push(unreadable(
                &account.name,
                outcome.read_error.as_ref().map(ToString::to_string),
                outcome.invalid_spec.clone(),
            ));
            continue;
        };
        let declarations = gather::declarations(
            outcome
                .accesses
                .iter()
                .map(|a| (a.key.to_string(), &a.status)),
        );
        accounts.push(AccountToReport {
            name: account.name.clone(),
            scope,
            local_auth_disabled: outcome
                .account
                .as_ref()
                .is_some_and(|a| a.local_auth_disabled),
            listing,
            declarations,
        });
    }
    Ok(accounts)
}

fn unreadable(account: &str, read_error: Option<String>, invalid: Option<String>) -> String {
    match (read_error, invalid) {
        (Some(error), _) => format!("OpenAIAccount {account}: not reported, {error}"),
        (None, Some(invalid)) => {
            format!("OpenAIAccount {account}: not reported, invalid spec: {invalid}")
        }
        (None, None) => {
            format!("OpenAIAccount {account}: not reported, the Azure account does not exist")
        }
    }
}

// A cluster: what the controller reports in the OpenAIAccess statuses (which object declares or
// adopted which assignment), and this command's own LIST per account.
async fn from_cluster(
    path: &PathBuf,
    clients: &AzureClients,
    report: &mut AccessReport,
) -> Result<Vec<AccountToReport>, ReportError> {
    let kubeconfig_error =
        |source: Box<dyn std::error::Error + Send + Sync>| ReportError::Kubeconfig {
            path: path.clone(),
            source,
        };
    let kubeconfig =
        kube::config::Kubeconfig::read_from(path).map_err(|e| kubeconfig_error(Box::new(e)))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| kubeconfig_error(Box::new(e)))?;
    let client = kube::Client::try_from(config).map_err(|e| kubeconfig_error(Box::new(e)))?;
    let list = kube::api::ListParams::default();
    let account_objects = kube::Api::<OpenAIAccount>::all(client.clone())
        .list(&list)
        .await
        .map_err(|source| ReportError::List {
            kind: "OpenAIAccounts",
            source,
        })?;
    // Leniently: one object the types reject must not hide the whole report. It is named in the
    // notes, and the declarations it may hold are not shown.
    let lenient = kube::Api::<crate::controller::lenient::LenientAccess>::all(client)
        .list(&list)
        .await
        .map_err(|source| ReportError::List {
            kind: "OpenAIAccesses",
            source,
        })?;
    let mut access_objects: Vec<OpenAIAccess> = Vec::with_capacity(lenient.items.len());
    for object in lenient.items {
        let key = object.key();
        match object.into_access() {
            Ok(access) => access_objects.push(access),
            Err(unparsed) => report.notes.push(format!(
                "OpenAIAccess {}: not read ({}: {}); what it declares is not shown",
                key,
                unparsed.field.as_str(),
                unparsed.error
            )),
        }
    }
    let mut accounts = Vec::new();
    for object in &account_objects.items {
        let name = object.metadata.name.clone().unwrap_or_default();
        let scope = match AccountScope::parse(&object.spec.resource_id) {
            Ok(scope) => scope,
            Err(error) => {
                report
                    .notes
                    .push(unreadable(&name, None, Some(error.to_string())));
                continue;
            }
        };
        let info = match clients.accounts.get_account(&scope).await {
            Ok(Some(info)) => info,
            Ok(None) => {
                report.notes.push(unreadable(&name, None, None));
                continue;
            }
            Err(error) => {
                report
                    .notes
                    .push(unreadable(&name, Some(error.to_string()), None));
                continue;
            }
        };
        let listing = match clients.role_assignments.observe_scope_listing(&scope).await {
            Ok(listing) => listing,
            Err(error) => {
                report
                    .notes
                    .push(unreadable(&name, Some(error.to_string()), None));
                continue;
            }
        };
        let declarations = gather::declarations(
            access_objects
                .iter()
                .filter(|a| a.spec.account_ref.name == name)
                .filter_map(|a| {
                    let key = format!(
                        "{}/{}",
                        a.metadata.namespace.clone().unwrap_or_default(),
                        a.metadata.name.clone().unwrap_or_default()
                    );
                    a.status.as_ref().map(|s| (key, s))
                }),
        );
        accounts.push(AccountToReport {
            name,
            scope,
            local_auth_disabled: info.local_auth_disabled,
            listing,
            declarations,
        });
    }
    Ok(accounts)
}
