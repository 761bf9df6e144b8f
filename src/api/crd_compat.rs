//! Whether an installed CustomResourceDefinition carries what this binary needs. No IO.
//!
//! Helm installs `crds/` on the first install and never upgrades them, and the API server silently
//! prunes fields an old CRD does not know. A keyless newer than its CRDs would then lose status
//! fields or see new enum values rejected without saying so; `keyless run` compares the installed
//! CRDs with [`super::crds`] at start-up and refuses to start when one lags.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

/// Something the required CRD has and the installed one lacks, e.g. `spec.role: value FoundryUser`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap(pub String);

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What `installed` lacks of `required`: every served version, the status subresource, and in each
/// version's schema every property (at any depth, in arrays and maps too) and every enum value. An
/// installed schema that keeps unknown fields (`x-kubernetes-preserve-unknown-fields`) lacks nothing
/// below that point. Extra fields and values in `installed` are fine (a newer CRD serves an older
/// binary). Validation bounds and CEL rules are not compared: they cannot drop data.
pub fn missing_in_installed(
    required: &CustomResourceDefinition,
    installed: &CustomResourceDefinition,
) -> Vec<Gap> {
    let mut gaps = Vec::new();
    for version in required.spec.versions.iter().filter(|v| v.served) {
        let Some(present) = installed
            .spec
            .versions
            .iter()
            .find(|v| v.name == version.name && v.served)
        else {
            gaps.push(Gap(format!("version {} (not served)", version.name)));
            continue;
        };
        let wants_status = version
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some());
        let has_status = present
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some());
        if wants_status && !has_status {
            gaps.push(Gap(format!("{}: the status subresource", version.name)));
        }
        let schema = |v: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion| {
            v.schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .and_then(|s| serde_json::to_value(s).ok())
                .unwrap_or(Value::Null)
        };
        compare("", &schema(version), &schema(present), &mut gaps);
    }
    gaps
}

fn compare(path: &str, required: &Value, installed: &Value, gaps: &mut Vec<Gap>) {
    if installed
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return;
    }
    // An installed enum must accept every value the binary may write or read; no enum accepts all.
    if let (Some(wanted), Some(accepted)) = (
        required.get("enum").and_then(Value::as_array),
        installed.get("enum").and_then(Value::as_array),
    ) {
        for value in wanted.iter().filter(|v| !accepted.contains(v)) {
            let shown = value
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            gaps.push(Gap(format!("{}: value {shown}", display(path))));
        }
    }
    if let Some(properties) = required.get("properties").and_then(Value::as_object) {
        for (name, wanted) in properties {
            let child = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            match installed.get("properties").and_then(|p| p.get(name)) {
                Some(present) => compare(&child, wanted, present, gaps),
                None => gaps.push(Gap(child)),
            }
        }
    }
    for (key, suffix) in [("items", "[]"), ("additionalProperties", "{}")] {
        if let (Some(wanted), Some(present)) = (required.get(key), installed.get(key))
            && wanted.is_object()
        {
            compare(&format!("{path}{suffix}"), wanted, present, gaps);
        }
    }
}

fn display(path: &str) -> &str {
    if path.is_empty() { "(root)" } else { path }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::json;

    /// A CRD with one served version whose schema is `schema`, with or without a status subresource.
    fn crd(schema: Value, status: bool) -> CustomResourceDefinition {
        let subresources = if status {
            json!({"status": {}})
        } else {
            json!({})
        };
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "things.keyless.dev"},
            "spec": {"group": "keyless.dev", "scope": "Namespaced",
                "names": {"plural": "things", "kind": "Thing"},
                "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                    "subresources": subresources, "schema": {"openAPIV3Schema": schema}}]}
        }))
        .unwrap()
    }

    fn object(properties: Value) -> Value {
        json!({"type": "object", "properties": properties})
    }

    fn gaps(required: Value, installed: Value) -> Vec<String> {
        missing_in_installed(&crd(required, true), &crd(installed, true))
            .into_iter()
            .map(|g| g.0)
            .collect()
    }

    #[test]
    fn installed_crds_are_compared_field_by_field_and_value_by_value() {
        let role = |values: Value| json!({"type": "string", "enum": values});
        // (case, required schema, installed schema, expected gaps)
        let cases: Vec<(&str, Value, Value, Vec<&str>)> = vec![
            (
                "identical",
                object(json!({"spec": object(json!({"role": role(json!(["A"]))}))})),
                object(json!({"spec": object(json!({"role": role(json!(["A"]))}))})),
                vec![],
            ),
            (
                "a missing status field",
                object(
                    json!({"status": object(json!({"scope": {"type": "string"}, "roleDisplayName": {"type": "string"}}))}),
                ),
                object(json!({"status": object(json!({"scope": {"type": "string"}}))})),
                vec!["status.roleDisplayName"],
            ),
            (
                "a missing enum value",
                object(json!({"spec": object(json!({"role": role(json!(["A", "FoundryUser"]))}))})),
                object(json!({"spec": object(json!({"role": role(json!(["A"]))}))})),
                vec!["spec.role: value FoundryUser"],
            ),
            (
                "a missing enum value in an array's items",
                object(
                    json!({"spec": object(json!({"roles": {"type": "array", "items": role(json!(["A", "B"]))}}))}),
                ),
                object(
                    json!({"spec": object(json!({"roles": {"type": "array", "items": role(json!(["A"]))}}))}),
                ),
                vec!["spec.roles[]: value B"],
            ),
            (
                "a missing field inside array items",
                object(
                    json!({"spec": object(json!({"principals": {"type": "array", "items": object(json!({"user": {"type": "string"}, "appId": {"type": "string"}}))}}))}),
                ),
                object(
                    json!({"spec": object(json!({"principals": {"type": "array", "items": object(json!({"user": {"type": "string"}}))}}))}),
                ),
                vec!["spec.principals[].appId"],
            ),
            (
                "a missing field in map values",
                object(
                    json!({"spec": {"type": "object", "additionalProperties": object(json!({"a": {"type": "string"}}))}}),
                ),
                object(
                    json!({"spec": {"type": "object", "additionalProperties": object(json!({}))}}),
                ),
                vec!["spec{}.a"],
            ),
            (
                "a whole missing subtree is one gap",
                object(
                    json!({"spec": object(json!({"exportTo": object(json!({"configMapName": {"type": "string"}}))}))}),
                ),
                object(json!({"spec": object(json!({}))})),
                vec!["spec.exportTo"],
            ),
            (
                "extra installed fields and values are fine",
                object(json!({"spec": object(json!({"role": role(json!(["A"]))}))})),
                object(
                    json!({"spec": object(json!({"role": role(json!(["A", "B"])), "new": {"type": "string"}}))}),
                ),
                vec![],
            ),
            (
                "an installed enum-less string accepts every value",
                object(json!({"spec": object(json!({"role": role(json!(["A"]))}))})),
                object(json!({"spec": object(json!({"role": {"type": "string"}}))})),
                vec![],
            ),
            (
                "preserve-unknown-fields keeps everything below it",
                object(json!({"spec": object(json!({"a": {"type": "string"}}))})),
                object(
                    json!({"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}),
                ),
                vec![],
            ),
        ];
        for (case, required, installed, expected) in cases {
            assert_eq!(gaps(required, installed), expected, "{case}");
        }
    }

    #[test]
    fn a_missing_version_or_status_subresource_is_a_gap() {
        let schema = object(json!({}));
        let mut other_version = crd(schema.clone(), true);
        other_version.spec.versions[0].name = "v1beta1".into();
        assert_eq!(
            missing_in_installed(&crd(schema.clone(), true), &other_version),
            vec![Gap("version v1alpha1 (not served)".into())]
        );
        assert_eq!(
            missing_in_installed(&crd(schema.clone(), true), &crd(schema.clone(), false)),
            vec![Gap("v1alpha1: the status subresource".into())]
        );
    }

    #[test]
    fn the_crds_this_binary_generates_lack_nothing_of_themselves() {
        for crd in crate::api::crds() {
            assert_eq!(missing_in_installed(&crd, &crd), vec![]);
        }
    }

    #[test]
    fn the_crds_from_before_the_foundry_user_rename_lack_its_value_and_the_display_name() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/crds-before-foundry-user");
        let read = |file: &str| -> CustomResourceDefinition {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            let mut documents: Vec<CustomResourceDefinition> =
                serde_saphyr::from_multiple(&text).unwrap();
            documents.remove(0)
        };
        let [account, access] = [
            crate::api::OpenAIAccount::crd(),
            crate::api::OpenAIAccess::crd(),
        ];
        assert_eq!(
            missing_in_installed(&access, &read("openaiaccesses.keyless.dev.yaml")),
            // status.principals[].role and .replaces came with issue 16 (a role change is a
            // replacement), after these CRDs.
            vec![
                Gap("spec.role: value FoundryUser".into()),
                Gap("status.principals[].replaces".into()),
                Gap("status.principals[].role".into()),
                Gap("status.roleDisplayName".into())
            ]
        );
        assert_eq!(
            missing_in_installed(&account, &read("openaiaccounts.keyless.dev.yaml")),
            // allowRetain came with issue 16, the access report's status with issue 21 and
            // management with issue 20, enforcement with issue 22, after these CRDs: old CRDs
            // would prune them silently (enforcement then reads Additive, and a pruned
            // exclusiveRevocations restarts every grace: both fail safe).
            vec![
                Gap("spec.allowRetain".into()),
                Gap("spec.allowedRoles[]: value FoundryUser".into()),
                Gap("spec.enforcement".into()),
                Gap("spec.exclusiveExemptCreators".into()),
                Gap("spec.exclusiveExemptions".into()),
                Gap("spec.management".into()),
                Gap("status.access".into()),
                Gap("status.exclusiveRevocations".into()),
                Gap("status.plannedWrites".into()),
                Gap("status.plannedWritesOmitted".into())
            ]
        );
    }
}
