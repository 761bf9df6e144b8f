//! The command line: one struct per subcommand, defined beside the code it drives.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "keyless",
    version,
    about = "Azure OpenAI access through Entra ID role assignments, never API keys"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the keyless CustomResourceDefinitions as YAML.
    Crd,
    /// Run the Azure emulator (ARM, Graph, Entra token endpoint) on loopback until stopped.
    Emulator(crate::emulator::EmulatorArgs),
}
