//! The flags of `keyless plan`, `keyless apply` and `keyless doctor`.

use crate::azure::AzureArgs;
use crate::plan::InstanceId;
use std::path::PathBuf;

/// The instance id `--emulator` runs use when none is given: the emulated tenant is thrown away at
/// the end of the run, so a fixed id is safe there (and only there).
pub const EMULATOR_INSTANCE_ID: &str = "keyless-quickstart";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One line per grant, for people.
    #[default]
    Table,
    /// One JSON document, for pipelines.
    Json,
}

/// Where the manifests are.
#[derive(Debug, Clone, clap::Args)]
pub struct ManifestArgs {
    /// A manifest file, a directory of *.yaml / *.yml / *.json files, or `-` for stdin (repeatable).
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
    /// Also read the directories inside directories.
    #[arg(short = 'R', long)]
    pub recursive: bool,
}

/// The embedded Azure emulator.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Emulator")]
pub struct EmulatorFlags {
    /// Run against an Azure emulator started inside this process (no Azure account needed). Its
    /// tenant, accounts and identities come from --seed, or the example tenant
    /// (examples/emulator/seed.yaml).
    #[arg(long)]
    pub emulator: bool,
    /// The emulator's world (see emulator/src/seed.rs); only with --emulator.
    #[arg(long, value_name = "FILE", requires = "emulator")]
    pub seed: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FileModeArgs {
    #[command(flatten)]
    pub manifests: ManifestArgs,

    /// This pipeline's id, written into every role assignment it creates; only assignments naming
    /// it are ever deleted. Required by `apply` against Azure: later runs must reuse it. Without it,
    /// `plan` counts no existing assignment as its own.
    #[arg(long, env = "KEYLESS_INSTANCE_ID", value_parser = parse_instance_id)]
    pub instance_id: Option<InstanceId>,

    /// Tells this pipeline apart from another installation given the same --instance-id: written
    /// into every marker beside the id. A role assignment with this id and another fingerprint stops
    /// every delete on its account. Use something fixed per pipeline (a repository and environment
    /// id); letters, digits, '.', '_' and '-', at most 63 characters.
    #[arg(long, env = "KEYLESS_INSTANCE_FINGERPRINT", requires = "instance_id", value_parser = parse_fingerprint)]
    pub instance_fingerprint: Option<String>,

    /// Also delete role assignments this instance created for objects (or principals) no longer in
    /// the files — only on the accounts the files name. Without it, only grants the files still
    /// name but no longer allow (denied, expired) are revoked.
    #[arg(long)]
    pub prune: bool,

    /// `apply` an OpenAIAccount whose manifest says `management: Observe` as if it said Manage.
    /// Without it, `apply` refuses such accounts (and writes nothing); `plan` ignores it.
    #[arg(long)]
    pub override_management: bool,

    /// The most role assignments one run deletes per account; the rest wait for the next run.
    #[arg(long, env = "KEYLESS_MAX_DELETES_PER_PASS", default_value_t = 50)]
    pub max_deletes_per_pass: usize,

    /// The service account issuer of the cluster the ServiceAccounts in the files live in; a
    /// serviceAccount principal is granted only if its identity is federated with this issuer and
    /// subject. Unset: only the subject is checked (with --emulator: the seed's issuer).
    #[arg(long, env = "KEYLESS_SERVICE_ACCOUNT_ISSUER")]
    pub service_account_issuer: Option<String>,

    /// Accounts worked on at once; writes within one account are always sequential.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Exit 2 when there are (plan) or were (apply) changes; 0 means none, 1 an error.
    #[arg(long)]
    pub detailed_exitcode: bool,

    /// No progress lines on stderr.
    #[arg(short = 'q', long)]
    pub quiet: bool,

    /// How often a long run prints a progress line on stderr.
    #[arg(long, value_parser = crate::azure::config::parse_duration, default_value = "3s")]
    pub progress_interval: std::time::Duration,

    #[command(flatten)]
    pub emulator: EmulatorFlags,

    #[command(flatten)]
    pub azure: AzureArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// Manifests naming the accounts (and principals) to check; without them only the credential
    /// and the endpoints are checked.
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    #[arg(short = 'R', long)]
    pub recursive: bool,
    #[command(flatten)]
    pub emulator: EmulatorFlags,
    #[command(flatten)]
    pub azure: AzureArgs,
}

fn parse_fingerprint(value: &str) -> Result<String, String> {
    InstanceId::new(value)
        .map(|_| value.to_string())
        .map_err(|_| format!("fingerprint {value:?} must be 1 to 63 characters of letters, digits, '.', '_' or '-'"))
}

fn parse_instance_id(value: &str) -> Result<InstanceId, String> {
    InstanceId::new(value).map_err(|e| e.to_string())
}
