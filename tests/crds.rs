//! keyless's CRDs (`crds/`, as installed by the harness) on the real kube-apiserver: their schema
//! defaults, patterns, CEL rules, pruning and the status subresource behave as the controller and
//! the docs assume. (Formerly run on the stand-in, and opt-in on a real cluster.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyless::api::{OpenAIAccess, OpenAIAccount};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::Status;
use serde_json::{Value, json};
use support::cluster::TestEnv;

const RESOURCE_ID: &str = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/ai/providers/Microsoft.CognitiveServices/accounts/team-ai";

fn dynamic<K: kube::Resource<DynamicType = ()>>(
    env: &TestEnv,
    ns: Option<&str>,
) -> Api<DynamicObject> {
    let resource = ApiResource::erase::<K>(&());
    match ns {
        Some(ns) => Api::namespaced_with(env.client.clone(), ns, &resource),
        None => Api::all_with(env.client.clone(), &resource),
    }
}

fn object(value: Value) -> DynamicObject {
    serde_json::from_value(value).unwrap()
}

fn account(name: &str, spec: Value) -> DynamicObject {
    object(json!({
        "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccount",
        "metadata": {"name": name}, "spec": spec,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_finds_the_crds_installed() {
    let Some(env) = TestEnv::start().await else {
        return;
    };
    keyless::controller::check_crds(&env.client).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_gets_its_schema_defaults_and_unknown_fields_are_pruned() {
    let Some(env) = TestEnv::start().await else {
        return;
    };
    let name = env.name("team-ai");
    let accounts = dynamic::<OpenAIAccount>(&env, None);
    accounts
        .create(
            &PostParams::default(),
            &account(&name, json!({"resourceId": RESOURCE_ID, "notAField": true})),
        )
        .await
        .unwrap();
    let stored = Api::<OpenAIAccount>::all(env.client.clone())
        .get(&name)
        .await
        .unwrap();
    assert_eq!(
        stored.spec.allowed_roles,
        vec![keyless::api::RoleName::OpenAIUser]
    );
    assert!(stored.spec.require_federation);
    assert_eq!(stored.spec.allowed_principal_kinds.len(), 5);
    let raw = accounts.get(&name).await.unwrap();
    assert!(
        raw.data["spec"].get("notAField").is_none(),
        "pruned: {}",
        raw.data
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_resource_id_must_be_an_arm_account_id() {
    let Some(env) = TestEnv::start().await else {
        return;
    };
    let accounts = dynamic::<OpenAIAccount>(&env, None);
    let status = api_error(
        accounts
            .create(
                &PostParams::default(),
                &account(&env.name("team-ai"), json!({"resourceId": "team-ai"})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 422);
    assert_eq!(fields(&status), vec!["spec.resourceId".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_principal_naming_two_identities_is_rejected_by_the_cel_rule() {
    let Some(env) = TestEnv::start().await else {
        return;
    };
    let namespace = env.namespace("team-a").await;
    let accesses = dynamic::<OpenAIAccess>(&env, Some(&namespace));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_ref_of_an_access_is_immutable() {
    let Some(env) = TestEnv::start().await else {
        return;
    };
    let namespace = env.namespace("team-a").await;
    let accesses = dynamic::<OpenAIAccess>(&env, Some(&namespace));
    accesses
        .create(
            &PostParams::default(),
            &access(json!([{"serviceAccount": "app"}])),
        )
        .await
        .unwrap();
    let stored = Api::<OpenAIAccess>::namespaced(env.client.clone(), &namespace)
        .get("chat")
        .await
        .unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_status_with_conditions_applies_server_side_without_touching_the_spec() {
    let Some(env) = TestEnv::start().await else {
        return;
    };
    let namespace = env.namespace("team-a").await;
    let accesses = dynamic::<OpenAIAccess>(&env, Some(&namespace));
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
    let stored = Api::<OpenAIAccess>::namespaced(env.client.clone(), &namespace)
        .get("chat")
        .await
        .unwrap();
    let status = stored.status.unwrap();
    assert_eq!(status.summary.as_deref(), Some("1/1 granted"));
    assert_eq!(status.conditions[0].type_, "Ready");
    assert_eq!(
        stored.metadata.generation,
        Some(1),
        "a status write is no spec change"
    );
    assert_eq!(
        stored.spec.principals[0].service_account.as_deref(),
        Some("app")
    );
}
