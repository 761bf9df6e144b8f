//! Configuration of the Azure side: the cloud and its endpoints, the credential, trusted CAs,
//! timeouts, retries and pacing. [`AzureArgs`] is the clap form every subcommand that talks to
//! Azure flattens in; [`AzureConfig`] is what the clients are built from (tests build it directly).

use super::cloud::{AzureCloud, EndpointOverrides};
use super::credential::{CredentialChoice, CredentialSettings};
use super::pacing::{BucketLimits, PacingConfig};
use super::retry::RetryConfig;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// Everything the Azure clients are built from.
#[derive(Clone, Debug, PartialEq)]
pub struct AzureConfig {
    pub cloud: AzureCloud,
    pub endpoints: EndpointOverrides,
    pub credential: CredentialSettings,
    /// PEM files whose certificates are trusted in addition to the system's.
    pub ca_files: Vec<PathBuf>,
    /// Where identities are looked up by client id; empty = the accounts' subscriptions.
    pub identity_subscriptions: Vec<String>,
    pub identity_cache_ttl: Duration,
    /// How long a role definition read for the access report is remembered.
    pub role_definition_cache_ttl: Duration,
    /// The limit on each HTTP attempt and on each token request.
    pub timeout: Duration,
    pub retry: RetryConfig,
    pub pacing: PacingConfig,
}

impl Default for AzureConfig {
    fn default() -> Self {
        AzureConfig {
            cloud: AzureCloud::default(),
            endpoints: EndpointOverrides::default(),
            credential: CredentialSettings::default(),
            ca_files: Vec::new(),
            identity_subscriptions: Vec::new(),
            identity_cache_ttl: Duration::from_secs(600),
            role_definition_cache_ttl: Duration::from_secs(6 * 3600),
            timeout: Duration::from_secs(8),
            retry: RetryConfig::default(),
            pacing: PacingConfig::default(),
        }
    }
}

/// Parses `30s`, `500ms`, `2m`, `1h30m`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let signed: jiff::SignedDuration = text
        .parse()
        .map_err(|err| format!("{text:?} is not a duration such as 30s, 500ms or 2m: {err}"))?;
    Duration::try_from(signed).map_err(|_| format!("{text:?} is negative"))
}

/// Parses a bucket as `CAPACITY:REFILL_PER_SECOND`, e.g. `250:25`.
pub fn parse_bucket(text: &str) -> Result<BucketLimits, String> {
    let invalid = || format!("{text:?} is not CAPACITY:REFILL_PER_SECOND, e.g. 250:25");
    let (capacity, refill) = text.split_once(':').ok_or_else(invalid)?;
    let capacity: u32 = capacity.trim().parse().map_err(|_| invalid())?;
    let refill_per_second: f64 = refill.trim().parse().map_err(|_| invalid())?;
    if capacity == 0 || !refill_per_second.is_finite() || refill_per_second <= 0.0 {
        return Err(format!("{text:?}: capacity and refill must be positive"));
    }
    Ok(BucketLimits {
        capacity,
        refill_per_second,
    })
}

fn parse_https_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|err| format!("{text:?} is not a URL: {err}"))?;
    if url.scheme() != "https" {
        return Err(format!(
            "{text:?} must use https: keyless sends bearer tokens there"
        ));
    }
    Ok(url)
}

fn parse_guid(text: &str) -> Result<String, String> {
    uuid::Uuid::try_parse(text.trim())
        .map(|id| id.to_string())
        .map_err(|_| format!("{text:?} is not a GUID"))
}

/// Azure flags, flattened into every subcommand that talks to Azure.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Azure")]
pub struct AzureArgs {
    /// The Azure cloud: sets the ARM, Graph and Entra endpoints and token audiences.
    #[arg(long, env = "KEYLESS_CLOUD", value_enum, default_value_t = AzureCloud::AzurePublicCloud)]
    pub cloud: AzureCloud,

    /// Overrides the cloud's Azure Resource Manager endpoint (private endpoints, the emulator).
    #[arg(long, env = "KEYLESS_ARM_ENDPOINT", value_parser = parse_https_url)]
    pub arm_endpoint: Option<Url>,

    /// Overrides the cloud's Microsoft Graph endpoint (e.g. <https://dod-graph.microsoft.us>).
    #[arg(long, env = "KEYLESS_GRAPH_ENDPOINT", value_parser = parse_https_url)]
    pub graph_endpoint: Option<Url>,

    /// Overrides the cloud's Entra authority host. Unset, AZURE_AUTHORITY_HOST (injected by the
    /// workload identity webhook) is used when present.
    #[arg(long, env = "KEYLESS_AUTHORITY_HOST", value_parser = parse_https_url)]
    pub authority_host: Option<Url>,

    /// A PEM file of CA certificates to trust besides the system's (repeatable).
    #[arg(long = "ca-file", env = "KEYLESS_CA_FILES", value_delimiter = ',')]
    pub ca_files: Vec<PathBuf>,

    /// How keyless gets Entra tokens. `auto`: workload identity when AZURE_FEDERATED_TOKEN_FILE is
    /// set, the Azure CLI outside Kubernetes, never the node's managed identity inside a pod.
    #[arg(long, env = "KEYLESS_CREDENTIAL", value_enum, default_value_t = CredentialChoice::Auto)]
    pub credential: CredentialChoice,

    /// A subscription to search for managed identities named by client id (repeatable). Default:
    /// the subscriptions of the accounts keyless manages.
    #[arg(long = "identity-subscription", env = "KEYLESS_IDENTITY_SUBSCRIPTIONS", value_delimiter = ',', value_parser = parse_guid)]
    pub identity_subscriptions: Vec<String>,

    /// The Entra tenant; default AZURE_TENANT_ID.
    #[arg(long, env = "KEYLESS_TENANT_ID")]
    pub tenant_id: Option<String>,

    /// The client id of keyless's identity; default AZURE_CLIENT_ID.
    #[arg(long, env = "KEYLESS_CLIENT_ID")]
    pub client_id: Option<String>,

    /// The projected service-account token for workload identity; default AZURE_FEDERATED_TOKEN_FILE.
    #[arg(long, env = "KEYLESS_FEDERATED_TOKEN_FILE")]
    pub federated_token_file: Option<PathBuf>,

    /// The time limit of each Azure HTTP attempt and token request. Shorter than --lease-duration
    /// minus --lease-renew-interval (15s - 5s by default), so a fenced leader can always finish a
    /// write before its lease ends; a timed-out attempt is retried with backoff.
    #[arg(long, env = "KEYLESS_AZURE_TIMEOUT", value_parser = parse_duration, default_value = "8s")]
    pub azure_timeout: Duration,

    /// Attempts per Azure call on 429, 5xx and connection failures (1 = no retries).
    #[arg(long, env = "KEYLESS_AZURE_MAX_ATTEMPTS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub azure_max_attempts: u32,

    /// The first retry backoff; it doubles per retry, with jitter.
    #[arg(long, env = "KEYLESS_AZURE_INITIAL_BACKOFF", value_parser = parse_duration, default_value = "500ms")]
    pub azure_initial_backoff: Duration,

    /// The cap on one retry backoff.
    #[arg(long, env = "KEYLESS_AZURE_MAX_BACKOFF", value_parser = parse_duration, default_value = "30s")]
    pub azure_max_backoff: Duration,

    /// A Retry-After longer than this is handed back to the reconcile loop instead of slept through.
    #[arg(long, env = "KEYLESS_AZURE_MAX_RETRY_AFTER", value_parser = parse_duration, default_value = "60s")]
    pub azure_max_retry_after: Duration,

    /// ARM read pacing per subscription, CAPACITY:REFILL_PER_SECOND (ARM's own bucket: 250:25).
    #[arg(long, env = "KEYLESS_ARM_PACING_READS", value_parser = parse_bucket, default_value = "250:25")]
    pub arm_pacing_reads: BucketLimits,

    /// ARM write pacing per subscription (ARM's own bucket: 200:10).
    #[arg(long, env = "KEYLESS_ARM_PACING_WRITES", value_parser = parse_bucket, default_value = "200:10")]
    pub arm_pacing_writes: BucketLimits,

    /// ARM delete pacing per subscription (ARM's own bucket: 200:10).
    #[arg(long, env = "KEYLESS_ARM_PACING_DELETES", value_parser = parse_bucket, default_value = "200:10")]
    pub arm_pacing_deletes: BucketLimits,

    /// Tokens of each pacing bucket keyless leaves unused, so that ARM's bucket keeps them too and
    /// a request arriving a little early is not throttled.
    #[arg(long, env = "KEYLESS_ARM_PACING_RESERVE", default_value_t = 1)]
    pub arm_pacing_reserve: u32,

    /// How long a managed identity found by client id is remembered.
    #[arg(long, env = "KEYLESS_IDENTITY_CACHE_TTL", value_parser = parse_duration, default_value = "10m")]
    pub identity_cache_ttl: Duration,

    /// How long a role definition read for the access report is remembered (definitions rarely change).
    #[arg(long, env = "KEYLESS_ROLE_DEFINITION_CACHE_TTL", value_parser = parse_duration, default_value = "6h")]
    pub role_definition_cache_ttl: Duration,
}

impl AzureArgs {
    pub fn to_config(&self) -> AzureConfig {
        AzureConfig {
            cloud: self.cloud,
            endpoints: EndpointOverrides {
                arm_endpoint: self.arm_endpoint.clone(),
                graph_endpoint: self.graph_endpoint.clone(),
                authority_host: self.authority_host.clone(),
                arm_scope: None,
                graph_scope: None,
            },
            credential: CredentialSettings {
                choice: self.credential,
                tenant_id: self.tenant_id.clone(),
                client_id: self.client_id.clone(),
                federated_token_file: self.federated_token_file.clone(),
            },
            ca_files: self.ca_files.clone(),
            identity_subscriptions: self.identity_subscriptions.clone(),
            identity_cache_ttl: self.identity_cache_ttl,
            role_definition_cache_ttl: self.role_definition_cache_ttl,
            timeout: self.azure_timeout,
            retry: RetryConfig {
                max_attempts: self.azure_max_attempts,
                initial_backoff: self.azure_initial_backoff,
                max_backoff: self.azure_max_backoff,
                max_retry_after: self.azure_max_retry_after,
            },
            pacing: PacingConfig {
                reads: self.arm_pacing_reads,
                writes: self.arm_pacing_writes,
                deletes: self.arm_pacing_deletes,
                reserve: self.arm_pacing_reserve,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Harness {
        #[command(flatten)]
        azure: AzureArgs,
    }

    #[test]
    fn defaults_match_the_documented_azure_limits() {
        let config = Harness::try_parse_from(["keyless"])
            .unwrap()
            .azure
            .to_config();
        let defaults = AzureConfig::default();
        assert_eq!(config.pacing, defaults.pacing);
        assert_eq!(config.retry, defaults.retry);
        assert_eq!(config.timeout, defaults.timeout);
        assert_eq!(config.identity_cache_ttl, defaults.identity_cache_ttl);
        assert_eq!(config.credential.choice, CredentialChoice::Auto);
        assert_eq!(config.cloud, AzureCloud::AzurePublicCloud);
    }

    #[test]
    fn every_flag_reaches_the_config() {
        let args = Harness::try_parse_from([
            "keyless",
            "--cloud",
            "AzureUSGovernment",
            "--arm-endpoint",
            "https://127.0.0.1:8443/",
            "--graph-endpoint",
            "https://dod-graph.microsoft.us",
            "--authority-host",
            "https://login.local:8443",
            "--ca-file",
            "/etc/a.pem",
            "--ca-file",
            "/etc/b.pem",
            "--credential",
            "workload-identity",
            "--identity-subscription",
            "00000000-0000-0000-0000-00000000000A",
            "--identity-subscription",
            "00000000-0000-0000-0000-00000000000b",
            "--tenant-id",
            "t",
            "--client-id",
            "c",
            "--azure-timeout",
            "5s",
            "--azure-max-attempts",
            "2",
            "--azure-initial-backoff",
            "100ms",
            "--arm-pacing-writes",
            "20:2.5",
        ])
        .unwrap();
        let config = args.azure.to_config();
        assert_eq!(config.cloud, AzureCloud::AzureUSGovernment);
        assert_eq!(
            config.endpoints.arm_endpoint.unwrap().as_str(),
            "https://127.0.0.1:8443/"
        );
        assert_eq!(
            config.endpoints.graph_endpoint.unwrap().as_str(),
            "https://dod-graph.microsoft.us/"
        );
        assert_eq!(
            config.endpoints.authority_host.unwrap().as_str(),
            "https://login.local:8443/"
        );
        assert_eq!(
            config.ca_files,
            [PathBuf::from("/etc/a.pem"), PathBuf::from("/etc/b.pem")]
        );
        assert_eq!(config.credential.choice, CredentialChoice::WorkloadIdentity);
        assert_eq!(
            config.identity_subscriptions,
            [
                "00000000-0000-0000-0000-00000000000a",
                "00000000-0000-0000-0000-00000000000b"
            ]
        );
        assert_eq!(config.credential.tenant_id.as_deref(), Some("t"));
        assert_eq!(config.credential.client_id.as_deref(), Some("c"));
        assert_eq!(config.timeout, Duration::from_secs(5));
        assert_eq!(config.retry.max_attempts, 2);
        assert_eq!(config.retry.initial_backoff, Duration::from_millis(100));
        assert_eq!(
            config.pacing.writes,
            BucketLimits {
                capacity: 20,
                refill_per_second: 2.5
            }
        );
    }

    #[test]
    fn plain_http_endpoints_and_bad_values_are_refused_at_parse_time() {
        for bad in [
            ["keyless", "--arm-endpoint", "http://127.0.0.1:8080"],
            ["keyless", "--identity-subscription", "prod"],
            ["keyless", "--azure-timeout", "soon"],
            ["keyless", "--arm-pacing-reads", "250"],
            ["keyless", "--cloud", "Mars"],
        ] {
            assert!(Harness::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_read_units_or_bare_seconds() {
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("-5s").is_err());
    }
}
