//! Logs as text for people or JSON for collectors, via tracing. Nothing here ever formats a token:
//! the Azure clients keep Authorization headers out of their errors and Debug output.

use clap::ValueEnum;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: text for people, json for log collectors.
    #[arg(long, global = true, env = "KEYLESS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level or filter (tracing EnvFilter syntax, e.g. `info` or `keyless=debug,kube=info`).
    #[arg(long, global = true, env = "KEYLESS_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Starts logging to stderr (stdout is for command output such as `keyless crd` and `plan`).
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    if let Err(error) = result {
        eprintln!("logging is already set up: {error}");
    }
}

/// Colour codes only for a person at a terminal: a file, a pipe or a log collector gets plain text,
/// and `NO_COLOR` set to anything but the empty string turns colour off (<https://no-color.org>).
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::use_colour;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        for (terminal, no_color, expected) in [
            (true, None, true),
            (true, Some(""), true),
            (true, Some("1"), false),
            (false, None, false),
            (false, Some("1"), false),
        ] {
            assert_eq!(
                use_colour(terminal, no_color.map(OsStr::new)),
                expected,
                "terminal={terminal} NO_COLOR={no_color:?}"
            );
        }
    }
}
