use clap::Parser;
use keyless::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", keyless::api::crds_yaml()?);
        }
        Command::Emulator(args) => keyless::emulator::run(args).await?,
    }
    Ok(())
}
