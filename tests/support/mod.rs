//! Test support shared by the integration tests. Each `tests/*.rs` file is its own crate and uses a
//! different part of this module, hence the `dead_code` allowance.
//!
//! - `cluster`: the real kube-apiserver (`../shared/k8s`), one per test binary, and the controller
//!   under test (in-process or as a `keyless run` child process);
//! - `kube_faults`: the Kubernetes fault layer and request counts, inside the controller's client;
//! - `example_seed`: the example seed's ids; `wait`: `eventually`;
//! - `operator`: the emulator-backed Azure configuration and controller settings tests share;
//! - `chart_rbac`: the chart's RBAC applied, and a client that acts as the chart's ServiceAccount;
//! - `apiserver`: the in-process stand-in, kept only for what the real server cannot do (see its doc).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

pub mod apiserver;
pub mod chart_rbac;
pub mod cluster;
pub mod example_seed;
pub mod kube_faults;
pub mod operator;
pub mod secrets;
pub mod soak;
pub mod wait;
