//! A Kubernetes fault layer: a tower [`Layer`] that sits inside the `kube::Client` a test hands to
//! the controller (the product builds its normal client; only tests add this layer). It
//!
//! - **counts every request** by verb and resource (`openaiaccesses`, `openaiaccesses/status`, ...)
//!   and every answer by status code, so tests assert on what was sent ("a quiet pass sends no
//!   PATCH") instead of on resourceVersions (the apiserver drops no-op patches silently);
//! - **injects faults** chosen by verb, resource, name and count: latency, an error answer with a
//!   `Status` body (409, 422, 403, 500, 410 Gone, ...), a watch that answers with an `ERROR` event,
//!   or a watch stream that the "server" ends early (a dropped watch).
//!
//! ```ignore
//! let faults = KubeFaults::new();
//! let client = cluster_env.client_with(&faults);              // or ClientBuilder::with_layer(&faults)
//! faults.inject(Fault::on(Verb::List).resource("openaiaccesses").delay(Duration::from_secs(2)));
//! faults.inject(Fault::on(Verb::Patch).resource("openaiaccesses/status").times(1).respond(409));
//! assert_eq!(faults.count(Verb::Patch, "openaiaccesses/status"), 0);
//! assert_eq!(faults.answers_with(403), 0);
//! ```
//!
//! The layer also carries an optional **label scope** ([`KubeFaults::scoped_to`]): every LIST and
//! WATCH gets `labelSelector=<key>=<value>` added, so a controller under test sees only the objects
//! of its own test on a control plane shared by concurrent tests (cluster-scoped OpenAIAccounts
//! included). Gets, writes and the objects themselves are untouched.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame};
use kube::client::{Body, DynBody};
use tower::{Layer, Service, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The verb of a resource request, as the apiserver's authorizer names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

/// What the layer understood of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    pub verb: Verb,
    /// The plural, with the subresource after a slash: `openaiaccesses/status`, `leases`.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl RequestInfo {
    /// `None` for non-resource paths (`/version`, discovery, `/.well-known/...`).
    pub fn parse(method: &Method, uri: &http::Uri) -> Option<RequestInfo> {
        let segments: Vec<&str> = uri
            .path()
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let rest = match segments.as_slice() {
            ["api", _version, rest @ ..] => rest,
            ["apis", _group, _version, rest @ ..] => rest,
            _ => return None,
        };
        let (namespace, rest) = match rest {
            // /api/v1/namespaces/{ns}/{resource}/... — but /namespaces/{ns}/status and /finalize
            // are subresources of the Namespace itself.
            ["namespaces", ns, resource, more @ ..]
                if !(more.is_empty() && matches!(*resource, "status" | "finalize")) =>
            {
                (
                    Some((*ns).to_string()),
                    std::iter::once(*resource)
                        .chain(more.iter().copied())
                        .collect::<Vec<_>>(),
                )
            }
            other => (None, other.to_vec()),
        };
        let (resource, name, subresource) = match rest.as_slice() {
            [resource] => (*resource, None, None),
            [resource, name] => (*resource, Some(*name), None),
            [resource, name, sub, ..] => (*resource, Some(*name), Some(*sub)),
            [] => return None,
        };
        let watch = query_param(uri, "watch").is_some_and(|w| w == "true" || w == "1");
        let verb = match (method.clone(), name.is_some()) {
            (Method::GET, true) => Verb::Get,
            (Method::GET, false) if watch => Verb::Watch,
            (Method::GET, false) => Verb::List,
            (Method::POST, _) => Verb::Create,
            (Method::PUT, _) => Verb::Update,
            (Method::PATCH, _) => Verb::Patch,
            (Method::DELETE, true) => Verb::Delete,
            (Method::DELETE, false) => Verb::DeleteCollection,
            _ => return None,
        };
        Some(RequestInfo {
            verb,
            resource: match subresource {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.to_string(),
            },
            namespace,
            name: name.map(str::to_string),
        })
    }
}

fn query_param(uri: &http::Uri, key: &str) -> Option<String> {
    url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// One injected fault: which requests it matches and what it does to them.
#[derive(Clone, Debug)]
pub struct Fault {
    verb: Option<Verb>,
    resource: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
    /// Matching requests let through untouched before this fault starts applying.
    skip: u32,
    /// How many matching requests it applies to; `None`: every one.
    times: Option<u32>,
    delay: Option<Duration>,
    action: Action,
}

#[derive(Clone, Debug)]
enum Action {
    /// Forward the request (after the delay, if any).
    Forward,
    /// Answer with this code and a `Status` body; the request never reaches the server.
    Respond(u16),
    /// A watch answered `200` with one `ERROR` event carrying this code (410 Gone: "too old
    /// resource version", as the apiserver says it).
    WatchError(u16),
    /// Forward, then end the response stream after this long: a dropped watch.
    EndStreamAfter(Duration),
}

impl Fault {
    /// Matches every request with this verb; narrow it with the other builders.
    pub fn on(verb: Verb) -> Fault {
        Fault {
            verb: Some(verb),
            resource: None,
            name: None,
            namespace: None,
            skip: 0,
            times: None,
            delay: None,
            action: Action::Forward,
        }
    }

    /// Matches every resource request.
    pub fn any() -> Fault {
        Fault {
            verb: None,
            ..Fault::on(Verb::Get)
        }
    }

    /// The plural, e.g. `openaiaccesses`, or with a subresource, `openaiaccesses/status`.
    pub fn resource(mut self, resource: &str) -> Fault {
        self.resource = Some(resource.to_string());
        self
    }

    pub fn name(mut self, name: &str) -> Fault {
        self.name = Some(name.to_string());
        self
    }

    pub fn namespace(mut self, namespace: &str) -> Fault {
        self.namespace = Some(namespace.to_string());
        self
    }

    /// Lets the first `n` matching requests through untouched.
    pub fn after(mut self, n: u32) -> Fault {
        self.skip = n;
        self
    }

    /// Applies to `n` matching requests, then retires.
    pub fn times(mut self, n: u32) -> Fault {
        self.times = Some(n);
        self
    }

    /// Holds the request this long before acting on it (forwarding it, or answering).
    pub fn delay(mut self, delay: Duration) -> Fault {
        self.delay = Some(delay);
        self
    }

    /// Answers with `code` and a `Status` body; the server never sees the request.
    pub fn respond(mut self, code: u16) -> Fault {
        self.action = Action::Respond(code);
        self
    }

    /// Answers a watch with one `ERROR` event of `code` (e.g. 410 Gone).
    pub fn watch_error(mut self, code: u16) -> Fault {
        self.action = Action::WatchError(code);
        self
    }

    /// Forwards, then ends the response stream after `after`: the watch is dropped.
    pub fn end_stream_after(mut self, after: Duration) -> Fault {
        self.action = Action::EndStreamAfter(after);
        self
    }

    fn matches(&self, info: &RequestInfo) -> bool {
        self.verb.is_none_or(|v| v == info.verb)
            && self.resource.as_ref().is_none_or(|r| *r == info.resource)
            && self
                .name
                .as_ref()
                .is_none_or(|n| Some(n) == info.name.as_ref())
            && self
                .namespace
                .as_ref()
                .is_none_or(|n| Some(n) == info.namespace.as_ref())
    }
}

#[derive(Default)]
struct State {
    faults: Vec<Fault>,
    requests: BTreeMap<(Verb, String), u64>,
    answers: BTreeMap<(Verb, String, u16), u64>,
    /// Requests to non-resource paths (discovery, `/version`, OIDC discovery).
    other_requests: u64,
}

/// The fault layer's handle: inject faults, read counts. Cheap to clone; every clone and every
/// client built with it share one state.
#[derive(Clone, Default)]
pub struct KubeFaults {
    state: Arc<Mutex<State>>,
    scope: Option<(String, String)>,
}

impl KubeFaults {
    pub fn new() -> KubeFaults {
        KubeFaults::default()
    }

    /// The same counts and faults, and every LIST/WATCH restricted to objects labelled `key=value`.
    pub fn scoped_to(&self, key: &str, value: &str) -> KubeFaults {
        KubeFaults {
            state: self.state.clone(),
            scope: Some((key.to_string(), value.to_string())),
        }
    }

    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Requests sent with `verb` to `resource` (plural, or `plural/subresource`).
    pub fn count(&self, verb: Verb, resource: &str) -> u64 {
        self.lock()
            .requests
            .get(&(verb, resource.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Every request count, keyed by verb and resource.
    pub fn counts(&self) -> BTreeMap<(Verb, String), u64> {
        self.lock().requests.clone()
    }

    /// Requests sent with `verb`, whatever the resource.
    pub fn count_verb(&self, verb: Verb) -> u64 {
        self.lock()
            .requests
            .iter()
            .filter(|((v, _), _)| *v == verb)
            .map(|(_, n)| n)
            .sum()
    }

    /// Answers (from the server or injected) with this HTTP status code.
    pub fn answers_with(&self, code: u16) -> u64 {
        self.lock()
            .answers
            .iter()
            .filter(|((_, _, c), _)| *c == code)
            .map(|(_, n)| n)
            .sum()
    }

    /// The requests answered with `code`, as (verb, resource) → count: what a 403 was about.
    pub fn answered_with(&self, code: u16) -> BTreeMap<(Verb, String), u64> {
        self.lock()
            .answers
            .iter()
            .filter(|((_, _, c), _)| *c == code)
            .map(|((v, r, _), n)| ((*v, r.clone()), *n))
            .collect()
    }

    pub fn non_resource_requests(&self) -> u64 {
        self.lock().other_requests
    }

    pub fn reset_counts(&self) {
        let mut state = self.lock();
        state.requests.clear();
        state.answers.clear();
        state.other_requests = 0;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panicking test thread may poison the lock; the counts are still meaningful.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts the request and picks the fault that applies to it, if any.
    fn admit(&self, info: Option<&RequestInfo>) -> Option<Fault> {
        let mut state = self.lock();
        let Some(info) = info else {
            state.other_requests += 1;
            return None;
        };
        *state
            .requests
            .entry((info.verb, info.resource.clone()))
            .or_default() += 1;
        let mut chosen = None;
        for fault in state.faults.iter_mut() {
            if !fault.matches(info) {
                continue;
            }
            if fault.skip > 0 {
                fault.skip -= 1;
                continue;
            }
            if fault.times == Some(0) {
                continue;
            }
            if let Some(times) = fault.times.as_mut() {
                *times -= 1;
            }
            chosen = Some(fault.clone());
            break;
        }
        state.faults.retain(|f| f.times != Some(0));
        chosen
    }

    fn answered(&self, info: Option<&RequestInfo>, code: u16) {
        if let Some(info) = info {
            *self
                .lock()
                .answers
                .entry((info.verb, info.resource.clone(), code))
                .or_default() += 1;
        }
    }
}

impl<S> Layer<S> for KubeFaults {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> FaultService<S> {
        FaultService {
            // The inner service (kube's boxed stack) is neither Clone nor Sync: share it behind an
            // async mutex held only for `ready` + `call`, never while a response is awaited, so a
            // delayed request holds up nothing else.
            inner: Arc::new(tokio::sync::Mutex::new(inner)),
            faults: self.clone(),
        }
    }
}

pub struct FaultService<S> {
    inner: Arc<tokio::sync::Mutex<S>>,
    faults: KubeFaults,
}

type KubeResponse = Response<Box<DynBody>>;

impl<S> Service<Request<Body>> for FaultService<S>
where
    S: Service<Request<Body>, Response = KubeResponse, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = KubeResponse;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<KubeResponse, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let info = RequestInfo::parse(request.method(), request.uri());
        if let (Some((key, value)), Some(info)) = (&self.faults.scope, &info)
            && matches!(info.verb, Verb::List | Verb::Watch)
        {
            scope_request(&mut request, key, value);
        }
        let fault = self.faults.admit(info.as_ref());
        let inner = self.inner.clone();
        let faults = self.faults.clone();
        Box::pin(async move {
            if let Some(delay) = fault.as_ref().and_then(|f| f.delay) {
                tokio::time::sleep(delay).await;
            }
            let action = fault.map(|f| f.action).unwrap_or(Action::Forward);
            let response = match action {
                Action::Respond(code) => status_response(code, &info),
                Action::WatchError(code) => watch_error_response(code),
                Action::Forward | Action::EndStreamAfter(_) => {
                    let future = {
                        let mut service = inner.lock().await;
                        service.ready().await?;
                        service.call(request)
                    };
                    let response = future.await?;
                    match action {
                        Action::EndStreamAfter(after) => response.map(|body| {
                            Box::new(EndAfter {
                                inner: body,
                                deadline: Box::pin(tokio::time::sleep(after)),
                            }) as Box<DynBody>
                        }),
                        _ => response,
                    }
                }
            };
            faults.answered(info.as_ref(), response.status().as_u16());
            Ok(response)
        })
    }
}

/// Adds `key=value` to the request's label selector.
fn scope_request(request: &mut Request<Body>, key: &str, value: &str) {
    let uri = request.uri().clone();
    let mut pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let scope = format!("{key}={value}");
    match pairs.iter_mut().find(|(k, _)| k == "labelSelector") {
        Some((_, selector)) if !selector.is_empty() => *selector = format!("{selector},{scope}"),
        Some((_, selector)) => *selector = scope,
        None => pairs.push(("labelSelector".into(), scope)),
    }
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let mut parts = uri.into_parts();
    parts.path_and_query = format!(
        "{}?{query}",
        parts
            .path_and_query
            .map_or("/".into(), |p| p.path().to_string())
    )
    .parse()
    .ok();
    if let Ok(scoped) = http::Uri::from_parts(parts) {
        *request.uri_mut() = scoped;
    }
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

fn status_body(code: u16, info: &Option<RequestInfo>) -> serde_json::Value {
    let about = info
        .as_ref()
        .map(|i| format!("{:?} {}", i.verb, i.resource))
        .unwrap_or_default();
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("injected fault: {code} on {about}"),
        "reason": reason_for(code), "code": code,
    })
}

fn boxed(bytes: Vec<u8>) -> Box<DynBody> {
    Box::new(Full::new(Bytes::from(bytes)).map_err(|never| match never {}))
}

fn status_response(code: u16, info: &Option<RequestInfo>) -> KubeResponse {
    let mut response = Response::new(boxed(status_body(code, info).to_string().into_bytes()));
    *response.status_mut() =
        http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn watch_error_response(code: u16) -> KubeResponse {
    let event = serde_json::json!({"type": "ERROR", "object": status_body(code, &None)});
    let mut response = Response::new(boxed(format!("{event}\n").into_bytes()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A body that ends (cleanly, as a server closing the stream would) once its deadline passes.
struct EndAfter {
    inner: Box<DynBody>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl HttpBody for EndAfter {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }
}
