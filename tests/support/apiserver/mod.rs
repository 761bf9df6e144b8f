//! An in-process stand-in for the Kubernetes API server, for tests.
//!
//! **Kept only for what the real API server (`super::cluster`) cannot do:** storing an object its
//! CRD schema rejects, so that the controller's handling of malformed objects
//! (`tests/controller.rs`: `a_malformed_access_is_reported_and_does_not_stall_the_others`) can be
//! tested. Every other controller test runs on the real server; write new ones there.
//!
//! [`ApiServer`] is a tower `Service` that `kube::Client::new` accepts: no socket, no cluster. It
//! serves built-in resources (Namespaces, ServiceAccounts, ConfigMaps, Leases, events.k8s.io Events,
//! CustomResourceDefinitions) and the custom resources of any CRD handed to it, with the apiserver
//! behaviour a controller relies on:
//!
//! - get, list (label and `metadata.name`/`metadata.namespace` field selectors, `limit`/`continue`),
//!   watch (from a `resourceVersion`, bookmarks, streaming lists, 410 Gone past the bounded history);
//! - create, update, delete (finalizers and `deletionTimestamp`, `propagationPolicy`, preconditions),
//!   deletecollection, patch (merge, JSON patch with `test`, strategic merge treated as merge,
//!   server-side apply with field managers and conflicts);
//! - the status subresource (spec writes leave status alone and vice versa; `metadata.generation`
//!   bumps on spec changes only), 409 on a stale `resourceVersion`, `Status` bodies like the apiserver's;
//! - for custom resources: structural pruning, schema defaults, OpenAPI validation and CEL rules;
//! - discovery (`/api`, `/apis`, aggregated discovery), `/version` and
//!   `/.well-known/openid-configuration`.
//!
//! The test side: [`ApiServer::client`] gives a `kube::Client`; [`ApiServer::seed`], [`ApiServer::get`],
//! [`ApiServer::list`], [`ApiServer::modify`] and [`ApiServer::remove`] reach the objects directly;
//! [`ApiServer::inject`] queues faults ([`Fault`]); [`ApiServer::calls`] is the log of requests.
//!
//! ```ignore
//! let server = ApiServer::builder().crds(keyless::api::crds()).namespace("team-a").build();
//! let client = server.client(); // inside a tokio runtime
//! server.seed(&some_object);                       // stored as given, status included
//! server.inject(Fault::on(Verb::Patch).resource("OpenAIAccess").subresource("status").respond(500));
//! // ... run the controller with `client` ...
//! server.wait_until("the access is Ready", |s| s.get::<OpenAIAccess>(Some("team-a"), "a").is_some_and(ready)).await;
//! assert_eq!(server.calls_to(Verb::Patch, "openaiaccesses")[0].content_type.as_deref(), Some("application/apply-patch+yaml"));
//! ```
//!
//! Simplifications (where a real apiserver does more): lists are atomic for server-side apply (no
//! merge by `x-kubernetes-list-map-keys`); strategic merge patch is a JSON merge patch; list
//! `resourceVersion`/`resourceVersionMatch` are ignored (lists are always current); bookmarks are
//! sent only on [`ApiServer::send_bookmarks`] and for streaming lists; no admission webhooks,
//! RBAC, conversion webhooks or `format` validation; garbage collection and namespace cleanup run
//! synchronously after each write.
//!
//! Module map: `registry` (what is served, discovery), `store` (objects, versions, history,
//! watches), `verbs` (the semantics of each verb), `schema` (pruning, defaults, validation, CEL),
//! `managed` (field managers), `selectors`, `status` (error bodies).

mod managed;
mod registry;
mod schema;
mod selectors;
mod status;
mod store;
mod verbs;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Resource;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use registry::Registry;
pub use registry::ResourceType;
use status::ApiError;
use store::{ObjectKey, Store};
use verbs::{Input, Reply, Route};

/// The response body: a whole JSON document, or a watch stream.
pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// The verb of a resource request, as the apiserver's authorizer would name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

/// One request the stand-in received, in the order received.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: Method,
    pub path: String,
    /// Decoded query parameters.
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    /// `None` for non-resource paths (discovery, `/version`, ...).
    pub verb: Option<Verb>,
    /// The resource's plural, e.g. `configmaps`.
    pub resource: Option<String>,
    /// The resource's kind, e.g. `ConfigMap`, when the stand-in serves it.
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The request body, when it was JSON.
    pub body: Option<Value>,
    /// The HTTP status answered (200 for a watch that was opened).
    pub status: u16,
}

impl Call {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    /// Whether this call was `verb` on `resource` (plural, singular or kind, any case).
    pub fn is(&self, verb: Verb, resource: &str) -> bool {
        let resource = resource.to_lowercase();
        let named = self.resource.as_ref().is_some_and(|r| *r == resource)
            || self
                .kind
                .as_ref()
                .is_some_and(|k| k.to_lowercase() == resource);
        self.verb == Some(verb) && named
    }
}

/// What an injected fault does to the request it matches.
#[derive(Clone, Debug)]
enum FaultAction {
    /// Answer with this HTTP code and a `Status` body instead of serving the request.
    Respond {
        code: u16,
        reason: String,
        message: String,
    },
    /// Serve the watch, but end the stream after this many events (0: at once).
    EndWatchAfter(usize),
    /// Serve the watch as one ERROR event with a 410 Gone status, as for a compacted version.
    WatchGone,
}

/// A fault to inject, matched against incoming requests. Built with [`Fault::on`]; by default it
/// fires once.
///
/// ```ignore
/// server.inject(Fault::on(Verb::Patch).resource("widgets").subresource("status").respond(500));
/// server.inject(Fault::on(Verb::Watch).resource("widgets").end_watch_after(1));
/// ```
#[derive(Clone, Debug)]
pub struct Fault {
    verb: Option<Verb>,
    resource: Option<String>,
    subresource: Option<Option<String>>,
    namespace: Option<String>,
    name: Option<String>,
    times: Option<usize>,
    action: FaultAction,
}

impl Fault {
    pub fn on(verb: Verb) -> Self {
        Self {
            verb: Some(verb),
            resource: None,
            subresource: None,
            namespace: None,
            name: None,
            times: Some(1),
            action: FaultAction::Respond {
                code: 500,
                reason: "InternalError".into(),
                message: "injected fault".into(),
            },
        }
    }

    /// Any verb.
    pub fn any() -> Self {
        Self {
            verb: None,
            ..Self::on(Verb::Get)
        }
    }

    /// Only requests on this resource: plural, singular, kind or short name, any case.
    pub fn resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.to_owned());
        self
    }

    /// Only requests on this subresource (`"status"`).
    pub fn subresource(mut self, subresource: &str) -> Self {
        self.subresource = Some(Some(subresource.to_owned()));
        self
    }

    /// Only requests on the main resource, not a subresource.
    pub fn main_resource(mut self) -> Self {
        self.subresource = Some(None);
        self
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_owned());
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Fire on the next `n` matching requests.
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }

    /// Fire on every matching request until [`ApiServer::clear_faults`].
    pub fn always(mut self) -> Self {
        self.times = None;
        self
    }

    /// Answer with `code` and a `Status` body whose reason matches the code.
    pub fn respond(mut self, code: u16) -> Self {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            410 => "Expired",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        self.action = FaultAction::Respond {
            code,
            reason: reason.into(),
            message: format!("injected fault: {code}"),
        };
        self
    }

    /// Answer with `code` and a `Status` of this reason and message.
    pub fn respond_with(mut self, code: u16, reason: &str, message: &str) -> Self {
        self.action = FaultAction::Respond {
            code,
            reason: reason.into(),
            message: message.into(),
        };
        self
    }

    /// For a watch: open it, deliver `n` events, then end the stream (the client re-watches).
    pub fn end_watch_after(mut self, n: usize) -> Self {
        self.action = FaultAction::EndWatchAfter(n);
        self
    }

    /// For a watch: answer with a single ERROR event carrying 410 Gone (the client relists).
    pub fn gone(mut self) -> Self {
        self.action = FaultAction::WatchGone;
        self
    }

    fn matches(&self, call: &Call, registry: &Registry) -> bool {
        let resource_ok = match (&self.resource, &call.resource) {
            (None, _) => true,
            (Some(wanted), Some(plural)) => registry
                .types
                .iter()
                .any(|t| t.plural == *plural && t.is_called(wanted)),
            (Some(_), None) => false,
        };
        self.verb.is_none_or(|v| call.verb == Some(v))
            && resource_ok
            && self
                .subresource
                .as_ref()
                .is_none_or(|s| *s == call.subresource)
            && self
                .namespace
                .as_ref()
                .is_none_or(|n| call.namespace.as_ref() == Some(n))
            && self
                .name
                .as_ref()
                .is_none_or(|n| call.name.as_ref() == Some(n))
    }
}

/// Everything behind the lock.
pub(crate) struct State {
    registry: Registry,
    store: Store,
    faults: Vec<Fault>,
    calls: Vec<Call>,
    issuer: String,
}

/// Builds an [`ApiServer`].
pub struct Builder {
    crds: Vec<CustomResourceDefinition>,
    issuer: String,
    namespaces: Vec<String>,
    history_limit: usize,
}

impl Builder {
    /// Serve the custom resources of these CRDs (also listed as `customresourcedefinitions`).
    pub fn crds(mut self, crds: impl IntoIterator<Item = CustomResourceDefinition>) -> Self {
        self.crds.extend(crds);
        self
    }

    pub fn crd(mut self, crd: CustomResourceDefinition) -> Self {
        self.crds.push(crd);
        self
    }

    /// The service account issuer `/.well-known/openid-configuration` announces.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.issuer = issuer.to_owned();
        self
    }

    /// Namespaces that exist from the start, besides `default`, `kube-system` and `kube-public`.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespaces.push(namespace.to_owned());
        self
    }

    /// How many events the watch history keeps (default 1000). Older versions get 410 Gone.
    pub fn history_limit(mut self, limit: usize) -> Self {
        self.history_limit = limit;
        self
    }

    pub fn build(self) -> ApiServer {
        let mut registry = Registry::with_builtins();
        for crd in &self.crds {
            registry.add_crd(crd);
        }
        let server = ApiServer {
            changed: Arc::new(tokio::sync::Notify::new()),
            state: Arc::new(Mutex::new(State {
                registry,
                store: Store::new(self.history_limit),
                faults: Vec::new(),
                calls: Vec::new(),
                issuer: self.issuer,
            })),
        };
        for ns in ["default", "kube-system", "kube-public"]
            .into_iter()
            .map(str::to_owned)
            .chain(self.namespaces)
        {
            server.seed_value(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            );
        }
        for crd in self.crds {
            server.seed(&crd);
        }
        server
    }
}

/// The stand-in. Cheap to clone: clones share one state. Give [`ApiServer::client`] to the code under
/// test and keep the server to inspect and steer it.
#[derive(Clone)]
pub struct ApiServer {
    state: Arc<Mutex<State>>,
    /// Woken after every request and every direct change, for [`ApiServer::wait_until`].
    changed: Arc<tokio::sync::Notify>,
}

impl Default for ApiServer {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl ApiServer {
    pub fn builder() -> Builder {
        Builder {
            crds: Vec::new(),
            issuer: "https://kubernetes.default.svc.cluster.local".to_owned(),
            namespaces: Vec::new(),
            history_limit: 1000,
        }
    }

    /// A stand-in serving the built-ins and these CRDs.
    pub fn with_crds(crds: impl IntoIterator<Item = CustomResourceDefinition>) -> Self {
        Self::builder().crds(crds).build()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A `kube::Client` whose requests this stand-in serves (default namespace `default`).
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "default")
    }

    // ---- objects, directly ----

    fn resource_for(&self, api_version: &str, kind: &str) -> ResourceType {
        self.lock()
            .registry
            .by_kind(api_version, kind)
            .cloned()
            .unwrap_or_else(|| panic!("the stand-in serves no {kind} in {api_version}"))
    }

    /// Stores an object as given (status included, no validation), filling what the server owns:
    /// uid, creationTimestamp, resourceVersion, generation. Replaces an existing object of the same
    /// name. Watches see ADDED or MODIFIED. Returns the stored object.
    pub fn seed<K: Serialize>(&self, object: &K) -> Value {
        self.seed_value(serde_json::to_value(object).expect("a serialisable object"))
    }

    pub fn seed_value(&self, mut object: Value) -> Value {
        let api_version = object["apiVersion"]
            .as_str()
            .expect("apiVersion")
            .to_owned();
        let kind = object["kind"].as_str().expect("kind").to_owned();
        let rt = self.resource_for(&api_version, &kind);
        let mut state = self.lock();
        let meta = object["metadata"].as_object_mut().expect("metadata");
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .expect("metadata.name")
            .to_owned();
        let namespace = if rt.namespaced {
            meta.entry("namespace")
                .or_insert_with(|| json!("default"))
                .as_str()
                .unwrap_or_default()
                .to_owned()
        } else {
            String::new()
        };
        let key = ObjectKey {
            resource: rt.key(),
            namespace,
            name,
        };
        let old = state.store.objects.get(&key).cloned();
        let meta = object["metadata"].as_object_mut().expect("metadata");
        meta.entry("uid")
            .or_insert_with(|| json!(uuid::Uuid::new_v4().to_string()));
        meta.entry("creationTimestamp")
            .or_insert_with(|| json!(verbs::now()));
        if rt.custom {
            meta.entry("generation").or_insert_with(|| json!(1));
        }
        if rt.kind == "Namespace" && object.get("status").is_none() {
            object["status"] = json!({"phase": "Active"});
        }
        let rv = state.store.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        object["apiVersion"] = json!(rt.api_version(rt.storage_version()));
        state.store.objects.insert(key.clone(), object.clone());
        state.store.record(store::HistoryEvent {
            rv,
            resource: key.resource,
            namespace: key.namespace,
            event: if old.is_some() {
                store::EventType::Modified
            } else {
                store::EventType::Added
            },
            object: object.clone(),
            old,
        });
        state.sweep();
        drop(state);
        self.changed.notify_waiters();
        object
    }

    fn key_for<K: Resource<DynamicType = ()>>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> (ResourceType, ObjectKey) {
        let rt = self.resource_for(&K::api_version(&()), &K::kind(&()));
        let key = ObjectKey {
            resource: rt.key(),
            namespace: if rt.namespaced {
                namespace.unwrap_or("default").to_owned()
            } else {
                String::new()
            },
            name: name.to_owned(),
        };
        (rt, key)
    }

    /// The stored object, if any. `namespace` is ignored for cluster-scoped kinds.
    pub fn get<K: Resource<DynamicType = ()> + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<K> {
        let (_, key) = self.key_for::<K>(namespace, name);
        let object = self.lock().store.objects.get(&key).cloned()?;
        Some(serde_json::from_value(object).expect("a stored object of this kind"))
    }

    /// The stored object as JSON, for fields the Rust type does not have (`managedFields` say).
    pub fn get_value<K: Resource<DynamicType = ()>>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let (_, key) = self.key_for::<K>(namespace, name);
        self.lock().store.objects.get(&key).cloned()
    }

    /// All stored objects of a kind, ordered by namespace and name.
    pub fn list<K: Resource<DynamicType = ()> + DeserializeOwned>(&self) -> Vec<K> {
        let rt = self.resource_for(&K::api_version(&()), &K::kind(&()));
        let state = self.lock();
        state
            .store
            .objects
            .iter()
            .filter(|(k, _)| k.resource == rt.key())
            .map(|(_, v)| serde_json::from_value(v.clone()).expect("a stored object of this kind"))
            .collect()
    }

    /// Changes a stored object as another actor would (no validation, status included), with a new
    /// resourceVersion and a MODIFIED event. Returns false when there is no such object.
    pub fn modify<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        change: impl FnOnce(&mut K),
    ) -> bool
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Serialize,
    {
        let Some(mut object) = self.get::<K>(namespace, name) else {
            return false;
        };
        change(&mut object);
        let (_, key) = self.key_for::<K>(namespace, name);
        let mut state = self.lock();
        let Some(old) = state.store.objects.get(&key).cloned() else {
            return false;
        };
        let mut new = serde_json::to_value(&object).expect("a serialisable object");
        new["apiVersion"] = old["apiVersion"].clone();
        state.store_modified_public(&key, &old, new);
        state.sweep();
        drop(state);
        self.changed.notify_waiters();
        true
    }

    /// Removes an object at once, finalizers or not (as etcd surgery would). Watches see DELETED.
    pub fn remove<K: Resource<DynamicType = ()>>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> bool {
        let (_, key) = self.key_for::<K>(namespace, name);
        let mut state = self.lock();
        let removed = state.remove_object(&key).is_some();
        state.sweep();
        drop(state);
        self.changed.notify_waiters();
        removed
    }

    /// The events.k8s.io Events whose `regarding` names this object (kind and name), oldest first.
    pub fn events_about(&self, kind: &str, name: &str) -> Vec<k8s_openapi::api::events::v1::Event> {
        self.list::<k8s_openapi::api::events::v1::Event>()
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name)
                })
            })
            .collect()
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().store.rv
    }

    // ---- watches ----

    /// Forgets the watch history: a watch from a version older than the current one gets 410 Gone.
    pub fn compact(&self) {
        self.lock().store.compact();
    }

    /// Ends every open watch, as an apiserver restart would. Clients re-watch.
    pub fn drop_watches(&self) {
        self.lock().store.drop_watches(None);
    }

    /// Sends a BOOKMARK (current resourceVersion) to every open watch that allows bookmarks.
    pub fn send_bookmarks(&self) {
        self.lock().store.send_bookmarks();
    }

    /// How many watches are open on a resource (plural, singular, kind or short name).
    pub fn open_watches(&self, resource: &str) -> usize {
        let mut state = self.lock();
        state.store.watchers.retain(|w| !w.tx.is_closed());
        let keys: Vec<String> = state
            .registry
            .types
            .iter()
            .filter(|t| t.is_called(resource))
            .map(ResourceType::key)
            .collect();
        state
            .store
            .watchers
            .iter()
            .filter(|w| keys.contains(&w.resource))
            .count()
    }

    // ---- faults and the call log ----

    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Every request so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The requests that were `verb` on `resource`.
    pub fn calls_to(&self, verb: Verb, resource: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.is(verb, resource))
            .collect()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    // ---- serving ----

    async fn serve(self, request: Request<kube::client::Body>) -> Response<ResponseBody> {
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let header = |name: http::header::HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(http::header::CONTENT_TYPE);
        let accept = header(http::header::ACCEPT).unwrap_or_default();
        let user_agent = header(http::header::USER_AGENT).unwrap_or_default();
        let path = parts.uri.path().to_owned();
        let query: BTreeMap<String, String> = parts
            .uri
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();

        let mut state = self.lock();
        let target = parse_path(&path, &state.registry);
        let (verb, route) = match &target {
            Target::Resource(route) => {
                (classify(&parts.method, route, &query), Some(route.clone()))
            }
            _ => (None, None),
        };
        let call = Call {
            method: parts.method.clone(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            verb,
            resource: route.as_ref().map(|r| r.plural.clone()),
            kind: route.as_ref().and_then(|r| {
                state
                    .registry
                    .find(&r.group, &r.version, &r.plural)
                    .map(|t| t.kind.clone())
            }),
            namespace: route.as_ref().and_then(|r| r.namespace.clone()),
            name: route.as_ref().and_then(|r| r.name.clone()),
            subresource: route.as_ref().and_then(|r| r.subresource.clone()),
            body: serde_json::from_slice(&body).ok(),
            status: 0,
        };
        let fault = state
            .faults
            .iter()
            .position(|f| f.matches(&call, &state.registry));
        let action = fault.map(|i| {
            let action = state.faults[i].action.clone();
            match state.faults[i].times.as_mut() {
                Some(1) => {
                    state.faults.remove(i);
                }
                Some(n) => *n -= 1,
                None => {}
            }
            action
        });
        state.calls.push(call);
        let index = state.calls.len() - 1;

        let result = match (action, target) {
            (
                Some(FaultAction::Respond {
                    code,
                    reason,
                    message,
                }),
                _,
            ) => Err(ApiError::new(code, &reason, message)),
            (Some(FaultAction::WatchGone), _) => {
                let (tx, events) = tokio::sync::mpsc::unbounded_channel();
                let gone = ApiError::gone("too old resource version (injected)");
                let _ = tx.send(store::frame("ERROR", &gone.to_status()));
                Ok(Reply::Watch {
                    events,
                    timeout: None,
                })
            }
            (action, Target::Resource(route)) => {
                let input = Input {
                    route,
                    query,
                    body,
                    content_type: content_type.unwrap_or_default(),
                    metadata_only: accept.contains("as=PartialObjectMetadata"),
                    user_agent,
                    watch_drop_after: match action {
                        Some(FaultAction::EndWatchAfter(n)) => Some(n),
                        _ => None,
                    },
                };
                match verb {
                    Some(Verb::Get) => state.get(&input),
                    Some(Verb::List) => state.list(&input),
                    Some(Verb::Watch) => state.watch(&input),
                    Some(Verb::Create) => state.create(&input),
                    Some(Verb::Update) => state.update(&input),
                    Some(Verb::Patch) => state.patch(&input),
                    Some(Verb::Delete) => state.delete(&input),
                    Some(Verb::DeleteCollection) => state.delete_collection(&input),
                    None => Err(ApiError::method_not_allowed(format!(
                        "{} is not supported",
                        parts.method
                    ))),
                }
            }
            (_, Target::Other(document)) if parts.method == Method::GET => {
                Ok(Reply::Json(200, document))
            }
            (_, Target::Aggregated { core }) if parts.method == Method::GET => {
                if accept.contains("as=APIGroupDiscoveryList") {
                    Ok(Reply::Json(200, state.registry.aggregated(core)))
                } else if core {
                    Ok(Reply::Json(200, state.registry.core_versions()))
                } else {
                    Ok(Reply::Json(200, state.registry.group_list()))
                }
            }
            (_, Target::Issuer) => {
                let issuer = state.issuer.trim_end_matches('/').to_owned();
                Ok(Reply::Json(
                    200,
                    json!({
                        "issuer": state.issuer,
                        "jwks_uri": format!("{issuer}/openid/v1/jwks"),
                        "response_types_supported": ["id_token"],
                        "subject_types_supported": ["public"],
                        "id_token_signing_alg_values_supported": ["RS256"],
                    }),
                ))
            }
            (_, Target::NotFound) | (_, _) => Err(ApiError::no_route(&path)),
        };
        let (code, response) = match result {
            Ok(Reply::Json(code, value)) => (code, json_response(code, &value)),
            Ok(Reply::Watch {
                mut events,
                timeout,
            }) => {
                let stream = futures::stream::poll_fn(move |cx| events.poll_recv(cx));
                let stream: futures::stream::BoxStream<'static, Bytes> = match timeout {
                    Some(t) => stream.take_until(tokio::time::sleep(t)).boxed(),
                    None => stream.boxed(),
                };
                let body = StreamBody::new(stream.map(|b| Ok::<_, Infallible>(Frame::data(b))));
                let response = Response::builder()
                    .status(200)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(BodyExt::boxed_unsync(body))
                    .unwrap_or_else(|_| Response::new(empty()));
                (200, response)
            }
            Err(error) => (error.code, json_response(error.code, &error.to_status())),
        };
        if let Some(call) = state.calls.get_mut(index) {
            call.status = code;
        }
        drop(state);
        self.changed.notify_waiters();
        response
    }

    /// Waits until `check` holds, re-checking after every request and direct change; panics
    /// naming `what` after 10 s. For controller tests: "wait until the status says Ready".
    pub async fn wait_until(&self, what: &str, check: impl Fn(&ApiServer) -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let changed = self.changed.notified();
            if check(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                assert!(check(self), "timed out waiting until {what}");
                return;
            }
        }
    }
}

impl State {
    fn store_modified_public(&mut self, key: &ObjectKey, old: &Value, mut new: Value) {
        let rv = self.store.next_rv();
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.store.objects.insert(key.clone(), new.clone());
        self.store.record(store::HistoryEvent {
            rv,
            resource: key.resource.clone(),
            namespace: key.namespace.clone(),
            event: store::EventType::Modified,
            object: new,
            old: Some(old.clone()),
        });
    }
}

fn empty() -> ResponseBody {
    BodyExt::boxed_unsync(Full::new(Bytes::new()))
}

fn json_response(code: u16, value: &Value) -> Response<ResponseBody> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(BodyExt::boxed_unsync(Full::new(Bytes::from(bytes))))
        .unwrap_or_else(|_| Response::new(empty()))
}

impl tower::Service<Request<kube::client::Body>> for ApiServer {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<kube::client::Body>) -> Self::Future {
        let server = self.clone();
        Box::pin(async move { Ok(server.serve(request).await) })
    }
}

enum Target {
    Resource(Route),
    /// `/api` or `/apis`: plain or aggregated discovery depending on `Accept`.
    Aggregated {
        core: bool,
    },
    /// A fixed document (group or resource discovery, `/version`, health).
    Other(Value),
    Issuer,
    NotFound,
}

fn parse_path(path: &str, registry: &Registry) -> Target {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api"] => return Target::Aggregated { core: true },
        ["apis"] => return Target::Aggregated { core: false },
        ["api", version] => {
            return registry
                .resource_list("", version)
                .map_or(Target::NotFound, Target::Other);
        }
        ["apis", group] => {
            return registry
                .group(group)
                .map_or(Target::NotFound, Target::Other);
        }
        ["apis", group, version] => {
            return registry
                .resource_list(group, version)
                .map_or(Target::NotFound, Target::Other);
        }
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        [".well-known", "openid-configuration"] => return Target::Issuer,
        ["openid", "v1", "jwks"] => return Target::Other(json!({"keys": []})),
        ["version"] => {
            return Target::Other(json!({
                "major": "1", "minor": "34", "gitVersion": "v1.34.0-keyless-standin", "gitCommit": "", "gitTreeState": "clean",
                "buildDate": "2025-08-27T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
            }));
        }
        ["healthz" | "livez" | "readyz"] => return Target::Other(json!("ok")),
        _ => return Target::NotFound,
    };
    let route = |plural: &str, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        Target::Resource(Route {
            group: group.to_owned(),
            version: version.to_owned(),
            plural: plural.to_owned(),
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
            subresource: sub.map(str::to_owned),
        })
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..]
            if registry.has_namespaced(group, version, plural) =>
        {
            match tail {
                [] => route(plural, Some(ns), None, None),
                [name] => route(plural, Some(ns), Some(name), None),
                [name, sub] => route(plural, Some(ns), Some(name), Some(sub)),
                _ => Target::NotFound,
            }
        }
        [plural] => route(plural, None, None, None),
        [plural, name] => route(plural, None, Some(name), None),
        [plural, name, sub] => route(plural, None, Some(name), Some(sub)),
        _ => Target::NotFound,
    }
}

fn classify(method: &Method, route: &Route, query: &BTreeMap<String, String>) -> Option<Verb> {
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    Some(match (method.as_str(), route.name.is_some()) {
        ("GET", true) => Verb::Get,
        ("GET", false) if watch => Verb::Watch,
        ("GET", false) => Verb::List,
        ("POST", false) => Verb::Create,
        ("PUT", true) => Verb::Update,
        ("PATCH", true) => Verb::Patch,
        ("DELETE", true) => Verb::Delete,
        ("DELETE", false) => Verb::DeleteCollection,
        _ => return None,
    })
}
