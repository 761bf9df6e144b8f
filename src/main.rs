use clap::Parser;
use keyless::cli::{Cli, Command};
use keyless::files::Mode;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    keyless::ops::logging::init(&cli.log);
    match cli.command {
        Command::Crd(args) => match args.output_dir {
            None => print!("{}", keyless::api::crds_yaml()?),
            Some(dir) => {
                std::fs::create_dir_all(&dir)?;
                for crd in keyless::api::crds() {
                    let path = dir.join(keyless::api::crd_file_name(&crd));
                    std::fs::write(&path, keyless::api::crd_yaml(&crd)?)?;
                    eprintln!("wrote {}", path.display());
                }
            }
        },
        Command::Run(args) => keyless::controller::run_from_args(*args).await?,
        Command::Emulator(args) => keyless::emulator::run(args).await?,
        Command::Plan(args) => {
            let report = keyless::files::run(&args, Mode::Plan).await?;
            return Ok(ExitCode::from(report.exit_code(args.detailed_exitcode)));
        }
        Command::Apply(args) => {
            let report = keyless::files::run(&args, Mode::Apply).await?;
            return Ok(ExitCode::from(report.exit_code(args.detailed_exitcode)));
        }
        Command::Report(args) => {
            keyless::report::command::run(&args).await?;
        }
        Command::Doctor(args) => {
            if keyless::files::doctor::run(&args).await?.failed() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Bench(args) => keyless::files::bench::run(&args).await?,
    }
    Ok(ExitCode::SUCCESS)
}
