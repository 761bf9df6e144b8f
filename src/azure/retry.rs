//! Retries inside one Azure call: 429 and 5xx (and connection failures and timeouts) are retried a
//! few times, honouring `Retry-After` or else a capped exponential backoff with jitter. What is still
//! failing after that goes back to the caller as an [`AzureError`](super::AzureError) whose
//! [`retry()`](super::AzureError::retry) decision the engine acts on at the next pass.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use std::time::Duration;

/// Retry and backoff parameters; every duration is configurable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts per call, the first included (1 = no retries).
    pub max_attempts: u32,
    /// The first backoff; each further attempt doubles it.
    pub initial_backoff: Duration,
    /// The cap on one backoff.
    pub max_backoff: Duration,
    /// A `Retry-After` longer than this is not slept through inside the call: the error goes back
    /// to the caller with the delay, so a reconcile does not hold its worker for minutes.
    pub max_retry_after: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryConfig {
    /// The backoff before retry number `retry` (0-based): "equal jitter", a uniformly random delay in
    /// `[cap/2, cap]` where `cap = min(max_backoff, initial_backoff * 2^retry)`. Half is fixed so
    /// retries never hammer back immediately; half is random so many clients spread out.
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self.backoff_cap(retry);
        let half = cap / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        let jitter = if jitter_ms == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(rand::random_range(0..=jitter_ms))
        };
        half + jitter
    }

    /// The upper bound of [`backoff`](Self::backoff) for this retry.
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(31));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Whether a response status is worth retrying inside the call.
pub fn is_retryable_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

/// The delay a response asks for: `retry-after-ms` / `x-ms-retry-after-ms` (milliseconds, as the
/// Azure SDKs honour them), else `Retry-After` in seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    };
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = text(name).and_then(|value| value.parse::<u64>().ok()) {
            return Some(Duration::from_millis(ms));
        }
    }
    let value = text("retry-after")?;
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    // An HTTP date (IMF-fixdate is RFC 2822 with "GMT"): the delay is what remains until then.
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let remaining = at.duration_since(jiff::Timestamp::now());
    Some(Duration::try_from(remaining).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn backoff_doubles_from_the_initial_delay_up_to_the_cap_with_jitter_in_the_upper_half() {
        let config = RetryConfig {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            max_retry_after: Duration::from_secs(60),
        };
        let caps: Vec<u128> = (0..6).map(|n| config.backoff_cap(n).as_millis()).collect();
        assert_eq!(caps, [100, 200, 400, 800, 1000, 1000]);
        for retry in 0..6 {
            for _ in 0..50 {
                let delay = config.backoff(retry);
                let cap = config.backoff_cap(retry);
                assert!(
                    delay >= cap / 2 && delay <= cap,
                    "{delay:?} outside [{:?}, {cap:?}]",
                    cap / 2
                );
            }
        }
        assert_eq!(
            config.backoff_cap(u32::MAX),
            Duration::from_millis(1000),
            "no overflow"
        );
    }

    #[test]
    fn retry_after_reads_seconds_milliseconds_and_http_dates() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert("x-ms-retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));

        let mut dated = HeaderMap::new();
        dated.insert(
            "retry-after",
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(
            retry_after(&dated),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        let mut garbage = HeaderMap::new();
        garbage.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&garbage), None);
    }

    #[test]
    fn throttling_timeouts_and_server_errors_are_retried_client_errors_are_not() {
        for retried in [429, 408, 500, 502, 503, 504] {
            assert!(
                is_retryable_status(StatusCode::from_u16(retried).unwrap()),
                "{retried}"
            );
        }
        for final_status in [400, 401, 403, 404, 409] {
            assert!(
                !is_retryable_status(StatusCode::from_u16(final_status).unwrap()),
                "{final_status}"
            );
        }
    }
}
