//! `keyless-emulator`: the Azure emulator on loopback until Ctrl-C or SIGTERM (the same as
//! `keyless emulator` in a keyless built with its default features).

use clap::Parser;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "keyless-emulator",
    version,
    about = "An offline Azure on loopback: ARM role assignments, Microsoft Graph and the Entra token endpoint"
)]
struct Cli {
    #[command(flatten)]
    args: keyless_emulator::EmulatorArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    match keyless_emulator::run(Cli::parse().args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprint!("Error: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                eprint!(": {cause}");
                source = cause.source();
            }
            eprintln!();
            ExitCode::FAILURE
        }
    }
}
