//! The command line: one struct per subcommand, defined beside the code it drives.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "keyless",
    version,
    about = "Azure OpenAI access through Entra ID role assignments, never API keys"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: crate::ops::logging::LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the keyless CustomResourceDefinitions as YAML, or write one file per CRD.
    Crd(CrdArgs),
    /// Run the controller: keep ARM's role assignments as the cluster's OpenAIAccess objects declare.
    Run(Box<crate::controller::args::RunArgs>),
    /// Run the Azure emulator (ARM, Graph, Entra token endpoint) on loopback until stopped.
    #[cfg(feature = "emulator")]
    Emulator(keyless_emulator::EmulatorArgs),
    /// Not in this build: the Azure emulator (cargo feature `emulator`).
    #[cfg(not(feature = "emulator"))]
    #[command(disable_help_flag = true)]
    Emulator(NotBuiltIn),
    /// Show what `apply` would change in Azure for these manifests, without changing anything.
    Plan(Box<crate::files::FileModeArgs>),
    /// Make Azure hold the role assignments these manifests declare (no cluster needed).
    Apply(Box<crate::files::FileModeArgs>),
    /// Who can call each Azure OpenAI account, and why: every role assignment that grants its data
    /// actions or its API keys, by origin (from files with -f, or from a cluster with --kubeconfig).
    Report(Box<crate::report::command::ReportArgs>),
    /// Check the credential, the endpoints, the accounts and keyless's permissions, each with the fix.
    Doctor(Box<crate::files::DoctorArgs>),
    /// Converge a generated workload against the in-process emulator and print the figures.
    #[cfg(feature = "emulator")]
    Bench(crate::files::bench::BenchArgs),
    /// Not in this build: the benchmarks run against the Azure emulator (cargo feature `emulator`).
    #[cfg(not(feature = "emulator"))]
    #[command(disable_help_flag = true)]
    Bench(NotBuiltIn),
}

#[derive(Debug, clap::Args)]
pub struct CrdArgs {
    /// Write `{name}.yaml` per CRD into this directory instead of printing them.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<std::path::PathBuf>,
}

/// A subcommand of the emulator in a build without it: whatever follows (`--help` too) is taken,
/// and running it says how to get a build with the emulator
/// ([`NOT_BUILT_IN`](crate::files::emulated::NOT_BUILT_IN)).
#[cfg(not(feature = "emulator"))]
#[derive(Debug, clap::Args)]
pub struct NotBuiltIn {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub ignored: Vec<String>,
}
