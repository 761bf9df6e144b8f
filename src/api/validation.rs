//! Validate an object against a CRD as the apiserver would: structural pruning (reported, not silent:
//! a typo such as `principles:` must not pass unnoticed), schema defaults, the OpenAPI schema
//! (types, patterns, lengths, enums) and the CEL rules, evaluated client-side by kube's CEL checker.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

/// One problem with one field, named by its path (`spec.principals[0].user`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Validates `object` (create) or the update from `old` to `object`, and returns it with schema
/// defaults applied and nulls of non-nullable fields pruned, or every problem found. Compiles the
/// CRD's schema for this one call: to validate many objects, build a [`CrdValidator`] once.
pub fn validate_object(
    crd: &CustomResourceDefinition,
    object: &Value,
    old: Option<&Value>,
) -> Result<Value, Vec<FieldError>> {
    CrdValidator::new(crd).validate(object, old)
}

/// A CRD with the schema of each served version compiled once (JSON Schema, formats and CEL
/// rules): compiling is what costs, so a directory of manifests (or a fuzz target) validates each
/// object against a validator built once, not against the CRD.
pub struct CrdValidator {
    group: String,
    first_version: String,
    versions: Vec<CompiledVersion>,
    cel: kube::core::cel::Validator,
}

struct CompiledVersion {
    name: String,
    schema: Value,
    // The error is kept as text and reported per object, as when it was compiled per object.
    json: Result<jsonschema::Validator, String>,
    cel: kube::core::cel::CompiledSchema,
}

impl std::fmt::Debug for CrdValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrdValidator")
            .field("group", &self.group)
            .field(
                "versions",
                &self.versions.iter().map(|v| &v.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl CrdValidator {
    pub fn new(crd: &CustomResourceDefinition) -> CrdValidator {
        let versions = crd
            .spec
            .versions
            .iter()
            .filter(|v| v.served)
            .filter_map(|v| {
                let schema =
                    serde_json::to_value(v.schema.as_ref()?.open_api_v3_schema.as_ref()?).ok()?;
                // Formats too (date-time): the apiserver checks them, so a bad expiresAt must fail
                // here, with the field's name, not later in deserialisation without one.
                let json = jsonschema::options()
                    .should_validate_formats(true)
                    .build(&schema)
                    .map_err(|error| error.to_string());
                let cel = kube::core::cel::compile_schema(&schema);
                Some(CompiledVersion {
                    name: v.name.clone(),
                    schema,
                    json,
                    cel,
                })
            })
            .collect();
        CrdValidator {
            group: crd.spec.group.clone(),
            first_version: crd
                .spec
                .versions
                .first()
                .map(|v| v.name.clone())
                .unwrap_or_else(|| "?".into()),
            versions,
            cel: kube::core::cel::Validator::new(),
        }
    }

    /// See [`validate_object`].
    pub fn validate(&self, object: &Value, old: Option<&Value>) -> Result<Value, Vec<FieldError>> {
        let Some(version) = self.version_for(object) else {
            return Err(vec![FieldError {
                field: "apiVersion".into(),
                message: format!("must be {}/{}", self.group, self.first_version),
            }]);
        };
        let schema = &version.schema;
        let mut errors = Vec::new();
        let mut pruned = object.clone();
        prune(schema, &mut pruned, "", &mut errors);
        let defaulted = kube::core::cel::apply_defaults(schema, &pruned);

        match &version.json {
            Ok(validator) => {
                for error in validator.iter_errors(&defaulted) {
                    errors.push(FieldError {
                        field: pointer_to_path(error.instance_path.as_str()),
                        message: schema_message(schema, &error),
                    });
                }
            }
            Err(error) => errors.push(FieldError {
                field: "(schema)".into(),
                message: format!("the CRD schema does not compile: {error}"),
            }),
        }
        // CEL rules assume a schema-valid object (the apiserver runs them only then).
        if errors.is_empty()
            && let Err(cel_errors) = self.cel.validate_compiled(&version.cel, &defaulted, old)
        {
            for error in cel_errors.into_vec() {
                errors.push(FieldError {
                    field: if error.field_path.is_empty() {
                        "(object)".into()
                    } else {
                        error.field_path.clone()
                    },
                    message: bounded(&error.message, MAX_MESSAGE),
                });
            }
        }
        if errors.is_empty() {
            Ok(defaulted)
        } else {
            Err(errors)
        }
    }

    fn version_for(&self, object: &Value) -> Option<&CompiledVersion> {
        let api_version = object.get("apiVersion")?.as_str()?;
        let (group, version) = api_version.split_once('/')?;
        if group != self.group {
            return None;
        }
        self.versions.iter().find(|v| v.name == version)
    }
}

/// The most characters of a value from the user's file echoed back in a message: enough to
/// recognise it, never a whole list (jsonschema's own messages print the entire instance).
pub const MAX_ECHOED: usize = 64;
/// The most characters of one message about one field.
pub const MAX_MESSAGE: usize = 240;

/// `text` cut to at most `max` characters (on a character boundary), marked with `…` when cut.
pub fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max.saturating_sub(1)) {
        Some((end, _)) if text.chars().count() > max => format!("{}…", &text[..end]),
        _ => text.to_string(),
    }
}

/// A value from the user's file as it appears in a message: compact JSON, bounded.
pub fn echo(value: &Value) -> String {
    bounded(&value.to_string(), MAX_ECHOED)
}

// One short sentence per failed schema keyword that says what is wrong and what is expected,
// echoing at most MAX_ECHOED characters of the value.
fn schema_message(schema: &Value, error: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind as Kind;
    let instance: &Value = &error.instance;
    let shown = echo(instance);
    let message = match &error.kind {
        Kind::MaxItems { limit } => format!("{} items, at most {limit}", array_len(instance)),
        Kind::MinItems { limit } => format!("{} items, at least {limit}", array_len(instance)),
        Kind::MaxLength { limit } => format!(
            "{} characters, at most {limit}",
            instance.as_str().map_or(0, |s| s.chars().count())
        ),
        Kind::MinLength { limit: 1 } => "must not be empty".to_string(),
        Kind::MinLength { limit } => format!("{shown} is shorter than {limit} characters"),
        Kind::Pattern { pattern } => {
            // jsonschema reports the pattern as translated for its regex engine; the schema holds
            // the one the CRD declares, which is what the table of descriptions knows.
            let declared = schema
                .pointer(error.schema_path.as_str())
                .and_then(Value::as_str)
                .unwrap_or(pattern);
            format!("{shown} is not {}", describe_pattern(declared))
        }
        Kind::Format { format } if format == "date-time" => {
            format!("{shown} is not a date-time: use RFC 3339 in UTC, e.g. 2030-01-01T00:00:00Z")
        }
        Kind::Format { format } => format!("{shown} is not a valid {format}"),
        Kind::Enum { options } => format!("{shown} is not allowed; use one of {}", list(options)),
        Kind::Required { property } => format!(
            "{} is required",
            property
                .as_str()
                .map_or_else(|| echo(property), str::to_string)
        ),
        Kind::Type { kind } => {
            let expected = match kind {
                jsonschema::error::TypeKind::Single(t) => type_name(*t).to_string(),
                jsonschema::error::TypeKind::Multiple(set) => {
                    set.iter().map(type_name).collect::<Vec<_>>().join(" or ")
                }
            };
            format!("{shown} is {}, expected {expected}", json_type(instance))
        }
        Kind::Maximum { limit } | Kind::ExclusiveMaximum { limit } => {
            format!("{shown} is above the maximum {limit}")
        }
        Kind::Minimum { limit } | Kind::ExclusiveMinimum { limit } => {
            format!("{shown} is below the minimum {limit}")
        }
        // Everything else: jsonschema's message with the instance masked, so it cannot run long.
        _ => error.masked_with(shown.as_str()).to_string(),
    };
    bounded(&message, MAX_MESSAGE)
}

fn type_name(kind: jsonschema::JsonType) -> &'static str {
    use jsonschema::JsonType;
    match kind {
        JsonType::Array => "a list",
        JsonType::Boolean => "true or false",
        JsonType::Integer => "a whole number",
        JsonType::Null => "null",
        JsonType::Number => "a number",
        JsonType::Object => "an object (key: value)",
        JsonType::String => "a string",
    }
}

fn array_len(value: &Value) -> usize {
    value.as_array().map_or(0, Vec::len)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn list(options: &Value) -> String {
    match options.as_array() {
        Some(items) => items
            .iter()
            .map(|item| item.as_str().map_or_else(|| echo(item), str::to_string))
            .collect::<Vec<_>>()
            .join(", "),
        None => echo(options),
    }
}

// What each pattern of the CRDs means, in words a person can act on; an unknown pattern is shown
// as is (bounded).
fn describe_pattern(pattern: &str) -> String {
    use super::common::patterns;
    let known = [
        (
            patterns::GUID,
            "a GUID (8-4-4-4-12 hex digits, e.g. 95ce509f-d768-4c1d-b9ae-4595afb90593)",
        ),
        (
            patterns::ACCOUNT_RESOURCE_ID,
            "an account's ARM id: /subscriptions/<guid>/resourceGroups/<group>/providers/Microsoft.CognitiveServices/accounts/<name>",
        ),
        (
            patterns::MANAGED_IDENTITY_ID,
            "a user-assigned identity's ARM id: /subscriptions/<guid>/resourceGroups/<group>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>",
        ),
        (
            patterns::USER_PRINCIPAL_NAME,
            "a user principal name such as alice@contoso.com",
        ),
        (
            patterns::DNS_LABEL,
            "a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit",
        ),
        (
            patterns::DNS_SUBDOMAIN,
            "a Kubernetes name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
        ),
    ];
    known
        .iter()
        .find(|(known, _)| *known == pattern)
        .map_or_else(
            || format!("matching {}", bounded(pattern, MAX_ECHOED)),
            |(_, words)| (*words).to_string(),
        )
}

// Drops what the apiserver would drop: unknown fields (reported, since the apiserver's strict field
// validation rejects them too) and nulls where the schema is not nullable (silently, as the
// apiserver does: null and absent are the same there).
fn prune(schema: &Value, value: &mut Value, path: &str, errors: &mut Vec<FieldError>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            // metadata is the apiserver's to validate, not the CRD schema's.
            if path == ".metadata" {
                return;
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                // The root schema describes spec and status; the apiserver owns the rest.
                if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child_path = format!("{path}.{key}");
                let child_schema = properties
                    .and_then(|p| p.get(&key))
                    .or_else(|| additional.filter(|a| a.is_object()));
                match child_schema {
                    Some(child_schema) => {
                        let nullable = child_schema.get("nullable") == Some(&Value::Bool(true));
                        if map.get(&key).is_some_and(Value::is_null) && !nullable {
                            map.remove(&key);
                        } else if let Some(child) = map.get_mut(&key) {
                            prune(child_schema, child, &child_path, errors);
                        }
                    }
                    None if properties.is_some() => {
                        let known: Vec<&str> = properties
                            .map(|p| p.keys().map(String::as_str).collect())
                            .unwrap_or_default();
                        let shown = bounded(&key, MAX_ECHOED);
                        let message = match closest(&key, &known) {
                            Some(near) => {
                                format!("unknown field {shown:?}: did you mean {near:?}?")
                            }
                            None => bounded(
                                &format!(
                                    "unknown field {shown:?}; known fields are {}",
                                    known.join(", ")
                                ),
                                MAX_MESSAGE,
                            ),
                        };
                        errors.push(FieldError {
                            field: format!("{path}.{shown}")
                                .trim_start_matches('.')
                                .to_string(),
                            message,
                        });
                        map.remove(&key);
                    }
                    None => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter_mut().enumerate() {
                    prune(item_schema, item, &format!("{path}[{index}]"), errors);
                }
            }
        }
        _ => {}
    }
}

// The known field a typo most likely meant: the same name in another case, or one at most two
// edits away (`principles` → `principals`, `expiresat` → `expiresAt`).
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = key.to_ascii_lowercase();
    known
        .iter()
        .map(|name| (edit_distance(&lower, &name.to_ascii_lowercase()), *name))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, name)| name)
}

// Levenshtein distance over characters; keys are short, and a long one gives up early.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > 2 {
        return usize::MAX;
    }
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != cb);
            let value = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
            current.push(value);
        }
        previous = current;
    }
    previous[b.len()]
}

fn pointer_to_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').skip(1) {
        if !segment.is_empty() && segment.chars().all(|c| c.is_ascii_digit()) {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&segment.replace("~1", "/").replace("~0", "~"));
        }
    }
    if path.is_empty() {
        "(object)".into()
    } else {
        path
    }
}
