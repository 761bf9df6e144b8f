//! The Kubernetes writes the controller makes: finalizers (JSON patch with a `test` guard, so a
//! stale view never clobbers another writer), status by server-side apply with one field manager,
//! written only when it changed, and Events.

use crate::api::{
    CLEANUP_FINALIZER, OpenAIAccess, OpenAIAccessStatus, OpenAIAccount, OpenAIAccountStatus,
};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
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
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
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

fn kind_of<K: Resource>() -> &'static str {
    if std::any::type_name::<K>().contains("OpenAIAccount") {
        "OpenAIAccount"
    } else {
        "OpenAIAccess"
    }
}

/// Applies an OpenAIAccess status if it differs from what the object carries.
pub async fn apply_access_status(
    api: &Api<OpenAIAccess>,
    name: &str,
    current: Option<&OpenAIAccessStatus>,
    status: &OpenAIAccessStatus,
) -> Result<bool, KubeWriteError> {
    if current == Some(status) {
        return Ok(false);
    }
    let body =
        json!({"apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess", "status": status});
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map(|_| true)
    .map_err(|source| KubeWriteError::Status {
        kind: "OpenAIAccess",
        name: name.to_string(),
        source,
    })
}

/// Applies an OpenAIAccount status if it differs from what the object carries.
pub async fn apply_account_status(
    api: &Api<OpenAIAccount>,
    name: &str,
    current: Option<&OpenAIAccountStatus>,
    status: &OpenAIAccountStatus,
) -> Result<bool, KubeWriteError> {
    if current == Some(status) {
        return Ok(false);
    }
    let body =
        json!({"apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccount", "status": status});
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map(|_| true)
    .map_err(|source| KubeWriteError::Status {
        kind: "OpenAIAccount",
        name: name.to_string(),
        source,
    })
}

/// Publishes an Event; failures are logged, never fatal (events are best effort).
pub async fn publish(
    recorder: &Recorder,
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
