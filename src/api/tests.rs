//! The CRDs' schema and CEL rules, checked client-side the way the apiserver checks them.

use super::validation::{FieldError, validate_object};
use super::*;
use serde_json::{Value, json};

fn account(spec: Value) -> Value {
    json!({"apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccount", "metadata": {"name": "prod"}, "spec": spec})
}

fn access(spec: Value) -> Value {
    json!({"apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess", "metadata": {"name": "chat", "namespace": "team-a"}, "spec": spec})
}

fn access_with(principal: Value) -> Value {
    access(json!({"accountRef": {"name": "prod"}, "principals": [principal]}))
}

const RESOURCE_ID: &str = "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-ai-prod/providers/Microsoft.CognitiveServices/accounts/oai-prod";

fn check_access(object: &Value, old: Option<&Value>) -> Result<Value, Vec<FieldError>> {
    validate_object(&OpenAIAccess::crd(), object, old)
}

fn check_account(object: &Value, old: Option<&Value>) -> Result<Value, Vec<FieldError>> {
    validate_object(&OpenAIAccount::crd(), object, old)
}

fn fails_on(result: Result<Value, Vec<FieldError>>, field: &str, words: &str) {
    let errors = result.expect_err("the object should be rejected");
    assert!(
        errors
            .iter()
            .any(|e| e.field.contains(field) && e.message.contains(words)),
        "expected an error on {field} mentioning {words:?}, got {errors:?}"
    );
}

#[test]
fn each_single_principal_form_is_accepted() {
    for principal in [
        json!({"user": "alice@contoso.com"}),
        json!({"groupName": "ML Platform Team"}),
        json!({"appId": "0f6a7c5e-2d4b-4e8f-9a1c-3b5d7e9f1a2c"}),
        json!({"managedIdentity": "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-summarizer"}),
        json!({"serviceAccount": "chat-backend"}),
        json!({"objectId": "0f6a7c5e-2d4b-4e8f-9a1c-3b5d7e9f1a2c", "principalType": "ServicePrincipal"}),
    ] {
        check_access(&access_with(principal.clone()), None)
            .unwrap_or_else(|e| panic!("{principal} should be valid: {e:?}"));
    }
}

#[test]
fn a_principal_with_two_forms_is_rejected_by_the_one_of_rule() {
    fails_on(
        check_access(
            &access_with(json!({"user": "alice@contoso.com", "serviceAccount": "x"})),
            None,
        ),
        "principals",
        "exactly one",
    );
}

#[test]
fn a_principal_with_no_form_is_rejected() {
    fails_on(
        check_access(&access_with(json!({})), None),
        "principals",
        "exactly one",
    );
}

#[test]
fn a_null_form_counts_as_absent_not_as_set() {
    // With `nullable`, `user: null` would satisfy has(self.user) and pass the one-of rule with a
    // second form; pruned as the apiserver prunes it, only serviceAccount counts.
    let object = access_with(json!({"user": null, "serviceAccount": "chat-backend"}));
    let defaulted = check_access(&object, None).expect("null is absent");
    assert_eq!(
        defaulted["spec"]["principals"][0],
        json!({"serviceAccount": "chat-backend"})
    );
    fails_on(
        check_access(&access_with(json!({"user": null})), None),
        "principals",
        "exactly one",
    );
}

#[test]
fn object_id_needs_a_principal_type_and_only_it_may_have_one() {
    fails_on(
        check_access(
            &access_with(json!({"objectId": "0f6a7c5e-2d4b-4e8f-9a1c-3b5d7e9f1a2c"})),
            None,
        ),
        "principals",
        "principalType is required",
    );
    fails_on(
        check_access(
            &access_with(json!({"user": "alice@contoso.com", "principalType": "User"})),
            None,
        ),
        "principals",
        "principalType is required",
    );
}

#[test]
fn malformed_ids_are_rejected_by_pattern_naming_the_field() {
    fails_on(
        check_access(&access_with(json!({"appId": "not-a-guid"})), None),
        "spec.principals[0].appId",
        "",
    );
    fails_on(
        check_access(&access_with(json!({"user": "alice"})), None),
        "spec.principals[0].user",
        "",
    );
    fails_on(
        check_access(
            &access_with(
                json!({"managedIdentity": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/s"}),
            ),
            None,
        ),
        "spec.principals[0].managedIdentity",
        "",
    );
    fails_on(
        check_access(&access_with(json!({"serviceAccount": "Not_A_Name"})), None),
        "spec.principals[0].serviceAccount",
        "",
    );
}

#[test]
fn principals_must_number_one_to_two_hundred_fifty_six() {
    fails_on(
        check_access(
            &access(json!({"accountRef": {"name": "prod"}, "principals": []})),
            None,
        ),
        "spec.principals",
        "",
    );
    let many: Vec<Value> = (0..257)
        .map(|i| json!({"serviceAccount": format!("sa-{i}")}))
        .collect();
    fails_on(
        check_access(
            &access(json!({"accountRef": {"name": "prod"}, "principals": many})),
            None,
        ),
        "spec.principals",
        "",
    );
}

#[test]
fn defaults_fill_role_and_deletion_policy() {
    let defaulted = check_access(&access_with(json!({"serviceAccount": "chat"})), None).unwrap();
    assert_eq!(defaulted["spec"]["role"], "OpenAIUser");
    assert_eq!(defaulted["spec"]["deletionPolicy"], "Delete");
    let account = check_account(&account(json!({"resourceId": RESOURCE_ID})), None).unwrap();
    assert_eq!(account["spec"]["allowedRoles"], json!(["OpenAIUser"]));
    assert_eq!(
        account["spec"]["allowedPrincipalKinds"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(account["spec"]["requireFederation"], true);
    assert_eq!(account["spec"]["deletionPolicy"], "Delete");
    assert!(
        account["spec"].get("allowedNamespaces").is_none(),
        "absent means deny by default"
    );
}

#[test]
fn an_unknown_field_is_reported_by_name() {
    fails_on(
        check_access(
            &access(json!({"accountRef": {"name": "prod"}, "principles": [{"user": "a@b.c"}]})),
            None,
        ),
        "spec.principles",
        "unknown field",
    );
}

#[test]
fn an_unknown_role_is_rejected() {
    let object = access(
        json!({"accountRef": {"name": "prod"}, "role": "Owner", "principals": [{"serviceAccount": "a"}]}),
    );
    fails_on(check_access(&object, None), "spec.role", "");
}

#[test]
fn foundry_user_and_its_old_name_are_both_valid_roles() {
    for role in ["FoundryUser", "AzureAIUser"] {
        let object = access(
            json!({"accountRef": {"name": "prod"}, "role": role, "principals": [{"serviceAccount": "a"}]}),
        );
        assert!(check_access(&object, None).is_ok(), "{role}");
        let object = account(json!({"resourceId": RESOURCE_ID, "allowedRoles": [role]}));
        assert!(check_account(&object, None).is_ok(), "{role}");
    }
}

#[test]
fn an_account_may_list_every_role_name_including_the_alias() {
    let object = account(json!({"resourceId": RESOURCE_ID,
        "allowedRoles": ["OpenAIUser", "OpenAIContributor", "CognitiveServicesUser", "FoundryUser", "AzureAIUser"]}));
    assert!(check_account(&object, None).is_ok());
}

#[test]
fn account_ref_is_immutable() {
    let old = check_access(&access_with(json!({"serviceAccount": "a"})), None).unwrap();
    let mut new = old.clone();
    new["spec"]["accountRef"]["name"] = json!("other");
    fails_on(check_access(&new, Some(&old)), "accountRef", "immutable");
    let mut same = old.clone();
    same["spec"]["principals"] = json!([{"serviceAccount": "b"}]);
    check_access(&same, Some(&old)).expect("principals may change");
}

#[test]
fn resource_id_is_immutable_and_must_name_an_account() {
    let old = check_account(&account(json!({"resourceId": RESOURCE_ID})), None).unwrap();
    let mut new = old.clone();
    new["spec"]["resourceId"] = json!(RESOURCE_ID.replace("oai-prod", "oai-other"));
    fails_on(check_account(&new, Some(&old)), "resourceId", "immutable");
    fails_on(
        check_account(
            &account(
                json!({"resourceId": "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-ai-prod"}),
            ),
            None,
        ),
        "spec.resourceId",
        "",
    );
}

#[test]
fn an_empty_selector_is_kept_distinct_from_an_absent_one() {
    let object = account(json!({"resourceId": RESOURCE_ID, "allowedNamespaces": {"selector": {}}}));
    let defaulted = check_account(&object, None).unwrap();
    assert_eq!(
        defaulted["spec"]["allowedNamespaces"]["selector"],
        json!({})
    );
    let parsed: OpenAIAccount = serde_json::from_value(defaulted).unwrap();
    assert_eq!(
        parsed.spec.allowed_namespaces.and_then(|a| a.selector),
        Some(Default::default())
    );
}

#[test]
fn every_string_in_a_spec_is_bounded() {
    // Unbounded strings make CEL cost estimates explode and invite abuse; label selectors are
    // Kubernetes' own type and exempt.
    fn walk(schema: &Value, path: &str, unbounded: &mut Vec<String>) {
        if path.contains("selector") {
            return;
        }
        if schema.get("type") == Some(&json!("string"))
            && schema.get("maxLength").is_none()
            && schema.get("enum").is_none()
            && schema.get("format").is_none()
        {
            unbounded.push(path.to_string());
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                walk(v, &format!("{path}.{k}"), unbounded);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(items, &format!("{path}[]"), unbounded);
        }
    }
    for crd in crds() {
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        let mut unbounded = Vec::new();
        walk(&schema["properties"]["spec"], "spec", &mut unbounded);
        assert!(
            unbounded.is_empty(),
            "unbounded strings in {:?}: {unbounded:?}",
            crd.metadata.name
        );
    }
}

#[test]
fn every_cel_rule_compiles_and_fits_the_cost_budget() {
    fn walk(schema: &Value, found: &mut usize) {
        if let Some(rules) = schema
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
        {
            let compiled = kube::core::cel::compile_schema(schema);
            assert!(
                !compiled.has_errors(),
                "rules do not compile: {:?}",
                compiled.compilation_errors()
            );
            for rule in rules {
                let rule = rule["rule"].as_str().unwrap();
                let warnings = kube::core::cel::estimate_rule_cost(rule, &compiled);
                assert!(warnings.is_empty(), "{rule}: {warnings:?}");
                assert!(!rule.contains("matches("), "no regex in CEL: {rule}");
                *found += 1;
            }
        }
        for key in ["properties"] {
            if let Some(props) = schema.get(key).and_then(Value::as_object) {
                props.values().for_each(|v| walk(v, found));
            }
        }
        if let Some(items) = schema.get("items") {
            walk(items, found);
        }
    }
    let mut found = 0;
    for crd in crds() {
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        walk(&schema, &mut found);
    }
    assert_eq!(
        found, 4,
        "resourceId, accountRef and the two principal rules"
    );
}

#[test]
fn the_crds_have_short_names_category_and_status() {
    for crd in crds() {
        let names = &crd.spec.names;
        assert!(names.short_names.as_ref().is_some_and(|s| !s.is_empty()));
        assert_eq!(
            names.categories.as_deref(),
            Some(&["keyless".to_string()][..])
        );
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        assert!(
            version
                .additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= 3)
        );
    }
    assert_eq!(OpenAIAccount::crd().spec.scope, "Cluster");
    assert_eq!(OpenAIAccess::crd().spec.scope, "Namespaced");
}

#[test]
fn crds_directory_matches_the_generated_crds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for crd in crds() {
        let path = dir.join(crd_file_name(&crd));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == crd_yaml(&crd).unwrap(),
            "{} is stale or missing; regenerate with: cargo run -- crd --output-dir crds && cp crds/*.yaml charts/keyless/crds/",
            path.display()
        );
    }
}
