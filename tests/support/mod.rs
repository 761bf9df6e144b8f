//! Test support shared by the integration tests. Each `tests/*.rs` file is its own crate and uses a
//! different part of this module, hence the `dead_code` allowance.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

pub mod apiserver;
pub mod secrets;
