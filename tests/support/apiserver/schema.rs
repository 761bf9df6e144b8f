//! What the apiserver does to a custom resource before it is stored, in its order: structural pruning
//! of unknown fields (and of `null`s the schema does not allow), schema defaults, OpenAPI validation
//! (types, required, enum, pattern, lengths, item counts, bounds, list-type uniqueness) and the
//! `x-kubernetes-validations` CEL rules through kube's client-side checker (`kube::core::cel`),
//! transition rules (`oldSelf`) included on updates. Field paths and messages follow the apiserver's.

use std::sync::LazyLock;

use kube::core::cel::{ErrorKind, RootContext, ValidationError, Validator};
use regex::Regex;
use serde_json::{Map, Value};

use super::registry::NameRule;
use super::status::Cause;

/// Removes what a structural schema does not declare. `root` keeps `apiVersion`, `kind` and
/// `metadata` (metadata is normalised separately, through `ObjectMeta`).
pub fn prune(schema: &Value, value: &mut Value, root: bool) {
    match value {
        Value::Object(map) => {
            if schema
                .get("x-kubernetes-int-or-string")
                .and_then(Value::as_bool)
                == Some(true)
            {
                return;
            }
            let preserve = schema
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                == Some(true);
            let embedded = schema
                .get("x-kubernetes-embedded-resource")
                .and_then(Value::as_bool)
                == Some(true);
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let kept_by_meta = (root || embedded)
                    && matches!(key.as_str(), "apiVersion" | "kind" | "metadata");
                if root && key == "metadata" {
                    continue;
                }
                let child_schema = properties.and_then(|p| p.get(&key)).or(additional);
                match child_schema {
                    Some(child_schema) => {
                        let nullable =
                            child_schema.get("nullable").and_then(Value::as_bool) == Some(true);
                        if map.get(&key).is_some_and(Value::is_null) && !nullable {
                            // The apiserver drops nulls for non-nullable fields before defaulting.
                            map.remove(&key);
                        } else if let Some(child) = map.get_mut(&key) {
                            prune(child_schema, child, false);
                        }
                    }
                    None if preserve || kept_by_meta => {}
                    None => {
                        map.remove(&key);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    prune(item_schema, item, false);
                }
            }
        }
        _ => {}
    }
}

/// Schema defaults, as kube's CEL checker applies them (the same walk the apiserver does).
pub fn apply_defaults(schema: &Value, value: &Value) -> Value {
    kube::core::cel::apply_defaults(schema, value)
}

/// `"string"`, `"integer"`, ... as the apiserver names JSON types in messages.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value as Go's `%v`/`%q` would print it in a message: strings quoted, the rest as JSON.
fn shown(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn has_type(value: &Value, ty: &str) -> bool {
    match ty {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        _ => true,
    }
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

static PATTERNS: LazyLock<std::sync::Mutex<std::collections::HashMap<String, Option<Regex>>>> =
    LazyLock::new(Default::default);

fn pattern_matches(pattern: &str, s: &str) -> bool {
    let mut cache = PATTERNS.lock().unwrap();
    let re = cache
        .entry(pattern.to_owned())
        .or_insert_with(|| Regex::new(pattern).ok());
    // A pattern the regex crate cannot compile is not held against the object.
    re.as_ref().is_none_or(|re| re.is_match(s))
}

/// OpenAPI v3 validation of `value` against `schema`, collecting causes under `path`.
/// At the root, `apiVersion`, `kind` and `metadata` are skipped (metadata is checked by
/// [`validate_metadata`]).
pub fn validate(schema: &Value, value: &Value, path: &str, causes: &mut Vec<Cause>, root: bool) {
    if value.is_null() && schema.get("nullable").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if int_or_string {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            let t = type_name(value);
            causes.push(Cause::new(
                "FieldValueTypeInvalid",
                path,
                format!(
                    "Invalid value: \"{t}\": {path} in body must be of type integer,string: \"{t}\""
                ),
            ));
            return;
        }
    } else if let Some(ty) = schema.get("type").and_then(Value::as_str)
        && !has_type(value, ty)
    {
        let t = type_name(value);
        causes.push(Cause::new(
            "FieldValueTypeInvalid",
            path,
            format!("Invalid value: \"{t}\": {path} in body must be of type {ty}: \"{t}\""),
        ));
        return;
    }

    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let listed: Vec<String> = allowed.iter().map(shown).collect();
        causes.push(Cause::new(
            "FieldValueNotSupported",
            path,
            format!(
                "Unsupported value: {}: supported values: {}",
                shown(value),
                listed.join(", ")
            ),
        ));
    }

    match value {
        Value::String(s) => validate_string(schema, s, path, causes),
        Value::Number(n) => {
            validate_number(schema, n.as_f64().unwrap_or_default(), value, path, causes)
        }
        Value::Array(items) => validate_array(schema, items, path, causes),
        Value::Object(map) => validate_object(schema, map, path, causes, root),
        _ => {}
    }

    validate_combinators(schema, value, path, causes, root);
}

fn validate_string(schema: &Value, s: &str, path: &str, causes: &mut Vec<Cause>) {
    let len = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        causes.push(Cause::new(
            "FieldValueTooLong",
            path,
            format!("Too long: may not be more than {max} bytes"),
        ));
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            path,
            format!(
                "Invalid value: {}: {path} in body should be at least {min} chars long",
                shown(&Value::from(s))
            ),
        ));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
        && !pattern_matches(pattern, s)
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            path,
            format!(
                "Invalid value: {}: {path} in body should match '{pattern}'",
                shown(&Value::from(s))
            ),
        ));
    }
}

fn validate_number(schema: &Value, n: f64, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    let exclusive = |key: &str| schema.get(key).and_then(Value::as_bool) == Some(true);
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let (bad, words) = if exclusive("exclusiveMaximum") {
            (n >= max, "less than")
        } else {
            (n > max, "less than or equal to")
        };
        if bad {
            causes.push(Cause::new(
                "FieldValueInvalid",
                path,
                format!(
                    "Invalid value: {}: {path} in body should be {words} {}",
                    shown(value),
                    shown(&schema["maximum"])
                ),
            ));
        }
    }
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let (bad, words) = if exclusive("exclusiveMinimum") {
            (n <= min, "greater than")
        } else {
            (n < min, "greater than or equal to")
        };
        if bad {
            causes.push(Cause::new(
                "FieldValueInvalid",
                path,
                format!(
                    "Invalid value: {}: {path} in body should be {words} {}",
                    shown(value),
                    shown(&schema["minimum"])
                ),
            ));
        }
    }
}

fn validate_array(schema: &Value, items: &[Value], path: &str, causes: &mut Vec<Cause>) {
    let len = items.len() as u64;
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && len > max
    {
        causes.push(Cause::new(
            "FieldValueTooMany",
            path,
            format!("Too many: {len}: must have at most {max} items"),
        ));
    }
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
        && len < min
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {len}: {path} in body should have at least {min} items"),
        ));
    }
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    causes.push(Cause::new(
                        "FieldValueDuplicate",
                        format!("{path}[{i}]"),
                        format!("Duplicate value: {}", shown(item)),
                    ));
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let key_of = |item: &Value| -> Map<String, Value> {
                keys.iter()
                    .filter_map(|k| Some(((*k).to_owned(), item.get(*k)?.clone())))
                    .collect()
            };
            for (i, item) in items.iter().enumerate() {
                let key = key_of(item);
                if items[..i].iter().any(|earlier| key_of(earlier) == key) {
                    causes.push(Cause::new(
                        "FieldValueDuplicate",
                        format!("{path}[{i}]"),
                        format!("Duplicate value: {}", shown(&Value::Object(key))),
                    ));
                }
            }
        }
        _ => {}
    }
    if let Some(item_schema) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            validate(item_schema, item, &format!("{path}[{i}]"), causes, false);
        }
    }
}

fn validate_object(
    schema: &Value,
    map: &Map<String, Value>,
    path: &str,
    causes: &mut Vec<Cause>,
    root: bool,
) {
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if root && name == "metadata" {
                continue;
            }
            if !map.contains_key(name) {
                causes.push(Cause::new(
                    "FieldValueRequired",
                    child_path(path, name),
                    "Required value",
                ));
            }
        }
    }
    let count = map.len() as u64;
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && count > max
    {
        causes.push(Cause::new(
            "FieldValueTooMany",
            path,
            format!("Too many: {count}: must have at most {max} items"),
        ));
    }
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
        && count < min
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {count}: {path} in body should have at least {min} properties"),
        ));
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (key, child) in map {
        if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(child_schema) = properties.and_then(|p| p.get(key)) {
            validate(child_schema, child, &child_path(path, key), causes, false);
        } else if let Some(child_schema) = additional {
            validate(
                child_schema,
                child,
                &format!("{path}[{key}]"),
                causes,
                false,
            );
        }
    }
}

fn validate_combinators(
    schema: &Value,
    value: &Value,
    path: &str,
    causes: &mut Vec<Cause>,
    root: bool,
) {
    let passes = |branch: &Value| {
        let mut branch_causes = Vec::new();
        validate(branch, value, path, &mut branch_causes, root);
        branch_causes.is_empty()
    };
    if let Some(branches) = schema.get("allOf").and_then(Value::as_array) {
        for branch in branches {
            validate(branch, value, path, causes, root);
        }
    }
    if let Some(branches) = schema.get("anyOf").and_then(Value::as_array)
        && !branches.iter().any(passes)
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            path,
            format!(
                "Invalid value: \"{}\": {path} in body must match at least one schema in anyOf",
                type_name(value)
            ),
        ));
    }
    if let Some(branches) = schema.get("oneOf").and_then(Value::as_array)
        && branches.iter().filter(|b| passes(b)).count() != 1
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            path,
            format!(
                "Invalid value: \"{}\": {path} in body must match exactly one schema in oneOf",
                type_name(value)
            ),
        ));
    }
    if let Some(not) = schema.get("not")
        && passes(not)
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            path,
            format!(
                "Invalid value: \"{}\": {path} in body should not match the schema in not",
                type_name(value)
            ),
        ));
    }
}

thread_local! {
    static CEL: Validator = Validator::new();
}

/// The value a CEL error's field path points at, for the `Invalid value: "object"` part.
fn value_at<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = object;
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let (name, indices) = segment
            .split_once('[')
            .map_or((segment, ""), |(n, rest)| (n, rest));
        if !name.is_empty() {
            current = current.get(name)?;
        }
        for index in indices.split('[').filter(|s| !s.is_empty()) {
            let index = index.trim_end_matches(']');
            current = match index.parse::<usize>() {
                Ok(i) => current.get(i)?,
                Err(_) => current.get(index)?,
            };
        }
    }
    Some(current)
}

fn cel_cause(object: &Value, error: &ValidationError) -> Cause {
    let reason = match error.kind {
        ErrorKind::ValidationFailure => error
            .reason
            .clone()
            .unwrap_or_else(|| "FieldValueInvalid".to_owned()),
        _ => "FieldValueInvalid".to_owned(),
    };
    let message = match reason.as_str() {
        "FieldValueForbidden" => format!("Forbidden: {}", error.message),
        "FieldValueRequired" => format!("Required value: {}", error.message),
        "FieldValueDuplicate" => format!("Duplicate value: {}", error.message),
        _ => {
            let t = value_at(object, &error.field_path).map_or("object", type_name);
            format!("Invalid value: \"{t}\": {}", error.message)
        }
    };
    Cause::new(&reason, error.field_path.clone(), message)
}

/// The CRD's `x-kubernetes-validations`, with `oldSelf` bound on updates.
pub fn validate_cel(
    schema: &Value,
    object: &Value,
    old: Option<&Value>,
    context: &RootContext,
) -> Vec<Cause> {
    match CEL.with(|v| v.validate_with_context(schema, object, old, Some(context))) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| cel_cause(object, e)).collect(),
    }
}

static SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$").unwrap()
});
static LABEL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").unwrap());
static LABEL_VALUE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$").unwrap());

fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = key
        .rsplit_once('/')
        .map_or((None, key), |(p, n)| (Some(p), n));
    let name_ok = !name.is_empty() && name.len() <= 63 && LABEL_VALUE.is_match(name);
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && SUBDOMAIN.is_match(p));
    name_ok && prefix_ok
}

/// `metadata.name` and label syntax, as the apiserver checks them for every resource.
pub fn validate_metadata(object: &Value, rule: NameRule) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let shown_name = shown(&Value::from(name));
    match rule {
        NameRule::Subdomain if name.len() > 253 || !SUBDOMAIN.is_match(name) => causes.push(Cause::new(
            "FieldValueInvalid",
            "metadata.name",
            format!("Invalid value: {shown_name}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"),
        )),
        NameRule::Label if name.len() > 63 || !LABEL.is_match(name) => causes.push(Cause::new(
            "FieldValueInvalid",
            "metadata.name",
            format!("Invalid value: {shown_name}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"),
        )),
        _ => {}
    }
    if let Some(labels) = object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
    {
        for (key, value) in labels {
            if !valid_label_key(key) {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    "metadata.labels",
                    format!("Invalid value: {}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character", shown(&Value::from(key.as_str()))),
                ));
            }
            let v = value.as_str().unwrap_or("");
            if v.len() > 63 || !LABEL_VALUE.is_match(v) {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    "metadata.labels",
                    format!("Invalid value: {}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character", shown(value)),
                ));
            }
        }
    }
    causes
}
