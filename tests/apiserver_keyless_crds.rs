//! keyless's own CRDs (`keyless::api::crds()`) on the Kubernetes API stand-in: their defaults,
//! schema patterns and CEL rules are enforced as the apiserver would, and status applies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyless::api::{OpenAIAccess, OpenAIAccount};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::Status;
use serde_json::{Value, json};
use support::apiserver::ApiServer;

const RESOURCE_ID: &str = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/ai/providers/Microsoft.CognitiveServices/accounts/team-ai";

fn stand_in() -> ApiServer {
    ApiServer::builder()
        .crds(keyless::api::crds())
        .namespace("team-a")
        .build()
}

fn dynamic<K: kube::Resource<DynamicType = ()>>(
    server: &ApiServer,
    ns: Option<&str>,
) -> Api<DynamicObject> {
    let resource = ApiResource::erase::<K>(&());
    match ns {
        Some(ns) => Api::namespaced_with(server.client(), ns, &resource),
        None => Api::all_with(server.client(), &resource),
    }
}

fn object(value: Value) -> DynamicObject {
    serde_json::from_value(value).unwrap()
}

fn account(spec: Value) -> DynamicObject {
    object(json!({
        "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccount",
        "metadata": {"name": "team-ai"}, "spec": spec,
    }))
}

fn access(principals: Value) -> DynamicObject {
    object(json!({
        "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess",
        "metadata": {"name": "chat"},
        "spec": {"accountRef": {"name": "team-ai"}, "principals": principals},
    }))
}

fn api_error(err: kube::Error) -> Box<Status> {
    match err {
        kube::Error::Api(status) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn fields(status: &Status) -> Vec<String> {
    status
        .details
        .as_ref()
        .map(|d| d.causes.iter().map(|c| c.field.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_account_gets_its_schema_defaults() {
    let server = stand_in();
    let accounts = dynamic::<OpenAIAccount>(&server, None);
    accounts
        .create(
            &PostParams::default(),
            &account(json!({"resourceId": RESOURCE_ID})),
        )
        .await
        .unwrap();
    let stored = server.get::<OpenAIAccount>(None, "team-ai").unwrap();
    assert_eq!(
        stored.spec.allowed_roles,
        vec![keyless::api::RoleName::OpenAIUser]
    );
    assert!(stored.spec.require_federation);
    assert_eq!(stored.spec.allowed_principal_kinds.len(), 5);
}

#[tokio::test]
async fn an_account_resource_id_must_be_an_arm_account_id() {
    let server = stand_in();
    let accounts = dynamic::<OpenAIAccount>(&server, None);
    let status = api_error(
        accounts
            .create(
                &PostParams::default(),
                &account(json!({"resourceId": "team-ai"})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 422);
    assert_eq!(fields(&status), vec!["spec.resourceId".to_owned()]);
}

#[tokio::test]
async fn an_access_principal_naming_two_identities_is_rejected_by_the_cel_rule() {
    let server = stand_in();
    let accesses = dynamic::<OpenAIAccess>(&server, Some("team-a"));
    let two = json!([{"user": "alice@contoso.com", "serviceAccount": "app"}]);
    let status = api_error(
        accesses
            .create(&PostParams::default(), &access(two))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 422);
    assert_eq!(fields(&status), vec!["spec.principals[0]".to_owned()]);
    assert!(
        status.message.contains("set exactly one of"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn the_account_ref_of_an_access_is_immutable() {
    let server = stand_in();
    let accesses = dynamic::<OpenAIAccess>(&server, Some("team-a"));
    accesses
        .create(
            &PostParams::default(),
            &access(json!([{"serviceAccount": "app"}])),
        )
        .await
        .unwrap();
    let stored = server.get::<OpenAIAccess>(Some("team-a"), "chat").unwrap();
    assert_eq!(
        stored.spec.role,
        keyless::api::RoleName::OpenAIUser,
        "role defaults"
    );
    let elsewhere = json!({"spec": {"accountRef": {"name": "other"}}});
    let status = api_error(
        accesses
            .patch("chat", &PatchParams::default(), &Patch::Merge(&elsewhere))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("accountRef is immutable"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn keyless_status_with_conditions_applies_server_side() {
    let server = stand_in();
    let accesses = dynamic::<OpenAIAccess>(&server, Some("team-a"));
    accesses
        .create(
            &PostParams::default(),
            &access(json!([{"serviceAccount": "app"}])),
        )
        .await
        .unwrap();
    let status = Patch::Apply(json!({
        "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess",
        "status": {
            "observedGeneration": 1,
            "summary": "1/1 granted",
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "Granted", "message": "granted",
                "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1,
            }],
        },
    }));
    accesses
        .patch_status("chat", &PatchParams::apply("keyless").force(), &status)
        .await
        .unwrap();
    let stored = server.get::<OpenAIAccess>(Some("team-a"), "chat").unwrap();
    let status = stored.status.unwrap();
    assert_eq!(status.summary.as_deref(), Some("1/1 granted"));
    assert_eq!(status.conditions[0].type_, "Ready");
    assert_eq!(stored.metadata.generation, Some(1));
}
