//! `--emulator`: the Azure emulator started inside this process, and the configuration that points
//! keyless at it — the same clients and the same real workload identity credential as against
//! Azure, only the endpoints, the CA and the identity differ.

use super::args::EmulatorFlags;
use crate::azure::{AzureArgs, AzureConfig, CredentialChoice};
use crate::emulator::{Emulator, EmulatorConfig, EmulatorError, EmulatorHandle, Seed};
use url::Url;

/// A running embedded emulator and the Azure configuration aimed at it.
pub struct Embedded {
    pub handle: EmulatorHandle,
    pub config: AzureConfig,
    /// The issuer the seed's operator identity is federated with: the emulated cluster's.
    pub cluster_issuer: Option<String>,
}

/// Starts the emulator when `--emulator` is set.
pub async fn start(
    flags: &EmulatorFlags,
    azure: &AzureArgs,
) -> Result<Option<Embedded>, EmulatorError> {
    if !flags.emulator {
        return Ok(None);
    }
    let seed = match &flags.seed {
        Some(path) => Seed::from_file(path)?,
        None => Seed::example()?,
    };
    let cluster_issuer = seed.operator.as_ref().and_then(|operator| {
        seed.identities
            .iter()
            .find(|i| i.name == operator.identity)
            .and_then(|i| i.federated_credentials.first())
            .map(|c| c.issuer.clone())
    });
    let handle = Emulator::start(EmulatorConfig::new(seed)).await?;
    let config = config_for(&handle, azure.to_config());
    Ok(Some(Embedded {
        handle,
        config,
        cluster_issuer,
    }))
}

/// `base`'s settings (timeouts, retries, pacing) with the endpoints, CA and workload identity of
/// the emulator.
pub fn config_for(handle: &EmulatorHandle, base: AzureConfig) -> AzureConfig {
    let mut config = base;
    let endpoint = Url::parse(handle.endpoint()).ok();
    config.endpoints.arm_endpoint = endpoint.clone();
    config.endpoints.graph_endpoint = endpoint.clone();
    config.endpoints.authority_host = endpoint;
    config.ca_files = vec![handle.ca_file().to_path_buf()];
    config.credential.choice = CredentialChoice::WorkloadIdentity;
    config.credential.tenant_id = Some(handle.tenant_id());
    config.credential.client_id = handle.operator_client_id().map(str::to_string);
    config.credential.federated_token_file = handle.federated_token_file().map(Into::into);
    config
}

/// The environment as the emulated run sees it: nothing from the process, so a developer's
/// `AZURE_*` variables cannot point an emulator run at a real tenant.
pub fn no_env(_: &str) -> Option<String> {
    None
}
