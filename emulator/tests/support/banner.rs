//! The banner a running emulator prints on stdout (`keyless_emulator::describe`), read from the
//! child process that prints it. Used by `emulator/tests/emulator.rs` (the `keyless-emulator`
//! binary) and by keyless's `tests/file_mode.rs` (`keyless emulator`), through `#[path]`.

use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// What the child printed up to the banner's last line ("Stop with Ctrl-C.").
pub struct Banner {
    printed: String,
    /// Kept open: a child that writes to a closed stdout fails.
    _stdout: Lines<BufReader<ChildStdout>>,
}

impl Banner {
    /// Reads the piped stdout of `child` until the banner's last line; panics when a line takes
    /// longer than `within` or stdout ends first.
    pub async fn read(child: &mut Child, within: Duration) -> Banner {
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut printed = String::new();
        while let Some(line) = tokio::time::timeout(within, lines.next_line())
            .await
            .unwrap()
            .unwrap()
        {
            printed.push_str(&line);
            printed.push('\n');
            if line.starts_with("Stop with") {
                return Banner {
                    printed,
                    _stdout: lines,
                };
            }
        }
        panic!("stdout ended before the banner did:\n{printed}");
    }

    /// The word after `marker`, e.g. the endpoint after `"--arm-endpoint "`.
    pub fn value_after(&self, marker: &str) -> String {
        let printed = &self.printed;
        let start = printed
            .find(marker)
            .unwrap_or_else(|| panic!("{marker:?} missing in:\n{printed}"))
            + marker.len();
        printed[start..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }

    /// Everything it printed, for assertion messages.
    pub fn text(&self) -> &str {
        &self.printed
    }
}
