//! The Kubernetes API stand-in (tests/support/apiserver) behaves like the apiserver for what a
//! controller does: these tests drive it through kube's own client and runtime.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use support::apiserver::ApiServer;

#[tokio::test]
async fn a_config_map_can_be_created_and_read_back() {
    let server = ApiServer::default();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("settings".into());
    api.create(&PostParams::default(), &cm).await.unwrap();
    let got = api.get("settings").await.unwrap();
    assert_eq!(got.metadata.name.as_deref(), Some("settings"));
}
