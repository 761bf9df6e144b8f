//! The request machinery ARM and Graph share: a bearer token from the credential, a timeout on every
//! call, client-side pacing, retries of 429/5xx, and the translation of Azure's error envelope into an
//! [`AzureError`] with its kind. The token goes only into the Authorization header, marked sensitive
//! so that reqwest's `Debug` hides it; it is never logged and never part of an error.

use super::error::{AzureError, AzureErrorKind};
use super::pacing::{OperationClass, Pacer};
use super::retry::{RetryConfig, is_retryable_status, retry_after};
use azure_core::credentials::TokenCredential;
use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Which API a call goes to: they name their request-id headers differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Arm,
    Graph,
}

impl Service {
    pub const fn as_str(self) -> &'static str {
        match self {
            Service::Arm => "ARM",
            Service::Graph => "Graph",
        }
    }
}

// Query values are percent-encoded except for the characters OData and ARM filters use literally
// and that are safe in a query: `(` `)` for `atScope()`. Quotes, spaces, `&`, `#`, `+` and `=` are
// all encoded, so a value can never end the parameter or start another one.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'(')
    .remove(b')')
    .remove(b',');

/// Sets a URL's query from literal keys (`$filter`, `api-version`: ARM and Graph expect the `$`
/// unencoded) and percent-encoded values.
pub fn set_query(url: &mut Url, pairs: &[(&str, &str)]) {
    let query = pairs
        .iter()
        .map(|(key, value)| format!("{key}={}", utf8_percent_encode(value, QUERY_VALUE)))
        .collect::<Vec<_>>()
        .join("&");
    url.set_query(Some(&query));
}

/// Sees every HTTP attempt to ARM or Graph: (service, operation, HTTP status, or 0 when no
/// response came). Metrics install one through `AzureClients::observe_requests`.
pub type RequestObserver = dyn Fn(Service, &'static str, u16) + Send + Sync;

/// Where the clients of one `AzureClients` find their observer (shared by ARM and Graph).
#[derive(Clone, Default)]
pub struct ObserverSlot(Arc<std::sync::RwLock<Option<Arc<RequestObserver>>>>);

impl ObserverSlot {
    pub fn set(&self, observer: Arc<RequestObserver>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(observer);
    }

    fn observe(&self, service: Service, operation: &'static str, status: u16) {
        let observer = self.0.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(observer) = observer {
            observer(service, operation, status);
        }
    }
}

/// Consulted just before each write attempt (any method but GET) goes out: after the token, after
/// pacing, after a retry's backoff, so a wait that outlives this process's right to write sends
/// nothing. `Err` says why the write may not go out. The controller installs its leader lease's
/// fence here; azure/ knows nothing of Kubernetes, only this closure.
pub type WriteGate = dyn Fn() -> Result<(), String> + Send + Sync;

/// Where the ARM client finds its write gate (none: every write goes out).
#[derive(Clone, Default)]
pub struct GateSlot(Arc<std::sync::RwLock<Option<Arc<WriteGate>>>>);

impl GateSlot {
    pub fn set(&self, gate: Arc<WriteGate>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(gate);
    }

    fn check(&self) -> Result<(), String> {
        let gate = self.0.read().unwrap_or_else(|p| p.into_inner()).clone();
        match gate {
            Some(gate) => gate(),
            None => Ok(()),
        }
    }
}

/// One logical call: the request plus what pacing and error messages need.
#[derive(Debug)]
pub struct Call {
    pub method: Method,
    pub url: Url,
    pub body: Option<serde_json::Value>,
    /// A bounded name for logs and metrics: `list_role_assignments`, `get_account`, ...
    pub operation: &'static str,
    /// The subscription and operation type whose bucket this call draws from (ARM only).
    pub pacing: Option<(String, OperationClass)>,
}

/// A final response (success, or a failure not worth retrying inside the call).
#[derive(Debug)]
pub struct Reply {
    pub service: Service,
    pub operation: &'static str,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Azure's error envelope: `{"error": {"code", "message"}}` for ARM and Graph alike.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    }

    /// ARM's `x-ms-request-id` or Graph's `request-id`.
    pub fn request_id(&self) -> Option<String> {
        match self.service {
            Service::Arm => self.header("x-ms-request-id"),
            Service::Graph => self
                .header("request-id")
                .or_else(|| self.header("client-request-id")),
        }
    }

    pub fn correlation_id(&self) -> Option<String> {
        self.header("x-ms-correlation-request-id")
    }

    pub fn error_body(&self) -> ErrorBody {
        serde_json::from_slice::<ErrorEnvelope>(&self.body)
            .map(|envelope| envelope.error)
            // Some ARM errors put code and message at the top level.
            .or_else(|_| serde_json::from_slice::<ErrorBody>(&self.body))
            .unwrap_or_default()
    }

    /// The body as `T`. A body Azure should not have sent is transient: a proxy or an outage page.
    pub fn json<T: DeserializeOwned>(&self, what: &str) -> Result<T, AzureError> {
        serde_json::from_slice(&self.body).map_err(|source| {
            let mut error = AzureError::new(
                AzureErrorKind::Transient,
                format!(
                    "{what}: {} answered {} with a body keyless cannot read",
                    self.service.as_str(),
                    self.status.as_u16()
                ),
            );
            error.request_id = self.request_id();
            error.source = Some(Box::new(source));
            error
        })
    }

    /// This failed response as an error: classified, with the service's message and the request
    /// id, and logged (request id and correlation id, never a token) for support tickets.
    pub fn to_error(&self, what: &str) -> AzureError {
        let body = self.error_body();
        let kind = classify(self.status, body.code.as_deref());
        let code = body.code.as_deref().unwrap_or("no error code");
        let detail = body
            .message
            .as_deref()
            .map(|message| format!(": {}", message.trim()))
            .unwrap_or_default();
        let request_id = self.request_id();
        tracing::warn!(
            service = self.service.as_str(),
            operation = self.operation,
            status = self.status.as_u16(),
            code = body.code.as_deref().unwrap_or(""),
            kind = kind.as_str(),
            request_id = request_id.as_deref().unwrap_or(""),
            correlation_id = self.correlation_id().as_deref().unwrap_or(""),
            "Azure call failed"
        );
        let mut error = AzureError::new(
            kind,
            format!(
                "{what}: {} answered {} {code}{detail}",
                self.service.as_str(),
                self.status.as_u16()
            ),
        );
        error.request_id = request_id;
        error.retry_after = retry_after(&self.headers);
        error.code = body.code.clone();
        error
    }
}

/// The error kind of a failed response. Codes win over statuses: ARM answers `PrincipalNotFound`
/// with 400 or 404 depending on the path (facts §A.6).
pub fn classify(status: StatusCode, code: Option<&str>) -> AzureErrorKind {
    match code {
        Some("PrincipalNotFound") => return AzureErrorKind::PrincipalNotFound,
        Some("UnmatchedPrincipalType") => return AzureErrorKind::UnmatchedPrincipalType,
        Some("RoleAssignmentUpdateNotPermitted") => return AzureErrorKind::UpdateNotPermitted,
        Some("RoleAssignmentLimitExceeded") => return AzureErrorKind::LimitExceeded,
        Some("ScopeLocked") => return AzureErrorKind::ScopeLocked,
        Some("AuthorizationFailed" | "Authorization_RequestDenied") => {
            return AzureErrorKind::AuthorizationFailed;
        }
        Some(
            "InvalidAuthenticationToken"
            | "ExpiredAuthenticationToken"
            | "InvalidAuthenticationTokenTenant",
        ) => {
            return AzureErrorKind::Unauthorized;
        }
        _ => {}
    }
    match status {
        StatusCode::UNAUTHORIZED => AzureErrorKind::Unauthorized,
        StatusCode::FORBIDDEN => AzureErrorKind::AuthorizationFailed,
        StatusCode::NOT_FOUND => AzureErrorKind::NotFound,
        StatusCode::TOO_MANY_REQUESTS => AzureErrorKind::Throttled,
        StatusCode::REQUEST_TIMEOUT => AzureErrorKind::Transient,
        status if status.is_server_error() => AzureErrorKind::Transient,
        _ => AzureErrorKind::BadRequest,
    }
}

/// An authenticated HTTP client for one service (ARM or Graph); both share one reqwest client.
pub struct ApiClient {
    service: Service,
    http: reqwest::Client,
    credential: Arc<dyn TokenCredential>,
    token_scope: String,
    retry: RetryConfig,
    timeout: Duration,
    observer: ObserverSlot,
    gate: GateSlot,
}

// Hand-written so nothing about the credential or a header can ever be printed.
impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("service", &self.service)
            .field("token_scope", &self.token_scope)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    pub fn new(
        service: Service,
        http: reqwest::Client,
        credential: Arc<dyn TokenCredential>,
        token_scope: String,
        retry: RetryConfig,
        timeout: Duration,
    ) -> ApiClient {
        ApiClient {
            service,
            http,
            credential,
            token_scope,
            retry,
            timeout,
            observer: ObserverSlot::default(),
            gate: GateSlot::default(),
        }
    }

    /// Consults this slot's gate before every write attempt.
    pub fn with_gate(mut self, gate: GateSlot) -> ApiClient {
        self.gate = gate;
        self
    }

    /// Reports every attempt to this slot's observer.
    pub fn with_observer(mut self, observer: ObserverSlot) -> ApiClient {
        self.observer = observer;
        self
    }

    pub fn service(&self) -> Service {
        self.service
    }

    async fn authorization(&self) -> Result<HeaderValue, AzureError> {
        let scopes = [self.token_scope.as_str()];
        let token = match tokio::time::timeout(
            self.timeout,
            self.credential.get_token(&scopes, None),
        )
        .await
        {
            Ok(Ok(token)) => token,
            Ok(Err(source)) => {
                let mut error = AzureError::new(
                    AzureErrorKind::Credential,
                    format!(
                        "get a {} token for {}: the credential failed",
                        self.service.as_str(),
                        self.token_scope
                    ),
                );
                error.source = Some(Box::new(source));
                return Err(error);
            }
            Err(_) => {
                return Err(AzureError::new(
                    AzureErrorKind::Credential,
                    format!(
                        "get a {} token for {}: no answer within {:?}",
                        self.service.as_str(),
                        self.token_scope,
                        self.timeout
                    ),
                ));
            }
        };
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.token.secret())).map_err(|_| {
            // The value is not shown: it is the token.
            AzureError::new(
                AzureErrorKind::Credential,
                format!(
                    "get a {} token for {}: the credential returned a token that is not a valid header value",
                    self.service.as_str(),
                    self.token_scope
                ),
            )
        })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Sends the call, pacing and retrying as configured, and returns the final response. Statuses
    /// the caller may want to handle (404, 409, ...) come back as `Ok`; so does a 429 or 5xx whose
    /// retries ran out, for the caller to turn into an error with [`Reply::to_error`].
    pub async fn send(&self, call: &Call, pacer: Option<&Pacer>) -> Result<Reply, AzureError> {
        let mut retry = 0u32;
        loop {
            // The token first, the pacing slot last: the request then reaches ARM right after it
            // took a token from our bucket, so our bucket never runs ahead of ARM's.
            let authorization = self.authorization().await?;
            if let (Some(pacer), Some((subscription, class))) = (pacer, &call.pacing) {
                pacer.acquire(subscription, *class).await;
            }
            // Reads are not gated: a read by a replica that lost its lease changes nothing.
            if call.method != Method::GET
                && let Err(why) = self.gate.check()
            {
                tracing::warn!(
                    service = self.service.as_str(),
                    operation = call.operation,
                    %why,
                    "write not sent: the fence is closed"
                );
                return Err(AzureError::new(
                    AzureErrorKind::Fenced,
                    format!(
                        "{}: not sent to {}: {why}",
                        call.operation,
                        self.service.as_str()
                    ),
                ));
            }
            let mut request = self
                .http
                .request(call.method.clone(), call.url.clone())
                .timeout(self.timeout)
                .header(AUTHORIZATION, authorization);
            if let Some(body) = &call.body {
                request = request.json(body);
            }
            let attempts_left = retry + 1 < self.retry.max_attempts;
            let outcome = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    response.bytes().await.map(|body| (status, headers, body))
                }
                Err(error) => Err(error),
            };
            self.observer.observe(
                self.service,
                call.operation,
                outcome
                    .as_ref()
                    .map(|(status, _, _)| status.as_u16())
                    .unwrap_or(0),
            );
            match outcome {
                Ok((status, headers, body)) => {
                    if let (Some(pacer), Some((subscription, class))) = (pacer, &call.pacing) {
                        pacer.observe(subscription, &headers);
                        // ARM throttles the bucket, not the request: every call of this type on
                        // the subscription waits out the Retry-After, not only this one's retry
                        // (another pass must not send the same LIST a moment later).
                        if status == reqwest::StatusCode::TOO_MANY_REQUESTS
                            && let Some(wait) = retry_after(&headers)
                        {
                            pacer.hold(subscription, *class, wait.min(self.retry.max_retry_after));
                        }
                    }
                    if is_retryable_status(status) && attempts_left {
                        let delay =
                            retry_after(&headers).unwrap_or_else(|| self.retry.backoff(retry));
                        if delay <= self.retry.max_retry_after {
                            tracing::debug!(
                                service = self.service.as_str(),
                                operation = call.operation,
                                status = status.as_u16(),
                                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                                "retrying Azure call"
                            );
                            tokio::time::sleep(delay).await;
                            retry += 1;
                            continue;
                        }
                    }
                    return Ok(Reply {
                        service: self.service,
                        operation: call.operation,
                        status,
                        headers,
                        body,
                    });
                }
                Err(source) => {
                    if attempts_left {
                        tokio::time::sleep(self.retry.backoff(retry)).await;
                        retry += 1;
                        continue;
                    }
                    let what = if source.is_timeout() {
                        format!("no answer within {:?}", self.timeout)
                    } else {
                        "the connection failed".to_string()
                    };
                    tracing::warn!(
                        service = self.service.as_str(),
                        operation = call.operation,
                        timeout = source.is_timeout(),
                        "Azure call failed"
                    );
                    let mut error = AzureError::new(
                        AzureErrorKind::Transient,
                        format!(
                            "{}: {} {what} after {} attempts",
                            call.operation,
                            self.service.as_str(),
                            retry + 1
                        ),
                    );
                    // reqwest's error names the URL (no secrets there) and the cause.
                    error.source = Some(Box::new(source.without_url()));
                    return Err(error);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_decide_the_kind_before_the_status_does() {
        let kind =
            |status: u16, code: Option<&str>| classify(StatusCode::from_u16(status).unwrap(), code);
        assert_eq!(
            kind(400, Some("PrincipalNotFound")),
            AzureErrorKind::PrincipalNotFound
        );
        assert_eq!(
            kind(404, Some("PrincipalNotFound")),
            AzureErrorKind::PrincipalNotFound
        );
        assert_eq!(
            kind(400, Some("UnmatchedPrincipalType")),
            AzureErrorKind::UnmatchedPrincipalType
        );
        assert_eq!(
            kind(400, Some("RoleAssignmentUpdateNotPermitted")),
            AzureErrorKind::UpdateNotPermitted
        );
        assert_eq!(
            kind(400, Some("RoleAssignmentLimitExceeded")),
            AzureErrorKind::LimitExceeded
        );
        assert_eq!(kind(409, Some("ScopeLocked")), AzureErrorKind::ScopeLocked);
        assert_eq!(
            kind(403, Some("AuthorizationFailed")),
            AzureErrorKind::AuthorizationFailed
        );
        assert_eq!(
            kind(403, Some("Authorization_RequestDenied")),
            AzureErrorKind::AuthorizationFailed
        );
        assert_eq!(
            kind(401, Some("ExpiredAuthenticationToken")),
            AzureErrorKind::Unauthorized
        );
        assert_eq!(kind(401, None), AzureErrorKind::Unauthorized);
        assert_eq!(
            kind(404, Some("ResourceNotFound")),
            AzureErrorKind::NotFound
        );
        assert_eq!(kind(429, None), AzureErrorKind::Throttled);
        assert_eq!(kind(503, None), AzureErrorKind::Transient);
        assert_eq!(kind(409, Some("Conflict")), AzureErrorKind::BadRequest);
    }

    #[test]
    fn query_values_cannot_break_out_of_their_parameter() {
        let mut url = Url::parse("https://management.azure.com/x").unwrap();
        set_query(
            &mut url,
            &[
                ("api-version", "2022-04-01"),
                ("$filter", "name eq 'a&b=c#d' or x+1"),
            ],
        );
        assert_eq!(
            url.query(),
            Some("api-version=2022-04-01&$filter=name%20eq%20%27a%26b%3Dc%23d%27%20or%20x%2B1")
        );
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[1].1, "name eq 'a&b=c#d' or x+1");
        set_query(&mut url, &[("$filter", "atScope()")]);
        assert_eq!(url.query(), Some("$filter=atScope()"));
    }

    #[test]
    fn both_error_envelopes_are_read() {
        let reply = |body: &'static str| Reply {
            service: Service::Arm,
            operation: "test",
            status: StatusCode::BAD_REQUEST,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
        };
        let nested = reply(r#"{"error":{"code":"ScopeLocked","message":"locked"}}"#).error_body();
        assert_eq!(nested.code.as_deref(), Some("ScopeLocked"));
        let flat = reply(r#"{"code":"ScopeLocked","message":"locked"}"#).error_body();
        assert_eq!(flat.code.as_deref(), Some("ScopeLocked"));
        assert!(reply("<html>").error_body().code.is_none());
    }
}
