//! No secret in any output: collects what a test run showed (log lines through a capturing tracing
//! writer, statuses, events, error messages, CLI stdout and stderr) and asserts that none of it
//! contains a token, client assertion or federated token the emulator issued or read
//! (`EmulatorHandle::secrets`), an `Authorization` value, or anything shaped like a JWT.
//!
//! Used by tests/file_mode.rs and tests/azure_clients.rs through `#[path]` (so they do not compile
//! the API server harness), and by the controller tests through `support::secrets`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// A JWT's header and payload: base64url of `{"...` twice, dot-separated.
pub const JWT_PATTERN: &str = r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.";
/// An Authorization header value as it would be printed.
pub const AUTHORIZATION_PATTERN: &str = r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}";

/// Everything a test saw, by where it came from.
#[derive(Debug, Default)]
pub struct Outputs {
    texts: Vec<(String, String)>,
}

impl Outputs {
    pub fn new() -> Outputs {
        Outputs::default()
    }

    /// Adds one output (a log, a status as JSON, an event, an error's chain, stdout...).
    pub fn add(&mut self, source: impl Into<String>, text: impl Into<String>) -> &mut Outputs {
        self.texts.push((source.into(), text.into()));
        self
    }

    /// Adds an error with its whole source chain, as Display and as Debug.
    pub fn add_error(
        &mut self,
        source: &str,
        error: &(dyn std::error::Error + 'static),
    ) -> &mut Outputs {
        let mut chain = format!("{error} | {error:?}");
        let mut cause = error.source();
        while let Some(inner) = cause {
            chain.push_str(&format!(" | {inner} | {inner:?}"));
            cause = inner.source();
        }
        self.add(source, chain)
    }

    /// Panics naming each output that shows a secret (the secret itself is not printed, only its
    /// length and where it was found).
    pub fn assert_no_secret(&self, secrets: &[String]) {
        let jwt = regex::Regex::new(JWT_PATTERN).unwrap();
        let authorization = regex::Regex::new(AUTHORIZATION_PATTERN).unwrap();
        let mut found = Vec::new();
        for (source, text) in &self.texts {
            for secret in secrets.iter().filter(|s| s.len() >= 8) {
                if text.contains(secret.as_str()) {
                    found.push(format!(
                        "{source}: an emulator secret ({} characters)",
                        secret.len()
                    ));
                }
            }
            if let Some(m) = jwt.find(text) {
                found.push(format!("{source}: a JWT at byte {}", m.start()));
            }
            if let Some(m) = authorization.find(text) {
                found.push(format!(
                    "{source}: an Authorization value at byte {}",
                    m.start()
                ));
            }
        }
        assert!(
            found.is_empty(),
            "secrets in the output:\n{}",
            found.join("\n")
        );
    }

    /// How much text was scanned (for tests that must not pass by scanning nothing).
    pub fn len(&self) -> usize {
        self.texts.iter().map(|(_, t)| t.len()).sum()
    }
}

/// A tracing writer that keeps every line, for all tests of one binary.
#[derive(Clone, Default)]
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl LogCapture {
    /// The process-wide capture, installed once as the global subscriber at TRACE (the most
    /// verbose: whatever any level would print is in here).
    pub fn global() -> LogCapture {
        static CAPTURE: OnceLock<LogCapture> = OnceLock::new();
        CAPTURE
            .get_or_init(|| {
                let capture = LogCapture::default();
                let subscriber = tracing_subscriber::fmt()
                    .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
                    .with_ansi(false)
                    .with_writer(capture.clone())
                    .finish();
                // Another global subscriber would mean the capture sees nothing: fail loudly.
                tracing::subscriber::set_global_default(subscriber)
                    .expect("no other global tracing subscriber");
                capture
            })
            .clone()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> LogCapture {
        self.clone()
    }
}

#[test]
fn the_scan_finds_each_kind_of_secret() {
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
    for (text, secrets) in [
        (format!("token {jwt} leaked"), vec![]),
        ("Authorization: Bearer abcdefghijkl".to_string(), vec![]),
        (
            "opaque s3cr3t-assertion-value here".to_string(),
            vec!["s3cr3t-assertion-value".to_string()],
        ),
    ] {
        let mut outputs = Outputs::new();
        outputs.add("test", text.clone());
        let caught = std::panic::catch_unwind(|| outputs.assert_no_secret(&secrets));
        assert!(caught.is_err(), "missed a secret in {text:?}");
    }
    let mut clean = Outputs::new();
    clean.add(
        "test",
        "Plan: 5 to create, eyJ alone is not a JWT, bearer x",
    );
    clean.assert_no_secret(&["s3cr3t-assertion-value".to_string()]);
}
