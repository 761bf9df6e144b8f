//! Operations: logging, metrics, health endpoints and leader election.
//!
//! - [`logging`]: text or JSON logs via tracing.
//! - [`metrics`]: the Prometheus registry that the controller and the Azure clients record into
//!   (one [`metrics::Metrics`], cloned).
//! - [`health`]: the HTTP server for `/metrics` (that registry), `/healthz` and `/readyz` (a
//!   [`health::Readiness`] flag the controller sets once its caches have synced).
//! - [`kube_requests`]: the tower layer that counts the kube client's requests by verb and
//!   resource (`keyless_kube_requests_total`).
//! - [`memory`]: hands the allocator's free memory back to the OS periodically.
//! - [`leader`]: leader election on a `coordination.k8s.io/v1` Lease; its watch channel says whether
//!   this replica may reconcile and write, and it can report itself as the `keyless_leader` gauge.

pub mod health;
pub mod kube_requests;
pub mod leader;
pub mod logging;
pub mod memory;
pub mod metrics;
