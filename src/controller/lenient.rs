//! The OpenAIAccess as the controller watches it: typed when it parses, and otherwise still known —
//! its metadata, `spec.accountRef.name`, the raw status and the object ids that status records —
//! so a malformed object protects its grants instead of looking absent. (kube's
//! `DeserializeGuard` keeps only the metadata, which cannot tell which grants the object holds.)
//!
//! It is also the shape the store keeps, 10,000 of them at the scale keyless is built for, so it
//! holds one `ObjectMeta` (not the typed object's second copy) and the status packed: its compact
//! JSON, deflated (a typed status is about twice its JSON in memory, a `String` per field, and the
//! JSON is mostly what every status repeats); only a pass over the object's account reads it
//! (issue 18).

use crate::api::{OpenAIAccess, OpenAIAccessSpec, OpenAIAccessStatus};
use crate::plan::{MalformedObject, ObjectKey};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::borrow::Cow;
use std::sync::Arc;

/// Which part of the object failed to parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Spec,
    Status,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Spec => "spec",
            Field::Status => "status",
        }
    }
}

/// What is known of an OpenAIAccess that does not parse as the typed object.
#[derive(Clone, Debug, PartialEq)]
pub struct Unparsed {
    pub field: Field,
    pub error: String,
    /// `spec.accountRef.name`, when it is a string.
    pub account_ref: Option<String>,
    /// `status.principals[].objectId` values, lowercase.
    pub recorded_object_ids: Vec<String>,
    /// The status as stored, to tell whether the stalled conditions are already written.
    pub raw_status: Option<Value>,
}

/// An OpenAIAccess, parsed or not.
#[derive(Clone, Debug, PartialEq)]
pub struct LenientAccess {
    pub metadata: ObjectMeta,
    /// Boxed: it is rare, and unboxed it made every stored object 88 bytes larger.
    pub parsed: Result<ParsedAccess, Box<Unparsed>>,
}

/// What an OpenAIAccess that parses holds beside its metadata (which is the outer
/// [`LenientAccess::metadata`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedAccess {
    /// Shared with every pass that reads it (a pass holds it, never a copy).
    pub spec: Arc<OpenAIAccessSpec>,
    status: PackedStatus,
}

impl ParsedAccess {
    pub fn new(spec: OpenAIAccessSpec, status: Option<&OpenAIAccessStatus>) -> Self {
        ParsedAccess {
            spec: Arc::new(spec),
            status: PackedStatus::pack(status),
        }
    }

    /// The status as the API server last sent it (None: it has none yet).
    pub fn status(&self) -> Option<OpenAIAccessStatus> {
        self.status.unpack()
    }
}

/// A status as its compact JSON, deflated against [`STATUS_DICTIONARY`]: what every status
/// repeats (field names, condition types, reasons and messages, ARM's resource-id segments) costs
/// a few bytes, so 1,452 bytes of JSON keep in about 200 (issue 18). Packed from the typed value
/// only and kept in memory only (never written anywhere), so it always unpacks, with this
/// process's dictionary; the round trip is exact (the API server's timestamps have whole
/// seconds, as `Time` writes them).
#[derive(Clone, Debug, PartialEq, Default)]
struct PackedStatus(Option<Box<[u8]>>);

/// What statuses have in common, most common last (deflate's nearest matches are the cheapest).
/// Only the ratio depends on it: anything packs and unpacks against it.
const STATUS_DICTIONARY: &[u8] = br#"{"observedGeneration":1,"conditions":[{"lastTransitionTime":"2026-01-01T00:00:00Z","message":"role assignments take effect up to 10 minutes after creation; ready at ","observedGeneration":1,"reason":"PrincipalReplicating","status":"Unknown","type":"Reconciling"},{"lastTransitionTime":"2026-01-01T00:00:00Z","message":"nothing needs a person","observedGeneration":1,"reason":"Reconciled","status":"False","type":"Stalled"}],"summary":" granted","scope":"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-/providers/Microsoft.CognitiveServices/accounts/","roleDisplayName":"Cognitive Services OpenAI User","principals":[{"principal":"user:@","objectId":"","principalType":"User","resolvedGeneration":1,"role":"OpenAIUser","replaces":{"objectId":"","role":"OpenAIContributor"},"roleAssignmentId":"/providers/Microsoft.Authorization/roleAssignments/","state":"Pending","reason":"Adopted","message":"an existing role assignment ( already grants this; keyless adopts it and will never delete it","grantedAt":"2026-01-01T00:00:00Z","pendingSince":"2026-01-01T00:00:00Z"},{"principal":"serviceAccount:","objectId":"","principalType":"ServicePrincipal","resolvedGeneration":1,"role":"OpenAIUser","roleAssignmentId":"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-/providers/Microsoft.CognitiveServices/accounts/-/providers/Microsoft.Authorization/roleAssignments/","state":"Granted","reason":"Granted","message":"role assignment in place","grantedAt":"2026-01-01T00:00:00Z"}]},"conditions":[{"lastTransitionTime":"2026-01-01T00:00:00Z","message":"/1 granted; ready at 2026-01-01T00:00:00.0000000Z, after the propagation grace","observedGeneration":1,"reason":"Propagating","status":"False","type":"Ready"},{"lastTransitionTime":"2026-01-01T00:00:00Z","message":"all principals granted","observedGeneration":1,"reason":"Granted","status":"True","type":"Ready"},"#;

impl PackedStatus {
    fn pack(status: Option<&OpenAIAccessStatus>) -> Self {
        PackedStatus(status.map(|status| {
            // Serializing a typed status (strings, numbers, timestamps) has no failure mode.
            let json = serde_json::to_vec(status)
                .unwrap_or_else(|error| unreachable!("a status serializes: {error}"));
            deflate(&json).into_boxed_slice()
        }))
    }

    fn unpack(&self) -> Option<OpenAIAccessStatus> {
        let packed = self.0.as_deref()?;
        let json = inflate(packed);
        Some(serde_json::from_slice(&json).unwrap_or_else(|error| {
            unreachable!("a packed status unpacks (it was packed from the type): {error}")
        }))
    }
}

// One stream state per thread, reset for each status: a fresh deflate state is ~270 KB in a few
// large aligned allocations, and allocating and freeing one per watch event left glibc's heap (the
// allocator then) growing by tens of MiB a minute during a convergence (freed, never reused,
// returned only by the periodic trim).
thread_local! {
    static DEFLATE: std::cell::RefCell<flate2::Compress> =
        std::cell::RefCell::new(flate2::Compress::new(flate2::Compression::default(), false));
    static INFLATE: std::cell::RefCell<flate2::Decompress> =
        std::cell::RefCell::new(flate2::Decompress::new(false));
}

fn deflate(input: &[u8]) -> Vec<u8> {
    use flate2::{FlushCompress, Status};
    DEFLATE.with_borrow_mut(|deflate| {
        // Raw deflate (no zlib header or checksum: the bytes never leave this process).
        deflate.reset();
        if let Err(error) = deflate.set_dictionary(STATUS_DICTIONARY) {
            unreachable!("a reset deflate stream takes a dictionary: {error}");
        }
        let mut out = Vec::with_capacity(input.len() / 4 + 64);
        loop {
            let read = usize::try_from(deflate.total_in()).unwrap_or(input.len());
            match deflate.compress_vec(&input[read..], &mut out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) => return out,
                Ok(Status::Ok | Status::BufError) => out.reserve(out.capacity().max(64)),
                Err(error) => unreachable!("deflating to memory cannot fail: {error}"),
            }
        }
    })
}

fn inflate(input: &[u8]) -> Vec<u8> {
    use flate2::{FlushDecompress, Status};
    INFLATE.with_borrow_mut(|inflate| {
        inflate.reset(false);
        if let Err(error) = inflate.set_dictionary(STATUS_DICTIONARY) {
            unreachable!("a reset raw inflate stream takes a dictionary: {error}");
        }
        let mut out = Vec::with_capacity(input.len() * 8);
        loop {
            let read = usize::try_from(inflate.total_in()).unwrap_or(input.len());
            match inflate.decompress_vec(&input[read..], &mut out, FlushDecompress::Finish) {
                Ok(Status::StreamEnd) => return out,
                Ok(Status::Ok | Status::BufError) => out.reserve(out.capacity().max(256)),
                Err(error) => unreachable!("what deflate() wrote inflates: {error}"),
            }
        }
    })
}

impl LenientAccess {
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            namespace: self.metadata.namespace.clone().unwrap_or_default(),
            name: self.metadata.name.clone().unwrap_or_default(),
        }
    }

    /// The engine's view of it when it did not parse.
    pub fn malformed(&self) -> Option<MalformedObject> {
        let unparsed = self.parsed.as_ref().err()?;
        Some(MalformedObject {
            key: self.key(),
            account_ref: unparsed.account_ref.clone(),
            recorded_object_ids: unparsed.recorded_object_ids.clone(),
            error: format!("{}: {}", unparsed.field.as_str(), unparsed.error),
        })
    }

    /// Whether it names this account (an unreadable reference may name any).
    pub fn may_name(&self, account: &str) -> bool {
        match &self.parsed {
            Ok(access) => access.spec.account_ref.name == account,
            Err(unparsed) => unparsed.account_ref.as_deref().is_none_or(|a| a == account),
        }
    }

    /// Parses one object as the API server sent it.
    pub fn from_value(value: Value) -> Result<Self, serde_json::Error> {
        let metadata: ObjectMeta =
            serde_json::from_value(value.get("metadata").cloned().unwrap_or(Value::Null))?;
        let parsed = match serde_json::from_value::<OpenAIAccess>(value.clone()) {
            Ok(access) => Ok(ParsedAccess::new(access.spec, access.status.as_ref())),
            Err(error) => {
                let spec_error = serde_json::from_value::<OpenAIAccessSpec>(
                    value.get("spec").cloned().unwrap_or(Value::Null),
                )
                .err();
                let status_error = value
                    .get("status")
                    .filter(|s| !s.is_null())
                    .and_then(|s| serde_json::from_value::<OpenAIAccessStatus>(s.clone()).err());
                // Name the part that is really at fault: the spec if it fails alone, else the status.
                let (field, error) = match (spec_error, status_error) {
                    (Some(e), _) => (Field::Spec, e.to_string()),
                    (None, Some(e)) => (Field::Status, e.to_string()),
                    (None, None) => (Field::Spec, error.to_string()),
                };
                let recorded_object_ids = value
                    .pointer("/status/principals")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.get("objectId").and_then(Value::as_str))
                    .map(str::to_ascii_lowercase)
                    .collect();
                Err(Box::new(Unparsed {
                    field,
                    error,
                    account_ref: value
                        .pointer("/spec/accountRef/name")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    recorded_object_ids,
                    raw_status: value.get("status").cloned(),
                }))
            }
        };
        Ok(LenientAccess { metadata, parsed })
    }

    /// The typed object, for code that reads it whole (a report), or what is known of it.
    pub fn into_access(self) -> Result<OpenAIAccess, Unparsed> {
        let parsed = self.parsed.map_err(|unparsed| *unparsed)?;
        let status = parsed.status();
        let mut access = OpenAIAccess::new(
            &self.metadata.name.clone().unwrap_or_default(),
            Arc::unwrap_or_clone(parsed.spec),
        );
        access.metadata = self.metadata;
        access.status = status;
        Ok(access)
    }
}

impl<'de> Deserialize<'de> for LenientAccess {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        LenientAccess::from_value(value).map_err(serde::de::Error::custom)
    }
}

impl Resource for LenientAccess {
    type DynamicType = ();
    type Scope = <OpenAIAccess as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        OpenAIAccess::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        OpenAIAccess::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        OpenAIAccess::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        OpenAIAccess::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(spec: Value, status: Value) -> Value {
        json!({
            "apiVersion": "keyless.dev/v1alpha1",
            "kind": "OpenAIAccess",
            "metadata": {"name": "chat", "namespace": "team-a", "finalizers": ["keyless.dev/cleanup"]},
            "spec": spec,
            "status": status,
        })
    }

    fn good_spec() -> Value {
        json!({"accountRef": {"name": "prod"}, "role": "OpenAIUser", "principals": [{"user": "alice@contoso.com"}]})
    }

    #[test]
    fn a_valid_object_parses_typed() {
        let access = LenientAccess::from_value(object(good_spec(), json!(null))).unwrap();
        assert!(access.parsed.is_ok());
        assert!(access.may_name("prod"));
        assert!(!access.may_name("staging"));
    }

    #[test]
    fn a_status_the_type_rejects_keeps_the_spec_reference_and_the_recorded_object_ids() {
        let status = json!({"principals": [
            {"principal": "user:alice@contoso.com", "objectId": "82F6C951-EA04-4434-A839-F80B32AA6337",
             "state": "Granted", "grantedAt": "+99999-01-01T00:00:00Z"}
        ]});
        let access = LenientAccess::from_value(object(good_spec(), status.clone())).unwrap();
        let unparsed = access.parsed.as_ref().unwrap_err();
        assert_eq!(unparsed.field, Field::Status, "{}", unparsed.error);
        assert_eq!(unparsed.account_ref.as_deref(), Some("prod"));
        assert_eq!(
            unparsed.recorded_object_ids,
            ["82f6c951-ea04-4434-a839-f80b32aa6337"]
        );
        assert_eq!(unparsed.raw_status.as_ref(), Some(&status));
        let malformed = access.malformed().unwrap();
        assert_eq!(malformed.key.to_string(), "team-a/chat");
        assert!(
            malformed.error.starts_with("status: "),
            "{}",
            malformed.error
        );
    }

    #[test]
    fn a_spec_the_type_rejects_is_named_as_the_spec() {
        let spec = json!({"accountRef": {"name": "prod"}, "role": "Owner", "principals": []});
        let access = LenientAccess::from_value(object(spec, json!(null))).unwrap();
        let unparsed = access.parsed.as_ref().unwrap_err();
        assert_eq!(unparsed.field, Field::Spec, "{}", unparsed.error);
        assert!(access.may_name("prod"));
    }

    #[test]
    fn an_unreadable_account_reference_may_name_any_account() {
        let spec = json!({"accountRef": {"name": 7}, "role": "OpenAIUser", "principals": []});
        let access = LenientAccess::from_value(object(spec, json!(null))).unwrap();
        assert!(access.may_name("prod") && access.may_name("staging"));
    }

    #[test]
    fn an_unknown_grant_state_from_a_newer_version_still_parses() {
        let status = json!({"principals": [
            {"principal": "user:alice@contoso.com", "state": "Suspended"}
        ]});
        let access = LenientAccess::from_value(object(good_spec(), status)).unwrap();
        let access = access
            .parsed
            .expect("an unknown state is Unknown, not a parse error");
        assert_eq!(
            access.status().unwrap().principals[0].state,
            Some(crate::api::GrantState::Unknown)
        );
    }

    fn converged_status() -> Value {
        // A status keyless wrote (tests/memory.rs prints one from the real API server).
        json!({"observedGeneration":1,"conditions":[
            {"lastTransitionTime":"2026-12-07T08:57:17Z","message":"1/1 granted; ready at 2026-12-07T08:57:17.6155224Z, after the propagation grace","observedGeneration":1,"reason":"Propagating","status":"False","type":"Ready"},
            {"lastTransitionTime":"2026-12-07T08:57:17Z","message":"role assignments take effect up to 10 minutes after creation; ready at 2026-12-07T08:57:17.6155224Z","observedGeneration":1,"reason":"Propagating","status":"True","type":"Reconciling"},
            {"lastTransitionTime":"2026-12-07T08:57:17Z","message":"nothing needs a person","observedGeneration":1,"reason":"Reconciled","status":"False","type":"Stalled"}],
          "summary":"1/1 granted",
          "scope":"/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-ai-prod/providers/Microsoft.CognitiveServices/accounts/oai-mem-0",
          "roleDisplayName":"Cognitive Services OpenAI User",
          "principals":[{"principal":"objectId:4731bfa3-68a9-4834-8750-a371ac2830bc (ServicePrincipal)","objectId":"4731bfa3-68a9-4834-8750-a371ac2830bc","principalType":"ServicePrincipal","resolvedGeneration":1,"role":"OpenAIUser",
            "roleAssignmentId":"/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-ai-prod/providers/Microsoft.CognitiveServices/accounts/oai-mem-0/providers/Microsoft.Authorization/roleAssignments/a83d07bf-b991-5bc6-a31d-c692d81b055d",
            "state":"Granted","reason":"Granted","message":"role assignment in place","grantedAt":"2026-12-07T08:57:17Z"}]})
    }

    #[test]
    fn a_stored_status_reads_back_exactly_and_keeps_in_a_fraction_of_its_json() {
        let access = LenientAccess::from_value(object(good_spec(), converged_status())).unwrap();
        let parsed = access.parsed.as_ref().unwrap();
        let typed: OpenAIAccessStatus = serde_json::from_value(converged_status()).unwrap();
        assert_eq!(parsed.status(), Some(typed.clone()));
        let json = serde_json::to_vec(&typed).unwrap().len();
        let packed = parsed.status.0.as_ref().unwrap().len();
        eprintln!("{json} bytes of JSON kept in {packed}");
        assert!(packed * 4 < json, "{json} bytes of JSON kept in {packed}");
        // None stays None; an empty status stays empty.
        assert_eq!(
            ParsedAccess::new((*parsed.spec).clone(), None).status(),
            None
        );
        let empty = OpenAIAccessStatus::default();
        assert_eq!(
            ParsedAccess::new((*parsed.spec).clone(), Some(&empty)).status(),
            Some(empty)
        );
    }

    proptest::proptest! {
        /// Whatever a status holds (text the dictionary has never seen, any length) unpacks to
        /// itself.
        #[test]
        fn any_status_unpacks_to_itself(
            messages in proptest::collection::vec(".{0,300}", 0..40),
            generation in proptest::option::of(0i64..1_000_000),
        ) {
            let mut status: OpenAIAccessStatus = serde_json::from_value(converged_status()).unwrap();
            status.observed_generation = generation;
            status.summary = messages.first().cloned();
            let template = status.principals[0].clone();
            status.principals = messages
                .iter()
                .map(|message| crate::api::PrincipalStatus {
                    message: Some(message.clone()),
                    principal: format!("user:{message}@contoso.com"),
                    ..template.clone()
                })
                .collect();
            let packed = PackedStatus::pack(Some(&status));
            proptest::prop_assert_eq!(packed.unpack(), Some(status));
        }
    }
}
