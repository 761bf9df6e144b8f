//! Against a real cluster, opt-in: `KEYLESS_TEST_KUBECONFIG=~/.kube/config cargo test --test
//! real_cluster -- --ignored`. The cluster needs keyless's CRDs installed (`keyless crd | kubectl
//! apply -f -`); nothing is persisted (server-side dry runs only).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyless::api::OpenAIAccess;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

async fn client() -> Option<kube::Client> {
    let Ok(path) = std::env::var("KEYLESS_TEST_KUBECONFIG") else {
        eprintln!("KEYLESS_TEST_KUBECONFIG is not set: skipping the real-cluster test");
        return None;
    };
    let kubeconfig = Kubeconfig::read_from(path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Some(kube::Client::try_from(config).unwrap())
}

#[tokio::test]
#[ignore = "needs a real cluster: set KEYLESS_TEST_KUBECONFIG"]
async fn the_real_apiserver_enforces_the_crds_rules_as_the_tests_assume() {
    let Some(client) = client().await else { return };
    keyless::controller::check_crds(&client).await.unwrap();
    let api: Api<OpenAIAccess> = Api::namespaced(client, "default");
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let valid: OpenAIAccess = serde_json::from_value(serde_json::json!({
        "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess",
        "metadata": {"name": "keyless-real-cluster-check"},
        "spec": {"accountRef": {"name": "prod"}, "principals": [{"user": "alice@contoso.com"}]}
    }))
    .unwrap();
    let created = api.create(&dry_run, &valid).await.unwrap();
    assert_eq!(
        created.spec.role,
        keyless::api::RoleName::OpenAIUser,
        "schema default applied"
    );
    let mut two_forms = valid.clone();
    two_forms.spec.principals[0].service_account = Some("chat".into());
    let error = api.create(&dry_run, &two_forms).await.unwrap_err();
    assert!(error.to_string().contains("exactly one"), "{error}");
}
