//! The Kubernetes API stand-in (tests/support/apiserver) behaves like the apiserver for what a
//! controller does. These tests drive it only through kube's own client and runtime, with a small
//! CRD (`Widget`) carrying schema constraints, defaults, CEL rules and a status subresource.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::Status;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::{WatchStreamExt, wait::await_condition, watcher};
use kube::{CustomResource, CustomResourceExt, KubeSchema, Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use support::apiserver::{ApiServer, Fault, Verb};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub enum Color {
    Red,
    Blue,
}

fn default_replicas() -> i32 {
    1
}

/// A test CRD with what keyless's CRDs use: an enum, a pattern, lengths, a defaulted field,
/// CEL rules (one a transition rule), a status subresource with conditions.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "stand-in.test",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    shortname = "wd"
)]
#[x_kube(validation = Rule::new("self.replicas <= self.maxReplicas").message("replicas must not exceed maxReplicas").field_path(".replicas"))]
#[serde(rename_all = "camelCase")]
pub struct WidgetSpec {
    #[x_kube(validation = Rule::new("self == oldSelf").message("color is immutable"))]
    pub color: Color,
    #[schemars(length(max = 12), regex(pattern = r"^[a-z]+$"))]
    pub label: String,
    #[serde(default = "default_replicas")]
    pub replicas: i32,
    pub max_replicas: i32,
    #[serde(default)]
    #[schemars(length(max = 2))]
    pub tags: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WidgetStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<WidgetCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct WidgetCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
}

/// A cluster-scoped CRD, as keyless's `OpenAIAccount` is.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "stand-in.test",
    version = "v1",
    kind = "Gadget",
    status = "WidgetStatus"
)]
pub struct GadgetSpec {
    pub size: i32,
}

fn spec(label: &str) -> WidgetSpec {
    WidgetSpec {
        color: Color::Red,
        label: label.into(),
        replicas: 1,
        max_replicas: 3,
        tags: vec![],
    }
}

fn widget(name: &str) -> Widget {
    Widget::new(name, spec("plain"))
}

fn stand_in() -> ApiServer {
    ApiServer::builder()
        .crds([Widget::crd(), Gadget::crd()])
        .namespace("team-a")
        .issuer("https://issuer.example/team")
        .build()
}

fn widgets(server: &ApiServer) -> Api<Widget> {
    Api::namespaced(server.client(), "team-a")
}

fn api_error(err: kube::Error) -> Box<Status> {
    match err {
        kube::Error::Api(status) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn cm(name: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.into());
    cm
}

/// Waits (bounded) for `check` to hold on the server state.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

// ---- create, get, replace ----

#[tokio::test]
async fn a_created_widget_gets_uid_generation_and_resource_version() {
    let server = stand_in();
    let created = widgets(&server)
        .create(&PostParams::default(), &widget("one"))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(
        created.resource_version(),
        Some(server.resource_version().to_string())
    );
    assert_eq!(
        server
            .get::<Widget>(Some("team-a"), "one")
            .unwrap()
            .metadata,
        created.metadata
    );
}

#[tokio::test]
async fn unknown_fields_are_pruned_and_defaults_applied_on_a_raw_create() {
    let server = stand_in();
    let client = server.client();
    let request = http::Request::post("/apis/stand-in.test/v1/namespaces/team-a/widgets")
        .header("content-type", "application/json")
        .body(
            serde_json::to_vec(&json!({
                "apiVersion": "stand-in.test/v1", "kind": "Widget",
                "metadata": {"name": "raw"},
                "spec": {"color": "Blue", "label": "raw", "maxReplicas": 2, "surprise": true},
                "extra": 1,
            }))
            .unwrap(),
        )
        .unwrap();
    let created: Value = client.request(request).await.unwrap();
    assert_eq!(created["spec"]["replicas"], json!(1));
    assert!(created["spec"].get("surprise").is_none());
    assert!(created.get("extra").is_none());
}

#[tokio::test]
async fn creating_a_widget_twice_is_409_already_exists() {
    let server = stand_in();
    let api = widgets(&server);
    api.create(&PostParams::default(), &widget("dup"))
        .await
        .unwrap();
    let status = api_error(
        api.create(&PostParams::default(), &widget("dup"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );
    assert_eq!(
        status.message,
        "widgets.stand-in.test \"dup\" already exists"
    );
}

#[tokio::test]
async fn getting_a_missing_widget_is_404_not_found() {
    let server = stand_in();
    let status = api_error(widgets(&server).get("nobody").await.unwrap_err());
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.message, "widgets.stand-in.test \"nobody\" not found");
    assert!(widgets(&server).get_opt("nobody").await.unwrap().is_none());
}

#[tokio::test]
async fn creating_in_a_missing_namespace_is_404() {
    let server = stand_in();
    let api: Api<Widget> = Api::namespaced(server.client(), "nowhere");
    let status = api_error(
        api.create(&PostParams::default(), &widget("w"))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 404);
    assert_eq!(status.message, "namespaces \"nowhere\" not found");
}

#[tokio::test]
async fn replacing_with_a_stale_resource_version_is_409_conflict() {
    let server = stand_in();
    let api = widgets(&server);
    let first = api
        .create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    let mut newer = first.clone();
    newer.spec.label = "newer".into();
    api.replace("w", &PostParams::default(), &newer)
        .await
        .unwrap();
    let mut stale = first;
    stale.spec.label = "stale".into();
    let status = api_error(
        api.replace("w", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(status.message.contains("the object has been modified"));
}

#[tokio::test]
async fn replacing_a_custom_resource_without_resource_version_is_422() {
    let server = stand_in();
    let api = widgets(&server);
    let mut w = api
        .create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    w.metadata.resource_version = None;
    let status = api_error(
        api.replace("w", &PostParams::default(), &w)
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 422);
    assert!(status.message.contains("metadata.resourceVersion"));
}

// ---- status subresource and generation ----

#[tokio::test]
async fn spec_writes_leave_status_alone_and_bump_generation() {
    let server = stand_in();
    let api = widgets(&server);
    let mut w = widget("w");
    w.status = Some(WidgetStatus {
        phase: Some("ignored on create".into()),
        ..Default::default()
    });
    let created = api.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(
        created.status, None,
        "create drops the status when there is a status subresource"
    );

    let ready = json!({"status": {"phase": "Ready"}});
    api.patch_status("w", &PatchParams::default(), &Patch::Merge(&ready))
        .await
        .unwrap();
    let spec_and_status = json!({"spec": {"label": "changed"}, "status": {"phase": "Hacked"}});
    let after = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(&spec_and_status),
        )
        .await
        .unwrap();
    assert_eq!(after.spec.label, "changed");
    assert_eq!(
        after.status.unwrap().phase.as_deref(),
        Some("Ready"),
        "a spec write does not touch status"
    );
    assert_eq!(after.metadata.generation, Some(2));
}

#[tokio::test]
async fn status_writes_leave_spec_alone_and_keep_generation() {
    let server = stand_in();
    let api = widgets(&server);
    api.create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    let both = json!({"spec": {"label": "sneaky"}, "status": {"phase": "Ready"}});
    let after = api
        .patch_status("w", &PatchParams::default(), &Patch::Merge(&both))
        .await
        .unwrap();
    assert_eq!(
        after.spec.label, "plain",
        "a status write does not touch spec"
    );
    assert_eq!(after.status.unwrap().phase.as_deref(), Some("Ready"));
    assert_eq!(after.metadata.generation, Some(1));
}

#[tokio::test]
async fn metadata_only_changes_do_not_bump_generation() {
    let server = stand_in();
    let api = widgets(&server);
    api.create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    let labels = json!({"metadata": {"labels": {"team": "a"}}});
    let after = api
        .patch("w", &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .unwrap();
    assert_eq!(after.labels().get("team").map(String::as_str), Some("a"));
    assert_eq!(after.metadata.generation, Some(1));
}

#[tokio::test]
async fn a_write_that_changes_nothing_keeps_the_resource_version() {
    let server = stand_in();
    let api = widgets(&server);
    let created = api
        .create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    let same = json!({"spec": {"label": "plain"}});
    let after = api
        .patch("w", &PatchParams::default(), &Patch::Merge(&same))
        .await
        .unwrap();
    assert_eq!(after.resource_version(), created.resource_version());
}

// ---- validation ----

async fn rejection(server: &ApiServer, spec: Value) -> Box<Status> {
    let request = http::Request::post("/apis/stand-in.test/v1/namespaces/team-a/widgets")
        .header("content-type", "application/json")
        .body(
            serde_json::to_vec(&json!({
                "apiVersion": "stand-in.test/v1", "kind": "Widget", "metadata": {"name": "bad"}, "spec": spec,
            }))
            .unwrap(),
        )
        .unwrap();
    api_error(server.client().request::<Value>(request).await.unwrap_err())
}

fn fields(status: &Status) -> Vec<String> {
    status
        .details
        .as_ref()
        .map(|d| d.causes.iter().map(|c| c.field.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn schema_violations_are_422_naming_each_field() {
    let server = stand_in();
    let status = rejection(
        &server,
        json!({"color": "Green", "label": "Not-Lower-And-Far-Too-Long", "maxReplicas": "three", "tags": ["a", "b", "c"]}),
    )
    .await;
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    let fields = fields(&status);
    for field in ["spec.color", "spec.label", "spec.maxReplicas", "spec.tags"] {
        assert!(
            fields.contains(&field.to_owned()),
            "{field} is named in {fields:?}"
        );
    }
    assert!(
        status
            .message
            .starts_with("Widget.stand-in.test \"bad\" is invalid: [")
    );
    assert!(
        status.message.contains(
            "spec.color: Unsupported value: \"Green\": supported values: \"Red\", \"Blue\""
        )
    );
    assert!(
        status
            .message
            .contains("spec.label: Too long: may not be more than 12 bytes")
    );
    assert!(
        status
            .message
            .contains("spec.label in body should match '^[a-z]+$'")
    );
    assert!(
        status
            .message
            .contains("spec.maxReplicas in body must be of type integer")
    );
    assert!(
        status
            .message
            .contains("spec.tags: Too many: 3: must have at most 2 items")
    );
}

#[tokio::test]
async fn a_missing_required_field_is_422_required_value() {
    let server = stand_in();
    let status = rejection(&server, json!({"color": "Red", "label": "x"})).await;
    assert_eq!(status.code, 422);
    assert!(status.message.starts_with(
        "Widget.stand-in.test \"bad\" is invalid: [spec.maxReplicas: Required value, "
    ));
    assert!(
        status
            .message
            .contains("some validation rules were not checked because the object was invalid"),
        "CEL rules do not run over an object missing a required field: {}",
        status.message
    );
}

#[tokio::test]
async fn a_cel_rule_rejects_with_422_naming_the_field() {
    let server = stand_in();
    let status = rejection(
        &server,
        json!({"color": "Red", "label": "x", "replicas": 5, "maxReplicas": 2}),
    )
    .await;
    assert_eq!(status.code, 422);
    assert_eq!(fields(&status), vec!["spec.replicas".to_owned()]);
    assert!(
        status
            .message
            .contains("replicas must not exceed maxReplicas"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn a_transition_rule_sees_the_old_object_on_update() {
    let server = stand_in();
    let api = widgets(&server);
    api.create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    let repaint = json!({"spec": {"color": "Blue"}});
    let status = api_error(
        api.patch("w", &PatchParams::default(), &Patch::Merge(&repaint))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 422);
    assert_eq!(fields(&status), vec!["spec.color".to_owned()]);
    assert!(status.message.contains("color is immutable"));
}

#[tokio::test]
async fn an_invalid_name_is_422() {
    let server = stand_in();
    let status = api_error(
        widgets(&server)
            .create(&PostParams::default(), &widget("Not_A_Name"))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 422);
    assert_eq!(fields(&status), vec!["metadata.name".to_owned()]);
}

#[tokio::test]
async fn status_writes_succeed_over_a_spec_that_no_longer_validates() {
    let server = stand_in();
    let mut w = widget("old");
    w.metadata.namespace = Some("team-a".into());
    w.spec.replicas = 9; // breaks the replicas <= maxReplicas rule, as if the rule came later
    server.seed(&w);
    let api = widgets(&server);
    let ready = json!({"status": {"phase": "Ready"}});
    api.patch_status("old", &PatchParams::default(), &Patch::Merge(&ready))
        .await
        .unwrap();
    let relabel = json!({"spec": {"label": "touched"}});
    let status = api_error(
        api.patch("old", &PatchParams::default(), &Patch::Merge(&relabel))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 422, "a spec write is held to the rules again");
}

// ---- patches ----

#[tokio::test]
async fn a_json_patch_applies_and_a_failed_test_op_is_422() {
    let server = stand_in();
    let api = widgets(&server);
    api.create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    let ok: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/label", "value": "plain"},
        {"op": "replace", "path": "/spec/label", "value": "patched"},
    ]))
    .unwrap();
    let after = api
        .patch("w", &PatchParams::default(), &Patch::Json::<()>(ok))
        .await
        .unwrap();
    assert_eq!(after.spec.label, "patched");

    let failing: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/label", "value": "plain"},
        {"op": "replace", "path": "/spec/label", "value": "never"},
    ]))
    .unwrap();
    let status = api_error(
        api.patch("w", &PatchParams::default(), &Patch::Json::<()>(failing))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 422);
    assert_eq!(
        server
            .get::<Widget>(Some("team-a"), "w")
            .unwrap()
            .spec
            .label,
        "patched"
    );
}

#[tokio::test]
async fn a_merge_patch_carrying_a_stale_resource_version_is_409() {
    let server = stand_in();
    let api = widgets(&server);
    api.create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    let stale = json!({"metadata": {"resourceVersion": "1"}, "spec": {"label": "x"}});
    let status = api_error(
        api.patch("w", &PatchParams::default(), &Patch::Merge(&stale))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 409);
}

#[tokio::test]
async fn patching_a_missing_object_is_404() {
    let server = stand_in();
    let patch = json!({"spec": {"label": "x"}});
    let status = api_error(
        widgets(&server)
            .patch("ghost", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 404);
}

fn status_apply(conditions: Value) -> Patch<Value> {
    Patch::Apply(
        json!({"apiVersion": "stand-in.test/v1", "kind": "Widget", "status": {"conditions": conditions}}),
    )
}

#[tokio::test]
async fn server_side_apply_of_status_replaces_the_conditions_as_a_whole() {
    let server = stand_in();
    let api = widgets(&server);
    api.create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    let pp = PatchParams::apply("widget-controller").force();
    let two = json!([{"type": "Ready", "status": "False"}, {"type": "Synced", "status": "True"}]);
    api.patch_status("w", &pp, &status_apply(two))
        .await
        .unwrap();
    let one = json!([{"type": "Ready", "status": "True"}]);
    let after = api
        .patch_status("w", &pp, &status_apply(one))
        .await
        .unwrap();
    let conditions = after.status.unwrap().conditions;
    assert_eq!(
        conditions,
        vec![WidgetCondition {
            type_: "Ready".into(),
            status: "True".into()
        }]
    );
    assert_eq!(after.metadata.generation, Some(1));

    let stored = server.get_value::<Widget>(Some("team-a"), "w").unwrap();
    let entries = stored["metadata"]["managedFields"].as_array().unwrap();
    let status_entry = entries
        .iter()
        .find(|e| e["manager"] == "widget-controller")
        .unwrap();
    assert_eq!(status_entry["operation"], "Apply");
    assert_eq!(status_entry["subresource"], "status");
    assert_eq!(
        status_entry["fieldsV1"],
        json!({"f:status": {"f:conditions": {}}})
    );
}

#[tokio::test]
async fn server_side_apply_drops_fields_the_manager_stops_applying() {
    let server = stand_in();
    let api = widgets(&server);
    api.create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    let pp = PatchParams::apply("widget-controller").force();
    let with_phase = Patch::Apply(
        json!({"apiVersion": "stand-in.test/v1", "kind": "Widget", "status": {"phase": "Ready", "observedGeneration": 1}}),
    );
    api.patch_status("w", &pp, &with_phase).await.unwrap();
    let without_phase = Patch::Apply(
        json!({"apiVersion": "stand-in.test/v1", "kind": "Widget", "status": {"observedGeneration": 1}}),
    );
    let after = api.patch_status("w", &pp, &without_phase).await.unwrap();
    assert_eq!(
        after.status.unwrap(),
        WidgetStatus {
            observed_generation: Some(1),
            ..Default::default()
        }
    );
}

#[tokio::test]
async fn server_side_apply_conflicts_with_another_manager_unless_forced() {
    let server = stand_in();
    let api = widgets(&server);
    api.create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    let phase = |p: &str| {
        Patch::Apply(
            json!({"apiVersion": "stand-in.test/v1", "kind": "Widget", "status": {"phase": p}}),
        )
    };
    api.patch_status("w", &PatchParams::apply("first"), &phase("A"))
        .await
        .unwrap();
    let status = api_error(
        api.patch_status("w", &PatchParams::apply("second"), &phase("B"))
            .await
            .unwrap_err(),
    );
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(
        status
            .message
            .contains("conflict with \"first\": .status.phase"),
        "{}",
        status.message
    );
    let forced = api
        .patch_status("w", &PatchParams::apply("second").force(), &phase("B"))
        .await
        .unwrap();
    assert_eq!(forced.status.unwrap().phase.as_deref(), Some("B"));
}

#[tokio::test]
async fn server_side_apply_creates_a_missing_object() {
    let server = stand_in();
    let api = widgets(&server);
    let applied = api
        .patch(
            "new",
            &PatchParams::apply("keyless"),
            &Patch::Apply(widget("new")),
        )
        .await
        .unwrap();
    assert_eq!(applied.metadata.generation, Some(1));
    assert!(server.get::<Widget>(Some("team-a"), "new").is_some());
}

// ---- deletion ----

#[tokio::test]
async fn deleting_a_widget_with_a_finalizer_keeps_it_until_the_finalizer_is_removed() {
    let server = stand_in();
    let api = widgets(&server);
    let mut w = widget("w");
    w.metadata.finalizers = Some(vec!["stand-in.test/cleanup".into()]);
    api.create(&PostParams::default(), &w).await.unwrap();

    let deleted = api.delete("w", &DeleteParams::default()).await.unwrap();
    let marked = deleted
        .left()
        .expect("the object is returned while finalizers remain");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(
        marked.metadata.generation,
        Some(2),
        "marking for deletion bumps generation"
    );

    let add =
        json!({"metadata": {"finalizers": ["stand-in.test/cleanup", "stand-in.test/another"]}});
    let status = api_error(
        api.patch("w", &PatchParams::default(), &Patch::Merge(&add))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 422, "no new finalizers while deleting");

    let clear = json!({"metadata": {"finalizers": null}});
    api.patch("w", &PatchParams::default(), &Patch::Merge(&clear))
        .await
        .unwrap();
    assert!(server.get::<Widget>(Some("team-a"), "w").is_none());
}

#[tokio::test]
async fn deleting_an_owner_deletes_its_dependents() {
    let server = stand_in();
    let owner = widgets(&server)
        .create(&PostParams::default(), &widget("owner"))
        .await
        .unwrap();
    let mut dependent = cm("owned");
    dependent.metadata.owner_references = Some(vec![owner.controller_owner_ref(&()).unwrap()]);
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "team-a");
    cms.create(&PostParams::default(), &dependent)
        .await
        .unwrap();
    widgets(&server)
        .delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    assert!(server.get::<ConfigMap>(Some("team-a"), "owned").is_none());
}

#[tokio::test]
async fn orphan_propagation_keeps_dependents_and_clears_their_owner_references() {
    let server = stand_in();
    let owner = widgets(&server)
        .create(&PostParams::default(), &widget("owner"))
        .await
        .unwrap();
    let mut dependent = cm("owned");
    dependent.metadata.owner_references = Some(vec![owner.controller_owner_ref(&()).unwrap()]);
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "team-a");
    cms.create(&PostParams::default(), &dependent)
        .await
        .unwrap();
    widgets(&server)
        .delete("owner", &DeleteParams::orphan())
        .await
        .unwrap();
    assert!(server.get::<Widget>(Some("team-a"), "owner").is_none());
    let kept = server.get::<ConfigMap>(Some("team-a"), "owned").unwrap();
    assert_eq!(kept.metadata.owner_references.unwrap_or_default(), vec![]);
}

#[tokio::test]
async fn a_delete_with_a_stale_precondition_is_409() {
    let server = stand_in();
    widgets(&server)
        .create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: Some("1".into()),
            uid: None,
        }),
        ..Default::default()
    };
    let status = api_error(widgets(&server).delete("w", &dp).await.unwrap_err());
    assert_eq!(status.code, 409);
}

#[tokio::test]
async fn deleting_a_namespace_deletes_what_is_in_it() {
    let server = stand_in();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "team-a");
    cms.create(&PostParams::default(), &cm("settings"))
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(server.client());
    namespaces
        .delete("team-a", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        server
            .get::<ConfigMap>(Some("team-a"), "settings")
            .is_none()
    );
    assert!(server.get::<Namespace>(None, "team-a").is_none());
}

#[tokio::test]
async fn a_cluster_scoped_custom_resource_is_served_without_a_namespace() {
    let server = stand_in();
    let gadgets: Api<Gadget> = Api::all(server.client());
    let created = gadgets
        .create(
            &PostParams::default(),
            &Gadget::new("big", GadgetSpec { size: 3 }),
        )
        .await
        .unwrap();
    assert_eq!(created.metadata.namespace, None);
    assert_eq!(gadgets.get("big").await.unwrap().spec.size, 3);
    assert_eq!(
        server.calls()[0].path,
        "/apis/stand-in.test/v1/gadgets",
        "no namespace in the path"
    );
    assert!(server.get::<Gadget>(None, "big").is_some());
}

#[tokio::test]
async fn a_status_subresource_that_does_not_exist_is_404() {
    let server = stand_in();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "team-a");
    cms.create(&PostParams::default(), &cm("c")).await.unwrap();
    let patch = json!({"status": {}});
    let status = api_error(
        cms.patch_status("c", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 404);
}

#[tokio::test]
async fn wait_until_wakes_on_changes_made_through_the_api() {
    let server = stand_in();
    let api = widgets(&server);
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        api.create(&PostParams::default(), &widget("later"))
            .await
            .unwrap();
    });
    server
        .wait_until("the widget exists", |s| {
            s.get::<Widget>(Some("team-a"), "later").is_some()
        })
        .await;
    writer.await.unwrap();
}

// ---- list ----

#[tokio::test]
async fn label_and_field_selectors_filter_lists() {
    let server = stand_in();
    let api = widgets(&server);
    for (name, team) in [("a", "red"), ("b", "blue"), ("c", "red")] {
        let mut w = widget(name);
        w.metadata.labels = Some([("team".to_owned(), team.to_owned())].into());
        api.create(&PostParams::default(), &w).await.unwrap();
    }
    let names = |list: kube::core::ObjectList<Widget>| {
        list.items.iter().map(|w| w.name_any()).collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("team=red"))
                .await
                .unwrap()
        ),
        ["a", "c"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("team in (blue)"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("team!=red"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().fields("metadata.name=c"))
                .await
                .unwrap()
        ),
        ["c"]
    );
    let all: Api<Widget> = Api::all(server.client());
    assert_eq!(
        names(
            all.list(&ListParams::default().fields("metadata.namespace=team-a"))
                .await
                .unwrap()
        )
        .len(),
        3
    );
}

#[tokio::test]
async fn lists_page_with_limit_and_continue() {
    let server = stand_in();
    let api = widgets(&server);
    for name in ["a", "b", "c"] {
        api.create(&PostParams::default(), &widget(name))
            .await
            .unwrap();
    }
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().unwrap();
    let rest = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(
        rest.items.iter().map(|w| w.name_any()).collect::<Vec<_>>(),
        ["c"]
    );
    assert!(rest.metadata.continue_.is_none());
}

// ---- watch ----

async fn next_event(
    stream: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<Widget>>> + Unpin),
) -> WatchEvent<Widget> {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event in time")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_watch_resumes_after_the_given_resource_version() {
    let server = stand_in();
    let api = widgets(&server);
    let a = api
        .create(&PostParams::default(), &widget("a"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &widget("b"))
        .await
        .unwrap();
    let mut stream = api
        .watch(&WatchParams::default(), &a.resource_version().unwrap())
        .await
        .unwrap()
        .boxed();
    match next_event(&mut stream).await {
        WatchEvent::Added(w) => assert_eq!(w.name_any(), "b"),
        other => panic!("expected b to be added, got {other:?}"),
    }
    let relabel = json!({"spec": {"label": "live"}});
    api.patch("a", &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .unwrap();
    match next_event(&mut stream).await {
        WatchEvent::Modified(w) => assert_eq!(w.spec.label, "live"),
        other => panic!("expected a to be modified, got {other:?}"),
    }
    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(matches!(next_event(&mut stream).await, WatchEvent::Deleted(w) if w.name_any() == "a"));
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_gets_410_gone() {
    let server = stand_in();
    let api = widgets(&server);
    let a = api
        .create(&PostParams::default(), &widget("a"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &widget("b"))
        .await
        .unwrap();
    server.compact();
    let mut stream = api
        .watch(&WatchParams::default(), &a.resource_version().unwrap())
        .await
        .unwrap()
        .boxed();
    match next_event(&mut stream).await {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}

#[tokio::test]
async fn the_bounded_history_forgets_old_versions() {
    let server = ApiServer::builder()
        .crd(Widget::crd())
        .namespace("team-a")
        .history_limit(2)
        .build();
    let api = widgets(&server);
    let a = api
        .create(&PostParams::default(), &widget("a"))
        .await
        .unwrap();
    for name in ["b", "c", "d"] {
        api.create(&PostParams::default(), &widget(name))
            .await
            .unwrap();
    }
    let mut stream = api
        .watch(&WatchParams::default(), &a.resource_version().unwrap())
        .await
        .unwrap()
        .boxed();
    assert!(
        matches!(next_event(&mut stream).await, WatchEvent::Error(status) if status.code == 410)
    );
}

#[tokio::test]
async fn bookmarks_reach_watches_that_allow_them() {
    let server = stand_in();
    let api = widgets(&server);
    let rv = server.resource_version().to_string();
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    eventually("the watch is open", || server.open_watches("widgets") == 1).await;
    server.send_bookmarks();
    assert!(
        matches!(next_event(&mut stream).await, WatchEvent::Bookmark(b) if b.metadata.resource_version == rv)
    );
}

/// Runs a watcher in the background, recording the names of applied objects. Errors (a dropped or
/// expired watch) are what the watcher recovers from, so they are skipped, not fatal.
fn record_applied(api: Api<Widget>) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let recorder = seen.clone();
    let task = tokio::spawn(
        watcher(api, watcher::Config::default())
            .applied_objects()
            .for_each(move |w| {
                if let Ok(w) = w {
                    recorder.lock().unwrap().push(w.name_any());
                }
                async {}
            }),
    );
    (seen, task)
}

#[tokio::test]
async fn a_watcher_recovers_from_dropped_watches_and_410() {
    let server = stand_in();
    let api = widgets(&server);
    api.create(&PostParams::default(), &widget("before"))
        .await
        .unwrap();
    let (seen, task) = record_applied(api.clone());
    eventually("the first object is seen", || {
        seen.lock().unwrap().contains(&"before".to_owned())
    })
    .await;
    eventually("the watch is open", || server.open_watches("widgets") == 1).await;

    server.drop_watches();
    api.create(&PostParams::default(), &widget("after-drop"))
        .await
        .unwrap();
    eventually("an object created across a dropped watch is seen", || {
        seen.lock().unwrap().contains(&"after-drop".to_owned())
    })
    .await;
    assert_eq!(
        server.calls_to(Verb::List, "widgets").len(),
        1,
        "a dropped watch resumes without a relist"
    );

    eventually("the watch is open again", || {
        server.open_watches("widgets") == 1
    })
    .await;
    server.inject(Fault::on(Verb::Watch).resource("widgets").gone());
    server.drop_watches();
    eventually("the watcher relists after 410", || {
        server.calls_to(Verb::List, "widgets").len() == 2
    })
    .await;
    api.create(&PostParams::default(), &widget("after-410"))
        .await
        .unwrap();
    eventually("an object created after a 410 is seen", || {
        seen.lock().unwrap().contains(&"after-410".to_owned())
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn a_streaming_list_watcher_gets_its_initial_events() {
    let server = stand_in();
    let api = widgets(&server);
    api.create(&PostParams::default(), &widget("a"))
        .await
        .unwrap();
    let mut events = watcher(api, watcher::Config::default().streaming_lists()).boxed();
    let mut names = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::InitApply(w) => names.push(w.name_any()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(names, ["a"]);
    let watch = &server.calls_to(Verb::Watch, "widgets")[0];
    assert_eq!(watch.param("sendInitialEvents"), Some("true"));
}

#[tokio::test]
async fn a_selector_watch_sees_objects_enter_and_leave_the_selection() {
    let server = stand_in();
    let api = widgets(&server);
    let rv = server.resource_version().to_string();
    let params = WatchParams::default().labels("team=red");
    let mut stream = api.watch(&params, &rv).await.unwrap().boxed();
    api.create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    let label = |team: &str| json!({"metadata": {"labels": {"team": team}}});
    api.patch("w", &PatchParams::default(), &Patch::Merge(&label("red")))
        .await
        .unwrap();
    assert!(
        matches!(next_event(&mut stream).await, WatchEvent::Added(w) if w.name_any() == "w"),
        "the unlabelled create is not seen; the relabel into the selection is an ADDED"
    );
    api.patch("w", &PatchParams::default(), &Patch::Merge(&label("blue")))
        .await
        .unwrap();
    assert!(matches!(next_event(&mut stream).await, WatchEvent::Deleted(w) if w.name_any() == "w"));
}

// ---- the runtime on top ----

#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Reconciled { name: String, generation: i64 },
    Cleanup(String),
}

#[tokio::test]
async fn a_controller_reconciles_on_create_and_on_spec_update() {
    let server = stand_in();
    let api = widgets(&server);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let controller = Controller::new(
        Api::<Widget>::all(server.client()),
        watcher::Config::default(),
    )
    .run(
        |w: Arc<Widget>, tx: Arc<tokio::sync::mpsc::UnboundedSender<Seen>>| async move {
            tx.send(Seen::Reconciled {
                name: w.name_any(),
                generation: w.metadata.generation.unwrap_or(0),
            })
            .unwrap();
            Ok::<_, kube::Error>(Action::await_change())
        },
        |_, _, _| Action::requeue(Duration::from_secs(60)),
        Arc::new(tx),
    )
    .for_each(|_| async {});
    let task = tokio::spawn(controller);
    let next = async |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>| {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a reconcile in time")
            .unwrap()
    };

    api.create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        Seen::Reconciled {
            name: "w".into(),
            generation: 1
        }
    );
    let relabel = json!({"spec": {"label": "again"}});
    api.patch("w", &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        Seen::Reconciled {
            name: "w".into(),
            generation: 2
        }
    );
    task.abort();
}

#[tokio::test]
async fn a_controller_reconciles_the_owner_when_an_owned_object_changes() {
    let server = stand_in();
    let api = widgets(&server);
    let owner = api
        .create(&PostParams::default(), &widget("owner"))
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let controller = Controller::new(
        Api::<Widget>::all(server.client()),
        watcher::Config::default(),
    )
    .owns(
        Api::<ConfigMap>::all(server.client()),
        watcher::Config::default(),
    )
    .run(
        |w: Arc<Widget>, tx: Arc<tokio::sync::mpsc::UnboundedSender<String>>| async move {
            tx.send(w.name_any()).unwrap();
            Ok::<_, kube::Error>(Action::await_change())
        },
        |_, _, _| Action::requeue(Duration::from_secs(60)),
        Arc::new(tx),
    )
    .for_each(|_| async {});
    let task = tokio::spawn(controller);
    let next = async |rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>| {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a reconcile in time")
            .unwrap()
    };
    assert_eq!(next(&mut rx).await, "owner");

    let mut owned = cm("owned");
    owned.metadata.owner_references = Some(vec![owner.controller_owner_ref(&()).unwrap()]);
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "team-a");
    cms.create(&PostParams::default(), &owned).await.unwrap();
    assert_eq!(
        next(&mut rx).await,
        "owner",
        "creating an owned object reconciles the owner"
    );
    task.abort();
}

#[tokio::test]
async fn the_finalizer_helper_adds_its_finalizer_and_cleans_up_on_delete() {
    let server = stand_in();
    let api = widgets(&server);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    struct Ctx {
        client: kube::Client,
        tx: tokio::sync::mpsc::UnboundedSender<Seen>,
    }
    let ctx = Arc::new(Ctx {
        client: server.client(),
        tx,
    });
    let controller = Controller::new(
        Api::<Widget>::all(server.client()),
        watcher::Config::default(),
    )
    .run(
        |w: Arc<Widget>, ctx: Arc<Ctx>| async move {
            let api: Api<Widget> = Api::namespaced(ctx.client.clone(), &w.namespace().unwrap());
            finalizer(&api, "stand-in.test/cleanup", w, |event| async {
                match event {
                    FinalizerEvent::Apply(w) => {
                        ctx.tx
                            .send(Seen::Reconciled {
                                name: w.name_any(),
                                generation: w.metadata.generation.unwrap_or(0),
                            })
                            .unwrap();
                    }
                    FinalizerEvent::Cleanup(w) => ctx.tx.send(Seen::Cleanup(w.name_any())).unwrap(),
                }
                Ok::<_, kube::Error>(Action::await_change())
            })
            .await
        },
        |_, _, _| Action::requeue(Duration::from_millis(50)),
        ctx,
    )
    .for_each(|_| async {});
    let task = tokio::spawn(controller);
    let next = async |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>| {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a reconcile in time")
            .unwrap()
    };

    api.create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        Seen::Reconciled {
            name: "w".into(),
            generation: 1
        }
    );
    let stored = server.get::<Widget>(Some("team-a"), "w").unwrap();
    assert_eq!(stored.finalizers(), ["stand-in.test/cleanup"]);
    let finalizer_patch = server.calls_to(Verb::Patch, "widgets")[0].clone();
    assert_eq!(
        finalizer_patch.content_type.as_deref(),
        Some("application/json-patch+json")
    );

    api.delete("w", &DeleteParams::default()).await.unwrap();
    assert_eq!(next(&mut rx).await, Seen::Cleanup("w".into()));
    eventually("the widget is gone once its finalizer is removed", || {
        server.get::<Widget>(Some("team-a"), "w").is_none()
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn await_condition_returns_once_the_status_says_ready() {
    let server = stand_in();
    let api = widgets(&server);
    api.create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    let is_ready = |w: Option<&Widget>| {
        w.and_then(|w| w.status.as_ref()).is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    };
    let waiting = tokio::spawn(await_condition(api.clone(), "w", is_ready));
    eventually("the wait is watching", || {
        server.open_watches("widgets") == 1
    })
    .await;
    assert!(!waiting.is_finished());
    let ready = json!([{"type": "Ready", "status": "True"}]);
    api.patch_status(
        "w",
        &PatchParams::apply("widget-controller"),
        &status_apply(ready),
    )
    .await
    .unwrap();
    let found = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(found.unwrap().name_any(), "w");
}

// ---- faults and the call log ----

#[tokio::test]
async fn an_injected_500_fails_the_next_status_patch_only() {
    let server = stand_in();
    let api = widgets(&server);
    api.create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    server.inject(
        Fault::on(Verb::Patch)
            .resource("Widget")
            .subresource("status")
            .respond(500),
    );
    let ready = json!({"status": {"phase": "Ready"}});
    let status = api_error(
        api.patch_status("w", &PatchParams::default(), &Patch::Merge(&ready))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (500, "InternalError")
    );
    api.patch_status("w", &PatchParams::default(), &Patch::Merge(&ready))
        .await
        .unwrap();
    let statuses: Vec<u16> = server
        .calls_to(Verb::Patch, "widgets")
        .iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(statuses, [500, 200]);
}

#[tokio::test]
async fn a_watch_that_drops_after_one_event_is_rewatched_by_the_watcher() {
    let server = stand_in();
    let api = widgets(&server);
    server.inject(
        Fault::on(Verb::Watch)
            .resource("widgets")
            .end_watch_after(1),
    );
    let (seen, task) = record_applied(api.clone());
    eventually("the watch is open", || {
        !server.calls_to(Verb::Watch, "widgets").is_empty()
    })
    .await;
    api.create(&PostParams::default(), &widget("one"))
        .await
        .unwrap();
    eventually("the second watch is open", || {
        server.calls_to(Verb::Watch, "widgets").len() == 2
    })
    .await;
    api.create(&PostParams::default(), &widget("two"))
        .await
        .unwrap();
    eventually("both objects are seen", || {
        *seen.lock().unwrap() == ["one", "two"]
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn the_call_log_records_method_path_query_and_content_type() {
    let server = stand_in();
    let api = widgets(&server);
    api.create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    api.patch_status(
        "w",
        &PatchParams::apply("mgr").force(),
        &status_apply(json!([])),
    )
    .await
    .unwrap();
    let calls = server.calls();
    assert_eq!(calls[0].method, http::Method::POST);
    assert_eq!(
        calls[0].path,
        "/apis/stand-in.test/v1/namespaces/team-a/widgets"
    );
    let apply = &calls[1];
    assert_eq!(apply.verb, Some(Verb::Patch));
    assert_eq!(apply.subresource.as_deref(), Some("status"));
    assert_eq!(
        apply.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(apply.param("fieldManager"), Some("mgr"));
    assert_eq!(apply.param("force"), Some("true"));
}

// ---- seeding and built-ins ----

#[tokio::test]
async fn seeded_objects_keep_their_status_and_are_served() {
    let server = stand_in();
    let mut w = widget("seeded");
    w.metadata.namespace = Some("team-a".into());
    w.status = Some(WidgetStatus {
        phase: Some("Ready".into()),
        ..Default::default()
    });
    server.seed(&w);
    let got = widgets(&server).get("seeded").await.unwrap();
    assert_eq!(got.status.unwrap().phase.as_deref(), Some("Ready"));
    assert!(
        server.modify::<Widget>(Some("team-a"), "seeded", |w| w.spec.label =
            "modified".into())
    );
    assert_eq!(
        widgets(&server).get("seeded").await.unwrap().spec.label,
        "modified"
    );
}

#[tokio::test]
async fn leases_use_optimistic_concurrency_like_leader_election_expects() {
    let server = stand_in();
    let leases: Api<Lease> = Api::namespaced(server.client(), "kube-system");
    let mut lease = Lease::default();
    lease.metadata.name = Some("keyless-leader".into());
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut mine = created.clone();
    mine.spec = Some(k8s_openapi::api::coordination::v1::LeaseSpec {
        holder_identity: Some("me".into()),
        ..Default::default()
    });
    leases
        .replace("keyless-leader", &PostParams::default(), &mine)
        .await
        .unwrap();
    let mut theirs = created;
    theirs.spec = Some(k8s_openapi::api::coordination::v1::LeaseSpec {
        holder_identity: Some("them".into()),
        ..Default::default()
    });
    let status = api_error(
        leases
            .replace("keyless-leader", &PostParams::default(), &theirs)
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 409);
}

#[tokio::test]
async fn the_event_recorder_creates_then_patches_a_series() {
    let server = stand_in();
    let w = widgets(&server)
        .create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    let recorder = kube::runtime::events::Recorder::new(server.client(), "keyless".into());
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Normal,
        reason: "Granted".into(),
        note: Some("role assigned".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    recorder.publish(&event, &w.object_ref(&())).await.unwrap();
    recorder.publish(&event, &w.object_ref(&())).await.unwrap();
    let events = server.events_about("Widget", "w");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].series.as_ref().map(|s| s.count), Some(2));
    assert_eq!(events[0].reason.as_deref(), Some("Granted"));
}

#[tokio::test]
async fn service_accounts_and_config_maps_are_served_and_normalised() {
    let server = stand_in();
    let sas: Api<ServiceAccount> = Api::namespaced(server.client(), "team-a");
    let mut sa = ServiceAccount::default();
    sa.metadata.name = Some("app".into());
    sa.metadata.annotations = Some(
        [(
            "azure.workload.identity/client-id".to_owned(),
            "abc".to_owned(),
        )]
        .into(),
    );
    sas.create(&PostParams::default(), &sa).await.unwrap();
    assert_eq!(
        sas.get("app")
            .await
            .unwrap()
            .annotations()
            .get("azure.workload.identity/client-id")
            .map(String::as_str),
        Some("abc")
    );

    let request = http::Request::post("/api/v1/namespaces/team-a/configmaps")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": 1}})).unwrap())
        .unwrap();
    let status = api_error(server.client().request::<Value>(request).await.unwrap_err());
    assert_eq!(status.code, 400, "a body of the wrong shape is refused");
}

#[tokio::test]
async fn a_strategic_merge_patch_is_accepted_as_a_merge_patch() {
    let server = stand_in();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "team-a");
    cms.create(&PostParams::default(), &cm("c")).await.unwrap();
    let patch = json!({"data": {"k": "v"}});
    let after = cms
        .patch("c", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    assert_eq!(after.data.unwrap()["k"], "v");
}

#[tokio::test]
async fn a_dry_run_create_stores_nothing() {
    let server = stand_in();
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let answered = widgets(&server).create(&pp, &widget("w")).await.unwrap();
    assert_eq!(answered.name_any(), "w");
    assert!(server.get::<Widget>(Some("team-a"), "w").is_none());
}

#[tokio::test]
async fn metadata_only_requests_get_partial_object_metadata() {
    let server = stand_in();
    widgets(&server)
        .create(&PostParams::default(), &widget("w"))
        .await
        .unwrap();
    let list = widgets(&server)
        .list_metadata(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(list.items[0].metadata.name.as_deref(), Some("w"));
}

// ---- discovery ----

#[tokio::test]
async fn discovery_finds_the_custom_and_built_in_resources() {
    let server = stand_in();
    for discovery in [
        kube::Discovery::new(server.client()).run().await.unwrap(),
        kube::Discovery::new(server.client())
            .run_aggregated()
            .await
            .unwrap(),
    ] {
        let gvk = kube::core::GroupVersionKind::gvk("stand-in.test", "v1", "Widget");
        let (resource, caps) = discovery.resolve_gvk(&gvk).expect("Widget is discovered");
        assert_eq!(resource.plural, "widgets");
        assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
        assert!(
            discovery
                .resolve_gvk(&kube::core::GroupVersionKind::gvk(
                    "coordination.k8s.io",
                    "v1",
                    "Lease"
                ))
                .is_some()
        );
        assert!(
            discovery
                .resolve_gvk(&kube::core::GroupVersionKind::gvk("", "v1", "ConfigMap"))
                .is_some()
        );
    }
    let version = server.client().apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
}

#[tokio::test]
async fn the_openid_configuration_announces_the_configured_issuer() {
    let server = stand_in();
    let request = http::Request::get("/.well-known/openid-configuration")
        .body(vec![])
        .unwrap();
    let config: Value = server.client().request(request).await.unwrap();
    assert_eq!(config["issuer"], "https://issuer.example/team");
    assert_eq!(
        config["jwks_uri"],
        "https://issuer.example/team/openid/v1/jwks"
    );
}

#[tokio::test]
async fn the_crd_objects_are_listed() {
    let server = stand_in();
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(server.client());
    let names: Vec<String> = crds
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert_eq!(names, ["gadgets.stand-in.test", "widgets.stand-in.test"]);
}
