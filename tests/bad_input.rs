//! The corpus of bad input a person would type (`tests/bad-input/NAME.yaml`, with the expected
//! message in `NAME.expected`), run through the built binary as a person runs it: each mistake gets
//! a short message naming the file, the object and the field, exit code 1, no stack backtrace (even
//! with RUST_BACKTRACE set) and no colour codes (stderr is a pipe here).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The most characters `keyless` may print on stderr for one bad file.
const MAX_STDERR: usize = 700;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-input")
}

fn keyless(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyless"))
        .current_dir(dir)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("NO_COLOR")
        .env_remove("KEYLESS_LOG_LEVEL")
        .env_remove("KEYLESS_LOG_FORMAT")
        .output()
        .unwrap()
}

#[test]
fn every_bad_file_gets_a_short_message_naming_file_object_and_field() {
    let dir = corpus();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 15, "the corpus is missing: {cases:?}");
    let mut failures = Vec::new();
    for case in &cases {
        let file = case.file_name().unwrap().to_str().unwrap();
        let expected = std::fs::read_to_string(case.with_extension("expected"))
            .unwrap_or_else(|_| panic!("{file} has no .expected file"));
        let output = keyless(&dir, &["plan", "-f", file, "--emulator"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut wrong = Vec::new();
        if output.status.code() != Some(1) {
            wrong.push(format!("exit code {:?}, expected 1", output.status.code()));
        }
        for line in expected.lines().filter(|l| !l.trim().is_empty()) {
            if !stderr.contains(line) {
                wrong.push(format!("missing {line:?}"));
            }
        }
        if stderr.contains("backtrace") {
            wrong.push("prints a stack backtrace".into());
        }
        if stderr.contains('\u{1b}') {
            wrong.push("prints ANSI escape codes into a pipe".into());
        }
        if stderr.chars().count() > MAX_STDERR {
            wrong.push(format!(
                "{} characters, at most {MAX_STDERR}",
                stderr.chars().count()
            ));
        }
        if !output.stdout.is_empty() {
            wrong.push("prints to stdout".into());
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{file}: {}\n--- stderr:\n{stderr}",
                wrong.join("; ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/manifests")
}

#[test]
fn quiet_prints_no_info_line_and_a_pipe_gets_no_colour() {
    let dir = examples();
    let quiet = keyless(&dir, &["plan", "-f", ".", "--emulator", "-q"]);
    assert_eq!(quiet.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&quiet.stderr);
    assert!(!stderr.contains("INFO"), "-q printed: {stderr}");

    let chatty = keyless(&dir, &["plan", "-f", ".", "--emulator"]);
    assert_eq!(chatty.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&chatty.stderr);
    assert!(stderr.contains("INFO"), "no log line to check: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a pipe: {stderr:?}"
    );

    // An explicit level wins over -q.
    let explicit = keyless(
        &dir,
        &["plan", "-f", ".", "--emulator", "-q", "--log-level", "info"],
    );
    let stderr = String::from_utf8_lossy(&explicit.stderr);
    assert!(
        stderr.contains("INFO"),
        "--log-level info ignored: {stderr}"
    );
}
