//! The one HTTPS listener: TLS, dispatch by path to ARM, Graph, the token endpoint and the admin
//! API, and what happens to every request on the way (latency, injected faults, throttling,
//! counting).

use crate::config::{
    Bucket, EmulatorConfig, FaultKind, Faults, OutageKind, ScriptedFault, Throttling,
};
use crate::http::{Reply, arm_error, parse_query};
use crate::journal::{self, AssignmentWrite, RequestRecord};
use crate::state::{World, subscription_of};
use crate::token::{
    AccessClaims, Audience, Signer, TokenProblem, access_claims, check_token_request, entra_error,
    unix_now,
};
use crate::{admin, arm, graph};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// The authenticated caller of an ARM or Graph request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub claims: AccessClaims,
}

/// Which part of the emulator a path belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    Arm,
    Graph,
    Token,
    Admin,
    Unknown,
}

pub fn surface_of(path: &str) -> Surface {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [first, ..] if *first == "_emulator" => Surface::Admin,
        [first, ..] if first.eq_ignore_ascii_case("v1.0") => Surface::Graph,
        [_tenant, oauth, version, token]
            if *oauth == "oauth2" && *version == "v2.0" && *token == "token" =>
        {
            Surface::Token
        }
        [first, ..]
            if first.eq_ignore_ascii_case("subscriptions")
                || first.eq_ignore_ascii_case("providers") =>
        {
            Surface::Arm
        }
        _ => Surface::Unknown,
    }
}

pub struct FaultState {
    pub faults: Faults,
    pub scripted: VecDeque<ScriptedFault>,
    rng: StdRng,
    pub outage_until: Option<Instant>,
    pub outage_kind: OutageKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum OperationClass {
    Reads,
    Writes,
    Deletes,
}

impl OperationClass {
    fn of(method: &http::Method) -> OperationClass {
        match *method {
            http::Method::GET | http::Method::HEAD => OperationClass::Reads,
            http::Method::DELETE => OperationClass::Deletes,
            _ => OperationClass::Writes,
        }
    }

    fn name(self) -> &'static str {
        match self {
            OperationClass::Reads => "reads",
            OperationClass::Writes => "writes",
            OperationClass::Deletes => "deletes",
        }
    }
}

#[derive(Default)]
pub struct Buckets {
    levels: HashMap<(String, String, OperationClass), (f64, Instant)>,
}

impl Buckets {
    /// Takes one token; the tokens left, or how long until one is back.
    fn take(
        &mut self,
        key: (String, String, OperationClass),
        bucket: Bucket,
        now: Instant,
    ) -> Result<u32, Duration> {
        let capacity = f64::from(bucket.capacity);
        let (level, last) = self.levels.entry(key).or_insert((capacity, now));
        let refilled = (*level
            + now.saturating_duration_since(*last).as_secs_f64() * bucket.refill_per_second)
            .min(capacity);
        *last = now;
        if refilled >= 1.0 {
            *level = refilled - 1.0;
            // Whole tokens left; the float is in 0..=capacity, so the cast cannot wrap.
            Ok(level.floor() as u32)
        } else {
            *level = refilled;
            let wait = if bucket.refill_per_second > 0.0 {
                (1.0 - refilled) / bucket.refill_per_second
            } else {
                3600.0
            };
            Err(Duration::from_secs_f64(wait))
        }
    }
}

/// Requests seen, by (operation, status); a dropped connection counts as status 0. Admin API
/// requests are not counted, so tests read only what keyless did.
pub type RequestCounts = BTreeMap<(String, u16), u64>;

/// Where the emulator wrote the files clients need.
#[derive(Clone, Debug)]
pub struct Files {
    pub ca_file: std::path::PathBuf,
    pub token_file: Option<std::path::PathBuf>,
}

pub struct Shared {
    pub config: EmulatorConfig,
    pub endpoint: String,
    pub files: Files,
    pub signer: Signer,
    world: Mutex<World>,
    faults: Mutex<FaultState>,
    throttling: Mutex<(Throttling, Buckets)>,
    counts: Mutex<RequestCounts>,
    /// Requests by operation, counted on arrival (before the world changes): a test that sees a
    /// change has seen its request counted.
    arrivals: Mutex<BTreeMap<String, u64>>,
    // Every token and client assertion the emulator issued or read, so tests can assert that none
    // of them ever appears in a log line, a status, an event, an error or CLI output.
    secrets: Mutex<BTreeSet<String>>,
    /// Role assignment writes made through ARM, in order (see [`journal`]).
    journal: Mutex<Vec<AssignmentWrite>>,
    /// Every request counted, in order of answer (see [`journal::RequestRecord`]).
    requests: Mutex<VecDeque<RequestRecord>>,
}

/// A poisoned lock only means another request panicked mid-update; the emulator keeps serving
/// what is there rather than failing every later request.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub fn new(config: EmulatorConfig, endpoint: String, files: Files, world: World) -> Shared {
        let faults = FaultState {
            faults: config.faults.clone(),
            scripted: VecDeque::new(),
            rng: StdRng::seed_from_u64(config.rng_seed),
            outage_until: None,
            outage_kind: OutageKind::default(),
        };
        let throttling = config.throttling;
        Shared {
            config,
            endpoint,
            files,
            signer: Signer::random(),
            world: Mutex::new(world),
            faults: Mutex::new(faults),
            throttling: Mutex::new((throttling, Buckets::default())),
            counts: Mutex::new(BTreeMap::new()),
            arrivals: Mutex::new(BTreeMap::new()),
            secrets: Mutex::new(BTreeSet::new()),
            journal: Mutex::new(Vec::new()),
            requests: Mutex::new(VecDeque::new()),
        }
    }

    pub fn lock_world(&self) -> MutexGuard<'_, World> {
        lock(&self.world)
    }

    pub fn lock_faults(&self) -> MutexGuard<'_, FaultState> {
        lock(&self.faults)
    }

    pub fn set_throttling(&self, throttling: Throttling) {
        *lock(&self.throttling) = (throttling, Buckets::default());
    }

    pub fn throttling(&self) -> Throttling {
        lock(&self.throttling).0
    }

    /// Remembers a token or assertion this emulator issued or was sent (empty strings are none).
    pub fn record_secret(&self, secret: &str) {
        if !secret.is_empty() {
            lock(&self.secrets).insert(secret.to_string());
        }
    }

    /// Every token and client assertion issued or read so far.
    pub fn secrets(&self) -> Vec<String> {
        lock(&self.secrets).iter().cloned().collect()
    }

    pub fn counts(&self) -> RequestCounts {
        lock(&self.counts).clone()
    }

    /// Requests of `operation` that arrived so far, answered or not.
    pub fn arrivals_of(&self, operation: &str) -> u64 {
        lock(&self.arrivals).get(operation).copied().unwrap_or(0)
    }

    pub fn reset_counts(&self) {
        lock(&self.counts).clear();
        lock(&self.arrivals).clear();
        lock(&self.requests).clear();
    }

    /// The requests counted so far, oldest first (at most [`journal::REQUEST_LOG_CAP`]).
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.requests).iter().cloned().collect()
    }

    /// Every role assignment write made through ARM so far, in order.
    pub fn journal(&self) -> Vec<AssignmentWrite> {
        lock(&self.journal).clone()
    }

    fn record_write(&self, operation: &str, reply: &Reply) {
        if let Some((kind, json)) = journal::write_of(operation, reply.status, &reply.body) {
            let mut journal = lock(&self.journal);
            let sequence = u64::try_from(journal.len()).unwrap_or(u64::MAX);
            if let Some(entry) = journal::entry(sequence, kind, &json) {
                journal.push(entry);
            }
        }
    }

    fn count(&self, operation: &str, status: u16) {
        *lock(&self.counts)
            .entry((operation.to_string(), status))
            .or_insert(0) += 1;
    }

    /// Counts a request and keeps its record.
    fn answered(&self, request: Arrival, status: u16, reply: &Reply) {
        self.count(&request.operation, status);
        let retry_after_seconds = reply
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))
            .and_then(|(_, value)| value.trim().parse().ok());
        let mut requests = lock(&self.requests);
        if requests.len() >= journal::REQUEST_LOG_CAP {
            requests.pop_front();
        }
        requests.push_back(RequestRecord {
            operation: request.operation,
            target: request.target,
            status,
            retry_after_seconds,
            arrived: request.arrived,
            answered: Instant::now(),
        });
    }

    /// Issues an access token for a service principal, as the token endpoint would.
    pub fn mint_token(&self, principal_id: &str, audience: Audience) -> Option<String> {
        let world = self.lock_world();
        let lifetime = i64::try_from(self.config.token_lifetime.as_secs()).unwrap_or(3599);
        let claims = access_claims(&world, principal_id, audience, unix_now(), lifetime)?;
        let token = serde_json::to_value(&claims)
            .ok()
            .map(|v| self.signer.sign(&v))?;
        self.record_secret(&token);
        Some(token)
    }

    /// The fault this request gets, if any: scripted ones first, then the rates.
    fn pick_fault(&self, operation: &str, surface: Surface) -> Option<FaultKind> {
        let mut state = self.lock_faults();
        if let Some(index) = state.scripted.iter().position(|f| match &f.operation {
            Some(op) => op == operation,
            // Unnamed scripted faults hit ARM and Graph, not the token endpoint.
            None => surface != Surface::Token,
        }) {
            let kind = state.scripted[index].kind;
            state.scripted[index].count = state.scripted[index].count.saturating_sub(1);
            if state.scripted[index].count == 0 {
                state.scripted.remove(index);
            }
            return Some(kind);
        }
        if surface == Surface::Token
            || (!state.faults.operations.is_empty()
                && !state.faults.operations.iter().any(|o| o == operation))
        {
            return None;
        }
        let rates = [
            (
                FaultKind::ConnectionReset,
                state.faults.connection_reset_rate,
            ),
            (FaultKind::Throttle, state.faults.throttle_rate),
            (FaultKind::ServerError, state.faults.server_error_rate),
            (FaultKind::Unavailable, state.faults.unavailable_rate),
            (FaultKind::CutBody, state.faults.cut_body_rate),
            (FaultKind::Stall, state.faults.stall_rate),
        ];
        for (kind, rate) in rates {
            if rate > 0.0 && state.rng.random::<f64>() < rate {
                return Some(kind);
            }
        }
        None
    }

    fn fault_reply(&self, kind: FaultKind, surface: Surface) -> Reply {
        let retry_after = self.lock_faults().faults.retry_after.as_secs().max(1);
        match (kind, surface) {
            (FaultKind::ConnectionReset, _) => Reply::reset(),
            (FaultKind::Throttle, Surface::Graph) => graph::graph_error(429, "TooManyRequests", "Too many requests.").with_header("retry-after", retry_after.to_string()),
            (FaultKind::Throttle, _) => arm_error(
                429,
                "TooManyRequests",
                "The request is being throttled as the limit has been reached for operation type - Injected. For more information, see - https://aka.ms/armthrottling",
            )
            .with_header("retry-after", retry_after.to_string()),
            (FaultKind::ServerError, Surface::Graph) => graph::graph_error(500, "InternalServerError", "An internal server error occurred."),
            (FaultKind::ServerError, _) => arm_error(500, "InternalServerError", "Encountered internal server error. Diagnostic information: timestamp ''."),
            (FaultKind::Unavailable, Surface::Graph) => graph::graph_error(503, "ServiceNotAvailable", "Service is temporarily unavailable."),
            (FaultKind::Unavailable, _) => arm_error(503, "ServiceUnavailable", "The service is temporarily unavailable. Please try again later."),
            // Served normally first; `serve` cuts or delays the answer (see `after_the_fact`).
            (FaultKind::CutBody | FaultKind::Stall, _) => arm_error(500, "InternalServerError", "Encountered internal server error."),
        }
    }

    /// ARM's throttling: a bucket per (subscription or tenant, caller, operation type).
    fn throttle(
        &self,
        path: &str,
        caller: &str,
        method: &http::Method,
    ) -> Result<(String, u32), Reply> {
        let class = OperationClass::of(method);
        let (scope_kind, scope_key) = match subscription_of(path) {
            Some(sub) => ("subscription", sub),
            None => ("tenant", "tenant".to_string()),
        };
        let header = format!("x-ms-ratelimit-remaining-{scope_kind}-{}", class.name());
        let mut guard = lock(&self.throttling);
        let (config, buckets) = &mut *guard;
        if !config.enabled {
            let capacity = match class {
                OperationClass::Reads => config.reads.capacity,
                OperationClass::Writes => config.writes.capacity,
                OperationClass::Deletes => config.deletes.capacity,
            };
            return Ok((header, capacity));
        }
        let bucket = match class {
            OperationClass::Reads => config.reads,
            OperationClass::Writes => config.writes,
            OperationClass::Deletes => config.deletes,
        };
        match buckets.take(
            (scope_key, caller.to_string(), class),
            bucket,
            Instant::now(),
        ) {
            Ok(remaining) => Ok((header, remaining)),
            Err(wait) => {
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let kind = match class {
                    OperationClass::Reads => "Read",
                    OperationClass::Writes => "Write",
                    OperationClass::Deletes => "Delete",
                };
                Err(arm_error(
                    429,
                    "TooManyRequests",
                    format!("The request is being throttled as the limit has been reached for operation type - {kind}. For more information, see - https://aka.ms/armthrottling"),
                )
                .with_header("retry-after", seconds.max(1).to_string())
                .with_header(&header, "0"))
            }
        }
    }
}

fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("Bearer")
        .then_some(token.trim())
}

// The bearer token of a request, recorded as a secret whatever it is (valid or not).
fn read_bearer<'h>(shared: &Shared, headers: &'h http::HeaderMap) -> Option<&'h str> {
    if let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        shared.record_secret(value);
    }
    let token = bearer(headers)?;
    shared.record_secret(token);
    Some(token)
}

fn arm_unauthorized(code: &str, message: String) -> Reply {
    let description = message.replace('"', "'");
    arm_error(401, code, message).with_header(
        "www-authenticate",
        format!("Bearer authorization_uri=\"https://login.microsoftonline.com/\", error=\"invalid_token\", error_description=\"{description}\""),
    )
}

fn authenticate_arm(shared: &Shared, headers: &http::HeaderMap) -> Result<Caller, Reply> {
    let Some(token) = read_bearer(shared, headers) else {
        return Err(arm_unauthorized(
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.".into(),
        ));
    };
    let tenant_id = shared.lock_world().tenant_id.clone();
    let now = unix_now();
    match shared.signer.verify(token, &tenant_id, Audience::Arm, now) {
        Ok(claims) => Ok(Caller { claims }),
        Err(TokenProblem::WrongAudience { aud }) => Err(arm_unauthorized(
            "InvalidAuthenticationTokenAudience",
            format!(
                "The access token has been obtained for wrong audience or resource '{aud}'. It should exactly match with one of the allowed audiences 'https://management.core.windows.net/','https://management.core.windows.net','https://management.azure.com/','https://management.azure.com'."
            ),
        )),
        Err(TokenProblem::Expired { exp }) => {
            let show = |t: i64| {
                jiff::Timestamp::from_second(t)
                    .map(|t| t.strftime("%m/%d/%Y %H:%M:%S").to_string())
                    .unwrap_or_default()
            };
            Err(arm_unauthorized(
                "ExpiredAuthenticationToken",
                format!(
                    "The access token expiry UTC time '{}' is earlier than current UTC time '{}'.",
                    show(exp),
                    show(now)
                ),
            ))
        }
        Err(TokenProblem::WrongTenant { tid }) => Err(arm_unauthorized(
            "InvalidAuthenticationTokenTenant",
            format!(
                "The access token is from the wrong issuer 'https://sts.windows.net/{tid}/'. It must match the tenant 'https://sts.windows.net/{tenant_id}/' associated with this subscription."
            ),
        )),
        Err(TokenProblem::Malformed | TokenProblem::BadSignature) => Err(arm_unauthorized(
            "InvalidAuthenticationToken",
            "The access token is invalid.".into(),
        )),
    }
}

pub fn authenticate_graph(shared: &Shared, headers: &http::HeaderMap) -> Result<Caller, Reply> {
    let Some(token) = read_bearer(shared, headers) else {
        return Err(graph::graph_error(
            401,
            "InvalidAuthenticationToken",
            "Access token is empty.",
        ));
    };
    let tenant_id = shared.lock_world().tenant_id.clone();
    match shared
        .signer
        .verify(token, &tenant_id, Audience::Graph, unix_now())
    {
        Ok(claims) => Ok(Caller { claims }),
        Err(TokenProblem::WrongAudience { .. }) => Err(graph::graph_error(
            401,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
        )),
        Err(TokenProblem::Expired { .. }) => Err(graph::graph_error(
            401,
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
        )),
        Err(_) => Err(graph::graph_error(
            401,
            "InvalidAuthenticationToken",
            "IDX14100: JWT is not well formed.",
        )),
    }
}

fn with_arm_ids(reply: Reply) -> Reply {
    let id = uuid::Uuid::new_v4().to_string();
    reply
        .with_header("x-ms-request-id", id.clone())
        .with_header("x-ms-correlation-request-id", id.clone())
        .with_header(
            "x-ms-routing-request-id",
            format!(
                "LOCAL:{}:{id}",
                jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
            ),
        )
}

fn serve_arm(
    shared: &Shared,
    method: &http::Method,
    path: &str,
    query: &[(String, String)],
    headers: &http::HeaderMap,
    body: &[u8],
) -> Reply {
    let caller = match authenticate_arm(shared, headers) {
        Ok(caller) => caller,
        Err(reply) => return reply,
    };
    let route = arm::route(path);
    if route != arm::ArmRoute::Unknown
        && let Err(reply) = arm::check_api_version(&route, query)
    {
        return reply;
    }
    let (header, remaining) = match shared.throttle(path, &caller.claims.oid, method) {
        Ok(ok) => ok,
        Err(reply) => return reply,
    };
    let request = arm::ArmRequest {
        method,
        path,
        query,
        body,
        caller: &caller,
        route: &route,
    };
    arm::handle(shared, &request).with_header(&header, remaining.to_string())
}

fn serve_token(shared: &Shared, method: &http::Method, path: &str, body: &[u8]) -> Reply {
    if method != http::Method::POST {
        return entra_error(
            405,
            "invalid_request",
            900561,
            "The endpoint only accepts POST requests.",
        );
    }
    {
        let mut faults = shared.lock_faults();
        match faults.outage_until {
            Some(until) if until > Instant::now() => {
                return match faults.outage_kind {
                    OutageKind::Unavailable => entra_error(
                        503,
                        "temporarily_unavailable",
                        90033,
                        "A transient error has occurred. Please try again.",
                    ),
                    OutageKind::InvalidClient => entra_error(
                        400,
                        "invalid_client",
                        50166,
                        "Request to External OIDC endpoint failed. The federated identity credential's issuer could not be reached.",
                    ),
                };
            }
            Some(_) => faults.outage_until = None,
            None => {}
        }
    }
    let tenant = path.split('/').find(|s| !s.is_empty()).unwrap_or_default();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    for (name, value) in &form {
        if matches!(name.as_str(), "client_assertion" | "client_secret") {
            shared.record_secret(value);
        }
    }
    let grant = {
        let world = shared.lock_world();
        check_token_request(
            &world,
            tenant,
            &form,
            unix_now(),
            shared.config.accept_opaque_assertions,
        )
    };
    match grant {
        Ok(grant) => match shared.mint_token(&grant.principal_id, grant.audience) {
            Some(token) => {
                let lifetime = shared.config.token_lifetime.as_secs();
                Reply::json(
                    200,
                    &json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}),
                )
            }
            None => entra_error(
                500,
                "server_error",
                50000,
                "There was an error issuing a token.",
            ),
        },
        Err(reply) => reply,
    }
}

/// The operation a request is counted under.
pub fn operation_of(surface: Surface, method: &http::Method, path: &str) -> String {
    match surface {
        Surface::Arm => arm::operation(method, &arm::route(path)).to_string(),
        Surface::Graph => graph::operation(path).to_string(),
        Surface::Token => "Token".to_string(),
        Surface::Admin => "Admin".to_string(),
        Surface::Unknown => "Unknown".to_string(),
    }
}

/// A request being served: what its record will say.
struct Arrival {
    operation: String,
    target: String,
    arrived: Instant,
}

/// Serves one request. `Err` drops the connection (the connection-reset fault).
pub async fn serve(
    shared: Arc<Shared>,
    request: http::Request<Incoming>,
) -> Result<http::Response<ResponseBody>, ConnectionReset> {
    let arrived = Instant::now();
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, 4 << 20).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(to_response(arm_error(
                413,
                "RequestEntityTooLarge",
                "The request body is too large.",
            )));
        }
    };
    let raw_path = parts.uri.path();
    let path = percent_encoding::percent_decode_str(raw_path)
        .decode_utf8_lossy()
        .into_owned();
    let query = parse_query(parts.uri.query());
    let surface = surface_of(&path);
    if surface == Surface::Admin {
        return Ok(to_response(admin::handle(
            &shared,
            &parts.method,
            &path,
            &query,
            &body,
        )));
    }
    let operation = operation_of(surface, &parts.method, &path);
    *lock(&shared.arrivals).entry(operation.clone()).or_insert(0) += 1;
    let arrival = Arrival {
        operation: operation.clone(),
        target: format!(
            "{} {}",
            parts.method,
            parts.uri.path_and_query().map_or(raw_path, |p| p.as_str())
        ),
        arrived,
    };
    let latency = shared.lock_faults().faults.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fault = shared.pick_fault(&operation, surface);
    // Faults that happen after the request was carried out: the write is made, the answer lost.
    let after_the_fact = fault.filter(|k| matches!(k, FaultKind::CutBody | FaultKind::Stall));
    let reply = match fault.filter(|_| after_the_fact.is_none()) {
        Some(kind) => shared.fault_reply(kind, surface),
        None => match surface {
            Surface::Arm => serve_arm(&shared, &parts.method, &path, &query, &parts.headers, &body),
            Surface::Graph => graph::serve(&shared, &parts.method, &path, &query, &parts.headers),
            Surface::Token => serve_token(&shared, &parts.method, &path, &body),
            Surface::Admin | Surface::Unknown => {
                arm_error(404, "NotFound", format!("Nothing is served at '{path}'."))
            }
        },
    };
    let reply = if surface == Surface::Arm {
        with_arm_ids(reply)
    } else {
        reply
    };
    if surface == Surface::Arm {
        shared.record_write(&operation, &reply);
    }
    match after_the_fact {
        Some(FaultKind::CutBody) => {
            // Counted as a dropped connection: the client never gets a usable answer.
            shared.answered(arrival, 0, &reply);
            return Ok(cut_response(reply));
        }
        Some(FaultKind::Stall) => {
            let stall = shared.lock_faults().faults.stall;
            tokio::time::sleep(stall).await;
        }
        _ => {}
    }
    shared.answered(arrival, reply.status, &reply);
    if reply.reset {
        return Err(ConnectionReset);
    }
    Ok(to_response(reply))
}

/// The body of every response: whole, or cut mid-way by the cut-body fault.
pub type ResponseBody = BoxBody<Bytes, std::io::Error>;

fn headers_of(reply: &Reply, response: &mut http::response::Builder) {
    if let Some(headers) = response.headers_mut() {
        for (name, value) in &reply.headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                headers.append(name, value);
            }
        }
    }
}

/// Announces the whole body's length, sends its first half, then fails the stream, so hyper
/// closes the connection mid-body.
fn cut_response(reply: Reply) -> http::Response<ResponseBody> {
    let full = Bytes::from(reply.body.clone());
    let half = full.slice(..full.len() / 2);
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
        Ok(Frame::data(half)),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "response cut by fault injection",
        )),
    ];
    let mut builder = http::Response::builder().status(
        http::StatusCode::from_u16(reply.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
    );
    headers_of(&reply, &mut builder);
    let builder = builder.header(http::header::CONTENT_LENGTH, full.len());
    let body = BodyExt::boxed(StreamBody::new(futures::stream::iter(frames)));
    builder.body(body).unwrap_or_else(|_| {
        let mut response = http::Response::new(empty_body());
        *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        response
    })
}

fn empty_body() -> ResponseBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

#[derive(Debug, thiserror::Error)]
#[error("connection reset by fault injection")]
pub struct ConnectionReset;

fn to_response(reply: Reply) -> http::Response<ResponseBody> {
    let mut response = http::Response::new(
        Full::new(Bytes::from(reply.body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() =
        http::StatusCode::from_u16(reply.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// Accepts connections until `shutdown` flips.
pub async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _peer)) = accepted else {
            continue;
        };
        let (acceptor, shared, mut shutdown) = (acceptor.clone(), shared.clone(), shutdown.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| serve(shared.clone(), request));
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = shutdown.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}
