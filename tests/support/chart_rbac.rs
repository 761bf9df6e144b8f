//! Running as the chart's ServiceAccount: render `charts/keyless` with helm, apply exactly its
//! RBAC (ClusterRoles, Roles, their bindings) and its ServiceAccount into a test's own release
//! namespace, get a token with `TokenRequest`, and build a client that authenticates with it — so a
//! test runs with the permissions the chart grants, no more.
//!
//! helm comes from `KEYLESS_HELM` (exported by `.ci/run` from `.ci/install-tools.sh`), or
//! `.ci/bin/helm` when that script ran before; without it the test skips with a notice (and fails
//! under `KEYLESS_REQUIRE_SHARED=1`). The release is named `keyless-<test id>`, so concurrent tests'
//! ClusterRoles do not collide.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, PostParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::cluster::{SCOPE_LABEL, TestEnv, client_with_layer, shared_required};
use super::kube_faults::KubeFaults;

/// What the chart installed for one test.
pub struct ChartRbac {
    /// The release namespace (holds the ServiceAccount, the leader-election Role and the Lease).
    pub namespace: String,
    pub service_account: String,
    /// The Lease name the chart's Deployment passes as `--lease-name`.
    pub lease_name: String,
    /// The kinds and names applied, e.g. `ClusterRole/keyless-t3-principals`.
    pub applied: Vec<String>,
}

/// helm, or `None` after a notice (a failure under `KEYLESS_REQUIRE_SHARED=1`).
pub fn helm() -> Option<PathBuf> {
    let candidate = std::env::var_os("KEYLESS_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/bin/helm"));
    if candidate.is_file() {
        return Some(candidate);
    }
    assert!(
        !shared_required(),
        "KEYLESS_REQUIRE_SHARED=1 but helm is missing (run .ci/install-tools.sh, export KEYLESS_HELM)"
    );
    eprintln!("notice: helm is missing (KEYLESS_HELM, .ci/bin/helm): skipping a chart-RBAC test");
    None
}

/// Renders the chart (release `keyless-<id>` in a new namespace `keyless-system-<id>`, plus the
/// `--set` values given) and applies its RBAC and ServiceAccount.
pub async fn install(env: &TestEnv, helm: &Path, set: &[&str]) -> ChartRbac {
    let namespace = env.namespace("keyless-system").await;
    let release = env.name("keyless");
    let mut command = Command::new(helm);
    command
        .arg("template")
        .arg(&release)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/keyless"))
        .arg("--namespace")
        .arg(&namespace)
        .args(["--set", "controller.instanceId=cluster-1"])
        // helm must not read the developer's cluster or repositories.
        .env("KUBECONFIG", "/dev/null");
    for value in set {
        command.args(["--set", value]);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8(output.stdout).unwrap()).unwrap();
    let mut rbac = ChartRbac {
        namespace: namespace.clone(),
        service_account: String::new(),
        lease_name: String::new(),
        applied: Vec::new(),
    };
    for document in documents.into_iter().filter(|d| !d.is_null()) {
        let kind = document["kind"].as_str().unwrap_or_default().to_string();
        let name = document["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match kind.as_str() {
            "ServiceAccount" => {
                apply::<ServiceAccount>(env, document).await;
                rbac.service_account = name.clone();
            }
            "ClusterRole" => apply::<ClusterRole>(env, document).await,
            "ClusterRoleBinding" => apply::<ClusterRoleBinding>(env, document).await,
            "Role" => apply::<Role>(env, document).await,
            "RoleBinding" => apply::<RoleBinding>(env, document).await,
            "Deployment" => {
                rbac.lease_name = lease_name(&document).unwrap_or_default();
                continue;
            }
            _ => continue,
        }
        rbac.applied.push(format!("{kind}/{name}"));
    }
    assert!(
        !rbac.service_account.is_empty(),
        "the chart renders a ServiceAccount"
    );
    rbac
}

/// The `--lease-name=` argument of the Deployment's container.
fn lease_name(deployment: &Value) -> Option<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--lease-name=").map(str::to_string))
}

async fn apply<K>(env: &TestEnv, document: Value)
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let object: K = serde_json::from_value(document).unwrap();
    env.create(&object).await;
}

impl ChartRbac {
    /// A client that authenticates as the chart's ServiceAccount (a `TokenRequest` token, the
    /// API server's default audience), through `faults` and scoped to the test's label like
    /// [`TestEnv::controller_client`].
    pub async fn client(&self, env: &TestEnv, faults: &KubeFaults) -> Client {
        let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &self.namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = accounts
            .create_token_request(&self.service_account, &PostParams::default(), &request)
            .await
            .unwrap()
            .status
            .expect("a TokenRequest answers with a token")
            .token;
        let mut config = env.config();
        // Only the token: no client certificate may stand in for the ServiceAccount.
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.into()),
            ..Default::default()
        };
        client_with_layer(config, &faults.scoped_to(SCOPE_LABEL, &env.id))
    }
}
