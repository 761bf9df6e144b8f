//! Field managers, simplified: enough for server-side apply of a status (conditions as a whole) and
//! for seeing who wrote what in `metadata.managedFields`.
//!
//! A field set is the set of leaf paths of an object, where a leaf is a scalar, a list (lists are
//! atomic here: an applied list replaces the whole list, as `conditions` is applied as a whole) or
//! an empty object. Sets are stored in `managedFields[].fieldsV1` (`{"f:status":{"f:phase":{}}}`).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

pub type Path = Vec<String>;
pub type FieldSet = BTreeSet<Path>;

/// Metadata the server owns: never part of anyone's field set.
fn server_owned(path: &[String]) -> bool {
    match path.first().map(String::as_str) {
        Some("apiVersion" | "kind") => true,
        Some("metadata") => !matches!(
            path.get(1).map(String::as_str),
            Some("labels" | "annotations" | "finalizers" | "ownerReferences")
        ),
        _ => false,
    }
}

fn collect(value: &Value, prefix: &mut Path, out: &mut FieldSet) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                prefix.push(key.clone());
                collect(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {
            if !prefix.is_empty() && !server_owned(prefix) {
                out.insert(prefix.clone());
            }
        }
    }
}

/// The leaf paths of `value`, without server-owned metadata.
pub fn leaves(value: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    collect(value, &mut Vec::new(), &mut out);
    out
}

pub fn get<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

pub fn remove(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = value;
    for key in parents {
        match current.get_mut(key) {
            Some(next) => current = next,
            None => return,
        }
    }
    if let Some(map) = current.as_object_mut() {
        map.remove(last);
    }
}

/// Applies a configuration onto a live object: objects merge key by key, anything else replaces.
pub fn merge_into(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(target), Value::Object(applied)) => {
            for (key, value) in applied {
                match target.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        merge_into(existing, value)
                    }
                    _ => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (target, applied) => *target = applied.clone(),
    }
}

/// Leaves that differ between two versions of an object (added, changed or removed).
pub fn changed(old: &Value, new: &Value) -> FieldSet {
    let old_leaves = leaves(old);
    let new_leaves = leaves(new);
    old_leaves
        .symmetric_difference(&new_leaves)
        .cloned()
        .chain(
            new_leaves
                .iter()
                .filter(|p| get(old, p) != get(new, p))
                .cloned(),
        )
        .collect()
}

pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut current = &mut root;
        for key in path {
            let entry = current
                .entry(format!("f:{key}"))
                .or_insert_with(|| json!({}));
            let Value::Object(next) = entry else { break };
            current = next;
        }
    }
    Value::Object(root)
}

pub fn from_fields_v1(value: &Value) -> FieldSet {
    fn walk(value: &Value, prefix: &mut Path, out: &mut FieldSet) {
        let fields: Vec<(&String, &Value)> = value
            .as_object()
            .map(|m| m.iter().filter(|(k, _)| k.starts_with("f:")).collect())
            .unwrap_or_default();
        if fields.is_empty() {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
            return;
        }
        for (key, child) in fields {
            prefix.push(key[2..].to_owned());
            walk(child, prefix, out);
            prefix.pop();
        }
    }
    let mut out = FieldSet::new();
    walk(value, &mut Vec::new(), &mut out);
    out
}

/// Whether `path` lies at or under `prefix`, or `prefix` under `path`.
pub fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub subresource: Option<String>,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
}

impl Entry {
    pub fn read_all(object: &Value) -> Vec<Entry> {
        object
            .pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| Entry {
                        manager: e["manager"].as_str().unwrap_or_default().to_owned(),
                        operation: e["operation"].as_str().unwrap_or_default().to_owned(),
                        subresource: e
                            .get("subresource")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        api_version: e["apiVersion"].as_str().unwrap_or_default().to_owned(),
                        time: e["time"].as_str().unwrap_or_default().to_owned(),
                        fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn write_all(object: &mut Value, entries: &[Entry]) {
        let rendered: Vec<Value> = entries
            .iter()
            .filter(|e| !e.fields.is_empty())
            .map(|e| {
                let mut v = json!({
                    "manager": e.manager,
                    "operation": e.operation,
                    "apiVersion": e.api_version,
                    "time": e.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": to_fields_v1(&e.fields),
                });
                if let Some(sub) = &e.subresource {
                    v["subresource"] = json!(sub);
                }
                v
            })
            .collect();
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            if rendered.is_empty() {
                meta.remove("managedFields");
            } else {
                meta.insert("managedFields".to_owned(), Value::Array(rendered));
            }
        }
    }
}

/// Who writes, and how.
#[derive(Clone, Debug)]
pub struct Writer {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: &'static str,
    pub subresource: Option<String>,
    pub api_version: String,
    pub time: String,
}

/// Records `fields` as owned by `writer`, taking them away from every other manager.
pub fn take_ownership(
    entries: &mut Vec<Entry>,
    writer: &Writer,
    fields: &FieldSet,
    replace_own: bool,
) {
    for entry in entries.iter_mut() {
        let same = entry.manager == writer.manager
            && entry.operation == writer.operation
            && entry.subresource == writer.subresource;
        if !same {
            entry
                .fields
                .retain(|p| !fields.iter().any(|f| overlaps(f, p)));
        }
    }
    let position = entries.iter().position(|e| {
        e.manager == writer.manager
            && e.operation == writer.operation
            && e.subresource == writer.subresource
    });
    let entry = match position {
        Some(i) => &mut entries[i],
        None => {
            entries.push(Entry {
                manager: writer.manager.clone(),
                operation: writer.operation.to_owned(),
                subresource: writer.subresource.clone(),
                api_version: writer.api_version.clone(),
                time: writer.time.clone(),
                fields: FieldSet::new(),
            });
            let last = entries.len() - 1;
            &mut entries[last]
        }
    };
    if replace_own {
        entry.fields = fields.clone();
    } else {
        entry.fields.extend(fields.iter().cloned());
    }
    entry.time = writer.time.clone();
    entry.api_version = writer.api_version.clone();
    entries.retain(|e| !e.fields.is_empty());
}

/// Fields of `applied` that another manager owns with a different live value.
pub fn conflicts(
    entries: &[Entry],
    writer: &Writer,
    applied: &FieldSet,
    live: &Value,
    config: &Value,
) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in entries.iter().filter(|e| e.manager != writer.manager) {
        for path in applied {
            if entry.fields.iter().any(|p| overlaps(p, path))
                && get(live, path) != get(config, path)
            {
                found.push((entry.manager.clone(), format!(".{}", path.join("."))));
            }
        }
    }
    found
}
