//! The Kubernetes writes the controller makes: finalizers (JSON patch with a `test` guard, so a
//! stale view never clobbers another writer), status by server-side apply with one field manager,
//! written only when it changed, and Events.

use super::events::EventRecorder;
use crate::api::{
    CLEANUP_FINALIZER, OpenAIAccess, OpenAIAccessStatus, OpenAIAccount, OpenAIAccountStatus,
};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;

/// The field manager of every keyless write.
pub const FIELD_MANAGER: &str = "keyless";

#[derive(Debug, thiserror::Error)]
pub enum KubeWriteError {
    #[error("patch finalizers of {kind} {name}")]
    Finalizer {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("apply status of {kind} {name}")]
    Status {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl KubeWriteError {
    /// A 409 or 422 on a guarded patch means our view was stale: retry soon, not an error to report.
    pub fn is_conflict(&self) -> bool {
        let source = match self {
            KubeWriteError::Finalizer { source, .. } | KubeWriteError::Status { source, .. } => {
                source
            }
        };
        matches!(source, kube::Error::Api(status) if status.code == 409 || status.code == 422)
    }
}

fn finalizer_patch<K: Resource>(object: &K, add: bool) -> Option<json_patch::Patch> {
    let finalizers = object.meta().finalizers.clone().unwrap_or_default();
    let has = finalizers.iter().any(|f| f == CLEANUP_FINALIZER);
    let operations: Vec<serde_json::Value> = match (add, has, finalizers.is_empty()) {
        (true, true, _) | (false, false, _) => return None,
        (true, false, true) => vec![
            json!({"op": "test", "path": "/metadata/finalizers", "value": null}),
            json!({"op": "add", "path": "/metadata/finalizers", "value": [CLEANUP_FINALIZER]}),
        ],
        (true, false, false) => vec![
            json!({"op": "test", "path": "/metadata/finalizers", "value": finalizers}),
            json!({"op": "add", "path": "/metadata/finalizers/-", "value": CLEANUP_FINALIZER}),
        ],
        (false, true, _) => {
            let index = finalizers
                .iter()
                .position(|f| f == CLEANUP_FINALIZER)
                .unwrap_or_default();
            vec![
                json!({"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": CLEANUP_FINALIZER}),
                json!({"op": "remove", "path": format!("/metadata/finalizers/{index}")}),
            ]
        }
    };
    serde_json::from_value(serde_json::Value::Array(operations)).ok()
}

/// Adds (or removes) keyless's finalizer; a no-op when already so.
pub async fn set_finalizer<K>(api: &Api<K>, object: &K, present: bool) -> Result<(), KubeWriteError>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(patch) = finalizer_patch(object, present) else {
        return Ok(());
    };
    api.patch(
        &object.name_any(),
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| KubeWriteError::Finalizer {
        kind: kind_of::<K>(),
        name: object.name_any(),
        source,
    })
}

// Error messages name the kind; a bounded, static name keeps them usable as log fields.
fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    if K::kind(&()) == "OpenAIAccount" {
        "OpenAIAccount"
    } else {
        "OpenAIAccess"
    }
}

/// Applies a status by server-side apply (field manager `keyless`) if it differs from the one
/// the object carries: an unchanged status is never written, so it never re-triggers watches.
async fn apply_status<K, S>(
    api: &Api<K>,
    name: &str,
    current: Option<&S>,
    status: &S,
) -> Result<bool, KubeWriteError>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize + PartialEq,
{
    // Compared as written: Kubernetes times serialize to whole seconds, so a status computed with
    // sub-second times (ARM's createdOn, the clock) equals the stored one once serialized, and an
    // unchanged status sends no PATCH.
    if current == Some(status)
        || current
            .is_some_and(|c| serde_json::to_value(c).ok() == serde_json::to_value(status).ok())
    {
        return Ok(false);
    }
    let body = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map(|_| true)
    .map_err(|source| KubeWriteError::Status {
        kind: kind_of::<K>(),
        name: name.to_string(),
        source,
    })
}

/// Applies an OpenAIAccess status if it changed.
pub async fn apply_access_status(
    api: &Api<OpenAIAccess>,
    name: &str,
    current: Option<&OpenAIAccessStatus>,
    status: &OpenAIAccessStatus,
) -> Result<bool, KubeWriteError> {
    apply_status(api, name, current, status).await
}

/// Applies an OpenAIAccount status if it changed.
pub async fn apply_account_status(
    api: &Api<OpenAIAccount>,
    name: &str,
    current: Option<&OpenAIAccountStatus>,
    status: &OpenAIAccountStatus,
) -> Result<bool, KubeWriteError> {
    apply_status(api, name, current, status).await
}

/// The field manager of the conditions keyless writes on an object it cannot read.
pub const STALLED_FIELD_MANAGER: &str = "keyless-stalled";

/// Writes only `status.conditions` (and `observedGeneration`) by JSON merge patch under a second
/// field manager: the rest of the status — above all `principals[]`, which tells which grants the
/// object holds — stays as it is. (A server-side apply of the conditions alone under `keyless`
/// would remove every other status field that manager owns.)
pub async fn patch_conditions_only(
    api: &Api<crate::controller::lenient::LenientAccess>,
    name: &str,
    generation: Option<i64>,
    conditions: &[crate::api::common::Condition],
) -> Result<(), KubeWriteError> {
    let mut status = json!({ "conditions": conditions });
    if let Some(generation) = generation {
        status["observedGeneration"] = json!(generation);
    }
    api.patch_status(
        name,
        &PatchParams {
            field_manager: Some(STALLED_FIELD_MANAGER.into()),
            ..PatchParams::default()
        },
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map(|_| ())
    .map_err(|source| KubeWriteError::Status {
        kind: "OpenAIAccess",
        name: name.to_string(),
        source,
    })
}

/// Publishes an Event; failures are logged, never fatal (events are best effort).
pub async fn publish(
    recorder: &EventRecorder,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    warning: bool,
    reason: &str,
    action: &str,
    note: String,
) {
    let mut note = note;
    if note.len() > 1000 {
        let mut cut = 1000;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, reference).await {
        tracing::warn!(%error, reason, "could not publish event");
    }
}

#[cfg(test)]
mod tests {
    //! kube's mock-service pattern: each test scripts the apiserver's side and asserts the method,
    //! path, parsed query and body keyless sends.
    use super::*;
    use crate::api::{AccountRef, OpenAIAccessSpec, RoleName};
    use http::{Request, Response};
    use kube::Client;
    use kube::client::Body;
    use std::collections::BTreeMap;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn mock() -> (Client, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), handle)
    }

    fn access(finalizers: Option<Vec<&str>>) -> OpenAIAccess {
        let mut access = OpenAIAccess::new(
            "chat",
            OpenAIAccessSpec {
                account_ref: AccountRef {
                    name: "prod".into(),
                },
                role: RoleName::OpenAIUser,
                principals: vec![],
                expires_at: None,
                deletion_policy: Default::default(),
                export_to: None,
            },
        );
        access.metadata.namespace = Some("team-a".into());
        access.metadata.finalizers = finalizers.map(|f| f.into_iter().map(String::from).collect());
        access
    }

    fn query(request: &Request<Body>) -> BTreeMap<String, String> {
        url::form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    async fn body(request: Request<Body>) -> serde_json::Value {
        let bytes = request.into_body().collect_bytes().await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn respond_with(object: &impl serde::Serialize) -> Response<Body> {
        Response::builder()
            .body(Body::from(serde_json::to_vec(object).unwrap()))
            .unwrap()
    }

    #[tokio::test]
    async fn adding_the_finalizer_guards_the_patch_with_a_test_of_the_current_list() {
        let (client, mut handle) = mock();
        let api: Api<OpenAIAccess> = Api::namespaced(client, "team-a");
        let object = access(None);
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::PATCH);
            assert_eq!(
                request.uri().path(),
                "/apis/keyless.dev/v1alpha1/namespaces/team-a/openaiaccesses/chat"
            );
            assert_eq!(
                request.headers()["content-type"],
                "application/json-patch+json"
            );
            let patch = body(request).await;
            assert_eq!(
                patch,
                json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": ["keyless.dev/cleanup"]}
                ])
            );
            send.send_response(respond_with(&access(Some(vec![CLEANUP_FINALIZER]))));
        });
        set_finalizer(&api, &object, true).await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn removing_the_finalizer_tests_its_index_and_leaves_others() {
        let (client, mut handle) = mock();
        let api: Api<OpenAIAccess> = Api::namespaced(client, "team-a");
        let object = access(Some(vec!["other.io/keep", CLEANUP_FINALIZER]));
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            let patch = body(request).await;
            assert_eq!(
                patch,
                json!([
                    {"op": "test", "path": "/metadata/finalizers/1", "value": "keyless.dev/cleanup"},
                    {"op": "remove", "path": "/metadata/finalizers/1"}
                ])
            );
            send.send_response(respond_with(&access(Some(vec!["other.io/keep"]))));
        });
        set_finalizer(&api, &object, false).await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_finalizer_already_in_place_costs_no_request() {
        let (client, mut handle) = mock();
        let api: Api<OpenAIAccess> = Api::namespaced(client, "team-a");
        // A request would wait for an answer the mock never gives: the timeout turns that into a
        // failure instead of a hang.
        let quick = std::time::Duration::from_secs(2);
        tokio::time::timeout(
            quick,
            set_finalizer(&api, &access(Some(vec![CLEANUP_FINALIZER])), true),
        )
        .await
        .expect("no request when the finalizer is already there")
        .unwrap();
        tokio::time::timeout(quick, set_finalizer(&api, &access(None), false))
            .await
            .expect("no request when the finalizer is already gone")
            .unwrap();
        drop(api);
        // Every client is gone: the mock sees the end of requests without having received any.
        assert!(handle.next_request().await.is_none());
    }

    #[tokio::test]
    async fn status_is_server_side_applied_by_keyless_only_when_it_changed() {
        let (client, mut handle) = mock();
        let api: Api<OpenAIAccess> = Api::namespaced(client, "team-a");
        let status = OpenAIAccessStatus {
            summary: Some("1/1 granted".into()),
            observed_generation: Some(3),
            ..Default::default()
        };
        // An unchanged status sends nothing (a request would hang on the silent mock: timeout).
        let unchanged = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            apply_access_status(&api, "chat", Some(&status), &status),
        )
        .await
        .expect("no request for an unchanged status");
        assert!(!unchanged.unwrap(), "unchanged: no write");
        let expected = status.clone();
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::PATCH);
            assert_eq!(
                request.uri().path(),
                "/apis/keyless.dev/v1alpha1/namespaces/team-a/openaiaccesses/chat/status"
            );
            let query = query(&request);
            assert_eq!(
                query.get("fieldManager").map(String::as_str),
                Some(FIELD_MANAGER)
            );
            assert_eq!(query.get("force").map(String::as_str), Some("true"));
            assert_eq!(
                request.headers()["content-type"],
                "application/apply-patch+yaml"
            );
            let sent = body(request).await;
            assert_eq!(sent["apiVersion"], "keyless.dev/v1alpha1");
            assert_eq!(sent["kind"], "OpenAIAccess");
            assert_eq!(
                serde_json::from_value::<OpenAIAccessStatus>(sent["status"].clone()).unwrap(),
                expected
            );
            let mut object = access(None);
            object.status = Some(expected);
            send.send_response(respond_with(&object));
        });
        assert!(
            apply_access_status(&api, "chat", None, &status)
                .await
                .unwrap()
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_status_differing_only_below_the_second_is_not_written() {
        let (client, handle) = mock();
        let api: Api<OpenAIAccess> = Api::namespaced(client, "team-a");
        let at = |t: &str| crate::api::common::Time(t.parse().unwrap());
        let principal = |t: &str| crate::api::PrincipalStatus {
            principal: "user:alice@contoso.com".into(),
            granted_at: Some(at(t)),
            ..Default::default()
        };
        let stored = OpenAIAccessStatus {
            principals: vec![principal("2026-11-28T11:00:00Z")],
            ..Default::default()
        };
        let computed = OpenAIAccessStatus {
            principals: vec![principal("2026-11-28T11:00:00.734Z")],
            ..Default::default()
        };
        assert_ne!(stored, computed, "they differ in memory");
        let written = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            apply_access_status(&api, "chat", Some(&stored), &computed),
        )
        .await
        .expect("no request");
        assert!(!written.unwrap());
        drop(api);
        drop(handle);
    }

    #[tokio::test]
    async fn events_are_posted_to_events_k8s_io_about_the_object() {
        let (client, mut handle) = mock();
        let recorder = EventRecorder::new(
            client,
            "keyless",
            Some("pod-1".into()),
            std::time::Duration::from_secs(360),
            16,
        );
        let reference = access(None).object_ref(&());
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::POST);
            assert_eq!(
                request.uri().path(),
                "/apis/events.k8s.io/v1/namespaces/team-a/events"
            );
            let event = body(request).await;
            assert_eq!(event["reason"], "AccessDenied");
            assert_eq!(event["type"], "Warning");
            assert_eq!(event["regarding"]["name"], "chat");
            assert_eq!(event["reportingController"], "keyless");
            send.send_response(respond_with(&event));
        });
        publish(
            &recorder,
            &reference,
            true,
            "AccessDenied",
            "Plan",
            "user:alice: namespace not allowed".into(),
        )
        .await;
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_repeated_event_patches_the_series_of_the_first_and_a_gone_one_is_created_anew() {
        let (client, mut handle) = mock();
        let recorder = EventRecorder::new(
            client,
            "keyless",
            None,
            std::time::Duration::from_secs(360),
            16,
        );
        let reference = access(None).object_ref(&());
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::POST);
            let first = body(request).await;
            let name = first["metadata"]["name"].as_str().unwrap().to_string();
            assert!(name.starts_with("chat."), "{name}");
            send.send_response(respond_with(&first));

            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::PATCH);
            assert_eq!(
                request.uri().path(),
                format!("/apis/events.k8s.io/v1/namespaces/team-a/events/{name}")
            );
            let patch = body(request).await;
            assert_eq!(patch["series"]["count"], 2);
            assert!(patch["series"]["lastObservedTime"].is_string());
            send.send_response(respond_with(&first));

            // The API server expired it: the third is a new Event.
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::PATCH);
            send.send_response(
                Response::builder()
                    .status(404)
                    .body(Body::from(
                        serde_json::to_vec(&json!({"kind": "Status", "apiVersion": "v1",
                            "status": "Failure", "reason": "NotFound", "code": 404,
                            "message": "not found"}))
                        .unwrap(),
                    ))
                    .unwrap(),
            );
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::POST);
            let third = body(request).await;
            assert_eq!(third["reason"], "RoleAssignmentCreated");
            send.send_response(respond_with(&third));
        });
        for _ in 0..3 {
            publish(
                &recorder,
                &reference,
                false,
                "RoleAssignmentCreated",
                "Apply",
                "granted".into(),
            )
            .await;
        }
        server.await.unwrap();
        assert_eq!(recorder.remembered(), 1);
    }
}
