//! Everything about the emulator that a test may want to change. Defaults are Azure's real values
//! (../shared/azure-facts.md), so a test shrinks a duration instead of sleeping through it.

use crate::seed::Seed;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// How the emulator starts.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// The directory world it serves.
    pub seed: Seed,
    /// 0 = an ephemeral port.
    pub port: u16,
    /// Where the CA PEM and the federated token file go; a fresh temporary directory when `None`.
    pub state_dir: Option<PathBuf>,
    /// Items per page of every ARM list. ARM does not document its page size; 1000 is what this
    /// emulator picks so that ordinary tenants fit on one page and tests shrink it to see `nextLink`.
    pub page_size: usize,
    /// Lifetime of the access tokens the token endpoint issues (Entra: `expires_in` 3599).
    pub token_lifetime: Duration,
    /// Lifetime of the operator's federated (service account) token; the emulator rewrites the
    /// file at half-life, as the kubelet does for projected tokens (default 3600 s).
    pub federated_token_lifetime: Duration,
    /// How long a directory object added at run time stays unknown to Graph and to role
    /// assignments sent without `principalType`. Entra documents "a few minutes"; 2 minutes.
    pub replication_window: Duration,
    /// How long a token endpoint outage lasts when one is started without a duration.
    pub token_outage: Duration,
    /// Role assignments per subscription (facts §A.6: 4000, fixed).
    pub assignment_limit: usize,
    /// ARM's token buckets per (subscription, caller).
    pub throttling: Throttling,
    /// Latency and injected errors, changeable at run time.
    pub faults: Faults,
    /// Seeds the random source of the error rates, so a failing test can be replayed.
    pub rng_seed: u64,
    /// Accept client assertions that are not JWTs (Entra never does). Off by default.
    pub accept_opaque_assertions: bool,
}

impl EmulatorConfig {
    /// The example tenant (`examples/emulator/seed.yaml`) with Azure's defaults.
    pub fn example() -> Result<EmulatorConfig, crate::seed::SeedError> {
        Ok(EmulatorConfig::new(Seed::example()?))
    }

    pub fn new(seed: Seed) -> EmulatorConfig {
        EmulatorConfig {
            seed,
            port: 0,
            state_dir: None,
            page_size: 1000,
            token_lifetime: Duration::from_secs(3599),
            federated_token_lifetime: Duration::from_secs(3600),
            replication_window: Duration::from_secs(120),
            token_outage: Duration::from_secs(300),
            assignment_limit: 4000,
            throttling: Throttling::default(),
            faults: Faults::default(),
            rng_seed: 0x006b_6579_6c65_7373,
            accept_opaque_assertions: false,
        }
    }
}

/// A token bucket: `capacity` requests at once, refilled by `refill_per_second`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    pub capacity: u32,
    pub refill_per_second: f64,
}

/// ARM's 2024 throttling (facts §A.7): per subscription, per principal, per operation type.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Throttling {
    pub enabled: bool,
    pub reads: Bucket,
    pub writes: Bucket,
    pub deletes: Bucket,
}

impl Default for Throttling {
    fn default() -> Throttling {
        Throttling {
            enabled: true,
            reads: Bucket {
                capacity: 250,
                refill_per_second: 25.0,
            },
            writes: Bucket {
                capacity: 200,
                refill_per_second: 10.0,
            },
            deletes: Bucket {
                capacity: 200,
                refill_per_second: 10.0,
            },
        }
    }
}

/// Faults applied to ARM and Graph requests (never to the admin API; the token endpoint has its
/// own outage). Rates are probabilities in 0..=1, checked in this order: reset, 429, 500, 503, cut
/// body, stall.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Faults {
    /// Added before every ARM, Graph and token response.
    #[serde(with = "millis")]
    pub latency: Duration,
    pub throttle_rate: f64,
    pub server_error_rate: f64,
    pub unavailable_rate: f64,
    pub connection_reset_rate: f64,
    /// The `Retry-After` of injected 429s (ARM sends whole seconds); 0 means 1 s.
    #[serde(with = "millis")]
    pub retry_after: Duration,
    /// Only requests whose operation name is listed get faults; empty = every operation.
    pub operations: Vec<String>,
    /// Share of ARM and Graph requests that are carried out, then answered with a body cut in the
    /// middle (the full `Content-Length` is announced, half the bytes are sent, the connection is
    /// closed): the client cannot know whether its write happened.
    pub cut_body_rate: f64,
    /// Share of ARM and Graph requests that are carried out, then answered only after [`stall`]
    /// (a client with a shorter timeout gives up on a write that happened).
    ///
    /// [`stall`]: Faults::stall
    pub stall_rate: f64,
    /// How long a stalled response is held back.
    #[serde(with = "millis")]
    pub stall: Duration,
    /// Added to the `createdOn`/`updatedOn` of role assignments written through ARM, in seconds
    /// (negative: ARM's clock is behind keyless's): clock skew between keyless and ARM.
    pub clock_skew_seconds: i64,
    /// A lagging read replica: ARM's role assignment LIST leaves out assignments created within
    /// this long (a PUT of the same grant still meets them: 409 RoleAssignmentExists).
    #[serde(with = "millis")]
    pub list_lag: Duration,
}

/// One injected failure, consumed by the next matching request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScriptedFault {
    pub kind: FaultKind,
    /// How many matching requests fail.
    #[serde(default = "one")]
    pub count: u32,
    /// Only requests of this operation (e.g. `RoleAssignments_Create`); any when `None`.
    #[serde(default)]
    pub operation: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FaultKind {
    /// 429 with `Retry-After`.
    Throttle,
    /// 500 `InternalServerError`.
    ServerError,
    /// 503 `ServiceUnavailable`.
    Unavailable,
    /// The connection is dropped without a response.
    ConnectionReset,
    /// The request is carried out, and its response cut mid-body.
    CutBody,
    /// The request is carried out, and its response held back for `Faults::stall`.
    Stall,
}

/// How the token endpoint fails during an outage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OutageKind {
    /// 503 `temporarily_unavailable` (AADSTS90033).
    #[default]
    Unavailable,
    /// 400 `invalid_client`: Entra cannot reach the federation issuer (AADSTS50166).
    InvalidClient,
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(deserializer)?))
    }
}
