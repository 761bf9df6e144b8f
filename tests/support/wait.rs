//! Waiting for the controller: poll a condition until it holds or a deadline passes. The deadline
//! is generous (a loaded CI machine); a test's time is measured, never asserted.

use std::time::Duration;

/// How long `eventually` waits: the real server and the emulator share two cores with the build.
pub const EVENTUALLY_WITHIN: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

pub async fn eventually(what: &str, check: impl AsyncFn() -> bool) {
    eventually_within(EVENTUALLY_WITHIN, what, check).await;
}

pub async fn eventually_within(within: Duration, what: &str, check: impl AsyncFn() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting until {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}
