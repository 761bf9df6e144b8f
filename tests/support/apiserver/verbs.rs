//! The verbs on resources: get, list, watch, create, update, patch (merge, JSON, strategic as merge,
//! server-side apply), delete and deletecollection, with the status subresource, finalizers,
//! owner-reference garbage collection and namespace termination.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kube::core::cel::RootContext;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::State;
use super::managed::{self, Entry, FieldSet, Writer};
use super::registry::ResourceType;
use super::schema;
use super::selectors::Selector;
use super::status::{self, ApiError, Cause};
use super::store::{EventType, HistoryEvent, ObjectKey, Presentation, Watcher, frame};

/// A request on a resource, parsed from the path and query.
#[derive(Clone, Debug)]
pub struct Route {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// The parts of an HTTP request the verbs look at.
pub struct Input {
    pub route: Route,
    pub query: BTreeMap<String, String>,
    pub body: Bytes,
    pub content_type: String,
    pub metadata_only: bool,
    pub user_agent: String,
    /// Set by an injected fault: end the watch after this many events.
    pub watch_drop_after: Option<usize>,
}

impl Input {
    fn param(&self, key: &str) -> Option<&str> {
        self.query
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.param(key), Some("true" | "1"))
    }

    fn dry_run(&self) -> bool {
        self.param("dryRun") == Some("All")
    }

    /// The field manager of a non-apply write: `fieldManager`, else the user agent's product name,
    /// as the apiserver derives it.
    fn update_manager(&self) -> String {
        self.param("fieldManager")
            .map(str::to_owned)
            .unwrap_or_else(|| {
                let product = self.user_agent.split('/').next().unwrap_or("").trim();
                if product.is_empty() {
                    "unknown".to_owned()
                } else {
                    product.to_owned()
                }
            })
    }

    fn writer(&self, rt: &ResourceType, operation: &'static str) -> Writer {
        Writer {
            manager: if operation == "Apply" {
                self.param("fieldManager").unwrap_or("").to_owned()
            } else {
                self.update_manager()
            },
            operation,
            subresource: self.route.subresource.clone(),
            api_version: rt.api_version(&self.route.version),
            time: now(),
        }
    }

    fn presentation(&self, rt: &ResourceType) -> Presentation {
        Presentation {
            api_version: rt.api_version(&self.route.version),
            kind: rt.kind.clone(),
            metadata_only: self.metadata_only,
        }
    }
}

pub enum Reply {
    Json(u16, Value),
    Watch {
        events: UnboundedReceiver<Bytes>,
        timeout: Option<Duration>,
    },
}

/// Now, to the second, as the apiserver writes `metav1.Time`.
pub fn now() -> String {
    let ts = jiff::Timestamp::now();
    jiff::Timestamp::from_second(ts.as_second())
        .unwrap_or(ts)
        .to_string()
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    match object.get_mut("metadata") {
        Some(Value::Object(meta)) => meta,
        _ => unreachable!("metadata was just made an object"),
    }
}

fn finalizers(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn deleting(object: &Value) -> bool {
    object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

fn key_of(rt: &ResourceType, namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        resource: rt.key(),
        namespace: if rt.namespaced {
            namespace.to_owned()
        } else {
            String::new()
        },
        name: name.to_owned(),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body of the request could not be decoded: {e}"))
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    Ok(value)
}

/// Everything but metadata (and status, which the caller has already reset where it must not
/// change): what `metadata.generation` tracks.
fn content(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("metadata");
        map.remove("apiVersion");
        map.remove("kind");
    }
    copy
}

fn without_managed_fields(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(meta) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    copy
}

impl State {
    fn resource(&self, route: &Route) -> Result<ResourceType, ApiError> {
        let rt = self
            .registry
            .find(&route.group, &route.version, &route.plural)
            .cloned()
            .ok_or_else(|| {
                ApiError::no_route(&format!(
                    "{}/{}/{}",
                    route.group, route.version, route.plural
                ))
            })?;
        match route.subresource.as_deref() {
            None => Ok(rt),
            Some("status") if rt.status_subresource => Ok(rt),
            Some(other) => Err(ApiError::no_route(&format!(
                "{}/{other}",
                rt.qualified_resource()
            ))),
        }
    }

    fn namespace_of<'a>(&self, rt: &ResourceType, input: &'a Input) -> Result<&'a str, ApiError> {
        match (&input.route.namespace, rt.namespaced) {
            (Some(ns), true) => Ok(ns),
            (None, true) => Ok(""),
            (Some(_), false) => Err(ApiError::no_route(
                "a cluster-scoped resource under a namespace",
            )),
            (None, false) => Ok(""),
        }
    }

    /// Pruning, defaults, schema and CEL validation (custom resources); a decode round trip
    /// (built-ins); name and label syntax (all). Errors on fields an update leaves unchanged are
    /// ratcheted away, as the apiserver does since CRD validation ratcheting.
    fn admit(
        &self,
        rt: &ResourceType,
        version: &str,
        object: Value,
        old: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let name = meta_str(&object, "name").unwrap_or_default().to_owned();
        let mut object = object;
        let mut causes: Vec<Cause> = Vec::new();
        if let Some(normalize) = rt.normalize {
            object = normalize(object).map_err(|e| {
                ApiError::bad_request(format!(
                    "the body of the request could not be decoded into {}: {e}",
                    rt.kind
                ))
            })?;
        } else {
            let meta = object.get("metadata").cloned().unwrap_or_else(|| json!({}));
            let meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
                serde_json::from_value(meta).map_err(|e| {
                    ApiError::bad_request(format!("metadata could not be decoded: {e}"))
                })?;
            object["metadata"] =
                serde_json::to_value(meta).map_err(|e| ApiError::internal(e.to_string()))?;
            if let Some(schema_doc) = rt.schemas.get(version) {
                schema::prune(schema_doc, &mut object, true);
                object = schema::apply_defaults(schema_doc, &object);
                schema::validate(schema_doc, &object, "", &mut causes, true);
                // Validation ratcheting (on by default since Kubernetes 1.33): on an update, an error
                // on a field the update leaves unchanged is not held against the object.
                if let Some(old) = old {
                    causes.retain(|c| !unchanged_at(&object, old, &c.field, usize::MAX));
                }
                // As the apiserver: CEL rules are not run over an object with blocking schema errors.
                const BLOCKING: [&str; 5] = [
                    "FieldValueNotSupported",
                    "FieldValueRequired",
                    "FieldValueTooLong",
                    "FieldValueTooMany",
                    "FieldValueTypeInvalid",
                ];
                if causes.iter().any(|c| BLOCKING.contains(&c.reason.as_str())) {
                    causes.push(Cause::new(
                        "FieldValueInvalid",
                        "<nil>",
                        "Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
                    ));
                    return Err(ApiError::invalid(rt, &name, &causes));
                }
                let context = RootContext {
                    api_version: rt.api_version(version),
                    api_group: rt.group.clone(),
                    kind: rt.kind.clone(),
                };
                let mut cel = schema::validate_cel(schema_doc, &object, old, &context);
                // A CEL error names the field of its rule's `fieldPath`, not the node the rule sits
                // on, so CEL errors are ratcheted coarsely: only when the whole top-level field
                // (`spec`, `status`) is unchanged, as in a status write over an older spec.
                if let Some(old) = old {
                    cel.retain(|c| !unchanged_at(&object, old, &c.field, 1));
                }
                causes.extend(cel);
            }
        }
        causes.extend(schema::validate_metadata(&object, rt.name_rule));
        if causes.is_empty() {
            Ok(object)
        } else {
            Err(ApiError::invalid(rt, &name, &causes))
        }
    }

    fn namespace_must_accept(&self, rt: &ResourceType, namespace: &str) -> Result<(), ApiError> {
        if !rt.namespaced {
            return Ok(());
        }
        let ns_key = ObjectKey {
            resource: "namespaces".into(),
            namespace: String::new(),
            name: namespace.to_owned(),
        };
        match self.store.objects.get(&ns_key) {
            None => Err(ApiError::namespace_not_found(namespace)),
            Some(ns) if deleting(ns) => Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                    rt.qualified_resource(),
                    ""
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    pub fn get(&mut self, input: &Input) -> Result<Reply, ApiError> {
        let rt = self.resource(&input.route)?;
        let ns = self.namespace_of(&rt, input)?;
        let name = input.route.name.clone().unwrap_or_default();
        let object = self
            .store
            .objects
            .get(&key_of(&rt, ns, &name))
            .ok_or_else(|| ApiError::not_found(&rt, &name))?;
        Ok(Reply::Json(200, input.presentation(&rt).present(object)))
    }

    pub fn list(&mut self, input: &Input) -> Result<Reply, ApiError> {
        let rt = self.resource(&input.route)?;
        let ns = input.route.namespace.clone();
        let selector = Selector::parse(input.param("labelSelector"), input.param("fieldSelector"))?;
        let presentation = input.presentation(&rt);
        let after: Option<ObjectKey> = match input.param("continue") {
            Some(token) => {
                let (namespace, name) = token
                    .split_once('/')
                    .ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
                Some(ObjectKey {
                    resource: rt.key(),
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }
            None => None,
        };
        let limit = input
            .param("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0);
        let matching: Vec<(&ObjectKey, &Value)> = self
            .store
            .objects
            .iter()
            .filter(|(k, _)| k.resource == rt.key())
            .filter(|(k, _)| ns.as_ref().is_none_or(|ns| *ns == k.namespace))
            .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
            .filter(|(_, v)| selector.matches(v))
            .collect();
        let total = matching.len();
        let page: Vec<(&ObjectKey, &Value)> = matching
            .into_iter()
            .take(limit.unwrap_or(usize::MAX))
            .collect();
        let mut metadata = json!({"resourceVersion": self.store.rv.to_string()});
        if page.len() < total
            && let Some((last, _)) = page.last()
        {
            metadata["continue"] = json!(format!("{}/{}", last.namespace, last.name));
            metadata["remainingItemCount"] = json!(total - page.len());
        }
        let items: Vec<Value> = page.iter().map(|(_, v)| presentation.present(v)).collect();
        let (api_version, kind) = if input.metadata_only {
            (
                "meta.k8s.io/v1".to_owned(),
                "PartialObjectMetadataList".to_owned(),
            )
        } else {
            (rt.api_version(&input.route.version), rt.list_kind.clone())
        };
        Ok(Reply::Json(
            200,
            json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "items": items}),
        ))
    }

    pub fn watch(&mut self, input: &Input) -> Result<Reply, ApiError> {
        let rt = self.resource(&input.route)?;
        let selector = Selector::parse(input.param("labelSelector"), input.param("fieldSelector"))?;
        let (tx, rx) = unbounded_channel();
        let mut watcher = Watcher {
            resource: rt.key(),
            namespace: input.route.namespace.clone(),
            selector,
            presentation: input.presentation(&rt),
            bookmarks: input.flag("allowWatchBookmarks"),
            tx,
            remaining: input.watch_drop_after,
        };
        let timeout = input
            .param("timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_secs);
        let reply = |events| Ok(Reply::Watch { events, timeout });

        let current = |store: &super::store::Store, watcher: &Watcher| -> Vec<Value> {
            store
                .objects
                .iter()
                .filter(|(k, _)| k.resource == watcher.resource)
                .filter(|(k, _)| {
                    watcher
                        .namespace
                        .as_ref()
                        .is_none_or(|ns| *ns == k.namespace)
                })
                .filter(|(_, v)| watcher.selector.matches(v))
                .map(|(_, v)| watcher.presentation.present(v))
                .collect()
        };

        let mut open = true;
        if input.flag("sendInitialEvents") {
            for object in current(&self.store, &watcher) {
                open = open && watcher.send(Watcher::event_frame(EventType::Added, &object));
            }
            let end = watcher.bookmark(self.store.rv, true);
            open = open && watcher.send(end);
        } else {
            match input.param("resourceVersion") {
                None | Some("0") => {
                    for object in current(&self.store, &watcher) {
                        open =
                            open && watcher.send(Watcher::event_frame(EventType::Added, &object));
                    }
                }
                Some(rv) => {
                    let from: u64 = rv.parse().map_err(|_| {
                        ApiError::bad_request(format!("invalid resource version {rv:?}"))
                    })?;
                    if from < self.store.compacted_rv {
                        // As the apiserver: the watch itself is accepted and carries a 410 ERROR event.
                        let gone = ApiError::gone(format!(
                            "too old resource version: {from} ({})",
                            self.store.compacted_rv
                        ));
                        let _ = watcher.tx.send(frame("ERROR", &gone.to_status()));
                        return reply(rx);
                    }
                    let replay: Vec<HistoryEvent> = self
                        .store
                        .history
                        .iter()
                        .filter(|e| e.rv > from)
                        .cloned()
                        .collect();
                    for event in replay {
                        if let Some((kind, object)) = watcher.translate(&event) {
                            open = open && watcher.send(Watcher::event_frame(kind, &object));
                        }
                    }
                }
            }
        }
        if open {
            self.store.watchers.push(watcher);
        }
        reply(rx)
    }

    pub fn create(&mut self, input: &Input) -> Result<Reply, ApiError> {
        let rt = self.resource(&input.route)?;
        if input.route.subresource.is_some() {
            return Err(ApiError::method_not_allowed(
                "create is not supported on subresources",
            ));
        }
        let ns = self.namespace_of(&rt, input)?.to_owned();
        let mut object = parse_body(&input.body)?;
        self.check_type_meta(&rt, &input.route.version, &mut object)?;
        let body_ns = meta_str(&object, "namespace").unwrap_or("").to_owned();
        if rt.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let writer = input.writer(&rt, "Update");
        let fields = managed::leaves(&object);
        let created = self.create_object(
            &rt,
            &input.route.version,
            &ns,
            object,
            writer,
            fields,
            input.dry_run(),
        )?;
        Ok(Reply::Json(201, input.presentation(&rt).present(&created)))
    }

    fn check_type_meta(
        &self,
        rt: &ResourceType,
        version: &str,
        object: &mut Value,
    ) -> Result<(), ApiError> {
        let expected = rt.api_version(version);
        match object.get("apiVersion").and_then(Value::as_str) {
            Some(v) if v != expected => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({expected})"
                )));
            }
            _ => object["apiVersion"] = json!(expected),
        }
        match object.get("kind").and_then(Value::as_str) {
            Some(k) if k != rt.kind => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    rt.kind
                )));
            }
            _ => object["kind"] = json!(rt.kind),
        }
        Ok(())
    }

    /// The create path shared by POST and by server-side apply of an object that does not exist.
    #[allow(clippy::too_many_arguments)]
    fn create_object(
        &mut self,
        rt: &ResourceType,
        version: &str,
        namespace: &str,
        mut object: Value,
        writer: Writer,
        fields: FieldSet,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if meta_str(&object, "name").is_none_or(str::is_empty) {
            match meta_str(&object, "generateName").map(str::to_owned) {
                Some(prefix) if !prefix.is_empty() => {
                    let suffix: String = uuid::Uuid::new_v4()
                        .simple()
                        .to_string()
                        .chars()
                        .take(5)
                        .collect();
                    meta_mut(&mut object).insert("name".into(), json!(format!("{prefix}{suffix}")));
                }
                _ => {
                    return Err(ApiError::invalid(
                        rt,
                        "",
                        &[Cause::new(
                            "FieldValueRequired",
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )],
                    ));
                }
            }
        }
        if meta_str(&object, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = meta_str(&object, "name").unwrap_or_default().to_owned();
        self.namespace_must_accept(rt, namespace)?;
        let key = key_of(rt, namespace, &name);
        if self.store.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        {
            let meta = meta_mut(&mut object);
            for server_owned in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "managedFields",
                "selfLink",
            ] {
                meta.remove(server_owned);
            }
            if rt.namespaced {
                meta.insert("namespace".into(), json!(namespace));
            } else {
                meta.remove("namespace");
            }
        }
        if rt.custom
            && rt.status_subresource
            && let Some(map) = object.as_object_mut()
        {
            map.remove("status");
        }
        if rt.kind == "Namespace" {
            object["spec"] = json!({"finalizers": ["kubernetes"]});
            object["status"] = json!({"phase": "Active"});
            meta_mut(&mut object)
                .entry("labels")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .map(|l| l.insert("kubernetes.io/metadata.name".into(), json!(name)));
        }
        let mut object = self.admit(rt, version, object, None)?;
        object["apiVersion"] = json!(rt.api_version(rt.storage_version()));
        {
            let meta = meta_mut(&mut object);
            meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            meta.insert("creationTimestamp".into(), json!(now()));
            if rt.custom {
                meta.insert("generation".into(), json!(1));
            }
        }
        let mut entries = Vec::new();
        let fields: FieldSet = fields
            .into_iter()
            .filter(|p| managed::get(&object, p).is_some())
            .collect();
        managed::take_ownership(&mut entries, &writer, &fields, true);
        Entry::write_all(&mut object, &entries);
        if dry_run {
            return Ok(object);
        }
        let rv = self.store.next_rv();
        meta_mut(&mut object).insert("resourceVersion".into(), json!(rv.to_string()));
        self.store.objects.insert(key.clone(), object.clone());
        self.store.record(HistoryEvent {
            rv,
            resource: key.resource,
            namespace: key.namespace,
            event: EventType::Added,
            object: object.clone(),
            old: None,
        });
        Ok(object)
    }

    /// What a write may change: through `/status` only the status; through the main resource
    /// everything but the status (when there is a status subresource) and server-owned metadata.
    fn merge_for_subresource(
        rt: &ResourceType,
        old: &Value,
        mut new: Value,
        subresource: Option<&str>,
    ) -> Result<Value, ApiError> {
        match subresource {
            Some("status") => {
                let mut merged = old.clone();
                match new.get("status") {
                    Some(s) => merged["status"] = s.clone(),
                    None => {
                        if let Some(map) = merged.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
                Ok(merged)
            }
            Some(other) => Err(ApiError::no_route(&format!("subresource {other}"))),
            None => {
                if rt.status_subresource {
                    match old.get("status") {
                        Some(s) => new["status"] = s.clone(),
                        None => {
                            if let Some(map) = new.as_object_mut() {
                                map.remove("status");
                            }
                        }
                    }
                }
                if rt.kind == "Namespace" {
                    new["spec"] = old.get("spec").cloned().unwrap_or(Value::Null);
                }
                let old_meta = old.get("metadata").cloned().unwrap_or_default();
                let meta = meta_mut(&mut new);
                for server_owned in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                    "managedFields",
                    "namespace",
                ] {
                    match old_meta.get(server_owned) {
                        Some(v) => meta.insert(server_owned.into(), v.clone()),
                        None => meta.remove(server_owned),
                    };
                }
                Ok(new)
            }
        }
    }

    pub fn update(&mut self, input: &Input) -> Result<Reply, ApiError> {
        let rt = self.resource(&input.route)?;
        let ns = self.namespace_of(&rt, input)?.to_owned();
        let name = input.route.name.clone().unwrap_or_default();
        let mut body = parse_body(&input.body)?;
        self.check_type_meta(&rt, &input.route.version, &mut body)?;
        if meta_str(&body, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&body, "name").unwrap_or_default()
            )));
        }
        let key = key_of(&rt, &ns, &name);
        let old = self
            .store
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt, &name))?;
        match meta_str(&body, "resourceVersion").filter(|rv| !rv.is_empty()) {
            None if rt.custom => {
                return Err(ApiError::invalid(
                    &rt,
                    &name,
                    &[Cause::new(
                        "FieldValueInvalid",
                        "metadata.resourceVersion",
                        "Invalid value: 0x0: must be specified for an update",
                    )],
                ));
            }
            Some(rv) if Some(rv) != meta_str(&old, "resourceVersion") => {
                return Err(ApiError::conflict(&rt, &name));
            }
            _ => {}
        }
        let writer = input.writer(&rt, "Update");
        let updated = self.update_object(
            &rt,
            &input.route.version,
            &key,
            &old,
            body,
            input.route.subresource.as_deref(),
            Ownership::Update(writer),
            input.dry_run(),
        )?;
        Ok(Reply::Json(200, input.presentation(&rt).present(&updated)))
    }

    pub fn patch(&mut self, input: &Input) -> Result<Reply, ApiError> {
        let rt = self.resource(&input.route)?;
        let ns = self.namespace_of(&rt, input)?.to_owned();
        let name = input.route.name.clone().unwrap_or_default();
        let key = key_of(&rt, &ns, &name);
        let media = input
            .content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_owned();
        if media == "application/apply-patch+yaml" {
            return self.apply(input, &rt, &ns, &key);
        }
        let old = self
            .store
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt, &name))?;
        let presentation = Presentation {
            metadata_only: false,
            ..input.presentation(&rt)
        };
        let mut patched = presentation.present(&old);
        match media.as_str() {
            "application/json-patch+json" => {
                let ops: json_patch::Patch = serde_json::from_slice(&input.body).map_err(|e| {
                    ApiError::bad_request(format!(
                        "the body of the request could not be decoded as a JSON patch: {e}"
                    ))
                })?;
                for op in &ops.0 {
                    // As the apiserver's JSON patch library: testing a missing path against null passes
                    // (kube's finalizer helper sends exactly that when there are no finalizers yet).
                    if let json_patch::PatchOperation::Test(test) = op
                        && test.value.is_null()
                        && patched.pointer(test.path.as_str()).is_none()
                    {
                        continue;
                    }
                    json_patch::patch(&mut patched, std::slice::from_ref(op))
                        .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?;
                }
            }
            // Strategic merge is treated as a JSON merge patch: lists are replaced, not merged by key.
            "application/merge-patch+json"
            | "application/strategic-merge-patch+json"
            | "application/json" => {
                let patch = parse_body(&input.body)?;
                json_patch::merge(&mut patched, &patch);
            }
            other => return Err(ApiError::unsupported_media_type(other)),
        }
        if meta_str(&patched, "resourceVersion") != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict(&rt, &name));
        }
        self.check_type_meta(&rt, &input.route.version, &mut patched)?;
        if meta_str(&patched, "name") != Some(name.as_str()) {
            return Err(ApiError::bad_request(
                "metadata.name cannot be changed by a patch",
            ));
        }
        let writer = input.writer(&rt, "Update");
        let updated = self.update_object(
            &rt,
            &input.route.version,
            &key,
            &old,
            patched,
            input.route.subresource.as_deref(),
            Ownership::Update(writer),
            input.dry_run(),
        )?;
        Ok(Reply::Json(200, input.presentation(&rt).present(&updated)))
    }

    /// Server-side apply: fields the manager applied before and no longer applies are removed,
    /// the configuration is merged in (lists atomic), and fields another manager owns with a
    /// different value are a 409 unless `force=true`.
    fn apply(
        &mut self,
        input: &Input,
        rt: &ResourceType,
        ns: &str,
        key: &ObjectKey,
    ) -> Result<Reply, ApiError> {
        let name = key.name.clone();
        let Some(manager) = input.param("fieldManager") else {
            return Err(ApiError::new(
                422,
                "Invalid",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        };
        let _ = manager;
        let config: Value = serde_json::from_slice(&input.body)
            .or_else(|_| serde_saphyr::from_slice::<Value>(&input.body))
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
        if config.get("apiVersion").and_then(Value::as_str).is_none()
            || config.get("kind").and_then(Value::as_str).is_none()
        {
            return Err(ApiError::bad_request(
                "apiVersion and kind must be set in an apply configuration",
            ));
        }
        let mut config = config;
        self.check_type_meta(rt, &input.route.version, &mut config)?;
        if meta_str(&config, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&config, "name").unwrap_or_default()
            )));
        }
        let subresource = input.route.subresource.as_deref();
        let writer = input.writer(rt, "Apply");
        let in_scope = |p: &Vec<String>| match subresource {
            Some("status") => p.first().is_some_and(|f| f == "status"),
            _ => !(rt.status_subresource && p.first().is_some_and(|f| f == "status")),
        };
        let applied: FieldSet = managed::leaves(&config)
            .into_iter()
            .filter(in_scope)
            .collect();

        let Some(old) = self.store.objects.get(key).cloned() else {
            if subresource.is_some() {
                return Err(ApiError::not_found(rt, &name));
            }
            let mut object = config.clone();
            meta_mut(&mut object).insert("name".into(), json!(name));
            let created = self.create_object(
                rt,
                &input.route.version,
                ns,
                object,
                writer,
                applied,
                input.dry_run(),
            )?;
            return Ok(Reply::Json(201, input.presentation(rt).present(&created)));
        };
        if meta_str(&config, "resourceVersion")
            .is_some_and(|rv| Some(rv) != meta_str(&old, "resourceVersion"))
        {
            return Err(ApiError::conflict(rt, &name));
        }
        let entries = Entry::read_all(&old);
        if !input.flag("force") {
            let conflicts = managed::conflicts(&entries, &writer, &applied, &old, &config);
            if !conflicts.is_empty() {
                return Err(ApiError::apply_conflict(rt, &name, &conflicts));
            }
        }
        let mut new = old.clone();
        let previously: FieldSet = entries
            .iter()
            .filter(|e| {
                e.manager == writer.manager
                    && e.operation == "Apply"
                    && e.subresource == writer.subresource
            })
            .flat_map(|e| e.fields.iter().cloned())
            .collect();
        for path in previously.difference(&applied) {
            let owned_elsewhere = entries
                .iter()
                .filter(|e| {
                    !(e.manager == writer.manager
                        && e.operation == "Apply"
                        && e.subresource == writer.subresource)
                })
                .any(|e| e.fields.contains(path));
            if !owned_elsewhere {
                managed::remove(&mut new, path);
            }
        }
        let mut scoped = config.clone();
        if let Some(map) = scoped.as_object_mut() {
            match subresource {
                Some("status") => map.retain(|k, _| k == "status"),
                _ if rt.status_subresource => {
                    map.remove("status");
                }
                _ => {}
            }
            if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("resourceVersion");
            }
        }
        managed::merge_into(&mut new, &scoped);
        let updated = self.update_object(
            rt,
            &input.route.version,
            key,
            &old,
            new,
            subresource,
            Ownership::Apply(writer, applied),
            input.dry_run(),
        )?;
        Ok(Reply::Json(200, input.presentation(rt).present(&updated)))
    }

    /// The update path shared by PUT, patches and apply.
    #[allow(clippy::too_many_arguments)]
    fn update_object(
        &mut self,
        rt: &ResourceType,
        version: &str,
        key: &ObjectKey,
        old: &Value,
        new: Value,
        subresource: Option<&str>,
        ownership: Ownership,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let name = key.name.clone();
        let mut new = Self::merge_for_subresource(rt, old, new, subresource)?;
        new["apiVersion"] = json!(rt.api_version(version));
        if deleting(old) {
            let before = finalizers(old);
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    rt,
                    &name,
                    &[Cause::new(
                        "FieldValueForbidden",
                        "metadata.finalizers",
                        "Forbidden: no new finalizers can be added if the object is being deleted",
                    )],
                ));
            }
        }
        let mut new = self.admit(rt, version, new, Some(old))?;
        new["apiVersion"] = json!(rt.api_version(rt.storage_version()));
        // Only spec-side writes move the generation: a status write has already been reduced to
        // the old object plus the new status.
        if rt.custom && subresource.is_none() && content(&new) != content(old) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(generation + 1));
        }
        let mut entries = Entry::read_all(old);
        let before_ownership: Vec<(String, String, Option<String>, FieldSet)> = entries
            .iter()
            .map(|e| {
                (
                    e.manager.clone(),
                    e.operation.clone(),
                    e.subresource.clone(),
                    e.fields.clone(),
                )
            })
            .collect();
        match ownership {
            Ownership::Update(writer) => {
                let changed = managed::changed(old, &new);
                let owned: FieldSet = changed
                    .iter()
                    .filter(|p| managed::get(&new, p).is_some())
                    .cloned()
                    .collect();
                for entry in entries.iter_mut() {
                    entry
                        .fields
                        .retain(|p| !changed.iter().any(|c| managed::overlaps(c, p)));
                }
                if !owned.is_empty() {
                    managed::take_ownership(&mut entries, &writer, &owned, false);
                }
                entries.retain(|e| !e.fields.is_empty());
            }
            Ownership::Apply(writer, applied) => {
                managed::take_ownership(&mut entries, &writer, &applied, true)
            }
        }
        let after_ownership: Vec<(String, String, Option<String>, FieldSet)> = entries
            .iter()
            .map(|e| {
                (
                    e.manager.clone(),
                    e.operation.clone(),
                    e.subresource.clone(),
                    e.fields.clone(),
                )
            })
            .collect();
        if without_managed_fields(&new) == without_managed_fields(old)
            && before_ownership == after_ownership
        {
            // A no-op write: no new resourceVersion, no watch event, as the apiserver.
            return Ok(old.clone());
        }
        Entry::write_all(&mut new, &entries);
        if dry_run {
            return Ok(new);
        }
        let rv = self.store.next_rv();
        meta_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
        self.store.objects.insert(key.clone(), new.clone());
        self.store.record(HistoryEvent {
            rv,
            resource: key.resource.clone(),
            namespace: key.namespace.clone(),
            event: EventType::Modified,
            object: new.clone(),
            old: Some(old.clone()),
        });
        self.sweep();
        Ok(self.store.objects.get(key).cloned().unwrap_or(new))
    }

    pub fn delete(&mut self, input: &Input) -> Result<Reply, ApiError> {
        let rt = self.resource(&input.route)?;
        let ns = self.namespace_of(&rt, input)?.to_owned();
        let name = input.route.name.clone().unwrap_or_default();
        let key = key_of(&rt, &ns, &name);
        let options: Value = if input.body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(&input.body).unwrap_or_else(|_| json!({}))
        };
        let old = self
            .store
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt, &name))?;
        if let Some(uid) = options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            && Some(uid) != meta_str(&old, "uid")
        {
            let why = format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta_str(&old, "uid").unwrap_or_default()
            );
            return Err(ApiError::conflict_because(&rt, &name, &why));
        }
        if let Some(rv) = options
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            let why = format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                meta_str(&old, "resourceVersion").unwrap_or_default()
            );
            return Err(ApiError::conflict_because(&rt, &name, &why));
        }
        let dry_run = input.dry_run()
            || options
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|d| d.iter().any(|v| v == "All"));
        if dry_run {
            return Ok(Reply::Json(200, input.presentation(&rt).present(&old)));
        }
        let policy = input
            .param("propagationPolicy")
            .map(str::to_owned)
            .or_else(|| {
                options
                    .get("propagationPolicy")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
        let result = self.delete_object(&rt, &key, policy.as_deref());
        self.sweep();
        match result {
            Some(object) => Ok(Reply::Json(200, input.presentation(&rt).present(&object))),
            None if rt.custom => {
                let mut gone = old.clone();
                meta_mut(&mut gone)
                    .insert("resourceVersion".into(), json!(self.store.rv.to_string()));
                Ok(Reply::Json(200, input.presentation(&rt).present(&gone)))
            }
            None => Ok(Reply::Json(
                200,
                status::success(&rt, &name, meta_str(&old, "uid").unwrap_or_default()),
            )),
        }
    }

    pub fn delete_collection(&mut self, input: &Input) -> Result<Reply, ApiError> {
        let rt = self.resource(&input.route)?;
        let selector = Selector::parse(input.param("labelSelector"), input.param("fieldSelector"))?;
        let ns = input.route.namespace.clone();
        let keys: Vec<ObjectKey> = self
            .store
            .objects
            .iter()
            .filter(|(k, _)| {
                k.resource == rt.key() && ns.as_ref().is_none_or(|ns| *ns == k.namespace)
            })
            .filter(|(_, v)| selector.matches(v))
            .map(|(k, _)| k.clone())
            .collect();
        let policy = input.param("propagationPolicy").map(str::to_owned);
        let mut items = Vec::new();
        for key in keys {
            let before = self.store.objects.get(&key).cloned();
            let after = self.delete_object(&rt, &key, policy.as_deref());
            if let Some(object) = after.or(before) {
                items.push(input.presentation(&rt).present(&object));
            }
        }
        self.sweep();
        Ok(Reply::Json(
            200,
            json!({
                "apiVersion": rt.api_version(&input.route.version),
                "kind": rt.list_kind,
                "metadata": {"resourceVersion": self.store.rv.to_string()},
                "items": items,
            }),
        ))
    }

    /// Marks for deletion (when finalizers remain) and returns the object, or removes it and
    /// returns `None`.
    fn delete_object(
        &mut self,
        rt: &ResourceType,
        key: &ObjectKey,
        policy: Option<&str>,
    ) -> Option<Value> {
        let old = self.store.objects.get(key).cloned()?;
        let mut new = old.clone();
        let mut finals = finalizers(&new);
        if !deleting(&old) {
            let extra = match policy {
                Some("Foreground") => Some("foregroundDeletion"),
                Some("Orphan") => Some("orphan"),
                _ => None,
            };
            if let Some(extra) = extra
                && (self.has_dependents(&old) || !finals.is_empty())
                && !finals.iter().any(|f| f == extra)
            {
                finals.push(extra.to_owned());
                meta_mut(&mut new).insert("finalizers".into(), json!(finals));
            }
        }
        let namespace_with_content =
            rt.kind == "Namespace" && self.store.objects.keys().any(|k| k.namespace == key.name);
        if finals.is_empty() && !namespace_with_content {
            self.remove_object(key);
            return None;
        }
        if deleting(&old) {
            return Some(old);
        }
        {
            let generation = old.pointer("/metadata/generation").and_then(Value::as_i64);
            let meta = meta_mut(&mut new);
            meta.insert("deletionTimestamp".into(), json!(now()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            if let Some(g) = generation.filter(|g| *g > 0) {
                meta.insert("generation".into(), json!(g + 1));
            }
        }
        if rt.kind == "Namespace" {
            new["status"] = json!({"phase": "Terminating"});
        }
        self.store_modified(key, &old, new.clone());
        Some(new)
    }

    fn store_modified(&mut self, key: &ObjectKey, old: &Value, mut new: Value) {
        let rv = self.store.next_rv();
        meta_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
        self.store.objects.insert(key.clone(), new.clone());
        self.store.record(HistoryEvent {
            rv,
            resource: key.resource.clone(),
            namespace: key.namespace.clone(),
            event: EventType::Modified,
            object: new,
            old: Some(old.clone()),
        });
    }

    pub fn remove_object(&mut self, key: &ObjectKey) -> Option<Value> {
        let mut object = self.store.objects.remove(key)?;
        let rv = self.store.next_rv();
        meta_mut(&mut object).insert("resourceVersion".into(), json!(rv.to_string()));
        self.store.record(HistoryEvent {
            rv,
            resource: key.resource.clone(),
            namespace: key.namespace.clone(),
            event: EventType::Deleted,
            object: object.clone(),
            old: None,
        });
        Some(object)
    }

    fn has_dependents(&self, owner: &Value) -> bool {
        let Some(uid) = meta_str(owner, "uid") else {
            return false;
        };
        self.store
            .objects
            .values()
            .any(|o| owner_uids(o).iter().any(|u| u == uid))
    }

    /// The controllers a real cluster runs in the background, done synchronously after each write:
    /// objects marked for deletion whose finalizers are gone are removed, `orphan` and
    /// `foregroundDeletion` are honoured, terminating namespaces are emptied, and dependents whose
    /// owners are all gone are deleted (background propagation).
    pub fn sweep(&mut self) {
        for _ in 0..100 {
            if !self.sweep_once() {
                return;
            }
        }
    }

    fn sweep_once(&mut self) -> bool {
        let objects: Vec<(ObjectKey, Value)> = self
            .store
            .objects
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let live_uids: Vec<String> = objects
            .iter()
            .filter_map(|(_, v)| meta_str(v, "uid").map(str::to_owned))
            .collect();
        for (key, object) in &objects {
            let Some(rt) = self.registry.by_key(&key.resource).cloned() else {
                continue;
            };
            if deleting(object) {
                let finals = finalizers(object);
                let uid = meta_str(object, "uid").unwrap_or_default().to_owned();
                if finals.iter().any(|f| f == "orphan") {
                    let dependents: Vec<(ObjectKey, Value)> = objects
                        .iter()
                        .filter(|(_, o)| owner_uids(o).contains(&uid))
                        .cloned()
                        .collect();
                    for (dep_key, dep) in dependents {
                        let mut freed = dep.clone();
                        if let Some(refs) = freed
                            .pointer_mut("/metadata/ownerReferences")
                            .and_then(Value::as_array_mut)
                        {
                            refs.retain(|r| {
                                r.get("uid").and_then(Value::as_str) != Some(uid.as_str())
                            });
                        }
                        self.store_modified(&dep_key, &dep, freed);
                    }
                    self.drop_finalizer(key, object, "orphan");
                    return true;
                }
                if finals.iter().any(|f| f == "foregroundDeletion") {
                    let dependents: Vec<ObjectKey> = objects
                        .iter()
                        .filter(|(_, o)| owner_uids(o).contains(&uid))
                        .map(|(k, _)| k.clone())
                        .collect();
                    if dependents.is_empty() {
                        self.drop_finalizer(key, object, "foregroundDeletion");
                        return true;
                    }
                    let mut changed = false;
                    for dep in dependents {
                        if self.store.objects.get(&dep).is_some_and(|d| !deleting(d))
                            && let Some(dep_rt) = self.registry.by_key(&dep.resource).cloned()
                        {
                            self.delete_object(&dep_rt, &dep, Some("Background"));
                            changed = true;
                        }
                    }
                    if changed {
                        return true;
                    }
                }
                if rt.kind == "Namespace" {
                    let contents: Vec<ObjectKey> = objects
                        .iter()
                        .filter(|(k, _)| k.namespace == key.name)
                        .map(|(k, _)| k.clone())
                        .collect();
                    let mut changed = false;
                    for content_key in &contents {
                        if self
                            .store
                            .objects
                            .get(content_key)
                            .is_some_and(|c| !deleting(c))
                            && let Some(content_rt) =
                                self.registry.by_key(&content_key.resource).cloned()
                        {
                            self.delete_object(&content_rt, content_key, Some("Background"));
                            changed = true;
                        }
                    }
                    if changed {
                        return true;
                    }
                    if contents.is_empty() && finals.is_empty() {
                        self.remove_object(key);
                        return true;
                    }
                    continue;
                }
                if finals.is_empty() {
                    self.remove_object(key);
                    return true;
                }
            } else {
                let owners = owner_uids(object);
                if !owners.is_empty() && owners.iter().all(|u| !live_uids.contains(u)) {
                    self.delete_object(&rt, key, Some("Background"));
                    return true;
                }
            }
        }
        false
    }

    fn drop_finalizer(&mut self, key: &ObjectKey, object: &Value, finalizer: &str) {
        let mut new = object.clone();
        let kept: Vec<String> = finalizers(object)
            .into_iter()
            .filter(|f| f != finalizer)
            .collect();
        meta_mut(&mut new).insert("finalizers".into(), json!(kept));
        self.store_modified(key, object, new);
    }
}

/// Whether `object` and `old` agree at the first `depth` segments of a field path
/// (`spec.items[0].name`). The root path never counts as unchanged.
fn unchanged_at(object: &Value, old: &Value, field: &str, depth: usize) -> bool {
    let segments: Vec<&str> = field
        .split(['.', '[', ']'])
        .filter(|s| !s.is_empty())
        .take(depth)
        .collect();
    if segments.is_empty() || segments[0] == "<nil>" {
        return false;
    }
    let at = |v: &Value| {
        segments
            .iter()
            .try_fold(v.clone(), |v, k| match k.parse::<usize>() {
                Ok(i) => v.get(i).cloned(),
                Err(_) => v.get(*k).cloned(),
            })
    };
    at(object) == at(old)
}

fn owner_uids(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

enum Ownership {
    Update(Writer),
    Apply(Writer, FieldSet),
}
