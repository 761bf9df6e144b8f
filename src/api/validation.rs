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
/// defaults applied and nulls of non-nullable fields pruned, or every problem found.
pub fn validate_object(
    crd: &CustomResourceDefinition,
    object: &Value,
    old: Option<&Value>,
) -> Result<Value, Vec<FieldError>> {
    let Some(schema) = schema_for(crd, object) else {
        return Err(vec![FieldError {
            field: "apiVersion".into(),
            message: format!(
                "must be {}/{}",
                crd.spec.group,
                crd.spec
                    .versions
                    .first()
                    .map(|v| v.name.as_str())
                    .unwrap_or("?")
            ),
        }]);
    };
    let mut errors = Vec::new();
    let mut pruned = object.clone();
    prune(&schema, &mut pruned, "", &mut errors);
    let defaulted = kube::core::cel::apply_defaults(&schema, &pruned);

    match jsonschema::options().build(&schema) {
        Ok(validator) => {
            for error in validator.iter_errors(&defaulted) {
                errors.push(FieldError {
                    field: pointer_to_path(error.instance_path.as_str()),
                    message: error.to_string(),
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
        && let Err(cel_errors) =
            kube::core::cel::Validator::new().validate(&schema, &defaulted, old)
    {
        for error in cel_errors.into_vec() {
            errors.push(FieldError {
                field: if error.field_path.is_empty() {
                    "(object)".into()
                } else {
                    error.field_path.clone()
                },
                message: error.message.clone(),
            });
        }
    }
    if errors.is_empty() {
        Ok(defaulted)
    } else {
        Err(errors)
    }
}

fn schema_for(crd: &CustomResourceDefinition, object: &Value) -> Option<Value> {
    let api_version = object.get("apiVersion")?.as_str()?;
    let (group, version) = api_version.split_once('/')?;
    if group != crd.spec.group {
        return None;
    }
    let version = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == version && v.served)?;
    serde_json::to_value(version.schema.as_ref()?.open_api_v3_schema.as_ref()?).ok()
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
                        errors.push(FieldError {
                            field: child_path.trim_start_matches('.').to_string(),
                            message: format!(
                                "unknown field {key:?}; known fields are {}",
                                properties
                                    .map(|p| p.keys().cloned().collect::<Vec<_>>().join(", "))
                                    .unwrap_or_default()
                            ),
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
