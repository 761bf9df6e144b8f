//! The keyless side of a test: Azure clients pointed at the emulator (over HTTPS, with the real
//! workload identity credential) and controller settings with test-sized intervals.

use std::time::Duration;

use keyless::azure::credential::{CredentialChoice, CredentialSettings};
use keyless::azure::{AzureClients, AzureConfig, cloud::EndpointOverrides, retry::RetryConfig};
use keyless::controller::ControllerConfig;
use keyless::engine::EngineConfig;
use keyless::plan::InstanceId;
use keyless_emulator::EmulatorHandle;
use keyless_emulator::config::EmulatorConfig;
use keyless_emulator::seed::Seed;

use super::cluster::ISSUER;

/// The emulator with the example seed, over HTTPS on loopback.
pub async fn emulator() -> EmulatorHandle {
    keyless_emulator::Emulator::start(EmulatorConfig::new(Seed::example().unwrap()))
        .await
        .unwrap()
}

pub fn azure_config(emulator: &EmulatorHandle) -> AzureConfig {
    let endpoint = url::Url::parse(emulator.endpoint()).unwrap();
    AzureConfig {
        endpoints: EndpointOverrides {
            arm_endpoint: Some(endpoint.clone()),
            graph_endpoint: Some(endpoint.clone()),
            authority_host: Some(endpoint),
            ..EndpointOverrides::default()
        },
        credential: CredentialSettings {
            choice: CredentialChoice::WorkloadIdentity,
            tenant_id: Some(emulator.tenant_id()),
            client_id: emulator.operator_client_id().map(str::to_string),
            federated_token_file: emulator.federated_token_file().map(|p| p.to_path_buf()),
        },
        ca_files: vec![emulator.ca_file().to_path_buf()],
        timeout: Duration::from_secs(5),
        retry: RetryConfig {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_retry_after: Duration::from_secs(1),
        },
        ..AzureConfig::default()
    }
}

pub fn azure_clients(emulator: &EmulatorHandle) -> AzureClients {
    AzureClients::from_config_with_env(&azure_config(emulator), &|_| None).unwrap()
}

/// Test-sized settings: 700 ms resync, fast retries, no propagation grace, the seed's issuer.
pub fn controller_config(instance: &str) -> ControllerConfig {
    ControllerConfig {
        engine: EngineConfig {
            instance: InstanceId::new(instance).unwrap(),
            max_deletes_per_pass: 50,
            replication_deadline: Duration::from_secs(600),
            propagation_grace: Duration::ZERO,
            federation_issuer: Some(ISSUER.into()),
            dry_run: false,
            observe: false,
            prune: true,
            // The brake is off unless a test turns it on (its budget and prune grace would slow
            // the sweeps other tests assert); the controller's view and fence are always on.
            brake: None,
            fence: None,
            exclusive_grace: std::time::Duration::ZERO,
            resolution_cache: Some(std::sync::Arc::new(keyless::engine::ResolutionCache::new(
                Duration::from_secs(600),
            ))),
        },
        resync_interval: Duration::from_millis(700),
        propagation_check_interval: Duration::ZERO,
        concurrency: 2,
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(400),
        enable_configmap_export: true,
        http_addr: None,
        leader: None,
        assignment_count_interval: None,
        memory_trim_interval: None,
        event_series_window: Duration::from_secs(6 * 60),
        event_memory: 1024,
        view_failure_threshold: 3,
        view_failure_ttl: Duration::from_secs(60),
        view_poll_interval: Duration::from_millis(100),
        // The tests' leases last 3 s with a 500 ms renewal: the fence margin must fit in between.
        arm_attempt_timeout: Duration::from_secs(1),
    }
}
