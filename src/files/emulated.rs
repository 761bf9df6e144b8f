//! `--emulator`: the Azure emulator started inside this process, and the configuration that points
//! keyless at it — the same clients and the same real workload identity credential as against
//! Azure, only the endpoints, the CA and the identity differ.
//!
//! Built without the `emulator` feature (the container image), `--emulator` is still a flag, and
//! using it is an error that says how to get a build with the emulator.

use super::args::EmulatorFlags;
use crate::azure::{AzureArgs, AzureConfig};

/// What `keyless emulator`, `keyless bench` and `--emulator` say in a build without the emulator.
pub const NOT_BUILT_IN: &str = "this keyless was built without the Azure emulator (cargo feature \
`emulator`, on by default; the container image leaves it out). Use a default build \
(`cargo install --path .` or `cargo run --` in the repository), or run the emulator on its own: \
`cargo run -p keyless-emulator`";

#[derive(Debug, thiserror::Error)]
pub enum EmulatedError {
    #[cfg(feature = "emulator")]
    #[error("start the embedded Azure emulator")]
    Start(#[from] keyless_emulator::EmulatorError),
    #[error("--emulator: {NOT_BUILT_IN}")]
    NotBuiltIn,
}

/// A running embedded emulator and the Azure configuration aimed at it.
pub struct Embedded {
    #[cfg(feature = "emulator")]
    handle: keyless_emulator::EmulatorHandle,
    /// Without the emulator there is never one.
    #[cfg(not(feature = "emulator"))]
    never: std::convert::Infallible,
    pub config: AzureConfig,
    /// The issuer the seed's operator identity is federated with: the emulated cluster's.
    pub cluster_issuer: Option<String>,
}

impl Embedded {
    /// The emulator's https endpoint.
    pub fn endpoint(&self) -> &str {
        #[cfg(feature = "emulator")]
        return self.handle.endpoint();
        #[cfg(not(feature = "emulator"))]
        match self.never {}
    }

    /// Stops the emulator and waits for its tasks.
    pub async fn shutdown(self) {
        #[cfg(feature = "emulator")]
        self.handle.shutdown().await;
        #[cfg(not(feature = "emulator"))]
        match self.never {}
    }
}

/// Starts the emulator when `--emulator` is set.
pub async fn start(
    flags: &EmulatorFlags,
    azure: &AzureArgs,
) -> Result<Option<Embedded>, EmulatedError> {
    if !flags.emulator {
        return Ok(None);
    }
    #[cfg(feature = "emulator")]
    return start_embedded(flags, azure).await.map(Some);
    #[cfg(not(feature = "emulator"))]
    {
        let _ = azure;
        Err(EmulatedError::NotBuiltIn)
    }
}

#[cfg(feature = "emulator")]
async fn start_embedded(
    flags: &EmulatorFlags,
    azure: &AzureArgs,
) -> Result<Embedded, EmulatedError> {
    use keyless_emulator::{Emulator, EmulatorConfig, EmulatorError, Seed};
    let seed = match &flags.seed {
        Some(path) => Seed::from_file(path).map_err(EmulatorError::from)?,
        None => Seed::example().map_err(EmulatorError::from)?,
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
    Ok(Embedded {
        handle,
        config,
        cluster_issuer,
    })
}

/// `base`'s settings (timeouts, retries, pacing) with the endpoints, CA and workload identity of
/// the emulator.
#[cfg(feature = "emulator")]
pub fn config_for(handle: &keyless_emulator::EmulatorHandle, base: AzureConfig) -> AzureConfig {
    use crate::azure::CredentialChoice;
    let mut config = base;
    let endpoint = url::Url::parse(handle.endpoint()).ok();
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
