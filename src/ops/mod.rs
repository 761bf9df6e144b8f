//! Operations: logging, metrics, health endpoints and leader election.
//!
//! - [`logging`]: text or JSON logs via tracing.
//! - [`metrics`]: the Prometheus registry the controller and the Azure clients record into.

pub mod health;
pub mod leader;
pub mod logging;
pub mod metrics;
