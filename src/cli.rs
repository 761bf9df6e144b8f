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
    Emulator(crate::emulator::EmulatorArgs),
}

#[derive(Debug, clap::Args)]
pub struct CrdArgs {
    /// Write `{name}.yaml` per CRD into this directory instead of printing them.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<std::path::PathBuf>,
}
