#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Contract tests: the emulator's role assignment routes against the official spec in
//! ../shared/azure-specs (authorization 2022-04-01).
//!
//! - Every `x-ms-examples` request of the spec is replayed against the emulator (seeded with the
//!   examples' principals and scopes); the status must be one the example allows, and the body must
//!   validate against the spec's schema, made strict (no undeclared properties).
//! - Error bodies validate against common-types' `ErrorResponse`.
//! - The Prism mock server checks the requests: what the emulator accepts Prism accepts, and what
//!   Prism refuses (422) the emulator refuses too.
//!
//! These tests need ../shared (and Prism, via `KEYLESS_PRISM`). Without them they print a notice
//! and pass; with `KEYLESS_REQUIRE_SHARED=1` (set by .ci/run) they fail instead.

use keyless_emulator::{Audience, Emulator, EmulatorConfig, EmulatorHandle, Seed};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SPEC_DIR: &str = "azure-specs/specification/authorization/resource-manager/Microsoft.Authorization/stable/2022-04-01";
const SUB: &str = "a925f2f7-5c63-4b7b-8799-25a5f97bc3b2";
const ADMIN: &str = "c0a1b2c3-0000-4000-8000-00000000ad01";

fn required() -> bool {
    std::env::var("KEYLESS_REQUIRE_SHARED").as_deref() == Ok("1")
}

fn skip(what: &str) {
    assert!(!required(), "KEYLESS_REQUIRE_SHARED=1 but {what}");
    eprintln!("NOTICE: skipping contract test: {what}");
}

fn shared_dir() -> Option<PathBuf> {
    // `../shared` beside the repository (the emulator crate is one level down);
    // `KEYLESS_SHARED_DIR` overrides it (e.g. in a git worktree elsewhere).
    let dir = std::env::var_os("KEYLESS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")));
    if dir.join(SPEC_DIR).is_dir() {
        Some(dir)
    } else {
        skip(&format!("{} (../shared) is absent", dir.display()));
        None
    }
}

fn prism_binary() -> Option<PathBuf> {
    match std::env::var_os("KEYLESS_PRISM") {
        Some(path) if Path::new(&path).exists() => Some(PathBuf::from(path)),
        _ => {
            skip("KEYLESS_PRISM does not name the prism binary (run .ci/install-prism.sh)");
            None
        }
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

/// The world the spec's examples assume: their subscription, resource group, Cosmos DB account,
/// principal and role, plus an Owner to make the calls. `existing` adds the assignments the GET,
/// DELETE and LIST examples read.
fn contract_seed(existing: bool) -> Seed {
    let mut yaml = format!(
        r#"
tenantId: 0c0ffee0-0000-4000-8000-000000000001
subscriptions:
  - id: {SUB}
    resourceGroups: [{{ name: testrg }}]
resources:
  - /subscriptions/{SUB}/resourceGroups/testrg/providers/Microsoft.DocumentDb/databaseAccounts/test-db-account
users:
  - {{ id: ce2ce14e-85d7-4629-bdbc-454d0519d987, userPrincipalName: example@contoso.com, displayName: Spec Example }}
servicePrincipals:
  - {{ id: {ADMIN}, appId: c0a1b2c3-0000-4000-8000-00000000ad02, displayName: contract-admin }}
roleDefinitions:
  - {{ id: 0b5fe924-9a61-425c-96af-cfe6e287ca2d, roleName: Spec Example Role, actions: ["Microsoft.DocumentDB/*/read"] }}
roleAssignments:
  - {{ name: 0d0d0d0d-0000-4000-8000-000000000001, scope: /subscriptions/{SUB}, roleDefinitionId: 8e3af657-a8ff-443c-a75c-2fe8c4bcb635, principalId: {ADMIN}, principalType: ServicePrincipal }}
"#
    );
    if existing {
        yaml.push_str(&format!(
            "  - {{ name: b0f43c54-e787-4862-89b1-a653fa9cf747, scope: /subscriptions/{SUB}, roleDefinitionId: 0b5fe924-9a61-425c-96af-cfe6e287ca2d, principalId: ce2ce14e-85d7-4629-bdbc-454d0519d987 }}\n\
             \x20 - {{ name: 96786e4b-dede-4c2e-8736-8ab911987f08, scope: /subscriptions/{SUB}/resourceGroups/testrg, roleDefinitionId: 0b5fe924-9a61-425c-96af-cfe6e287ca2d, principalId: ce2ce14e-85d7-4629-bdbc-454d0519d987 }}\n"
        ));
    }
    Seed::from_yaml(&yaml).unwrap()
}

struct Emu {
    handle: EmulatorHandle,
    http: reqwest::Client,
    token: String,
}

async fn emulator(existing: bool) -> Emu {
    let handle = Emulator::start(EmulatorConfig::new(contract_seed(existing)))
        .await
        .unwrap();
    let http = handle.http_client().unwrap();
    let token = handle.token_for(ADMIN, Audience::Arm).unwrap();
    Emu {
        handle,
        http,
        token,
    }
}

impl Emu {
    async fn send(
        &self,
        method: &Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(
                method.clone(),
                format!("{}{path_and_query}", self.handle.endpoint()),
            )
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        (
            status,
            if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            },
        )
    }
}

/// A draft-4 validator for one definition of a swagger document. `strict` forbids properties the
/// spec does not declare, which the spec itself leaves open.
fn validator(document: &Value, definition: &str, strict: &[&str]) -> jsonschema::Validator {
    let mut definitions = document["definitions"].clone();
    for name in strict {
        definitions[*name]["additionalProperties"] = json!(false);
    }
    let schema =
        json!({ "$ref": format!("#/definitions/{definition}"), "definitions": definitions });
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

fn assert_valid(validator: &jsonschema::Validator, instance: &Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match the spec: {errors:?}\n{instance:#}"
    );
}

struct Schemas {
    assignment: jsonschema::Validator,
    list: jsonschema::Validator,
    create: jsonschema::Validator,
    error: jsonschema::Validator,
}

fn schemas(shared: &Path) -> Schemas {
    let spec = read_json(
        &shared
            .join(SPEC_DIR)
            .join("authorization-RoleAssignmentsCalls.json"),
    );
    let common = read_json(
        &shared.join("azure-specs/specification/common-types/resource-management/v2/types.json"),
    );
    let strict = [
        "RoleAssignment",
        "RoleAssignmentProperties",
        "RoleAssignmentListResult",
    ];
    Schemas {
        assignment: validator(&spec, "RoleAssignment", &strict),
        list: validator(&spec, "RoleAssignmentListResult", &strict),
        create: validator(
            &spec,
            "RoleAssignmentCreateParameters",
            &["RoleAssignmentCreateParameters"],
        ),
        error: validator(&common, "ErrorResponse", &["ErrorResponse", "ErrorDetail"]),
    }
}

/// One example request: method, path and query, body, and the statuses the example allows.
struct ExampleCall {
    file: String,
    method: Method,
    path: String,
    body: Option<Value>,
    statuses: Vec<u16>,
    responses: Value,
}

/// Reads the spec's operations and their examples into calls.
fn example_calls(shared: &Path) -> Vec<ExampleCall> {
    let dir = shared.join(SPEC_DIR);
    let spec = read_json(&dir.join("authorization-RoleAssignmentsCalls.json"));
    let mut calls = Vec::new();
    for (template, operations) in spec["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let Some(examples) = operation["x-ms-examples"].as_object() else {
                continue;
            };
            for example in examples.values() {
                let file = example["$ref"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("./")
                    .to_string();
                let path = dir.join(&file);
                if !path.exists() {
                    // The two examples SOURCES.md says were not saved.
                    continue;
                }
                let example = read_json(&path);
                let parameters = &example["parameters"];
                let mut url = template.clone();
                for name in [
                    "scope",
                    "roleAssignmentName",
                    "roleAssignmentId",
                    "subscriptionId",
                    "resourceGroupName",
                ] {
                    if let Some(value) = parameters[name].as_str() {
                        url = url.replace(&format!("{{{name}}}"), value);
                    }
                }
                // Scope parameters are written without their leading '/'; the template adds one.
                let url = format!("/{}", url.trim_start_matches('/'));
                // The stored Get example still says 2020-10-01-preview (SOURCES.md); this spec is 2022-04-01.
                calls.push(ExampleCall {
                    file,
                    method: method.to_uppercase().parse().unwrap(),
                    path: format!("{url}?api-version=2022-04-01"),
                    body: parameters.get("parameters").cloned(),
                    statuses: example["responses"]
                        .as_object()
                        .unwrap()
                        .keys()
                        .map(|k| k.parse().unwrap())
                        .collect(),
                    responses: example["responses"].clone(),
                });
            }
        }
    }
    calls.sort_by(|a, b| a.file.cmp(&b.file));
    calls
}

fn guid_tail(id: &Value) -> String {
    id.as_str()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

#[tokio::test]
async fn every_spec_example_replays_against_the_emulator_with_an_allowed_status_and_a_valid_body() {
    let Some(shared) = shared_dir() else { return };
    let schemas = schemas(&shared);
    let calls = example_calls(&shared);
    assert!(
        calls.len() >= 10,
        "expected the saved examples, found {}",
        calls.len()
    );
    for call in calls {
        let existing = !call.file.contains("_Create");
        let emu = emulator(existing).await;
        if let Some(body) = &call.body {
            assert_valid(&schemas.create, body, &format!("{} request", call.file));
        }
        let (status, body) = emu.send(&call.method, &call.path, call.body.as_ref()).await;
        assert!(
            call.statuses.contains(&status),
            "{}: {status} not among {:?}: {body}",
            call.file,
            call.statuses
        );
        let expected = &call.responses[status.to_string()]["body"];
        if status == 204 {
            continue;
        }
        if body.get("value").is_some() {
            assert_valid(&schemas.list, &body, &call.file);
            for item in expected["value"].as_array().unwrap() {
                let ours = body["value"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|a| a["name"] == item["name"]);
                let ours = ours.unwrap_or_else(|| {
                    panic!("{}: {} missing from {body}", call.file, item["name"])
                });
                assert_same_assignment(&call.file, ours, item);
            }
        } else {
            assert_valid(&schemas.assignment, &body, &call.file);
            assert_same_assignment(&call.file, &body, expected);
        }
    }
}

/// Same assignment as the example's, comparing role definitions by GUID (ARM returns either id form).
fn assert_same_assignment(file: &str, ours: &Value, example: &Value) {
    assert_eq!(ours["name"], example["name"], "{file}");
    assert_eq!(
        ours["id"].as_str().map(str::to_ascii_lowercase),
        example["id"].as_str().map(str::to_ascii_lowercase),
        "{file}"
    );
    assert_eq!(ours["type"], example["type"], "{file}");
    let (o, e) = (&ours["properties"], &example["properties"]);
    assert_eq!(o["principalId"], e["principalId"], "{file}");
    assert_eq!(o["principalType"], e["principalType"], "{file}");
    assert_eq!(
        o["scope"].as_str().map(str::to_ascii_lowercase),
        e["scope"].as_str().map(str::to_ascii_lowercase),
        "{file}"
    );
    assert_eq!(
        guid_tail(&o["roleDefinitionId"]),
        guid_tail(&e["roleDefinitionId"]),
        "{file}"
    );
}

#[tokio::test]
async fn error_bodies_match_the_common_error_response() {
    let Some(shared) = shared_dir() else { return };
    let schemas = schemas(&shared);
    let emu = emulator(true).await;
    let scope = format!("/subscriptions/{SUB}");
    let body = json!({"properties": {"roleDefinitionId": "/providers/Microsoft.Authorization/roleDefinitions/0b5fe924-9a61-425c-96af-cfe6e287ca2d", "principalId": "ce2ce14e-85d7-4629-bdbc-454d0519d987"}});
    let cases = [
        (
            Method::PUT,
            format!(
                "{scope}/providers/Microsoft.Authorization/roleAssignments/{}?api-version=2022-04-01",
                uuid::Uuid::new_v4()
            ),
            Some(body.clone()),
            409,
        ),
        (
            Method::PUT,
            format!(
                "{scope}/providers/Microsoft.Authorization/roleAssignments/nope?api-version=2022-04-01"
            ),
            Some(body),
            400,
        ),
        (
            Method::GET,
            format!(
                "{scope}/providers/Microsoft.Authorization/roleAssignments/{}?api-version=2022-04-01",
                uuid::Uuid::new_v4()
            ),
            None,
            404,
        ),
        (
            Method::GET,
            format!("{scope}/providers/Microsoft.Authorization/roleAssignments"),
            None,
            400,
        ),
    ];
    for (method, path, body, expected) in cases {
        let (status, answer) = emu.send(&method, &path, body.as_ref()).await;
        assert_eq!(status, expected, "{path}: {answer}");
        assert_valid(&schemas.error, &answer, &path);
        assert!(answer["error"]["code"].is_string() && answer["error"]["message"].is_string());
    }
}

/// A Prism mock server on a free loopback port, stopped (by PID) on drop.
struct Prism {
    child: std::process::Child,
    base: String,
}

impl Drop for Prism {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_prism(binary: &Path, shared: &Path) -> Prism {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec = shared
        .join(SPEC_DIR)
        .join("authorization-RoleAssignmentsCalls.prism.json");
    let child = std::process::Command::new(binary)
        .args([
            "mock",
            spec.to_str().unwrap(),
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--errors",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let prism = Prism {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return prism;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("prism did not listen on {port} within 30 s");
}

/// Prism's `{scope}` matches one segment: send the scope URL-encoded (ci-tools.md).
fn prism_path(path_and_query: &str) -> String {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let path = path.trim_start_matches('/');
    let encoded = match path.find("/providers/Microsoft.Authorization/roleAssignments") {
        Some(at) if at > 0 => format!("{}{}", path[..at].replace('/', "%2F"), &path[at..]),
        _ => path.replace('/', "%2F"),
    };
    if query.is_empty() {
        format!("/{encoded}")
    } else {
        format!("/{encoded}?{query}")
    }
}

async fn prism_status(
    http: &reqwest::Client,
    prism: &Prism,
    method: &Method,
    path_and_query: &str,
    body: Option<&Value>,
) -> (u16, String) {
    let mut request = http
        .request(
            method.clone(),
            format!("{}{}", prism.base, prism_path(path_and_query)),
        )
        .bearer_auth("contract-test");
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let violations = response
        .headers()
        .get("sl-violations")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (response.status().as_u16(), violations)
}

#[tokio::test]
async fn prism_accepts_what_the_emulator_accepts_and_both_refuse_what_breaks_the_spec() {
    let Some(shared) = shared_dir() else { return };
    let Some(binary) = prism_binary() else { return };
    let prism = start_prism(&binary, &shared).await;
    let http = reqwest::Client::new();
    let scope = format!("/subscriptions/{SUB}/resourceGroups/testrg");
    let name = uuid::Uuid::new_v4();
    let item = format!(
        "{scope}/providers/Microsoft.Authorization/roleAssignments/{name}?api-version=2022-04-01"
    );
    let good = json!({"properties": {
        "roleDefinitionId": format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/0b5fe924-9a61-425c-96af-cfe6e287ca2d"),
        "principalId": "ce2ce14e-85d7-4629-bdbc-454d0519d987",
        "principalType": "User",
        "description": "managed-by: keyless/ns/name",
    }});
    // What keyless sends, in order: create, read, list by principal, delete.
    let valid = [
        (Method::PUT, item.clone(), Some(good.clone())),
        (Method::GET, item.clone(), None),
        (
            Method::GET,
            format!(
                "{scope}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01&$filter=principalId%20eq%20'ce2ce14e-85d7-4629-bdbc-454d0519d987'"
            ),
            None,
        ),
        (
            Method::GET,
            format!(
                "{scope}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01&$filter=atScope()"
            ),
            None,
        ),
        (Method::DELETE, item.clone(), None),
    ];
    let emu = emulator(false).await;
    for (method, path, body) in &valid {
        let (status, violations) = prism_status(&http, &prism, method, path, body.as_ref()).await;
        assert!(
            (200..300).contains(&status),
            "prism refused {method} {path}: {status} {violations}"
        );
        let (ours, answer) = emu.send(method, path, body.as_ref()).await;
        assert!(
            (200..300).contains(&ours),
            "emulator refused {method} {path}: {answer}"
        );
    }
    let mut no_principal = good.clone();
    no_principal["properties"]
        .as_object_mut()
        .unwrap()
        .remove("principalId");
    let mut wrong_type = good.clone();
    wrong_type["properties"]["principalId"] = json!(42);
    let mut bad_enum = good.clone();
    bad_enum["properties"]["principalType"] = json!("Robot");
    let another = format!(
        "{scope}/providers/Microsoft.Authorization/roleAssignments/{}",
        uuid::Uuid::new_v4()
    );
    let invalid = [
        (
            Method::PUT,
            format!("{another}?api-version=2022-04-01"),
            Some(no_principal),
        ),
        (
            Method::PUT,
            format!("{another}?api-version=2022-04-01"),
            Some(json!({"roleDefinitionId": "x"})),
        ),
        (
            Method::PUT,
            format!("{another}?api-version=2022-04-01"),
            Some(wrong_type),
        ),
        (
            Method::PUT,
            format!("{another}?api-version=2022-04-01"),
            Some(bad_enum),
        ),
        (Method::GET, another.clone(), None),
        // The spec's api-version has no enum, only minLength 1 (versions: tests/emulator.rs).
        (Method::GET, format!("{another}?api-version="), None),
    ];
    for (method, path, body) in &invalid {
        let (status, _) = prism_status(&http, &prism, method, path, body.as_ref()).await;
        assert_eq!(status, 422, "prism accepted {method} {path} {body:?}");
        let (ours, answer) = emu.send(method, path, body.as_ref()).await;
        assert_eq!(ours, 400, "emulator on {method} {path}: {answer}");
    }
}
