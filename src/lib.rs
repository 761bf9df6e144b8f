//! keyless: Azure OpenAI access through Entra ID role assignments, never API keys.
//!
//! One engine, two front ends. The same pass — resolve → observe → plan → apply → outcome, over one
//! account scope — runs under file mode (`plan` / `apply -f`) and under the controller (`run`).
//!
//! - [`api`]: the keyless.dev/v1alpha1 types users write (no IO).
//! - [`plan`]: the pure planner (no IO): grant identity, names, ownership, policy, deletion safety.
//! - [`engine`]: one pass over one account scope, generic over the Azure traits.
//! - [`azure`]: ARM, Graph and Entra behind traits of domain verbs; the only azure_identity user.
//! - [`controller`]: `keyless run`, the kube-runtime wiring.
//! - [`ops`]: logs, metrics, health endpoints and leader election.
//! - [`report`]: who can call an account and why (the access report; pure classification).
//! - `bench`: the controller benchmark and what it shares with file mode's (with the `emulator`
//!   feature: it runs against the keyless-emulator crate, as tests and `--emulator` do).
//! - [`files`]: file mode (`plan`, `apply`, `doctor`, `bench`): the engine without a cluster.

pub mod api;
pub mod azure;
#[cfg(feature = "emulator")]
pub mod bench;
pub mod cli;
pub mod controller;
pub mod engine;
pub mod files;
#[cfg(test)]
mod fuzz;
pub mod ops;
pub mod plan;
pub mod report;
