//! Keyless credentials: the only module that imports azure_identity. keyless never holds a client
//! secret or an API key; it gets Entra tokens from
//! - workload identity in a pod (a projected service-account token exchanged for an Entra token),
//! - a managed identity (IMDS / App Service), only when chosen explicitly,
//! - the Azure CLI's signed-in account, for local use.
//!
//! `auto` picks workload identity when `AZURE_FEDERATED_TOKEN_FILE` is set, refuses to guess inside a
//! Kubernetes pod without it (IMDS there answers with the *node's* identity: every pod on the node
//! would act with the node's rights), and otherwise uses the Azure CLI. It says what it chose and why.
//!
//! Every credential sends its token requests through keyless's one reqwest client (facts §E.5), so
//! `--ca-file` and the TLS stack apply to Entra as they do to ARM and Graph.

use super::cloud::CloudEndpoints;
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, HttpClient, Transport};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientAssertionCredentialOptions, Executor,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use std::path::PathBuf;
use std::sync::Arc;

/// Which credential keyless uses (`--credential`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum CredentialChoice {
    /// Workload identity when `AZURE_FEDERATED_TOKEN_FILE` is set; the Azure CLI outside Kubernetes;
    /// never IMDS inside a pod.
    #[default]
    Auto,
    WorkloadIdentity,
    ManagedIdentity,
    AzureCli,
}

/// The credential keyless ended up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    WorkloadIdentity,
    ManagedIdentity,
    AzureCli,
}

impl CredentialKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            CredentialKind::WorkloadIdentity => "workload-identity",
            CredentialKind::ManagedIdentity => "managed-identity",
            CredentialKind::AzureCli => "azure-cli",
        }
    }
}

/// What the credential choice came to, and why (logged at start-up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialDecision {
    pub kind: CredentialKind,
    pub reason: String,
}

/// The inputs of the choice; unset values come from the environment the workload identity webhook
/// injects (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CredentialSettings {
    pub choice: CredentialChoice,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub federated_token_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "no credential for --credential auto: this runs in a Kubernetes pod (KUBERNETES_SERVICE_HOST is set) but \
         AZURE_FEDERATED_TOKEN_FILE is not, so workload identity is not set up. keyless will not fall back to IMDS \
         here: it would act with the node's identity. Label the pod azure.workload.identity/use=\"true\" and annotate \
         its service account with azure.workload.identity/client-id, or pass --credential managed-identity explicitly"
    )]
    AutoInPodWithoutWorkloadIdentity,
    #[error(
        "workload identity needs {what}: set {variable} (the workload identity webhook injects it) or pass {flag}"
    )]
    WorkloadIdentityIncomplete {
        what: &'static str,
        variable: &'static str,
        flag: &'static str,
    },
    #[error("create the {kind} credential")]
    Create {
        kind: &'static str,
        #[source]
        source: azure_core::Error,
    },
}

/// Reads one environment variable; tests pass a map instead of mutating the process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, ignoring empty values (an empty variable is an unset one).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

fn federated_token_file(settings: &CredentialSettings, env: EnvLookup<'_>) -> Option<PathBuf> {
    settings
        .federated_token_file
        .clone()
        .or_else(|| env("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from))
}

/// Decides which credential to use, and says why.
pub fn decide(
    settings: &CredentialSettings,
    env: EnvLookup<'_>,
) -> Result<CredentialDecision, CredentialError> {
    let in_pod = env("KUBERNETES_SERVICE_HOST").is_some();
    let decision = |kind, reason: &str| CredentialDecision {
        kind,
        reason: reason.to_string(),
    };
    Ok(match settings.choice {
        CredentialChoice::WorkloadIdentity => decision(
            CredentialKind::WorkloadIdentity,
            "--credential workload-identity",
        ),
        CredentialChoice::AzureCli => decision(CredentialKind::AzureCli, "--credential azure-cli"),
        CredentialChoice::ManagedIdentity if in_pod => decision(
            CredentialKind::ManagedIdentity,
            "--credential managed-identity, inside a Kubernetes pod: IMDS answers with the node's identity",
        ),
        CredentialChoice::ManagedIdentity => decision(
            CredentialKind::ManagedIdentity,
            "--credential managed-identity",
        ),
        CredentialChoice::Auto if federated_token_file(settings, env).is_some() => decision(
            CredentialKind::WorkloadIdentity,
            "auto: a federated token file is set (AZURE_FEDERATED_TOKEN_FILE, injected by the workload identity webhook)",
        ),
        CredentialChoice::Auto if in_pod => {
            return Err(CredentialError::AutoInPodWithoutWorkloadIdentity);
        }
        CredentialChoice::Auto => decision(
            CredentialKind::AzureCli,
            "auto: not in a Kubernetes pod and no federated token file, so the Azure CLI's signed-in account (local use)",
        ),
    })
}

/// A credential and the decision that produced it.
#[derive(Clone, Debug)]
pub struct KeylessCredential {
    pub credential: Arc<dyn TokenCredential>,
    pub decision: CredentialDecision,
}

/// Hooks for tests: the credential's HTTP transport and the process runner of the Azure CLI.
#[derive(Clone, Default)]
pub struct CredentialHooks {
    pub transport: Option<Arc<dyn HttpClient>>,
    pub executor: Option<Arc<dyn Executor>>,
}

/// Builds the chosen credential on keyless's reqwest client, with the cloud's (or the overridden)
/// authority host.
pub fn build_credential(
    settings: &CredentialSettings,
    endpoints: &CloudEndpoints,
    http: reqwest::Client,
    env: EnvLookup<'_>,
) -> Result<KeylessCredential, CredentialError> {
    build_credential_with(settings, endpoints, Arc::new(http), None, env)
}

pub fn build_credential_with(
    settings: &CredentialSettings,
    endpoints: &CloudEndpoints,
    transport: Arc<dyn HttpClient>,
    executor: Option<Arc<dyn Executor>>,
    env: EnvLookup<'_>,
) -> Result<KeylessCredential, CredentialError> {
    let decision = decide(settings, env)?;
    let mut cloud = CustomConfiguration::default();
    cloud.authority_host = endpoints.authority_host_str();
    let client_options = ClientOptions {
        transport: Some(Transport::new(transport)),
        cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
        ..ClientOptions::default()
    };
    let client_id = settings
        .client_id
        .clone()
        .or_else(|| env("AZURE_CLIENT_ID"));
    let tenant_id = settings
        .tenant_id
        .clone()
        .or_else(|| env("AZURE_TENANT_ID"));
    let credential: Arc<dyn TokenCredential> = match decision.kind {
        CredentialKind::WorkloadIdentity => {
            let token_file = federated_token_file(settings, env).ok_or(
                CredentialError::WorkloadIdentityIncomplete {
                    what: "a federated token file",
                    variable: "AZURE_FEDERATED_TOKEN_FILE",
                    flag: "--federated-token-file",
                },
            )?;
            let client_id = client_id.ok_or(CredentialError::WorkloadIdentityIncomplete {
                what: "the identity's client id",
                variable: "AZURE_CLIENT_ID",
                flag: "--client-id",
            })?;
            let tenant_id = tenant_id.ok_or(CredentialError::WorkloadIdentityIncomplete {
                what: "the tenant id",
                variable: "AZURE_TENANT_ID",
                flag: "--tenant-id",
            })?;
            // `..default()` although every 1.0 field is set: 1.1 adds fields (the AKS token proxy).
            #[allow(clippy::needless_update)]
            let options = WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions { client_options },
                client_id: Some(client_id),
                tenant_id: Some(tenant_id),
                token_file_path: Some(token_file),
                ..WorkloadIdentityCredentialOptions::default()
            };
            WorkloadIdentityCredential::new(Some(options)).map_err(|source| {
                CredentialError::Create {
                    kind: "workload identity",
                    source,
                }
            })?
        }
        CredentialKind::ManagedIdentity => {
            // `..default()` keeps this compiling when azure_identity adds options.
            #[allow(clippy::needless_update)]
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.map(UserAssignedId::ClientId),
                client_options,
                ..ManagedIdentityCredentialOptions::default()
            };
            ManagedIdentityCredential::new(Some(options)).map_err(|source| {
                CredentialError::Create {
                    kind: "managed identity",
                    source,
                }
            })?
        }
        CredentialKind::AzureCli => AzureCliCredential::new(Some(AzureCliCredentialOptions {
            tenant_id,
            executor,
            ..AzureCliCredentialOptions::default()
        }))
        .map_err(|source| CredentialError::Create {
            kind: "Azure CLI",
            source,
        })?,
    };
    tracing::info!(
        credential = decision.kind.as_str(),
        reason = %decision.reason,
        authority_host = %endpoints.authority_host,
        "chose the Azure credential"
    );
    Ok(KeylessCredential {
        credential,
        decision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::cloud::{AzureCloud, EndpointOverrides};
    use azure_core::http::headers::Headers;
    use azure_core::http::{AsyncRawResponse, Body, Request, StatusCode};
    use std::collections::HashMap;
    use std::ffi::OsStr;
    use std::sync::Mutex;

    const TENANT: &str = "22222222-2222-2222-2222-222222222222";
    const CLIENT: &str = "11111111-1111-1111-1111-111111111111";
    const FAKE_TOKEN: &str = "fake.jwt.token-that-must-never-be-printed";

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    fn endpoints() -> CloudEndpoints {
        CloudEndpoints::resolve(
            AzureCloud::AzurePublicCloud,
            &EndpointOverrides {
                authority_host: Some(url::Url::parse("https://login.fake.local").unwrap()),
                ..EndpointOverrides::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn auto_picks_workload_identity_when_the_webhook_injected_a_token_file() {
        let env = env_of(&[
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/azure-identity-token",
            ),
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
        ]);
        let decision = decide(&CredentialSettings::default(), &env).unwrap();
        assert_eq!(decision.kind, CredentialKind::WorkloadIdentity);
        assert!(
            decision.reason.contains("AZURE_FEDERATED_TOKEN_FILE"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn auto_refuses_imds_inside_a_pod_without_workload_identity() {
        let env = env_of(&[("KUBERNETES_SERVICE_HOST", "10.0.0.1")]);
        let err = decide(&CredentialSettings::default(), &env).unwrap_err();
        assert!(matches!(
            err,
            CredentialError::AutoInPodWithoutWorkloadIdentity
        ));
        assert!(err.to_string().contains("node's identity"), "{err}");
    }

    #[test]
    fn auto_uses_the_azure_cli_outside_kubernetes() {
        let decision = decide(&CredentialSettings::default(), &env_of(&[])).unwrap();
        assert_eq!(decision.kind, CredentialKind::AzureCli);
        assert!(decision.reason.contains("not in a Kubernetes pod"));
    }

    #[test]
    fn explicit_choices_are_obeyed_and_imds_in_a_pod_is_called_out() {
        let in_pod = env_of(&[("KUBERNETES_SERVICE_HOST", "10.0.0.1")]);
        for (choice, kind) in [
            (
                CredentialChoice::WorkloadIdentity,
                CredentialKind::WorkloadIdentity,
            ),
            (
                CredentialChoice::ManagedIdentity,
                CredentialKind::ManagedIdentity,
            ),
            (CredentialChoice::AzureCli, CredentialKind::AzureCli),
        ] {
            let settings = CredentialSettings {
                choice,
                ..CredentialSettings::default()
            };
            assert_eq!(decide(&settings, &in_pod).unwrap().kind, kind);
        }
        let managed = CredentialSettings {
            choice: CredentialChoice::ManagedIdentity,
            ..CredentialSettings::default()
        };
        assert!(
            decide(&managed, &in_pod)
                .unwrap()
                .reason
                .contains("node's identity")
        );
    }

    #[test]
    fn workload_identity_without_a_client_id_says_which_variable_is_missing() {
        let env = env_of(&[
            ("AZURE_FEDERATED_TOKEN_FILE", "/tmp/x"),
            ("AZURE_TENANT_ID", TENANT),
        ]);
        let err = build_credential(
            &CredentialSettings::default(),
            &endpoints(),
            reqwest::Client::new(),
            &env,
        )
        .unwrap_err();
        assert!(err.to_string().contains("AZURE_CLIENT_ID"), "{err}");
    }

    /// A fake STS / IMDS: records each request and answers with a token.
    /// One recorded request: URL, body, headers.
    type Recorded = (String, String, Vec<(String, String)>);

    #[derive(Debug)]
    struct FakeTokenEndpoint {
        requests: Mutex<Vec<Recorded>>,
        body: &'static str,
    }

    #[async_trait::async_trait]
    impl HttpClient for FakeTokenEndpoint {
        async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
            let body = match request.body() {
                Body::Bytes(bytes) => String::from_utf8_lossy(bytes).to_string(),
                _ => String::new(),
            };
            let headers = request
                .headers()
                .iter()
                .map(|(name, value)| (name.as_str().to_string(), value.as_str().to_string()))
                .collect();
            self.requests
                .lock()
                .unwrap()
                .push((request.url().to_string(), body, headers));
            Ok(AsyncRawResponse::from_bytes(
                StatusCode::Ok,
                Headers::default(),
                self.body.as_bytes().to_vec(),
            ))
        }
    }

    #[tokio::test]
    async fn workload_identity_exchanges_the_token_file_at_the_configured_authority() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("azure-identity-token");
        std::fs::write(&token_file, "projected.service.account.token").unwrap();
        let sts = Arc::new(FakeTokenEndpoint {
            requests: Mutex::new(Vec::new()),
            body: r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"fake.jwt.token-that-must-never-be-printed"}"#,
        });
        let settings = CredentialSettings {
            choice: CredentialChoice::Auto,
            tenant_id: Some(TENANT.into()),
            client_id: Some(CLIENT.into()),
            federated_token_file: Some(token_file),
        };
        let built = build_credential_with(&settings, &endpoints(), sts.clone(), None, &env_of(&[]))
            .unwrap();
        assert_eq!(built.decision.kind, CredentialKind::WorkloadIdentity);
        let token = built
            .credential
            .get_token(&["https://management.azure.com/.default"], None)
            .await
            .unwrap();
        assert_eq!(token.token.secret(), FAKE_TOKEN);
        let requests = sts.requests.lock().unwrap();
        let (url, body, _) = &requests[0];
        assert_eq!(
            url,
            &format!("https://login.fake.local/{TENANT}/oauth2/v2.0/token")
        );
        assert!(
            body.contains("client_assertion=projected.service.account.token"),
            "{body}"
        );
        assert!(body.contains(&format!("client_id={CLIENT}")), "{body}");
        assert!(
            body.contains("scope=https%3A%2F%2Fmanagement.azure.com%2F.default"),
            "{body}"
        );
        assert!(
            !format!("{built:?} {token:?}").contains(FAKE_TOKEN),
            "Debug output never shows the token"
        );
    }

    #[tokio::test]
    async fn managed_identity_asks_imds_for_the_chosen_user_assigned_identity() {
        let imds = Arc::new(FakeTokenEndpoint {
            requests: Mutex::new(Vec::new()),
            body: r#"{"access_token":"fake.jwt.token-that-must-never-be-printed","expires_on":"4102444800","resource":"https://management.azure.com","token_type":"Bearer","client_id":"11111111-1111-1111-1111-111111111111","expires_in":"3599"}"#,
        });
        let settings = CredentialSettings {
            choice: CredentialChoice::ManagedIdentity,
            client_id: Some(CLIENT.into()),
            ..CredentialSettings::default()
        };
        let built =
            build_credential_with(&settings, &endpoints(), imds.clone(), None, &env_of(&[]))
                .unwrap();
        let token = built
            .credential
            .get_token(&["https://management.azure.com/.default"], None)
            .await
            .unwrap();
        assert_eq!(token.token.secret(), FAKE_TOKEN);
        let requests = imds.requests.lock().unwrap();
        let (url, _, headers) = &requests[0];
        assert!(
            url.starts_with("http://169.254.169.254/metadata/identity/oauth2/token?"),
            "{url}"
        );
        assert!(url.contains(&format!("client_id={CLIENT}")), "{url}");
        assert!(
            url.contains("resource=https%3A%2F%2Fmanagement.azure.com"),
            "{url}"
        );
        assert!(
            headers
                .iter()
                .any(|(name, value)| name == "metadata" && value == "true"),
            "{headers:?}"
        );
    }

    /// A fake `az`: records the shell command and prints a token.
    #[derive(Debug, Default)]
    struct FakeAz {
        commands: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl Executor for FakeAz {
        async fn run(
            &self,
            program: &OsStr,
            args: &[&OsStr],
        ) -> std::io::Result<std::process::Output> {
            let mut command = program.to_string_lossy().to_string();
            for arg in args {
                command.push(' ');
                command.push_str(&arg.to_string_lossy());
            }
            self.commands.lock().unwrap().push(command);
            use std::os::unix::process::ExitStatusExt;
            Ok(std::process::Output {
                status: std::process::ExitStatus::from_raw(0),
                stdout: br#"{"accessToken":"fake.jwt.token-that-must-never-be-printed","expiresOn":"2100-01-01 00:00:00.000000","expires_on":4102444800,"subscription":"s","tenant":"t","tokenType":"Bearer"}"#.to_vec(),
                stderr: Vec::new(),
            })
        }
    }

    #[tokio::test]
    async fn the_azure_cli_credential_runs_az_for_the_scope_and_tenant() {
        let az = Arc::new(FakeAz::default());
        let settings = CredentialSettings {
            choice: CredentialChoice::AzureCli,
            tenant_id: Some(TENANT.into()),
            ..CredentialSettings::default()
        };
        let unused = Arc::new(FakeTokenEndpoint {
            requests: Mutex::new(Vec::new()),
            body: "",
        });
        let built = build_credential_with(
            &settings,
            &endpoints(),
            unused,
            Some(az.clone()),
            &env_of(&[]),
        )
        .unwrap();
        let token = built
            .credential
            .get_token(&["https://graph.microsoft.com/.default"], None)
            .await
            .unwrap();
        assert_eq!(token.token.secret(), FAKE_TOKEN);
        let commands = az.commands.lock().unwrap();
        assert!(
            commands[0].contains(&format!(
                "az account get-access-token -o json --scope https://graph.microsoft.com/.default --tenant {TENANT}"
            )),
            "{commands:?}"
        );
    }
}
