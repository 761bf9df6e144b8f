#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The Azure emulator over real HTTPS: every rule, route and fault of issues 3 and 4.

use keyless_emulator::roles;
use keyless_emulator::{
    AdminRoleAssignment, Audience, Bucket, Emulator, EmulatorConfig, EmulatorHandle, FaultKind,
    Faults, FederatedCredential, NewGroup, NewIdentity, NewServicePrincipal, NewUser, OutageKind,
    ScriptedFault, Seed, Throttling,
};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

#[path = "support/banner.rs"]
mod banner;
use banner::Banner;

const SUB: &str = "3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f";
const OPERATOR: &str = "37d99a9d-85be-4a09-9afa-73e46bc24f11";
const OPERATOR_CLIENT: &str = "932c691f-143e-4919-b0ce-026e518e94fb";
const ALICE: &str = "82f6c951-ea04-4434-a839-f80b32aa6337";
const BOB: &str = "16cb6f20-2462-4c3e-91e6-df2449d889ba";
const TEAM: &str = "d81d0366-c3d7-4b8d-92f3-1be6d6479d9a";
const BATCH_SCORER: &str = "6bdcdd12-8bfa-47e7-9b5b-bdef4d370b97";
const BATCH_SCORER_APP: &str = "1f314dbd-f47f-4150-ba72-84dd3ee0450a";
const SUMMARIZER: &str = "95ce509f-d768-4c1d-b9ae-4595afb90593";
const CHAT_BACKEND_CLIENT: &str = "4b3c0789-1890-448c-aca3-a44e891753f7";
const BOBS_BICEP_ASSIGNMENT: &str = "486f9612-51c0-5f11-a5cd-84378ffd1469";
const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
const ISSUER: &str = "https://oidc.keyless.example/cluster-1/";
const V: &str = "api-version=2022-04-01";

fn openai_user() -> &'static str {
    roles::COGNITIVE_SERVICES_OPENAI_USER
}

/// The data roles a delegate of the example tenant may assign.
const DATA_ROLES: [&str; 4] = [
    roles::COGNITIVE_SERVICES_OPENAI_USER,
    roles::COGNITIVE_SERVICES_OPENAI_CONTRIBUTOR,
    roles::COGNITIVE_SERVICES_USER,
    roles::FOUNDRY_USER,
];

/// The condition of the example tenant's delegation to the operator, as seeded.
fn example_delegation_condition() -> String {
    Seed::example()
        .unwrap()
        .delegation_condition()
        .unwrap()
        .to_string()
}

fn account(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/rg-ai-prod/providers/Microsoft.CognitiveServices/accounts/{name}"
    )
}

fn assignment_path(scope: &str, name: &str) -> String {
    format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}?{V}")
}

fn new_name() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn body(role: &str, principal: &str, principal_type: Option<&str>) -> Value {
    let mut properties = json!({
        "roleDefinitionId": format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{role}"),
        "principalId": principal,
    });
    if let Some(t) = principal_type {
        properties["principalType"] = json!(t);
    }
    json!({ "properties": properties })
}

struct Env {
    emu: EmulatorHandle,
    http: reqwest::Client,
}

struct Answer {
    status: u16,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or_default()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn start() -> Env {
    start_with(|_| {}).await
}

async fn start_with(change: impl FnOnce(&mut EmulatorConfig)) -> Env {
    let mut config = EmulatorConfig::new(Seed::example().unwrap());
    change(&mut config);
    let emu = Emulator::start(config).await.unwrap();
    let http = emu.http_client().unwrap();
    Env { emu, http }
}

impl Env {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.emu.endpoint())
    }

    fn operator_token(&self, audience: Audience) -> String {
        self.emu.token_for(OPERATOR, audience).unwrap()
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Answer {
            status,
            body,
            headers,
        }
    }

    /// An ARM call as the operator.
    async fn arm(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let token = self.operator_token(Audience::Arm);
        self.send(method, path, Some(&token), body).await
    }

    async fn graph(&self, path: &str) -> Answer {
        let token = self.operator_token(Audience::Graph);
        self.send(Method::GET, path, Some(&token), None).await
    }

    async fn token_request(&self, client_id: &str, assertion: &str, scope: &str) -> Answer {
        let form = [
            ("client_assertion", assertion),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_id", client_id),
            ("grant_type", "client_credentials"),
            ("scope", scope),
        ];
        let response = self
            .http
            .post(self.url(&format!("/{}/oauth2/v2.0/token", self.emu.tenant_id())))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&form))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Answer {
            status,
            body: response.json().await.unwrap(),
            headers,
        }
    }

    fn operator_assertion(&self) -> String {
        std::fs::read_to_string(self.emu.federated_token_file().unwrap()).unwrap()
    }

    async fn list(&self, scope: &str, filter: &str) -> Vec<Value> {
        let mut url = format!(
            "{scope}/providers/Microsoft.Authorization/roleAssignments?{V}&$filter={}",
            urlencode(filter)
        );
        let mut items = Vec::new();
        loop {
            let answer = self.arm(Method::GET, &url, None).await;
            assert_eq!(answer.status, 200, "{}", answer.body);
            items.extend(answer.body["value"].as_array().unwrap().iter().cloned());
            match answer.body["nextLink"].as_str() {
                Some(next) => url = next.strip_prefix(self.emu.endpoint()).unwrap().to_string(),
                None => return items,
            }
        }
    }
}

/// An `application/x-www-form-urlencoded` body, as azure_identity sends it.
fn form_body(fields: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

fn urlencode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

// ---- Entra ----------------------------------------------------------------------------------

#[tokio::test]
async fn the_operator_exchanges_its_federated_token_file_for_arm_and_graph_tokens() {
    let env = start().await;
    let assertion = env.operator_assertion();
    for (scope, aud) in [
        (
            "https://management.azure.com/.default",
            "https://management.azure.com",
        ),
        (
            "https://graph.microsoft.com/.default",
            "https://graph.microsoft.com",
        ),
    ] {
        let answer = env.token_request(OPERATOR_CLIENT, &assertion, scope).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body["token_type"], "Bearer");
        assert_eq!(answer.body["expires_in"], 3599);
        let token = claims(answer.body["access_token"].as_str().unwrap());
        assert_eq!(token["aud"], aud);
        assert_eq!(token["oid"], OPERATOR);
        assert_eq!(token["tid"], env.emu.tenant_id());
        assert_eq!(token["appid"], OPERATOR_CLIENT);
    }
}

#[tokio::test]
// azure_identity 1.1 adds fields to the options (facts §E.2): keep `..Default::default()`.
#[allow(clippy::needless_update)]
async fn azure_identitys_workload_identity_credential_gets_tokens_from_the_emulator() {
    use azure_core::credentials::TokenCredential;
    let env = start().await;
    let mut cloud = azure_core::cloud::CustomConfiguration::default();
    cloud.authority_host = env.emu.endpoint().to_string();
    let transport = azure_core::http::Transport::new(std::sync::Arc::new(env.http.clone()));
    let credential = azure_identity::WorkloadIdentityCredential::new(Some(
        azure_identity::WorkloadIdentityCredentialOptions {
            credential_options: azure_identity::ClientAssertionCredentialOptions {
                client_options: azure_core::http::ClientOptions {
                    transport: Some(transport),
                    cloud: Some(std::sync::Arc::new(
                        azure_core::cloud::CloudConfiguration::Custom(cloud),
                    )),
                    ..Default::default()
                },
            },
            client_id: Some(env.emu.operator_client_id().unwrap().to_string()),
            tenant_id: Some(env.emu.tenant_id()),
            token_file_path: Some(env.emu.federated_token_file().unwrap().to_path_buf()),
            ..Default::default()
        },
    ))
    .unwrap();
    let token = credential
        .get_token(&["https://management.azure.com/.default"], None)
        .await
        .unwrap();
    let answer = env
        .send(
            Method::GET,
            &format!("{}?api-version=2024-10-01", account("oai-prod")),
            Some(token.token.secret()),
            None,
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(env.emu.request_count("Token", 200), 1);
}

#[tokio::test]
async fn assertions_that_match_no_federated_credential_are_refused_as_entra_refuses_them() {
    let env = start().await;
    let scope = "https://management.azure.com/.default";
    let cases = [
        (
            env.emu.federated_assertion(
                ISSUER,
                "system:serviceaccount:default:default",
                "api://AzureADTokenExchange",
            ),
            700213,
        ),
        (
            env.emu.federated_assertion(
                "https://evil.example/",
                "system:serviceaccount:keyless-system:keyless",
                "api://AzureADTokenExchange",
            ),
            700211,
        ),
        (
            env.emu.federated_assertion(
                ISSUER,
                "system:serviceaccount:keyless-system:keyless",
                "api://elsewhere",
            ),
            700212,
        ),
        ("opaque-not-a-jwt".to_string(), 50027),
    ];
    for (assertion, code) in cases {
        let answer = env.token_request(OPERATOR_CLIENT, &assertion, scope).await;
        assert_eq!(answer.status, 400);
        assert_eq!(answer.body["error"], "invalid_client");
        assert_eq!(answer.body["error_codes"][0], code);
    }
    // The chat backend's own service account works for the chat backend's identity only.
    let chat = env.emu.federated_assertion(
        ISSUER,
        "system:serviceaccount:team-chat:chat-backend",
        "api://AzureADTokenExchange",
    );
    assert_eq!(
        env.token_request(CHAT_BACKEND_CLIENT, &chat, scope)
            .await
            .status,
        200
    );
    assert_eq!(
        env.token_request(OPERATOR_CLIENT, &chat, scope).await.body["error_codes"][0],
        700213
    );
}

#[tokio::test]
async fn token_requests_for_unknown_clients_scopes_and_tenants_fail_with_entra_codes() {
    let env = start().await;
    let assertion = env.operator_assertion();
    let unknown = env
        .token_request(
            "00000000-0000-0000-0000-00000000dead",
            &assertion,
            "https://management.azure.com/.default",
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.body["error_codes"][0].as_u64()),
        (400, Some(700016))
    );
    let no_default = env
        .token_request(
            OPERATOR_CLIENT,
            &assertion,
            "https://management.azure.com/user_impersonation",
        )
        .await;
    assert_eq!(no_default.body["error"], "invalid_scope");
    let two_resources = env
        .token_request(
            OPERATOR_CLIENT,
            &assertion,
            "https://management.azure.com/.default https://graph.microsoft.com/.default",
        )
        .await;
    assert_eq!(two_resources.body["error_codes"][0], 70011);
    let response = env
        .http
        .post(env.url("/00000000-0000-0000-0000-000000000000/oauth2/v2.0/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("grant_type", "client_credentials")]))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error_codes"][0], 90002);
}

#[tokio::test]
async fn arm_answers_401_without_a_token_and_for_a_graph_token() {
    let env = start().await;
    let path = format!("{}?api-version=2024-10-01", account("oai-prod"));
    let missing = env.send(Method::GET, &path, None, None).await;
    assert_eq!(
        (missing.status, missing.code()),
        (401, "AuthenticationFailed")
    );
    assert!(
        missing
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    let graph_token = env.operator_token(Audience::Graph);
    let wrong = env.send(Method::GET, &path, Some(&graph_token), None).await;
    assert_eq!(
        (wrong.status, wrong.code()),
        (401, "InvalidAuthenticationTokenAudience")
    );
    let forged = env
        .send(
            Method::GET,
            &path,
            Some("eyJhbGciOiJub25lIn0.eyJvaWQiOiJ4In0.x"),
            None,
        )
        .await;
    assert_eq!(
        (forged.status, forged.code()),
        (401, "InvalidAuthenticationToken")
    );
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let env = start_with(|c| c.token_lifetime = Duration::ZERO).await;
    let token = env.operator_token(Audience::Arm);
    let answer = env
        .send(
            Method::GET,
            &format!("{}?api-version=2024-10-01", account("oai-prod")),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        (answer.status, answer.code()),
        (401, "ExpiredAuthenticationToken")
    );
}

#[tokio::test]
async fn graph_answers_401_for_an_arm_token() {
    let env = start().await;
    let token = env.operator_token(Audience::Arm);
    let answer = env
        .send(
            Method::GET,
            "/v1.0/users/alice@contoso.com",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        (answer.status, answer.code()),
        (401, "InvalidAuthenticationToken")
    );
}

// ---- ARM role assignments ----------------------------------------------------------------------

#[tokio::test]
async fn a_put_creates_an_assignment_that_get_returns_with_created_and_updated_times() {
    let env = start().await;
    let name = new_name();
    let scope = account("oai-prod");
    let created = env
        .arm(
            Method::PUT,
            &assignment_path(&scope, &name),
            Some(body(openai_user(), SUMMARIZER, Some("ServicePrincipal"))),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["name"], name);
    assert_eq!(
        created.body["type"],
        "Microsoft.Authorization/roleAssignments"
    );
    assert_eq!(
        created.body["id"],
        format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}")
    );
    assert_eq!(created.body["properties"]["scope"], scope);
    assert_eq!(created.body["properties"]["createdBy"], OPERATOR);
    let created_on = created.body["properties"]["createdOn"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        created.body["properties"]["updatedOn"].as_str().unwrap(),
        created_on
    );
    let fetched = env
        .arm(Method::GET, &assignment_path(&scope, &name), None)
        .await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.body, created.body);
    // GET by id is the same URL: the id starts with '/'.
    let by_id = env
        .arm(
            Method::GET,
            &format!("{}?{V}", created.body["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(by_id.body["name"], name);
}

#[tokio::test]
async fn a_put_that_only_changes_the_description_answers_200_and_moves_updated_on() {
    let env = start().await;
    let (scope, name) = (account("oai-prod"), new_name());
    let mut request = body(openai_user(), SUMMARIZER, Some("ServicePrincipal"));
    let first = env
        .arm(
            Method::PUT,
            &assignment_path(&scope, &name),
            Some(request.clone()),
        )
        .await;
    assert_eq!(first.status, 201);
    request["properties"]["description"] = json!("managed-by: keyless/team-a/summarizer");
    let second = env
        .arm(Method::PUT, &assignment_path(&scope, &name), Some(request))
        .await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(
        second.body["properties"]["description"],
        "managed-by: keyless/team-a/summarizer"
    );
    assert_eq!(
        second.body["properties"]["createdOn"],
        first.body["properties"]["createdOn"]
    );
    assert!(
        second.body["properties"]["updatedOn"].as_str().unwrap()
            >= first.body["properties"]["updatedOn"].as_str().unwrap()
    );
}

#[tokio::test]
async fn a_put_of_an_existing_triple_under_another_name_is_a_409_naming_the_existing_assignment() {
    let env = start().await;
    let answer = env
        .arm(
            Method::PUT,
            &assignment_path(&account("oai-prod"), &new_name()),
            Some(body(openai_user(), BOB, Some("User"))),
        )
        .await;
    assert_eq!(
        (answer.status, answer.code()),
        (409, "RoleAssignmentExists")
    );
    assert_eq!(
        answer.message(),
        "The role assignment already exists.\nThe ID of the existing role assignment is 486f961251c05f11a5cd84378ffd1469."
    );
    let regex = regex::Regex::new("existing role assignment is ([0-9a-fA-F]{32})").unwrap();
    assert_eq!(
        &regex.captures(answer.message()).unwrap()[1],
        BOBS_BICEP_ASSIGNMENT.replace('-', "")
    );
}

#[tokio::test]
async fn the_triple_is_compared_case_insensitively_and_by_role_guid() {
    let env = start().await;
    let shouted = account("oai-prod")
        .to_uppercase()
        .replace("RESOURCEGROUPS", "resourcegroups");
    let mut request = body(openai_user(), &BOB.to_uppercase(), None);
    request["properties"]["roleDefinitionId"] = json!(format!(
        "/providers/Microsoft.Authorization/roleDefinitions/{}",
        openai_user()
    ));
    let answer = env
        .arm(
            Method::PUT,
            &assignment_path(&shouted, &new_name()),
            Some(request),
        )
        .await;
    assert_eq!(answer.code(), "RoleAssignmentExists");
}

#[tokio::test]
async fn reusing_a_name_for_another_principal_or_scope_is_400_update_not_permitted() {
    let env = start().await;
    let answer = env
        .arm(
            Method::PUT,
            &assignment_path(&account("oai-prod"), BOBS_BICEP_ASSIGNMENT),
            Some(body(openai_user(), ALICE, Some("User"))),
        )
        .await;
    assert_eq!(
        (answer.status, answer.code()),
        (400, "RoleAssignmentUpdateNotPermitted")
    );
    assert_eq!(
        answer.message(),
        "Tenant ID, application ID, principal ID, and scope are not allowed to be updated."
    );
    let moved = env
        .arm(
            Method::PUT,
            &assignment_path(&account("ais-dev"), BOBS_BICEP_ASSIGNMENT),
            Some(body(openai_user(), BOB, Some("User"))),
        )
        .await;
    assert_eq!(moved.code(), "RoleAssignmentUpdateNotPermitted");
}

#[tokio::test]
async fn a_name_that_is_not_a_guid_is_400_invalid_role_assignment_id() {
    let env = start().await;
    let answer = env
        .arm(
            Method::PUT,
            &assignment_path(&account("oai-prod"), "not-a-guid"),
            Some(body(openai_user(), ALICE, Some("User"))),
        )
        .await;
    assert_eq!(
        (answer.status, answer.code()),
        (400, "InvalidRoleAssignmentId")
    );
}

#[tokio::test]
async fn a_body_without_required_properties_is_400() {
    let env = start().await;
    let path = assignment_path(&account("oai-prod"), &new_name());
    let answer = env
        .arm(
            Method::PUT,
            &path,
            Some(json!({"properties": {"principalId": ALICE}})),
        )
        .await;
    assert_eq!(
        (answer.status, answer.code()),
        (400, "InvalidRequestContent")
    );
    assert!(answer.message().contains("roleDefinitionId"));
    let answer = env
        .arm(Method::PUT, &path, Some(json!({"roleDefinitionId": "x"})))
        .await;
    assert_eq!(answer.code(), "InvalidRequestContent");
    let unknown_role = env
        .arm(
            Method::PUT,
            &path,
            Some(body(
                "11111111-2222-3333-4444-555555555555",
                ALICE,
                Some("User"),
            )),
        )
        .await;
    assert_eq!(unknown_role.code(), "RoleDefinitionDoesNotExist");
}

#[tokio::test]
async fn an_unknown_principal_without_principal_type_is_principal_not_found() {
    let env = start().await;
    let ghost = "0a1b2c3d-0000-4000-8000-000000000001";
    let answer = env
        .arm(
            Method::PUT,
            &assignment_path(&account("oai-prod"), &new_name()),
            Some(body(openai_user(), ghost, None)),
        )
        .await;
    assert_eq!((answer.status, answer.code()), (400, "PrincipalNotFound"));
    assert!(answer.message().starts_with(&format!(
        "Principal 0a1b2c3d000040008000000000000001 does not exist in the directory {}.",
        env.emu.tenant_id()
    )));
}

#[tokio::test]
async fn a_principal_type_that_does_not_match_the_directory_is_unmatched_principal_type() {
    let env = start().await;
    let answer = env
        .arm(
            Method::PUT,
            &assignment_path(&account("oai-prod"), &new_name()),
            Some(body(openai_user(), SUMMARIZER, Some("User"))),
        )
        .await;
    assert_eq!(
        (answer.status, answer.code()),
        (400, "UnmatchedPrincipalType")
    );
    assert!(
        answer.message().contains("has type 'ServicePrincipal'")
            && answer.message().contains("PrinciaplType 'User'")
    );
    // Omitted, ARM infers it from the directory.
    let inferred = env
        .arm(
            Method::PUT,
            &assignment_path(&account("oai-prod"), &new_name()),
            Some(body(openai_user(), TEAM, None)),
        )
        .await;
    assert_eq!(inferred.status, 201);
    assert_eq!(inferred.body["properties"]["principalType"], "Group");
}

#[tokio::test]
async fn a_principal_still_replicating_is_accepted_with_principal_type_and_refused_without() {
    let env = start().await;
    let sp = env
        .emu
        .add_service_principal(NewServicePrincipal {
            display_name: "fresh-app".into(),
            ..Default::default()
        })
        .unwrap();
    let scope = account("oai-prod");
    let without = env
        .arm(
            Method::PUT,
            &assignment_path(&scope, &new_name()),
            Some(body(openai_user(), &sp.id, None)),
        )
        .await;
    assert_eq!(without.code(), "PrincipalNotFound");
    let with = env
        .arm(
            Method::PUT,
            &assignment_path(&scope, &new_name()),
            Some(body(openai_user(), &sp.id, Some("ServicePrincipal"))),
        )
        .await;
    assert_eq!(with.status, 201, "{}", with.body);
}

#[tokio::test]
async fn after_the_replication_window_the_principal_is_found() {
    let env = start_with(|c| c.replication_window = Duration::from_millis(50)).await;
    let sp = env
        .emu
        .add_service_principal(NewServicePrincipal {
            display_name: "fresh-app".into(),
            ..Default::default()
        })
        .unwrap();
    let scope = account("oai-prod");
    assert_eq!(
        env.arm(
            Method::PUT,
            &assignment_path(&scope, &new_name()),
            Some(body(openai_user(), &sp.id, None))
        )
        .await
        .code(),
        "PrincipalNotFound"
    );
    assert_eq!(
        env.graph(&format!("/v1.0/servicePrincipals/{}", sp.id))
            .await
            .status,
        404
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    let answer = env
        .arm(
            Method::PUT,
            &assignment_path(&scope, &new_name()),
            Some(body(openai_user(), &sp.id, None)),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(
        answer.body["properties"]["principalType"],
        "ServicePrincipal"
    );
    assert_eq!(
        env.graph(&format!("/v1.0/servicePrincipals/{}", sp.id))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn the_operators_abac_condition_refuses_roles_outside_the_table_with_the_abac_wording() {
    let env = start().await;
    let name = new_name();
    let scope = account("oai-prod");
    let answer = env
        .arm(
            Method::PUT,
            &assignment_path(&scope, &name),
            Some(body(OWNER, ALICE, Some("User"))),
        )
        .await;
    assert_eq!((answer.status, answer.code()), (403, "AuthorizationFailed"));
    assert_eq!(
        answer.message(),
        format!(
            "The client '{OPERATOR}' with object id '{OPERATOR}' does not have authorization or an ABAC condition not fulfilled to perform action 'Microsoft.Authorization/roleAssignments/write' over scope '{scope}/providers/Microsoft.Authorization/roleAssignments/{name}' or the scope is invalid. If access was recently granted, please refresh your credentials."
        )
    );
    for role in DATA_ROLES {
        let ok = env
            .arm(
                Method::PUT,
                &assignment_path(&scope, &new_name()),
                Some(body(role, ALICE, Some("User"))),
            )
            .await;
        assert_eq!(ok.status, 201, "{role}: {}", ok.body);
    }
}

#[tokio::test]
async fn deleting_an_assignment_of_a_role_outside_the_table_is_refused_by_the_condition() {
    let env = start().await;
    let owner = env
        .emu
        .put_role_assignment(AdminRoleAssignment {
            scope: account("oai-prod"),
            role_definition_id: OWNER.into(),
            principal_id: ALICE.into(),
            ..Default::default()
        })
        .unwrap();
    let answer = env
        .arm(Method::DELETE, &format!("{}?{V}", owner.id()), None)
        .await;
    assert_eq!((answer.status, answer.code()), (403, "AuthorizationFailed"));
    assert!(answer.message().contains("ABAC condition not fulfilled to perform action 'Microsoft.Authorization/roleAssignments/delete'"));
    // Bob's OpenAI User assignment is within the table.
    let bobs = env
        .arm(
            Method::DELETE,
            &assignment_path(&account("oai-prod"), BOBS_BICEP_ASSIGNMENT),
            None,
        )
        .await;
    assert_eq!(bobs.status, 200);
}

#[tokio::test]
async fn a_caller_without_a_grant_is_refused_without_the_abac_wording() {
    let env = start().await;
    let token = env.emu.token_for(BATCH_SCORER, Audience::Arm).unwrap();
    let scope = account("oai-prod");
    let answer = env
        .send(
            Method::PUT,
            &assignment_path(&scope, &new_name()),
            Some(&token),
            Some(body(openai_user(), ALICE, Some("User"))),
        )
        .await;
    assert_eq!((answer.status, answer.code()), (403, "AuthorizationFailed"));
    assert!(answer.message().contains(&format!("'{BATCH_SCORER}' with object id '{BATCH_SCORER}' does not have authorization to perform action")));
    let read = env
        .send(
            Method::GET,
            &format!("{scope}?api-version=2024-10-01"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(read.status, 403);
    // A grant through a group applies to its members' tokens too (transitively).
    env.emu
        .put_role_assignment(AdminRoleAssignment {
            scope: scope.clone(),
            role_definition_id: "acdd72a7-3385-48ef-bd42-f606fba81ae7".into(),
            principal_id: TEAM.into(),
            ..Default::default()
        })
        .unwrap();
    env.emu
        .patch_directory_object(
            TEAM,
            keyless_emulator::DirectoryObjectPatch {
                members: Some(vec![BATCH_SCORER.into()]),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        env.send(
            Method::GET,
            &format!("{scope}?api-version=2024-10-01"),
            Some(&token),
            None
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn delete_answers_200_with_the_body_then_204_when_already_gone() {
    let env = start().await;
    let path = assignment_path(&account("oai-prod"), BOBS_BICEP_ASSIGNMENT);
    let first = env.arm(Method::DELETE, &path, None).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body["name"], BOBS_BICEP_ASSIGNMENT);
    assert_eq!(first.body["properties"]["principalId"], BOB);
    let second = env.arm(Method::DELETE, &path, None).await;
    assert_eq!((second.status, second.body.clone()), (204, Value::Null));
    let get = env.arm(Method::GET, &path, None).await;
    assert_eq!((get.status, get.code()), (404, "RoleAssignmentNotFound"));
}

#[tokio::test]
async fn list_at_scope_returns_assignments_at_and_above_but_not_beside_or_below() {
    let env = start().await;
    let sibling = env
        .arm(
            Method::PUT,
            &assignment_path(&account("ais-dev"), &new_name()),
            Some(body(openai_user(), ALICE, Some("User"))),
        )
        .await;
    assert_eq!(sibling.status, 201);
    let names: Vec<String> = env
        .list(&account("oai-prod"), "atScope()")
        .await
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        vec![
            "a0e6f540-95b7-43ba-bf40-1fe5030effd0".to_string(),
            BOBS_BICEP_ASSIGNMENT.to_string()
        ]
    );
    let at_subscription = env
        .list(&format!("/subscriptions/{SUB}"), "atScope()")
        .await;
    assert_eq!(at_subscription.len(), 1);
    let everything = env.list(&format!("/subscriptions/{SUB}"), "").await;
    assert_eq!(everything.len(), 3);
}

#[tokio::test]
async fn list_by_principal_id_includes_that_principals_assignments_above_at_and_below() {
    let env = start().await;
    let bobs = env
        .list(
            &format!("/subscriptions/{SUB}"),
            &format!("principalId eq '{BOB}'"),
        )
        .await;
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0]["properties"]["scope"], account("oai-prod"));
    assert!(
        bobs[0]["properties"]["roleDefinitionId"]
            .as_str()
            .unwrap()
            .ends_with(openai_user())
    );
    assert!(bobs[0]["properties"].get("description").is_none());
    let operators = env
        .list(
            &account("oai-prod"),
            &format!("principalId eq '{OPERATOR}'"),
        )
        .await;
    assert_eq!(
        operators[0]["properties"]["condition"],
        example_delegation_condition()
    );
    assert_eq!(operators[0]["properties"]["conditionVersion"], "2.0");
    let unsupported = env
        .arm(Method::GET, &format!("{}/providers/Microsoft.Authorization/roleAssignments?{V}&$filter=atScope()+and+principalId+eq+'{BOB}'", account("oai-prod")), None)
        .await;
    assert_eq!(unsupported.status, 400);
}

#[tokio::test]
async fn lists_page_through_next_link_at_the_configured_page_size() {
    let env = start_with(|c| c.page_size = 2).await;
    let scope = account("oai-prod");
    for _ in 0..3 {
        let answer = env
            .arm(
                Method::PUT,
                &assignment_path(&scope, &new_name()),
                Some(body(
                    openai_user(),
                    &uuid::Uuid::new_v4().to_string(),
                    Some("User"),
                )),
            )
            .await;
        assert_eq!(answer.status, 201);
    }
    let first = env
        .arm(
            Method::GET,
            &format!(
                "{scope}/providers/Microsoft.Authorization/roleAssignments?{V}&$filter=atScope()"
            ),
            None,
        )
        .await;
    assert_eq!(first.body["value"].as_array().unwrap().len(), 2);
    let next = first.body["nextLink"].as_str().unwrap();
    assert!(
        next.starts_with(env.emu.endpoint())
            && next.contains("api-version=2022-04-01")
            && next.contains("atScope")
    );
    let all = env.list(&scope, "atScope()").await;
    assert_eq!(all.len(), 5);
    let mut names: Vec<&str> = all.iter().map(|a| a["name"].as_str().unwrap()).collect();
    names.dedup();
    assert_eq!(names.len(), 5);
}

#[tokio::test]
async fn every_route_checks_the_api_version() {
    let env = start().await;
    let scope = account("oai-prod");
    let routes = [
        format!(
            "{scope}/providers/Microsoft.Authorization/roleAssignments/{BOBS_BICEP_ASSIGNMENT}"
        ),
        format!("{scope}/providers/Microsoft.Authorization/roleAssignments"),
        scope.clone(),
        format!(
            "/subscriptions/{SUB}/resourceGroups/rg-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-summarizer"
        ),
        format!(
            "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{}",
            openai_user()
        ),
        format!("{scope}/providers/Microsoft.Authorization/permissions"),
    ];
    for route in routes {
        let missing = env.arm(Method::GET, &route, None).await;
        assert_eq!(
            (missing.status, missing.code()),
            (400, "MissingApiVersionParameter"),
            "{route}"
        );
        let wrong = env
            .arm(
                Method::GET,
                &format!("{route}?api-version=2015-07-01"),
                None,
            )
            .await;
        assert_eq!(
            (wrong.status, wrong.code()),
            (400, "InvalidApiVersionParameter"),
            "{route}"
        );
    }
    let account_with_ra_version = env.arm(Method::GET, &format!("{scope}?{V}"), None).await;
    assert_eq!(account_with_ra_version.code(), "InvalidApiVersionParameter");
}

#[tokio::test]
async fn scopes_that_do_not_exist_are_404_as_arm_names_them() {
    let env = start().await;
    let body = Some(body(openai_user(), ALICE, Some("User")));
    let rg = env
        .arm(
            Method::PUT,
            &assignment_path(
                &format!("/subscriptions/{SUB}/resourceGroups/rg-nope"),
                &new_name(),
            ),
            body.clone(),
        )
        .await;
    assert_eq!((rg.status, rg.code()), (404, "ResourceGroupNotFound"));
    let sub = env
        .arm(
            Method::PUT,
            &assignment_path(
                "/subscriptions/00000000-0000-0000-0000-000000000009",
                &new_name(),
            ),
            body.clone(),
        )
        .await;
    assert_eq!((sub.status, sub.code()), (404, "SubscriptionNotFound"));
    let acct = env
        .arm(
            Method::PUT,
            &assignment_path(&account("oai-gone"), &new_name()),
            body,
        )
        .await;
    assert_eq!((acct.status, acct.code()), (404, "ResourceNotFound"));
}

#[tokio::test]
async fn the_assignment_limit_per_subscription_is_enforced() {
    // The real limit is 4000; the seed has 2 assignments in the subscription.
    let env = start_with(|c| c.assignment_limit = 3).await;
    let scope = account("oai-prod");
    let third = env
        .arm(
            Method::PUT,
            &assignment_path(&scope, &new_name()),
            Some(body(openai_user(), ALICE, Some("User"))),
        )
        .await;
    assert_eq!(third.status, 201);
    let fourth = env
        .arm(
            Method::PUT,
            &assignment_path(&scope, &new_name()),
            Some(body(openai_user(), TEAM, Some("Group"))),
        )
        .await;
    assert_eq!(fourth.code(), "RoleAssignmentLimitExceeded");
}

// ---- accounts -----------------------------------------------------------------------------

#[tokio::test]
async fn the_account_get_reports_kind_endpoint_local_auth_and_subdomain() {
    let env = start().await;
    let prod = env
        .arm(
            Method::GET,
            &format!("{}?api-version=2024-10-01", account("oai-prod")),
            None,
        )
        .await;
    assert_eq!(prod.status, 200);
    assert_eq!(prod.body["kind"], "OpenAI");
    assert_eq!(
        prod.body["properties"]["endpoint"],
        "https://oai-prod.openai.azure.com/"
    );
    assert_eq!(prod.body["properties"]["disableLocalAuth"], true);
    assert_eq!(prod.body["properties"]["customSubDomainName"], "oai-prod");
    let dev = env
        .arm(
            Method::GET,
            &format!("{}?api-version=2024-10-01", account("ais-dev")),
            None,
        )
        .await;
    assert_eq!(
        (
            dev.body["kind"].as_str(),
            dev.body["properties"]["disableLocalAuth"].as_bool()
        ),
        (Some("AIServices"), Some(false))
    );
    let legacy = env
        .arm(
            Method::GET,
            &format!("{}?api-version=2024-10-01", account("oai-legacy")),
            None,
        )
        .await;
    assert_eq!(
        legacy.body["properties"]["customSubDomainName"],
        Value::Null
    );
    assert_eq!(
        legacy.body["properties"]["endpoint"],
        "https://westeurope.api.cognitive.microsoft.com/"
    );
    let missing = env
        .arm(
            Method::GET,
            &format!("{}?api-version=2024-10-01", account("oai-nope")),
            None,
        )
        .await;
    assert_eq!((missing.status, missing.code()), (404, "ResourceNotFound"));
}

// ---- faults, throttling, counts -------------------------------------------------------------

#[tokio::test]
async fn error_rates_answer_429_with_retry_after_500_and_503() {
    let env = start().await;
    let path = format!("{}?api-version=2024-10-01", account("oai-prod"));
    env.emu.set_faults(Faults {
        throttle_rate: 1.0,
        retry_after: Duration::from_secs(7),
        ..Default::default()
    });
    let throttled = env.arm(Method::GET, &path, None).await;
    assert_eq!(
        (throttled.status, throttled.header("retry-after")),
        (429, Some("7"))
    );
    env.emu.set_faults(Faults {
        server_error_rate: 1.0,
        ..Default::default()
    });
    assert_eq!(env.arm(Method::GET, &path, None).await.status, 500);
    env.emu.set_faults(Faults {
        unavailable_rate: 1.0,
        ..Default::default()
    });
    assert_eq!(env.arm(Method::GET, &path, None).await.status, 503);
    env.emu.clear_faults();
    assert_eq!(env.arm(Method::GET, &path, None).await.status, 200);
    assert_eq!(env.emu.request_count("Accounts_Get", 429), 1);
    assert_eq!(env.emu.request_count("Accounts_Get", 500), 1);
    assert_eq!(env.emu.request_count("Accounts_Get", 503), 1);
    assert_eq!(env.emu.request_count("Accounts_Get", 200), 1);
}

#[tokio::test]
async fn a_connection_reset_drops_the_connection_without_an_answer() {
    let env = start().await;
    env.emu.set_faults(Faults {
        connection_reset_rate: 1.0,
        ..Default::default()
    });
    let result = env
        .http
        .get(env.url(&format!("{}?api-version=2024-10-01", account("oai-prod"))))
        .send()
        .await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(env.emu.request_count("Accounts_Get", 0), 1);
}

#[tokio::test]
async fn faults_can_target_one_operation_and_scripted_faults_hit_only_the_next_requests() {
    let env = start().await;
    let account_path = format!("{}?api-version=2024-10-01", account("oai-prod"));
    env.emu.set_faults(Faults {
        unavailable_rate: 1.0,
        operations: vec!["RoleAssignments_Create".into()],
        ..Default::default()
    });
    assert_eq!(env.arm(Method::GET, &account_path, None).await.status, 200);
    let put = env
        .arm(
            Method::PUT,
            &assignment_path(&account("oai-prod"), &new_name()),
            Some(body(openai_user(), ALICE, Some("User"))),
        )
        .await;
    assert_eq!(put.status, 503);
    env.emu.clear_faults();
    env.emu.inject_fault(ScriptedFault {
        kind: FaultKind::ServerError,
        count: 2,
        operation: Some("Accounts_Get".into()),
    });
    let statuses = [
        env.arm(Method::GET, &account_path, None).await.status,
        env.arm(Method::GET, &account_path, None).await.status,
        env.arm(Method::GET, &account_path, None).await.status,
    ];
    assert_eq!(statuses, [500, 500, 200]);
}

#[tokio::test]
async fn arm_token_buckets_throttle_per_caller_and_operation_type_with_remaining_headers() {
    let tiny = Bucket {
        capacity: 2,
        refill_per_second: 0.0,
    };
    let env = start_with(|c| {
        c.throttling = Throttling {
            enabled: true,
            reads: tiny,
            writes: tiny,
            deletes: tiny,
        }
    })
    .await;
    let path = format!("{}?api-version=2024-10-01", account("oai-prod"));
    let first = env.arm(Method::GET, &path, None).await;
    assert_eq!(
        first.header("x-ms-ratelimit-remaining-subscription-reads"),
        Some("1")
    );
    let second = env.arm(Method::GET, &path, None).await;
    assert_eq!(
        second.header("x-ms-ratelimit-remaining-subscription-reads"),
        Some("0")
    );
    let third = env.arm(Method::GET, &path, None).await;
    assert_eq!((third.status, third.code()), (429, "TooManyRequests"));
    assert!(third.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    // Writes have their own bucket, and so does another caller.
    let write = env
        .arm(
            Method::PUT,
            &assignment_path(&account("oai-prod"), &new_name()),
            Some(body(openai_user(), ALICE, Some("User"))),
        )
        .await;
    assert_eq!(
        (
            write.status,
            write.header("x-ms-ratelimit-remaining-subscription-writes")
        ),
        (201, Some("1"))
    );
    let other = env.emu.token_for(SUMMARIZER, Audience::Arm).unwrap();
    assert_eq!(
        env.send(Method::GET, &path, Some(&other), None)
            .await
            .status,
        403
    );
}

#[tokio::test]
async fn buckets_refill_at_their_rate() {
    let bucket = Bucket {
        capacity: 1,
        refill_per_second: 20.0,
    };
    let env = start_with(|c| c.throttling.reads = bucket).await;
    let path = format!("{}?api-version=2024-10-01", account("oai-prod"));
    assert_eq!(env.arm(Method::GET, &path, None).await.status, 200);
    assert_eq!(env.arm(Method::GET, &path, None).await.status, 429);
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(env.arm(Method::GET, &path, None).await.status, 200);
}

#[tokio::test]
async fn the_default_buckets_are_arms() {
    let env = start().await;
    let read = env
        .arm(
            Method::GET,
            &format!("{}?api-version=2024-10-01", account("oai-prod")),
            None,
        )
        .await;
    assert_eq!(
        read.header("x-ms-ratelimit-remaining-subscription-reads"),
        Some("249")
    );
    let delete = env
        .arm(
            Method::DELETE,
            &assignment_path(&account("oai-prod"), &new_name()),
            None,
        )
        .await;
    assert_eq!(
        (
            delete.status,
            delete.header("x-ms-ratelimit-remaining-subscription-deletes")
        ),
        (204, Some("199"))
    );
    assert!(read.header("x-ms-request-id").is_some());
}

#[tokio::test]
async fn added_latency_still_answers() {
    let env = start().await;
    env.emu.set_faults(Faults {
        latency: Duration::from_millis(20),
        ..Default::default()
    });
    assert_eq!(
        env.arm(
            Method::GET,
            &format!("{}?api-version=2024-10-01", account("oai-prod")),
            None
        )
        .await
        .status,
        200
    );
}

// ---- Graph (issue 4) --------------------------------------------------------------------------

#[tokio::test]
async fn graph_finds_users_by_id_upn_dollar_upn_and_mail() {
    let env = start().await;
    for path in [
        format!("/v1.0/users/{ALICE}"),
        "/v1.0/users/alice@contoso.com".into(),
        "/v1.0/users('alice@contoso.com')".into(),
    ] {
        let answer = env.graph(&path).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.body["id"], ALICE);
        assert_eq!(answer.body["userPrincipalName"], "alice@contoso.com");
    }
    let by_mail = env
        .graph(&format!(
            "/v1.0/users?$filter={}&$select=id,userPrincipalName,mail",
            urlencode("mail eq 'bob@contoso.com'")
        ))
        .await;
    assert_eq!(
        by_mail.body["value"],
        json!([{"id": BOB, "userPrincipalName": "bob@contoso.com", "mail": "bob@contoso.com"}])
    );
    let none = env
        .graph(&format!(
            "/v1.0/users?$filter={}",
            urlencode("mail eq 'nobody@contoso.com'")
        ))
        .await;
    assert_eq!((none.status, none.body["value"].clone()), (200, json!([])));
    let missing = env.graph("/v1.0/users/nobody@contoso.com").await;
    assert_eq!(
        (missing.status, missing.code()),
        (404, "Request_ResourceNotFound")
    );
    assert_eq!(
        missing.message(),
        "Resource 'nobody@contoso.com' does not exist or one of its queried reference-property objects are not present."
    );
    assert!(missing.body["error"]["innerError"]["request-id"].is_string());
}

#[tokio::test]
async fn graph_finds_groups_by_id_and_display_name() {
    let env = start().await;
    assert_eq!(
        env.graph(&format!("/v1.0/groups/{TEAM}")).await.body["displayName"],
        "ML Platform Team"
    );
    let found = env
        .graph(&format!(
            "/v1.0/groups?$filter={}",
            urlencode("displayName eq 'ML Platform Team'")
        ))
        .await;
    assert_eq!(found.body["value"][0]["id"], TEAM);
    let gone = env
        .graph(&format!("/v1.0/groups/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(gone.code(), "Request_ResourceNotFound");
}

#[tokio::test]
async fn group_names_with_quotes_and_hostile_text_are_data_in_odata_literals() {
    let env = start_with(|c| c.replication_window = Duration::ZERO).await;
    let hostile = [
        "O'Brien's Team",
        "x' or displayName eq 'ML Platform Team",
        "''",
        "100% & #1 ✓",
    ];
    for name in hostile {
        env.emu
            .add_group(NewGroup {
                display_name: name.into(),
                ..Default::default()
            })
            .unwrap();
    }
    for name in hostile {
        let filter = format!("displayName eq '{}'", name.replace('\'', "''"));
        let answer = env
            .graph(&format!("/v1.0/groups?$filter={}", urlencode(&filter)))
            .await;
        assert_eq!(answer.status, 200, "{name}: {}", answer.body);
        let values = answer.body["value"].as_array().unwrap();
        assert_eq!(values.len(), 1, "{name}: {}", answer.body);
        assert_eq!(values[0]["displayName"], name);
    }
    let unescaped = env
        .graph(&format!(
            "/v1.0/groups?$filter={}",
            urlencode("displayName eq 'O'Brien's Team'")
        ))
        .await;
    assert_eq!((unescaped.status, unescaped.code()), (400, "BadRequest"));
    assert!(unescaped.message().starts_with(
        "Invalid filter clause: Syntax error: character 'B' is not valid at position 18"
    ));
    let open = env
        .graph(&format!(
            "/v1.0/groups?$filter={}",
            urlencode("displayName eq 'ML")
        ))
        .await;
    assert!(open.message().contains("unterminated string literal"));
    let unknown = env
        .graph(&format!(
            "/v1.0/groups?$filter={}",
            urlencode("shoeSize eq '9'")
        ))
        .await;
    assert!(
        unknown
            .message()
            .contains("Could not find a property named 'shoeSize' on type 'microsoft.graph.group'")
    );
}

#[tokio::test]
async fn graph_finds_service_principals_by_id_and_app_id_and_directory_objects_by_id() {
    let env = start().await;
    let by_app = env
        .graph(&format!(
            "/v1.0/servicePrincipals(appId='{BATCH_SCORER_APP}')"
        ))
        .await;
    assert_eq!(
        (
            by_app.body["id"].as_str(),
            by_app.body["servicePrincipalType"].as_str()
        ),
        (Some(BATCH_SCORER), Some("Application"))
    );
    let by_filter = env
        .graph(&format!(
            "/v1.0/servicePrincipals?$filter={}",
            urlencode(&format!("appId eq '{BATCH_SCORER_APP}'"))
        ))
        .await;
    assert_eq!(by_filter.body["value"][0]["id"], BATCH_SCORER);
    let identity = env
        .graph(&format!("/v1.0/servicePrincipals/{SUMMARIZER}"))
        .await;
    assert_eq!(identity.body["servicePrincipalType"], "ManagedIdentity");
    for (id, odata_type) in [
        (ALICE, "#microsoft.graph.user"),
        (TEAM, "#microsoft.graph.group"),
        (SUMMARIZER, "#microsoft.graph.servicePrincipal"),
    ] {
        let answer = env.graph(&format!("/v1.0/directoryObjects/{id}")).await;
        assert_eq!(
            (answer.status, answer.body["@odata.type"].as_str()),
            (200, Some(odata_type)),
            "{}",
            answer.body
        );
    }
    assert_eq!(
        env.graph(&format!("/v1.0/directoryObjects/{}", uuid::Uuid::new_v4()))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn graph_needs_the_app_roles_in_the_token() {
    let env = start().await;
    let batch = env.emu.token_for(BATCH_SCORER, Audience::Graph).unwrap();
    let denied = env
        .send(
            Method::GET,
            "/v1.0/users/alice@contoso.com",
            Some(&batch),
            None,
        )
        .await;
    assert_eq!(
        (denied.status, denied.code()),
        (403, "Authorization_RequestDenied")
    );
    // A service principal may read itself.
    assert_eq!(
        env.send(
            Method::GET,
            &format!("/v1.0/servicePrincipals/{BATCH_SCORER}"),
            Some(&batch),
            None
        )
        .await
        .status,
        200
    );
    env.emu
        .grant_app_role(BATCH_SCORER, "User.Read.All")
        .unwrap();
    assert_eq!(
        env.send(
            Method::GET,
            "/v1.0/users/alice@contoso.com",
            Some(&batch),
            None
        )
        .await
        .status,
        403,
        "old token"
    );
    let fresh = env.emu.token_for(BATCH_SCORER, Audience::Graph).unwrap();
    assert_eq!(
        env.send(
            Method::GET,
            "/v1.0/users/alice@contoso.com",
            Some(&fresh),
            None
        )
        .await
        .status,
        200
    );
    env.emu
        .revoke_app_role(OPERATOR, "GroupMember.Read.All")
        .unwrap();
    assert_eq!(env.graph(&format!("/v1.0/groups/{TEAM}")).await.status, 403);
}

// ---- managed identities, role definitions, permissions (issue 4) ----------------------------

#[tokio::test]
async fn identities_answer_get_and_lists_with_principal_and_client_ids() {
    let env = start().await;
    let base = format!(
        "/subscriptions/{SUB}/resourceGroups/rg-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities"
    );
    let one = env
        .arm(
            Method::GET,
            &format!("{base}/id-summarizer?api-version=2023-01-31"),
            None,
        )
        .await;
    assert_eq!(one.status, 200);
    assert_eq!(one.body["properties"]["principalId"], SUMMARIZER);
    assert_eq!(
        one.body["properties"]["clientId"],
        "abfae246-2b2d-4cc2-b528-9067a57d93af"
    );
    assert_eq!(one.body["properties"]["tenantId"], env.emu.tenant_id());
    assert!(
        one.body["id"]
            .as_str()
            .unwrap()
            .contains("/resourcegroups/rg-identities/")
    );
    let by_rg = env
        .arm(Method::GET, &format!("{base}?api-version=2023-01-31"), None)
        .await;
    assert_eq!(by_rg.body["value"].as_array().unwrap().len(), 3);
    let by_sub = env.arm(Method::GET, &format!("/subscriptions/{SUB}/providers/Microsoft.ManagedIdentity/userAssignedIdentities?api-version=2023-01-31"), None).await;
    assert_eq!(by_sub.body["value"].as_array().unwrap().len(), 3);
    let fics = env
        .arm(
            Method::GET,
            &format!("{base}/id-chat-backend/federatedIdentityCredentials?api-version=2023-01-31"),
            None,
        )
        .await;
    assert_eq!(
        fics.body["value"][0]["properties"],
        json!({"issuer": ISSUER, "subject": "system:serviceaccount:team-chat:chat-backend", "audiences": ["api://AzureADTokenExchange"]})
    );
    let missing = env
        .arm(
            Method::GET,
            &format!("{base}/id-nope?api-version=2023-01-31"),
            None,
        )
        .await;
    assert_eq!((missing.status, missing.code()), (404, "ResourceNotFound"));
}

#[tokio::test]
async fn role_definitions_of_the_table_are_served_by_id() {
    let env = start().await;
    for role in DATA_ROLES {
        let answer = env
            .arm(
                Method::GET,
                &format!(
                    "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{}?{V}",
                    role
                ),
                None,
            )
            .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body["name"], role);
        assert_eq!(answer.body["properties"]["type"], "BuiltInRole");
    }
    let user = env
        .arm(
            Method::GET,
            &format!(
                "/providers/Microsoft.Authorization/roleDefinitions/{}?{V}",
                openai_user()
            ),
            None,
        )
        .await;
    assert_eq!(
        user.body["properties"]["roleName"],
        "Cognitive Services OpenAI User"
    );
    let missing = env
        .arm(
            Method::GET,
            &format!(
                "/providers/Microsoft.Authorization/roleDefinitions/{}?{V}",
                uuid::Uuid::new_v4()
            ),
            None,
        )
        .await;
    assert_eq!(
        (missing.status, missing.code()),
        (404, "RoleDefinitionDoesNotExist")
    );
}

#[tokio::test]
async fn permissions_list_the_callers_actions_and_conditions_at_the_scope() {
    let env = start().await;
    let answer = env
        .arm(
            Method::GET,
            &format!(
                "{}/providers/Microsoft.Authorization/permissions?{V}",
                account("oai-prod")
            ),
            None,
        )
        .await;
    assert_eq!(answer.status, 200);
    let value = answer.body["value"].as_array().unwrap();
    assert_eq!(value.len(), 1);
    assert!(
        value[0]["actions"]
            .as_array()
            .unwrap()
            .contains(&json!("Microsoft.Authorization/roleAssignments/write"))
    );
    assert_eq!(value[0]["condition"], example_delegation_condition());
    let batch = env.emu.token_for(BATCH_SCORER, Audience::Arm).unwrap();
    let none = env
        .send(
            Method::GET,
            &format!(
                "{}/providers/Microsoft.Authorization/permissions?{V}",
                account("oai-prod")
            ),
            Some(&batch),
            None,
        )
        .await;
    assert_eq!(none.body["value"], json!([]));
}

// ---- token outage (issue 4) ----------------------------------------------------------------

#[tokio::test]
async fn a_token_endpoint_outage_answers_503_or_invalid_client_until_it_ends() {
    let env = start().await;
    let assertion = env.operator_assertion();
    let scope = "https://management.azure.com/.default";
    env.emu
        .start_token_outage(Some(Duration::from_secs(3600)), OutageKind::Unavailable);
    let down = env.token_request(OPERATOR_CLIENT, &assertion, scope).await;
    assert_eq!(
        (down.status, down.body["error"].as_str()),
        (503, Some("temporarily_unavailable"))
    );
    env.emu
        .start_token_outage(Some(Duration::from_secs(3600)), OutageKind::InvalidClient);
    let refused = env.token_request(OPERATOR_CLIENT, &assertion, scope).await;
    assert_eq!(
        (refused.status, refused.body["error"].as_str()),
        (400, Some("invalid_client"))
    );
    env.emu.end_token_outage();
    assert_eq!(
        env.token_request(OPERATOR_CLIENT, &assertion, scope)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_token_outage_ends_by_itself_after_its_duration() {
    let env = start_with(|c| c.token_outage = Duration::from_millis(50)).await;
    let assertion = env.operator_assertion();
    env.emu.start_token_outage(None, OutageKind::Unavailable);
    assert_eq!(
        env.token_request(
            OPERATOR_CLIENT,
            &assertion,
            "https://graph.microsoft.com/.default"
        )
        .await
        .status,
        503
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        env.token_request(
            OPERATOR_CLIENT,
            &assertion,
            "https://graph.microsoft.com/.default"
        )
        .await
        .status,
        200
    );
}

// ---- admin API (issue 4) -------------------------------------------------------------------

impl Env {
    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.send(method, &format!("/_emulator{path}"), None, body)
            .await
    }
}

#[tokio::test]
async fn admin_api_changes_are_visible_through_the_azure_routes() {
    let env = start_with(|c| c.replication_window = Duration::ZERO).await;
    // A user added behind keyless's back.
    let carol = env
        .admin(
            Method::POST,
            "/users",
            Some(json!({"userPrincipalName": "carol@contoso.com", "displayName": "Carol Diaz"})),
        )
        .await;
    assert_eq!(carol.status, 201);
    assert_eq!(
        env.graph("/v1.0/users/carol@contoso.com").await.body["id"],
        carol.body["id"]
    );
    // A group renamed.
    assert_eq!(
        env.admin(
            Method::PATCH,
            &format!("/directory-objects/{TEAM}"),
            Some(json!({"displayName": "ML Platform"}))
        )
        .await
        .status,
        200
    );
    let renamed = env
        .graph(&format!(
            "/v1.0/groups?$filter={}",
            urlencode("displayName eq 'ML Platform'")
        ))
        .await;
    assert_eq!(renamed.body["value"][0]["id"], TEAM);
    // An identity re-created: new principal id, and the old name now points at a new principal.
    let base = format!(
        "/subscriptions/{SUB}/resourceGroups/rg-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities"
    );
    let deleted = env
        .admin(
            Method::DELETE,
            "/identities",
            Some(json!({"id": format!("{base}/id-summarizer")})),
        )
        .await;
    assert_eq!(deleted.status, 200);
    assert_eq!(
        env.arm(
            Method::GET,
            &format!("{base}/id-summarizer?api-version=2023-01-31"),
            None
        )
        .await
        .status,
        404
    );
    let recreated = env
        .admin(Method::POST, "/identities", Some(json!({"subscriptionId": SUB, "resourceGroup": "rg-identities", "name": "id-summarizer"})))
        .await;
    assert_eq!(recreated.status, 201);
    let fetched = env
        .arm(
            Method::GET,
            &format!("{base}/id-summarizer?api-version=2023-01-31"),
            None,
        )
        .await;
    assert_eq!(
        fetched.body["properties"]["principalId"],
        recreated.body["principalId"]
    );
    assert_ne!(fetched.body["properties"]["principalId"], SUMMARIZER);
    // A federated credential added.
    let added = env
        .admin(
            Method::POST,
            "/federated-credentials",
            Some(json!({"identityId": format!("{base}/id-summarizer"), "name": "ns-sa", "issuer": ISSUER, "subject": "system:serviceaccount:ns:sa"})),
        )
        .await;
    assert_eq!(added.status, 201, "{}", added.body);
    let fics = env
        .arm(
            Method::GET,
            &format!("{base}/id-summarizer/federatedIdentityCredentials?api-version=2023-01-31"),
            None,
        )
        .await;
    assert_eq!(
        fics.body["value"][0]["properties"]["subject"],
        "system:serviceaccount:ns:sa"
    );
    // A role assignment deleted and another written.
    assert_eq!(
        env.admin(
            Method::DELETE,
            "/role-assignments",
            Some(json!({"id": BOBS_BICEP_ASSIGNMENT}))
        )
        .await
        .status,
        200
    );
    assert_eq!(
        env.arm(
            Method::GET,
            &assignment_path(&account("oai-prod"), BOBS_BICEP_ASSIGNMENT),
            None
        )
        .await
        .status,
        404
    );
    let written = env
        .admin(Method::POST, "/role-assignments", Some(json!({"scope": account("oai-prod"), "roleDefinitionId": openai_user(), "principalId": ALICE})))
        .await;
    assert_eq!(written.body["principalType"], "User");
    let listed = env
        .list(&account("oai-prod"), &format!("principalId eq '{ALICE}'"))
        .await;
    assert_eq!(listed.len(), 1);
    // An account's keys turned back on.
    let flipped = env
        .admin(
            Method::POST,
            "/accounts",
            Some(json!({"subscriptionId": SUB, "resourceGroup": "rg-ai-prod", "name": "oai-prod", "kind": "OpenAI", "location": "swedencentral", "customSubDomainName": "oai-prod", "disableLocalAuth": false})),
        )
        .await;
    assert_eq!(flipped.status, 201);
    assert_eq!(
        env.arm(
            Method::GET,
            &format!("{}?api-version=2024-10-01", account("oai-prod")),
            None
        )
        .await
        .body["properties"]["disableLocalAuth"],
        false
    );
    assert_eq!(
        env.admin(
            Method::DELETE,
            "/accounts",
            Some(json!({"id": account("oai-prod")}))
        )
        .await
        .status,
        200
    );
    assert_eq!(
        env.arm(
            Method::GET,
            &format!("{}?api-version=2024-10-01", account("oai-prod")),
            None
        )
        .await
        .status,
        404
    );
    // A user deleted.
    assert_eq!(
        env.admin(Method::DELETE, &format!("/directory-objects/{BOB}"), None)
            .await
            .status,
        200
    );
    assert_eq!(env.graph(&format!("/v1.0/users/{BOB}")).await.status, 404);
}

#[tokio::test]
async fn admin_api_sets_faults_outages_and_reads_state_and_counts() {
    let env = start().await;
    let path = format!("{}?api-version=2024-10-01", account("oai-prod"));
    assert_eq!(
        env.admin(
            Method::PUT,
            "/faults",
            Some(json!({"unavailableRate": 1.0}))
        )
        .await
        .status,
        200
    );
    assert_eq!(env.arm(Method::GET, &path, None).await.status, 503);
    assert_eq!(env.admin(Method::DELETE, "/faults", None).await.status, 204);
    assert_eq!(
        env.admin(
            Method::POST,
            "/faults/scripted",
            Some(json!({"kind": "throttle", "operation": "Accounts_Get"}))
        )
        .await
        .status,
        204
    );
    assert_eq!(env.arm(Method::GET, &path, None).await.status, 429);
    assert_eq!(env.arm(Method::GET, &path, None).await.status, 200);
    assert_eq!(
        env.admin(
            Method::POST,
            "/token-outage",
            Some(json!({"durationMs": 60000}))
        )
        .await
        .status,
        204
    );
    assert_eq!(
        env.token_request(
            OPERATOR_CLIENT,
            &env.operator_assertion(),
            "https://management.azure.com/.default"
        )
        .await
        .status,
        503
    );
    assert_eq!(
        env.admin(Method::DELETE, "/token-outage", None)
            .await
            .status,
        204
    );
    let counts = env.admin(Method::GET, "/requests", None).await;
    assert!(
        counts
            .body
            .as_array()
            .unwrap()
            .contains(&json!({"operation": "Accounts_Get", "status": 503, "count": 1}))
    );
    let state = env.admin(Method::GET, "/state", None).await;
    assert_eq!(state.body["tenantId"], env.emu.tenant_id());
    assert_eq!(state.body["roleAssignments"].as_array().unwrap().len(), 2);
    let info = env.admin(Method::GET, "/info", None).await;
    assert_eq!(info.body["operator"]["clientId"], OPERATOR_CLIENT);
    assert_eq!(
        env.admin(
            Method::POST,
            "/app-roles",
            Some(json!({"principalId": BATCH_SCORER, "role": "User.Read.All"}))
        )
        .await
        .status,
        200
    );
    let token = env.emu.token_for(BATCH_SCORER, Audience::Graph).unwrap();
    assert_eq!(
        env.send(
            Method::GET,
            "/v1.0/users/alice@contoso.com",
            Some(&token),
            None
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn identities_added_at_run_time_are_service_principals_after_replication() {
    let env = start_with(|c| c.replication_window = Duration::from_millis(50)).await;
    let identity = env
        .emu
        .add_identity(NewIdentity {
            subscription_id: SUB.into(),
            resource_group: "rg-identities".into(),
            name: "id-new".into(),
            federated_credentials: vec![FederatedCredential {
                name: "fc".into(),
                issuer: ISSUER.into(),
                subject: "system:serviceaccount:new:new".into(),
                audiences: vec!["api://AzureADTokenExchange".into()],
                claims_matching_expression: None,
            }],
            ..Default::default()
        })
        .unwrap();
    // ARM knows the identity at once; the directory does not yet.
    let base = format!(
        "/subscriptions/{SUB}/resourceGroups/rg-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities"
    );
    assert_eq!(
        env.arm(
            Method::GET,
            &format!("{base}/id-new?api-version=2023-01-31"),
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(
        env.graph(&format!(
            "/v1.0/servicePrincipals(appId='{}')",
            identity.client_id
        ))
        .await
        .status,
        404
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    let sp = env
        .graph(&format!(
            "/v1.0/servicePrincipals(appId='{}')",
            identity.client_id
        ))
        .await;
    assert_eq!(sp.body["id"], identity.principal_id.as_str());
    let _ = env
        .emu
        .add_user(NewUser {
            user_principal_name: "x@contoso.com".into(),
            display_name: "X".into(),
            ..Default::default()
        })
        .unwrap();
}

// ---- the subcommand ----------------------------------------------------------------------

#[tokio::test]
async fn keyless_emulator_prints_an_endpoint_ca_and_token_file_that_work() {
    let seed = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/emulator/seed.yaml"
    );
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyless-emulator"))
        .args(["--seed", seed])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let banner = Banner::read(&mut child, Duration::from_secs(60)).await;
    let endpoint = banner.value_after("--arm-endpoint ");
    let ca = std::fs::read(banner.value_after("--ca-file ")).unwrap();
    let token_file = banner.value_after("AZURE_FEDERATED_TOKEN_FILE=");
    let client_id = banner.value_after("AZURE_CLIENT_ID=");
    let tenant = banner.value_after("AZURE_TENANT_ID=");
    assert_eq!(
        banner.value_after("--authority-host "),
        endpoint,
        "{}",
        banner.text()
    );
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
    let assertion = std::fs::read_to_string(token_file).unwrap();
    let response = http
        .post(format!("{endpoint}/{tenant}/oauth2/v2.0/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[
            ("client_assertion", assertion.as_str()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_id", client_id.as_str()),
            ("grant_type", "client_credentials"),
            ("scope", "https://management.azure.com/.default"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let token: Value = response.json().await.unwrap();
    let account = http
        .get(format!(
            "{endpoint}{}?api-version=2024-10-01",
            account("oai-prod")
        ))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(account.status(), 200);
    child.kill().await.unwrap();
}
