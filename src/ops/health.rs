//! The operations HTTP server: `/metrics`, `/healthz` and `/readyz` on one plain-HTTP port.
//!
//! - `/healthz` answers 200 as long as the process can serve HTTP at all (the liveness probe).
//! - `/readyz` answers 503 until [`Readiness`] is set, then 200. Without leader election the
//!   controller sets it once every store has its first list; with it, at once: a standby replica is
//!   ready, and a readiness that waited for the lease would stall every rolling update (the new Pod
//!   can never take the lease while the old one holds it).
//! - `/metrics` answers with [`Metrics::encode`] in the Prometheus text format.
//!
//! Plain HTTP/1.1 is enough: kubelet probes and Prometheus scrapes both speak it, and nothing served
//! here is secret (metrics carry bounded labels only, never names or tokens). The server only reads
//! the method and path of a request, never its body.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::metrics::{self, Metrics};

/// The health server's own timeouts; the defaults suit a kubelet and Prometheus.
#[derive(Clone, Copy, Debug)]
pub struct HealthTimeouts {
    /// A client that opens a connection and sends its headers slowly must not hold a task forever.
    pub header_read: Duration,
    /// How long shutdown waits for requests in flight (a scrape encodes in microseconds) before
    /// it drops the remaining connections.
    pub shutdown_grace: Duration,
    /// After a failed accept (for example, out of file descriptors), wait this long before the
    /// next instead of spinning on the same error.
    pub accept_error_pause: Duration,
}

impl Default for HealthTimeouts {
    fn default() -> Self {
        HealthTimeouts {
            header_read: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            accept_error_pause: Duration::from_millis(100),
        }
    }
}

/// Whether the controller's caches have synced. Clones share one flag.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
}

impl Readiness {
    /// A flag that starts not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag: `true` once the caches have synced (on leaders and standbys alike).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot listen for health and metrics requests on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the address the health server listens on")]
    LocalAddr(#[source] std::io::Error),
}

/// A running health server.
#[derive(Debug)]
pub struct HealthServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HealthServer {
    /// The address the server listens on (the real port when it was asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits until the server has stopped: after the shutdown future completed, it stops accepting
    /// and lets requests in flight finish.
    pub async fn stopped(self) {
        if let Err(error) = self.task.await {
            tracing::error!(%error, "health server task ended abnormally");
        }
    }
}

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` on a background task until
/// `shutdown` completes. Returns once the socket is bound, so a caller that asked for port 0 can
/// read the real port from [`HealthServer::local_addr`].
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<HealthServer, HealthError> {
    serve_with(
        addr,
        metrics,
        readiness,
        HealthTimeouts::default(),
        shutdown,
    )
    .await
}

/// [`serve`] with explicit timeouts.
pub async fn serve_with(
    addr: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
    timeouts: HealthTimeouts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<HealthServer, HealthError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError::Bind { addr, source })?;
    let local_addr = listener.local_addr().map_err(HealthError::LocalAddr)?;
    tracing::info!(%local_addr, "serving /metrics, /healthz and /readyz");
    let task = tokio::spawn(accept_loop(
        listener, metrics, readiness, timeouts, shutdown,
    ));
    Ok(HealthServer { local_addr, task })
}

async fn accept_loop(
    listener: TcpListener,
    metrics: Metrics,
    readiness: Readiness,
    timeouts: HealthTimeouts,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "health server: accept failed");
                        tokio::time::sleep(timeouts.accept_error_pause).await;
                        continue;
                    }
                };
                let metrics = metrics.clone();
                let readiness = readiness.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let response = route(request.method(), request.uri().path(), &metrics, &readiness);
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        // Clients that hang up mid-request are routine (probes time out); debug only.
                        tracing::debug!(%error, "health server: connection ended with an error");
                    }
                });
            }
        }
    }

    // Stop accepting first, so probes fail fast on a closed port rather than hanging.
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(timeouts.shutdown_grace) => {
            tracing::debug!("health server: dropping connections still open after the grace period");
        }
    }
    tracing::info!("health server stopped");
}

/// The response to one request, by method and path alone.
fn route(
    method: &Method,
    path: &str,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if readiness.is_ready() => text(StatusCode::OK, "ok\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "caches not synced\n"),
        _ => {
            let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};
    use tokio::sync::oneshot;

    struct Running {
        server: HealthServer,
        stop: oneshot::Sender<()>,
        metrics: Metrics,
        readiness: Readiness,
        http: reqwest::Client,
    }

    impl Running {
        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.server.local_addr())
        }

        async fn get(&self, path: &str) -> (StatusCode, String, Option<String>) {
            let response = self.http.get(self.url(path)).send().await.unwrap();
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            let content_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, response.text().await.unwrap(), content_type)
        }
    }

    async fn start() -> Running {
        let metrics = Metrics::new();
        let readiness = Readiness::new();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = serve(
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
            metrics.clone(),
            readiness.clone(),
            async move {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
        // no_proxy: a proxy from the environment must not intercept loopback requests.
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Running {
            server,
            stop,
            metrics,
            readiness,
            http,
        }
    }

    #[tokio::test]
    async fn binding_port_zero_reports_the_real_port() {
        let running = start().await;
        assert_ne!(running.server.local_addr().port(), 0);
    }

    #[tokio::test]
    async fn healthz_answers_ok_while_the_process_runs() {
        let running = start().await;
        let (status, body, _) = running.get("/healthz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "ok\n");
    }

    #[tokio::test]
    async fn readyz_is_unavailable_until_the_caches_have_synced() {
        let running = start().await;
        let (status, body, _) = running.get("/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "caches not synced\n");
        // Liveness does not depend on readiness.
        assert_eq!(running.get("/healthz").await.0, StatusCode::OK);

        running.readiness.set_ready(true);
        assert_eq!(running.get("/readyz").await.0, StatusCode::OK);

        running.readiness.set_ready(false);
        assert_eq!(
            running.get("/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn metrics_serves_the_shared_registry_as_prometheus_text() {
        let running = start().await;
        running.metrics.leader(true);
        running
            .metrics
            .reconcile_finished("ok", Duration::from_millis(20));
        let (status, body, content_type) = running.get("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            content_type.as_deref(),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        assert!(body.contains("\nkeyless_leader 1\n"), "{body}");
        assert!(
            body.contains("keyless_reconciles_total{result=\"ok\"} 1\n"),
            "{body}"
        );
        assert!(body.contains("\nkeyless_heap_allocated_bytes "), "{body}");
        // The same registry; only the heap gauges, read from the allocator per scrape, move.
        let steady = |text: &str| {
            text.lines()
                .filter(|l| !l.starts_with("keyless_heap_"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(steady(&body), steady(&running.metrics.encode()));
    }

    #[tokio::test]
    async fn unknown_paths_are_not_found_and_writes_are_not_allowed() {
        let running = start().await;
        assert_eq!(running.get("/").await.0, StatusCode::NOT_FOUND);
        assert_eq!(running.get("/metrics/extra").await.0, StatusCode::NOT_FOUND);

        let response = running
            .http
            .post(running.url("/readyz"))
            .body("ready")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 405);
        assert_eq!(
            response.headers().get("allow").unwrap().to_str().unwrap(),
            "GET, HEAD"
        );
        assert!(
            !running.readiness.is_ready(),
            "a request cannot change readiness"
        );
    }

    #[tokio::test]
    async fn head_requests_get_the_status_without_a_body() {
        let running = start().await;
        let response = running
            .http
            .head(running.url("/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.bytes().await.unwrap().len(), 0);
    }

    #[tokio::test]
    async fn shutdown_closes_the_port_even_with_a_keep_alive_connection_open() {
        let running = start().await;
        let addr = running.server.local_addr();
        // This request leaves an idle keep-alive connection in reqwest's pool.
        assert_eq!(running.get("/healthz").await.0, StatusCode::OK);

        running.stop.send(()).unwrap();
        // A hang guard, not a speed assertion: graceful shutdown must not wait on idle connections
        // until the grace period, but the bound is generous.
        tokio::time::timeout(Duration::from_secs(30), running.server.stopped())
            .await
            .expect("the server stops");

        let refused = tokio::net::TcpStream::connect(addr).await;
        assert!(refused.is_err(), "nothing listens after shutdown");
    }

    #[tokio::test]
    async fn binding_a_port_in_use_is_an_error_naming_the_address() {
        let running = start().await;
        let addr = running.server.local_addr();
        let error = serve(
            addr,
            Metrics::new(),
            Readiness::new(),
            std::future::pending(),
        )
        .await
        .unwrap_err();
        assert!(matches!(error, HealthError::Bind { addr: a, .. } if a == addr));
        assert!(error.to_string().contains(&addr.to_string()));
    }
}
