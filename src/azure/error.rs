//! Azure errors, each carrying the retry decision the engine acts on.

use std::time::Duration;

/// How long a principal that ARM or Graph does not know yet is treated as still replicating (Entra
/// documents "a few minutes"; the default is 10 minutes).
pub const DEFAULT_REPLICATION_WINDOW: Duration = Duration::from_secs(600);

/// What the caller should do about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Retrying cannot help until someone changes the spec or Azure (permissions, names, limits).
    WaitForChange,
    /// Throttled: wait at least this long (ARM's `Retry-After`).
    After(Duration),
    /// Transient: retry with capped exponential backoff and jitter.
    Backoff,
}

/// A bounded classification, used for metrics labels, event reasons and status reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AzureErrorKind {
    /// 404 for the thing asked about (Graph `Request_ResourceNotFound`, ARM 404).
    NotFound,
    /// A group display name matched several groups.
    Ambiguous,
    /// ARM `PrincipalNotFound` or a Graph 404 for an object that may still be replicating.
    PrincipalNotFound,
    /// ARM `UnmatchedPrincipalType`: the principalType sent does not match the directory object.
    UnmatchedPrincipalType,
    /// ARM `RoleAssignmentUpdateNotPermitted`: the name is taken by another principal or scope.
    UpdateNotPermitted,
    /// 403 `AuthorizationFailed` (ARM) or `Authorization_RequestDenied` (Graph).
    AuthorizationFailed,
    /// 401: the token was refused.
    Unauthorized,
    /// `RoleAssignmentLimitExceeded`: 4,000 assignments per subscription.
    LimitExceeded,
    /// `ScopeLocked`: a lock forbids deleting at this scope.
    ScopeLocked,
    /// 429.
    Throttled,
    /// 5xx, connection errors, timeouts.
    Transient,
    /// No token could be had from the credential.
    Credential,
    /// Any other 4xx: the request itself is wrong.
    BadRequest,
    /// Not sent: the write gate (the controller's leader lease fence) was closed just before the
    /// attempt. Nothing reached Azure.
    Fenced,
}

impl AzureErrorKind {
    /// A stable CamelCase name for metrics labels and status reasons.
    pub const fn as_str(self) -> &'static str {
        match self {
            AzureErrorKind::NotFound => "NotFound",
            AzureErrorKind::Ambiguous => "Ambiguous",
            AzureErrorKind::PrincipalNotFound => "PrincipalNotFound",
            AzureErrorKind::UnmatchedPrincipalType => "UnmatchedPrincipalType",
            AzureErrorKind::UpdateNotPermitted => "UpdateNotPermitted",
            AzureErrorKind::AuthorizationFailed => "AuthorizationFailed",
            AzureErrorKind::Unauthorized => "Unauthorized",
            AzureErrorKind::LimitExceeded => "LimitExceeded",
            AzureErrorKind::ScopeLocked => "ScopeLocked",
            AzureErrorKind::Throttled => "Throttled",
            AzureErrorKind::Transient => "Transient",
            AzureErrorKind::Credential => "CredentialUnavailable",
            AzureErrorKind::BadRequest => "BadRequest",
            AzureErrorKind::Fenced => "Fenced",
        }
    }
}

/// A failed Azure call. The message names the object and, where an admin must act, what to do; it
/// never contains a token or an Authorization header.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AzureError {
    pub kind: AzureErrorKind,
    pub message: String,
    /// ARM's `x-ms-request-id` (or Graph's `request-id`), for support tickets.
    pub request_id: Option<String>,
    /// `Retry-After` when the service sent one.
    pub retry_after: Option<Duration>,
    /// The service's error code (`error.code` of the envelope), when it sent one: some decisions
    /// need more than the kind (only ARM's "not found" envelopes mean an account is gone).
    pub code: Option<String>,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl AzureError {
    pub fn new(kind: AzureErrorKind, message: impl Into<String>) -> AzureError {
        AzureError {
            kind,
            message: message.into(),
            request_id: None,
            retry_after: None,
            code: None,
            source: None,
        }
    }

    /// Whether this error may be a principal that is still replicating.
    pub fn is_replicating(&self) -> bool {
        self.kind == AzureErrorKind::PrincipalNotFound
    }

    /// The retry decision for a principal first found missing at `first_seen` (a time the caller
    /// persists, e.g. in status): keep backing off within `window`, then report it as failed
    /// (`WaitForChange`; the caller still retries at each resync). Other errors: [`retry`](Self::retry).
    pub fn retry_replicating(
        &self,
        first_seen: jiff::Timestamp,
        now: jiff::Timestamp,
        window: Duration,
    ) -> RetryDecision {
        if !self.is_replicating() {
            return self.retry();
        }
        let waited = now.duration_since(first_seen);
        match Duration::try_from(waited) {
            Ok(waited) if waited >= window => RetryDecision::WaitForChange,
            _ => RetryDecision::Backoff,
        }
    }

    pub fn retry(&self) -> RetryDecision {
        match self.kind {
            AzureErrorKind::Throttled => {
                RetryDecision::After(self.retry_after.unwrap_or(Duration::from_secs(10)))
            }
            AzureErrorKind::Transient
            | AzureErrorKind::Credential
            | AzureErrorKind::Unauthorized
            | AzureErrorKind::PrincipalNotFound
            // Another replica may lead now; if this one leads again later, it starts afresh.
            | AzureErrorKind::Fenced => RetryDecision::Backoff,
            AzureErrorKind::NotFound
            | AzureErrorKind::Ambiguous
            | AzureErrorKind::UnmatchedPrincipalType
            | AzureErrorKind::UpdateNotPermitted
            | AzureErrorKind::AuthorizationFailed
            | AzureErrorKind::LimitExceeded
            | AzureErrorKind::ScopeLocked
            | AzureErrorKind::BadRequest => RetryDecision::WaitForChange,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: AzureErrorKind) -> AzureError {
        AzureError::new(kind, "x")
    }

    #[test]
    fn every_kind_has_its_retry_decision() {
        use AzureErrorKind::*;
        let mut throttled = error(Throttled);
        assert_eq!(
            throttled.retry(),
            RetryDecision::After(Duration::from_secs(10))
        );
        throttled.retry_after = Some(Duration::from_secs(3));
        assert_eq!(
            throttled.retry(),
            RetryDecision::After(Duration::from_secs(3))
        );
        for kind in [
            Transient,
            Credential,
            Unauthorized,
            PrincipalNotFound,
            Fenced,
        ] {
            assert_eq!(error(kind).retry(), RetryDecision::Backoff, "{kind:?}");
        }
        for kind in [
            NotFound,
            Ambiguous,
            UnmatchedPrincipalType,
            UpdateNotPermitted,
            AuthorizationFailed,
            LimitExceeded,
            ScopeLocked,
            BadRequest,
        ] {
            assert_eq!(
                error(kind).retry(),
                RetryDecision::WaitForChange,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn a_missing_principal_is_retried_until_the_replication_deadline_then_failed() {
        let first_seen: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let missing = error(AzureErrorKind::PrincipalNotFound);
        let at = |minutes: i64| first_seen + jiff::SignedDuration::from_mins(minutes);
        assert_eq!(
            missing.retry_replicating(first_seen, at(9), DEFAULT_REPLICATION_WINDOW),
            RetryDecision::Backoff
        );
        assert_eq!(
            missing.retry_replicating(first_seen, at(10), DEFAULT_REPLICATION_WINDOW),
            RetryDecision::WaitForChange
        );
        assert_eq!(
            missing.retry_replicating(first_seen, at(-1), DEFAULT_REPLICATION_WINDOW),
            RetryDecision::Backoff,
            "a clock that went backwards keeps waiting"
        );
        assert_eq!(
            error(AzureErrorKind::ScopeLocked).retry_replicating(
                first_seen,
                at(0),
                DEFAULT_REPLICATION_WINDOW
            ),
            RetryDecision::WaitForChange
        );
    }
}
