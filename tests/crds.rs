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

/// Every case of the bad-input corpus (`tests/bad-input/`) sent as GitOps tools send it: a
/// server-side apply with strict field validation. The API server's answer must name the field as
/// `NAME.apiserver` says (or accept the object where that is right); a case without that file must be
/// one no client can send (not YAML, or no `kind`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bad_input_corpus_gets_an_answer_naming_the_field_from_the_api_server() {
    let Some(env) = TestEnv::start().await else {
        return;
    };
    let namespace = env.namespace("bad-input").await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-input");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    let mut failures = Vec::new();
    let mut judged = 0;
    for case in &cases {
        let file = case.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(case).unwrap();
        let documents: Option<Vec<Value>> = serde_saphyr::from_multiple(&text).ok();
        let sendable: Vec<Value> = documents
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d.get("kind").is_some() && d.get("apiVersion").is_some())
            .collect();
        let expectation = std::fs::read_to_string(case.with_extension("apiserver")).ok();
        let Some(expectation) = expectation else {
            if !sendable.is_empty() {
                failures.push(format!(
                    "{file}: a client can send it, but it has no .apiserver file"
                ));
            }
            continue;
        };
        judged += 1;
        let expected: Vec<&str> = expectation
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .collect();
        let mut answer = None;
        for mut document in sendable {
            let kind = document["kind"].as_str().unwrap().to_string();
            let name = document["metadata"]["name"].as_str().unwrap().to_string();
            let labels = serde_json::to_value(env.labels()).unwrap();
            document["metadata"]["labels"] = labels;
            let api = if kind == "OpenAIAccount" {
                let name = env.name(&name);
                document["metadata"]["name"] = json!(name);
                (name, None)
            } else {
                document["metadata"]["namespace"] = json!(namespace);
                (name, Some(namespace.as_str()))
            };
            let (name, ns) = api;
            let (group, version) = document["apiVersion"]
                .as_str()
                .unwrap()
                .split_once('/')
                .unwrap_or(("", "v1"));
            let plural = format!("{}s", kind.to_lowercase()).replace("accesss", "accesses");
            let resource = ApiResource {
                group: group.into(),
                version: version.into(),
                api_version: document["apiVersion"].as_str().unwrap().into(),
                kind: kind.clone(),
                plural,
            };
            let api: Api<DynamicObject> = match ns {
                Some(ns) => Api::namespaced_with(env.client.clone(), ns, &resource),
                None => Api::all_with(env.client.clone(), &resource),
            };
            let params = PatchParams::apply("gitops").validation_strict();
            if let Err(err) = api.patch(&name, &params, &Patch::Apply(&document)).await {
                answer = Some(match err {
                    kube::Error::Api(status) => format!("{} {}", status.code, status.message),
                    other => other.to_string(),
                });
                break;
            }
        }
        match (answer, expected.as_slice()) {
            (None, ["accepted"]) => {}
            (None, _) => failures.push(format!("{file}: accepted, expected {expected:?}")),
            (Some(message), ["accepted"]) => {
                failures.push(format!("{file}: expected accepted, got {message}"))
            }
            (Some(message), lines) => {
                for line in lines {
                    if !message.contains(line) {
                        failures.push(format!("{file}: missing {line:?} in {message}"));
                    }
                }
            }
        }
    }
    assert!(judged >= 14, "only {judged} cases judged");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
