use clap::{CommandFactory, FromArgMatches};
use keyless::cli::{Cli, Command};
use keyless::files::Mode;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let mut log = cli.log.clone();
    // `-q` means no progress and no INFO lines; an explicit --log-level still wins.
    let quiet = matches!(&cli.command, Command::Plan(a) | Command::Apply(a) if a.quiet);
    if quiet && matches.value_source("log_level") == Some(clap::parser::ValueSource::DefaultValue) {
        log.log_level = "warn".into();
    }
    keyless::ops::logging::init(&log);
    match run(cli.command).await {
        Ok(code) => code,
        Err(error) => {
            // The error and its causes on one line each, never anyhow's Debug form: that adds a
            // stack backtrace whenever RUST_BACKTRACE is set, and backtraces are for bugs (panics),
            // not for a mistake in a manifest.
            eprintln!("Error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
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
        #[cfg(feature = "emulator")]
        Command::Emulator(args) => keyless_emulator::run(args).await?,
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
        #[cfg(feature = "emulator")]
        Command::Bench(args) if args.controller.controller => {
            let failed = keyless::bench::controller::run(
                &args.controller,
                args.accounts.unwrap_or(20),
                std::time::Duration::from_millis(args.latency_ms),
                args.page_size,
                !args.no_throttling,
            )
            .await?;
            if args.controller.check && !failed.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        #[cfg(feature = "emulator")]
        Command::Bench(args) => keyless::files::bench::run(&args).await?,
        #[cfg(not(feature = "emulator"))]
        Command::Emulator(_) | Command::Bench(_) => {
            eprintln!("Error: {}", keyless::files::emulated::NOT_BUILT_IN);
            return Ok(ExitCode::from(2));
        }
    }
    Ok(ExitCode::SUCCESS)
}
