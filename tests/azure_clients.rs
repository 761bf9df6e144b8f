//! The Azure clients over real HTTPS.
//!
//! `stub` tests run against a scripted HTTPS server in this file: they pin down the HTTP plumbing
//! (trusting `--ca-file`, the bearer token, paging, Retry-After, retries, timeouts, nextLink hosts)
//! with exact responses. The emulator tests further down run the clients against the Azure emulator.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use keyless::api::roles::RoleName;
use keyless::azure::{
    AzureClients, AzureConfig, AzureErrorKind, Created, RetryDecision, cloud::EndpointOverrides,
    retry::RetryConfig,
};
use keyless::plan::{AccountScope, NewAssignment, PrincipalType};
use std::sync::Arc;
use std::time::Duration;

#[path = "support/secrets.rs"]
mod secrets;

const TOKEN: &str = "eyJ.stub-token-that-must-never-be-printed.sig";
const SUB: &str = "00000000-0000-0000-0000-000000000001";

#[derive(Debug)]
struct FixedToken;

#[async_trait::async_trait]
impl TokenCredential for FixedToken {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            TOKEN.to_string(),
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}

fn scope() -> AccountScope {
    AccountScope::parse(&format!(
        "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/acct"
    ))
    .unwrap()
}

mod stub {
    //! A scripted HTTPS server: a CA and a leaf for 127.0.0.1 made with rcgen, hyper behind rustls,
    //! and a handler closure that sees each request and picks the response.
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Debug)]
    pub struct Seen {
        pub method: String,
        /// Path and query, as sent.
        pub target: String,
        pub authorization: Option<String>,
        pub body: String,
    }

    pub struct Answer {
        /// Slept (asynchronously) before answering.
        pub delay: std::time::Duration,
        pub status: u16,
        pub headers: Vec<(&'static str, String)>,
        pub body: String,
    }

    pub fn answer(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            delay: std::time::Duration::ZERO,
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    impl Answer {
        pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Answer {
            self.headers.push((name, value.into()));
            self
        }
    }

    type Handler = dyn Fn(&Seen, usize) -> Answer + Send + Sync;

    pub struct Stub {
        pub addr: SocketAddr,
        pub ca_file: tempfile::NamedTempFile,
        pub seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Stub {
        pub fn url(&self) -> url::Url {
            url::Url::parse(&format!("https://{}/", self.addr)).unwrap()
        }

        pub fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    pub async fn start(handler: impl Fn(&Seen, usize) -> Answer + Send + Sync + 'static) -> Stub {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "keyless test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

        let mut ca_file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut ca_file, ca_cert.pem().as_bytes()).unwrap();

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let recorded = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let handler = handler.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let handler = handler.clone();
                            let recorded = recorded.clone();
                            async move {
                                let method = request.method().to_string();
                                let target = request
                                    .uri()
                                    .path_and_query()
                                    .map(|pq| pq.to_string())
                                    .unwrap_or_default();
                                let authorization = request
                                    .headers()
                                    .get("authorization")
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string);
                                let body = request.into_body().collect().await.unwrap().to_bytes();
                                let seen = Seen {
                                    method,
                                    target,
                                    authorization,
                                    body: String::from_utf8_lossy(&body).to_string(),
                                };
                                let index = {
                                    let mut all = recorded.lock().unwrap();
                                    all.push(seen.clone());
                                    all.len() - 1
                                };
                                let answer = handler(&seen, index);
                                tokio::time::sleep(answer.delay).await;
                                let mut response = hyper::Response::builder().status(answer.status);
                                for (name, value) in answer.headers {
                                    response = response.header(name, value);
                                }
                                Ok::<_, std::convert::Infallible>(
                                    response
                                        .header("content-type", "application/json")
                                        .header("x-ms-request-id", format!("req-{index}"))
                                        .body(Full::new(Bytes::from(answer.body)))
                                        .unwrap(),
                                )
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Stub {
            addr,
            ca_file,
            seen,
        }
    }
}

use stub::answer;

fn stub_config(stub: &stub::Stub) -> AzureConfig {
    AzureConfig {
        endpoints: EndpointOverrides {
            arm_endpoint: Some(stub.url()),
            graph_endpoint: Some(stub.url()),
            ..EndpointOverrides::default()
        },
        ca_files: vec![stub.ca_file.path().to_path_buf()],
        timeout: Duration::from_secs(5),
        retry: RetryConfig {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            max_retry_after: Duration::from_secs(2),
        },
        ..AzureConfig::default()
    }
}

fn clients(stub: &stub::Stub) -> AzureClients {
    AzureClients::with_credential(&stub_config(stub), Arc::new(FixedToken)).unwrap()
}

fn assignment_json(scope: &str, name: &str, principal: &str, role_guid: &str) -> serde_json::Value {
    serde_json::json!({
        "id": format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"),
        "name": name,
        "type": "Microsoft.Authorization/roleAssignments",
        "properties": {
            "roleDefinitionId": format!("/providers/Microsoft.Authorization/roleDefinitions/{role_guid}"),
            "principalId": principal,
            "principalType": "User",
            "scope": scope,
            "createdOn": "2022-01-15T21:08:45.4904312Z",
        }
    })
}

#[tokio::test]
async fn stub_observe_scope_follows_every_page_and_keeps_only_the_exact_scope() {
    let account = scope().to_string();
    let upper = account
        .to_uppercase()
        .replace("RESOURCEGROUPS", "resourcegroups");
    let subscription = format!("/subscriptions/{SUB}");
    let stub = stub::start(move |seen, _| {
        let role = RoleName::OpenAIUser.definition_guid();
        if seen.target.contains("page=2") {
            answer(
                200,
                serde_json::json!({ "value": [
                    assignment_json(&upper, "22222222-2222-2222-2222-222222222222", "p2", role),
                ]})
                .to_string(),
            )
        } else {
            let next = format!("https://{}{}&page=2", seen_host(), seen.target);
            answer(
                200,
                serde_json::json!({ "value": [
                    assignment_json(&account, "11111111-1111-1111-1111-111111111111", "p1", role),
                    assignment_json(&subscription, "33333333-3333-3333-3333-333333333333", "p3", role),
                ], "nextLink": next })
                .to_string(),
            )
        }
    })
    .await;
    set_host(stub.addr);
    let observed = clients(&stub)
        .role_assignments
        .observe_scope(&scope())
        .await
        .unwrap();
    let names: Vec<&str> = observed.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "11111111-1111-1111-1111-111111111111",
            "22222222-2222-2222-2222-222222222222"
        ],
        "the subscription-level assignment (inherited, not ours to manage) is filtered out"
    );
    assert!(observed[0].created_on.is_some());
    let seen = stub.seen();
    assert_eq!(seen.len(), 2, "one LIST, two pages");
    assert_eq!(
        seen[0].target,
        format!(
            "{}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01&$filter=atScope()",
            scope()
        )
    );
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
}

// The stub's handler needs its own address for absolute nextLinks; it is set once started.
static HOST: std::sync::OnceLock<std::sync::Mutex<String>> = std::sync::OnceLock::new();
fn set_host(addr: std::net::SocketAddr) {
    *HOST.get_or_init(Default::default).lock().unwrap() = addr.to_string();
}
fn seen_host() -> String {
    HOST.get_or_init(Default::default).lock().unwrap().clone()
}

#[tokio::test]
async fn stub_a_next_link_to_another_host_is_refused_and_gets_no_token() {
    let stub = stub::start(|_, _| {
        answer(
            200,
            r#"{"value":[],"nextLink":"https://attacker.example/steal?x=1"}"#,
        )
    })
    .await;
    let err = clients(&stub)
        .role_assignments
        .observe_scope(&scope())
        .await
        .unwrap_err();
    assert_eq!(err.kind, AzureErrorKind::BadRequest);
    assert!(err.message.contains("nextLink to another host"), "{err}");
}

#[tokio::test]
async fn stub_throttling_is_retried_after_the_delay_arm_asks_for() {
    let stub = stub::start(|_, index| match index {
        0 => answer(429, r#"{"error":{"code":"TooManyRequests","message":"slow down"}}"#)
            .header("retry-after", "1"),
        _ => answer(200, r#"{"kind":"OpenAI","properties":{"endpoint":"https://acct.openai.azure.com/","disableLocalAuth":true,"customSubDomainName":"acct"}}"#),
    })
    .await;
    let account = clients(&stub)
        .accounts
        .get_account(&scope())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(account.kind, "OpenAI");
    assert!(account.local_auth_disabled);
    assert_eq!(account.custom_sub_domain_name.as_deref(), Some("acct"));
    assert_eq!(stub.seen().len(), 2);
}

#[tokio::test]
async fn stub_a_retry_after_beyond_the_cap_goes_back_to_the_caller_as_throttled() {
    let stub = stub::start(|_, _| {
        answer(
            429,
            r#"{"error":{"code":"TooManyRequests","message":"slow down"}}"#,
        )
        .header("retry-after", "120")
    })
    .await;
    let err = clients(&stub)
        .accounts
        .get_account(&scope())
        .await
        .unwrap_err();
    assert_eq!(err.kind, AzureErrorKind::Throttled);
    assert_eq!(err.retry(), RetryDecision::After(Duration::from_secs(120)));
    assert_eq!(err.request_id.as_deref(), Some("req-0"));
    assert_eq!(stub.seen().len(), 1, "not slept through inside the call");
}

#[tokio::test]
async fn stub_server_errors_are_retried_up_to_the_limit_then_reported_transient() {
    let stub = stub::start(|_, _| {
        answer(
            503,
            r#"{"error":{"code":"ServiceUnavailable","message":"busy"}}"#,
        )
    })
    .await;
    let err = clients(&stub)
        .accounts
        .get_account(&scope())
        .await
        .unwrap_err();
    assert_eq!(err.kind, AzureErrorKind::Transient);
    assert_eq!(err.retry(), RetryDecision::Backoff);
    assert_eq!(stub.seen().len(), 3, "max_attempts = 3");
}

#[tokio::test]
async fn stub_a_hung_server_times_out_as_transient() {
    let stub = stub::start(|_, _| stub::Answer {
        delay: Duration::from_secs(5),
        ..answer(200, "{}")
    })
    .await;
    let mut config = stub_config(&stub);
    config.timeout = Duration::from_millis(100);
    config.retry.max_attempts = 1;
    let clients = AzureClients::with_credential(&config, Arc::new(FixedToken)).unwrap();
    let err = clients.accounts.get_account(&scope()).await.unwrap_err();
    assert_eq!(err.kind, AzureErrorKind::Transient);
    assert!(err.message.contains("no answer within"), "{err}");
}

#[tokio::test]
async fn stub_without_the_ca_file_the_emulators_certificate_is_not_trusted() {
    let stub = stub::start(|_, _| answer(200, "{}")).await;
    let mut config = stub_config(&stub);
    config.ca_files.clear();
    config.retry.max_attempts = 1;
    let clients = AzureClients::with_credential(&config, Arc::new(FixedToken)).unwrap();
    let err = clients.accounts.get_account(&scope()).await.unwrap_err();
    assert_eq!(err.kind, AzureErrorKind::Transient);
    assert!(
        stub.seen().is_empty(),
        "no request got through an untrusted TLS session"
    );
}

#[tokio::test]
async fn stub_the_put_carries_role_principal_type_and_marker_and_409_adopts_by_the_id_in_the_message()
 {
    let account = scope().to_string();
    let existing = "2f826ae1-1728-4c63-bbb7-a8a150a5a52d";
    let stub = stub::start(move |seen, _| {
        if seen.method == "PUT" {
            answer(
                409,
                r#"{"error":{"code":"RoleAssignmentExists","message":"The role assignment already exists.\nThe ID of the existing role assignment is 2f826ae117284c63bbb7a8a150a5a52d."}}"#,
            )
        } else {
            answer(
                200,
                assignment_json(&account, existing, "aaaaaaaa-0000-0000-0000-000000000001", RoleName::OpenAIUser.definition_guid())
                    .to_string(),
            )
        }
    })
    .await;
    let new = NewAssignment {
        scope: scope(),
        name: uuid::Uuid::parse_str("99999999-9999-4999-8999-999999999999").unwrap(),
        principal_id: "aaaaaaaa-0000-0000-0000-000000000001".into(),
        principal_type: PrincipalType::ServicePrincipal,
        role: RoleName::OpenAIUser,
        description: "managed-by: keyless/ns/name".into(),
    };
    let created = clients(&stub)
        .role_assignments
        .create_assignment(&new)
        .await
        .unwrap();
    let Created::AlreadyExists(adopted) = created else {
        panic!("{created:?}")
    };
    assert_eq!(adopted.name, existing);
    let seen = stub.seen();
    let body: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(
        body["properties"]["roleDefinitionId"],
        format!(
            "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/5e0bd9bd-7b93-4f28-af87-19fc36ad61bd"
        )
    );
    assert_eq!(body["properties"]["principalType"], "ServicePrincipal");
    assert_eq!(
        body["properties"]["description"],
        "managed-by: keyless/ns/name"
    );
    assert_eq!(seen[1].method, "GET");
    assert!(seen[1].target.contains(existing), "{}", seen[1].target);
}

#[tokio::test]
async fn stub_errors_never_show_the_token() {
    let stub = stub::start(|_, _| answer(401, r#"{"error":{"code":"InvalidAuthenticationToken","message":"The access token is invalid."}}"#)).await;
    let clients = clients(&stub);
    let err = clients.accounts.get_account(&scope()).await.unwrap_err();
    assert_eq!(err.kind, AzureErrorKind::Unauthorized);
    let shown = format!("{err} {err:?} {clients:?}");
    assert!(!shown.contains(TOKEN), "{shown}");
    assert!(!shown.contains("stub-token"), "{shown}");
    let deleted = clients
        .role_assignments
        .delete_assignment("/subscriptions/x/providers/Microsoft.Authorization/roleAssignments/y")
        .await;
    assert_eq!(deleted.unwrap_err().kind, AzureErrorKind::BadRequest);
}

fn new_assignment(role: RoleName) -> NewAssignment {
    NewAssignment {
        scope: scope(),
        name: uuid::Uuid::parse_str("99999999-9999-4999-8999-999999999999").unwrap(),
        principal_id: "aaaaaaaa-0000-0000-0000-000000000001".into(),
        principal_type: PrincipalType::User,
        role,
        description: "managed-by: keyless/ns/name".into(),
    }
}

#[tokio::test]
async fn stub_each_arm_error_code_becomes_its_kind_with_its_retry_decision() {
    let cases: [(u16, &str, AzureErrorKind, RetryDecision); 6] = [
        (
            400,
            "PrincipalNotFound",
            AzureErrorKind::PrincipalNotFound,
            RetryDecision::Backoff,
        ),
        (
            404,
            "PrincipalNotFound",
            AzureErrorKind::PrincipalNotFound,
            RetryDecision::Backoff,
        ),
        (
            400,
            "UnmatchedPrincipalType",
            AzureErrorKind::UnmatchedPrincipalType,
            RetryDecision::WaitForChange,
        ),
        (
            400,
            "RoleAssignmentUpdateNotPermitted",
            AzureErrorKind::UpdateNotPermitted,
            RetryDecision::WaitForChange,
        ),
        (
            400,
            "RoleAssignmentLimitExceeded",
            AzureErrorKind::LimitExceeded,
            RetryDecision::WaitForChange,
        ),
        (
            403,
            "AuthorizationFailed",
            AzureErrorKind::AuthorizationFailed,
            RetryDecision::WaitForChange,
        ),
    ];
    for (status, code, kind, decision) in cases {
        let stub = stub::start(move |_, _| {
            answer(
                status,
                format!(r#"{{"error":{{"code":"{code}","message":"ARM says {code}"}}}}"#),
            )
        })
        .await;
        let err = clients(&stub)
            .role_assignments
            .create_assignment(&new_assignment(RoleName::OpenAIUser))
            .await
            .unwrap_err();
        assert_eq!((err.kind, err.retry()), (kind, decision), "{code}: {err}");
        assert!(err.message.contains(&format!("ARM says {code}")), "{err}");
        assert_eq!(err.request_id.as_deref(), Some("req-0"));
        assert_eq!(
            stub.seen().len(),
            1,
            "{code} is not retried inside the call"
        );
    }
}

#[tokio::test]
async fn stub_a_403_on_assignment_tells_the_admin_which_role_and_condition_keyless_needs() {
    let stub = stub::start(|_, _| {
        answer(403, r#"{"error":{"code":"AuthorizationFailed","message":"The client 'x' with object id 'x' does not have authorization or an ABAC condition not fulfilled to perform action 'Microsoft.Authorization/roleAssignments/write'"}}"#)
    })
    .await;
    let err = clients(&stub)
        .role_assignments
        .create_assignment(&new_assignment(RoleName::OpenAIContributor))
        .await
        .unwrap_err();
    assert!(
        err.message
            .contains("Role Based Access Control Administrator"),
        "{err}"
    );
    assert!(
        err.message
            .contains(&keyless::api::roles::delegation_condition(&RoleName::ALL)),
        "{err}"
    );
    assert!(
        err.message
            .contains("Cognitive Services OpenAI Contributor"),
        "{err}"
    );
}

#[tokio::test]
async fn stub_a_409_without_the_id_falls_back_to_the_principals_assignments_at_this_scope_and_role()
{
    let account = scope().to_string();
    let stub = stub::start(move |seen, _| {
        if seen.method == "PUT" {
            return answer(409, r#"{"error":{"code":"RoleAssignmentExists","message":"The role assignment already exists."}}"#);
        }
        let principal = "aaaaaaaa-0000-0000-0000-000000000001";
        answer(
            200,
            serde_json::json!({ "value": [
                // Same principal, another role: not the one.
                assignment_json(&account, "11111111-1111-1111-1111-111111111111", principal, RoleName::CognitiveServicesUser.definition_guid()),
                // Same principal and role at the subscription: not at this scope.
                assignment_json(&format!("/subscriptions/{SUB}"), "22222222-2222-2222-2222-222222222222", principal, RoleName::OpenAIUser.definition_guid()),
                assignment_json(&account, "33333333-3333-3333-3333-333333333333", principal, RoleName::OpenAIUser.definition_guid()),
            ]})
            .to_string(),
        )
    })
    .await;
    let created = clients(&stub)
        .role_assignments
        .create_assignment(&new_assignment(RoleName::OpenAIUser))
        .await
        .unwrap();
    let Created::AlreadyExists(adopted) = created else {
        panic!("{created:?}")
    };
    assert_eq!(adopted.name, "33333333-3333-3333-3333-333333333333");
    let seen = stub.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[1]
            .target
            .ends_with("roleAssignments?api-version=2022-04-01&$filter=principalId%20eq%20%27aaaaaaaa-0000-0000-0000-000000000001%27"),
        "{}",
        seen[1].target
    );
}

#[tokio::test]
async fn stub_delete_treats_200_as_deleted_204_as_gone_and_scope_locked_as_its_own_kind() {
    let id = format!(
        "{}/providers/Microsoft.Authorization/roleAssignments/2f826ae1-1728-4c63-bbb7-a8a150a5a52d",
        scope()
    );
    let stub = stub::start(|_, index| match index {
        0 => answer(200, "{}"),
        1 => answer(204, ""),
        _ => answer(409, r#"{"error":{"code":"ScopeLocked","message":"The scope cannot perform delete operation because following scope(s) are locked"}}"#),
    })
    .await;
    let clients = clients(&stub);
    assert_eq!(
        clients
            .role_assignments
            .delete_assignment(&id)
            .await
            .unwrap(),
        keyless::azure::Deleted::Deleted
    );
    assert_eq!(
        clients
            .role_assignments
            .delete_assignment(&id)
            .await
            .unwrap(),
        keyless::azure::Deleted::AlreadyGone
    );
    let locked = clients
        .role_assignments
        .delete_assignment(&id)
        .await
        .unwrap_err();
    assert_eq!(
        (locked.kind, locked.retry()),
        (AzureErrorKind::ScopeLocked, RetryDecision::WaitForChange)
    );
    assert!(locked.message.contains("remove it"), "{locked}");
    assert!(stub.seen().iter().all(|seen| seen.method == "DELETE"));
}

#[tokio::test]
async fn stub_group_names_are_escaped_and_zero_or_several_matches_name_the_group() {
    let stub = stub::start(|seen, _| {
        if seen.target.contains("Nobody") {
            answer(200, r#"{"value":[]}"#)
        } else if seen.target.contains("Twins") {
            answer(200, r#"{"value":[{"id":"g1","displayName":"Twins"},{"id":"g2","displayName":"Twins"}]}"#)
        } else {
            answer(200, r#"{"value":[{"id":"g3","displayName":"x"}]}"#)
        }
    })
    .await;
    let directory = clients(&stub).directory;
    let none = directory.group_by_display_name("Nobody").await.unwrap_err();
    assert_eq!(none.kind, AzureErrorKind::NotFound);
    assert!(none.message.contains("\"Nobody\""), "{none}");
    let twins = directory.group_by_display_name("Twins").await.unwrap_err();
    assert_eq!(twins.kind, AzureErrorKind::Ambiguous);
    assert!(
        twins.message.contains("\"Twins\"") && twins.message.contains("g1, g2"),
        "{twins}"
    );

    let hostile = "x' or displayName ne '&$top=999#";
    let found = directory.group_by_display_name(hostile).await.unwrap();
    assert_eq!(found.id, "g3");
    let target = stub.seen().last().unwrap().target.clone();
    let url = url::Url::parse(&format!("https://h{target}")).unwrap();
    let params: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    assert_eq!(
        params[0],
        (
            "$filter".to_string(),
            "displayName eq 'x'' or displayName ne ''&$top=999#'".to_string()
        ),
        "the name stays one string literal"
    );
    assert!(
        params
            .iter()
            .all(|(k, _)| k != "$top" || params.iter().filter(|(k, _)| k == "$top").count() == 1)
    );
}

#[tokio::test]
async fn stub_graph_lookups_map_types_404s_and_403s() {
    let stub = stub::start(|seen, _| {
        if seen.target.contains("directoryObjects/0000000a") {
            answer(200, r##"{"@odata.type":"#microsoft.graph.group","id":"0000000a-0000-0000-0000-000000000000","displayName":"G"}"##)
        } else if seen.target.contains("directoryObjects/") {
            answer(404, r#"{"error":{"code":"Request_ResourceNotFound","message":"Resource does not exist"}}"#)
        } else if seen.target.starts_with("/v1.0/users/") {
            answer(200, r#"{"id":"u1","displayName":"Ada","userPrincipalName":"ada@contoso.com"}"#)
        } else {
            answer(403, r#"{"error":{"code":"Authorization_RequestDenied","message":"Insufficient privileges to complete the operation."}}"#)
        }
    })
    .await;
    let directory = clients(&stub).directory;
    let group = directory
        .object_by_id("0000000a-0000-0000-0000-000000000000")
        .await
        .unwrap();
    assert_eq!(group.principal_type, PrincipalType::Group);
    let missing = directory
        .object_by_id("0000000b-0000-0000-0000-000000000000")
        .await
        .unwrap_err();
    assert_eq!(
        (missing.kind, missing.retry()),
        (AzureErrorKind::PrincipalNotFound, RetryDecision::Backoff)
    );
    let user = directory.user_by_upn("ada@contoso.com").await.unwrap();
    assert_eq!(
        (user.id.as_str(), user.principal_type),
        ("u1", PrincipalType::User)
    );
    let denied = directory
        .service_principal_by_app_id("0000000c-0000-0000-0000-000000000000")
        .await
        .unwrap_err();
    assert_eq!(denied.kind, AzureErrorKind::AuthorizationFailed);
    assert!(denied.message.contains("Application.Read.All"), "{denied}");
    assert!(
        stub.seen()
            .last()
            .unwrap()
            .target
            .starts_with("/v1.0/servicePrincipals(appId='0000000c-0000-0000-0000-000000000000')"),
        "{}",
        stub.seen().last().unwrap().target
    );
}

#[tokio::test]
async fn stub_identities_are_found_by_client_id_in_the_given_subscriptions_and_cached() {
    let stub = stub::start(|_, _| {
        answer(
            200,
            r#"{"value":[
                {"id":"/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a","properties":{"principalId":"p-a","clientId":"C-A","tenantId":"t"}},
                {"id":"/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/b","properties":{"principalId":"p-b","clientId":"c-b","tenantId":"t"}}
            ]}"#,
        )
    })
    .await;
    let mut config = stub_config(&stub);
    config.identity_subscriptions = vec![SUB.to_string()];
    let clients = AzureClients::with_credential(&config, Arc::new(FixedToken)).unwrap();
    let a = clients
        .identities
        .find_identity_by_client_id("c-a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.principal_id, "p-a");
    let b = clients
        .identities
        .find_identity_by_client_id("c-b")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.principal_id, "p-b");
    assert_eq!(
        stub.seen().len(),
        1,
        "the second lookup is served from the cache"
    );
    assert_eq!(
        stub.seen()[0].target,
        format!(
            "/subscriptions/{SUB}/providers/Microsoft.ManagedIdentity/userAssignedIdentities?api-version=2023-01-31"
        )
    );
    assert!(
        clients
            .identities
            .find_identity_by_client_id("c-zzz")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn stub_the_real_workload_identity_credential_gets_its_token_through_the_shared_client_and_ca()
 {
    const TENANT: &str = "22222222-2222-2222-2222-222222222222";
    const CLIENT: &str = "11111111-1111-1111-1111-111111111111";
    const ISSUED: &str = "eyJ.issued-by-the-stub-sts.sig";
    let stub = stub::start(|seen, _| {
        if seen.method == "POST" {
            answer(
                200,
                format!(r#"{{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"{ISSUED}"}}"#),
            )
        } else {
            answer(200, r#"{"value":[]}"#)
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, "projected.sa.token").unwrap();
    let mut config = stub_config(&stub);
    config.endpoints.authority_host = Some(stub.url());
    let env = move |name: &str| match name {
        "AZURE_FEDERATED_TOKEN_FILE" => Some(token_file.display().to_string()),
        "AZURE_TENANT_ID" => Some(TENANT.to_string()),
        "AZURE_CLIENT_ID" => Some(CLIENT.to_string()),
        "KUBERNETES_SERVICE_HOST" => Some("10.0.0.1".to_string()),
        _ => None,
    };
    let clients = AzureClients::from_config_with_env(&config, &env).unwrap();
    assert_eq!(
        clients.credential.as_ref().map(|decision| decision.kind),
        Some(keyless::azure::credential::CredentialKind::WorkloadIdentity)
    );
    assert!(
        clients
            .role_assignments
            .observe_scope(&scope())
            .await
            .unwrap()
            .is_empty()
    );
    let seen = stub.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].target, format!("/{TENANT}/oauth2/v2.0/token"));
    assert!(
        seen[0].body.contains("client_assertion=projected.sa.token"),
        "{}",
        seen[0].body
    );
    assert!(
        seen[0]
            .body
            .contains("scope=https%3A%2F%2Fmanagement.azure.com%2F.default"),
        "{}",
        seen[0].body
    );
    assert_eq!(
        seen[1].authorization.as_deref(),
        Some(format!("Bearer {ISSUED}").as_str())
    );
}

// ---- against the Azure emulator ------------------------------------------------------------------

mod emulated {
    use super::*;
    use keyless::azure::credential::{CredentialChoice, CredentialKind, CredentialSettings};
    use keyless::azure::pacing::{BucketLimits, PacingConfig};
    use keyless_emulator::state::FederatedCredential;
    use keyless_emulator::{
        Emulator, EmulatorConfig, EmulatorHandle, NewGroup, NewServicePrincipal, NewUser, Seed,
        Throttling,
    };

    pub const SUB: &str = "3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f";
    pub const ALICE: &str = "82f6c951-ea04-4434-a839-f80b32aa6337";
    pub const BOB: &str = "16cb6f20-2462-4c3e-91e6-df2449d889ba";
    pub const TEAM: &str = "d81d0366-c3d7-4b8d-92f3-1be6d6479d9a";
    pub const OPERATOR: &str = "37d99a9d-85be-4a09-9afa-73e46bc24f11";
    pub const BOBS_BICEP_ASSIGNMENT: &str = "486f9612-51c0-5f11-a5cd-84378ffd1469";

    pub fn oai_prod() -> AccountScope {
        AccountScope::parse(&format!(
            "/subscriptions/{SUB}/resourceGroups/rg-ai-prod/providers/Microsoft.CognitiveServices/accounts/oai-prod"
        ))
        .unwrap()
    }

    pub fn seed_text() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/emulator/seed.yaml"
        ))
        .unwrap()
    }

    pub async fn start(configure: impl FnOnce(&mut EmulatorConfig)) -> EmulatorHandle {
        // Every test's log lines, at TRACE, for the secrets scan.
        crate::secrets::LogCapture::global();
        start_with_seed(Seed::from_yaml(&seed_text()).unwrap(), configure).await
    }

    pub async fn start_with_seed(
        seed: Seed,
        configure: impl FnOnce(&mut EmulatorConfig),
    ) -> EmulatorHandle {
        let mut config = EmulatorConfig::new(seed);
        configure(&mut config);
        Emulator::start(config).await.unwrap()
    }

    /// keyless pointed at the emulator, authenticating as the operator identity through the real
    /// workload identity credential (token file + the emulator's authority + its CA).
    pub fn config(emulator: &EmulatorHandle) -> AzureConfig {
        let endpoint = url::Url::parse(emulator.endpoint()).unwrap();
        AzureConfig {
            endpoints: EndpointOverrides {
                arm_endpoint: Some(endpoint.clone()),
                graph_endpoint: Some(endpoint.clone()),
                authority_host: Some(endpoint),
                ..EndpointOverrides::default()
            },
            credential: CredentialSettings {
                choice: CredentialChoice::Auto,
                tenant_id: Some(emulator.tenant_id()),
                client_id: emulator.operator_client_id().map(str::to_string),
                federated_token_file: emulator
                    .federated_token_file()
                    .map(|path| path.to_path_buf()),
            },
            ca_files: vec![emulator.ca_file().to_path_buf()],
            timeout: Duration::from_secs(10),
            retry: RetryConfig {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(100),
                max_retry_after: Duration::from_secs(2),
            },
            ..AzureConfig::default()
        }
    }

    pub fn clients_for(config: &AzureConfig) -> AzureClients {
        // In a pod, as keyless runs: auto must pick workload identity, never IMDS.
        let env = |name: &str| (name == "KUBERNETES_SERVICE_HOST").then(|| "10.0.0.1".to_string());
        AzureClients::from_config_with_env(config, &env).unwrap()
    }

    pub fn clients(emulator: &EmulatorHandle) -> AzureClients {
        clients_for(&config(emulator))
    }

    pub fn assign(principal: &str, principal_type: PrincipalType, role: RoleName) -> NewAssignment {
        NewAssignment {
            scope: oai_prod(),
            name: uuid::Uuid::new_v4(),
            principal_id: principal.to_string(),
            principal_type,
            role,
            description: "managed-by: keyless/team-a/access".to_string(),
        }
    }

    #[tokio::test]
    async fn the_workload_identity_credential_gets_a_token_from_the_emulator_and_observes_a_scope()
    {
        let emulator = start(|_| {}).await;
        let clients = clients(&emulator);
        assert_eq!(
            clients.credential.as_ref().unwrap().kind,
            CredentialKind::WorkloadIdentity
        );
        let observed = clients
            .role_assignments
            .observe_scope(&oai_prod())
            .await
            .unwrap();
        let bobs = observed
            .iter()
            .find(|o| o.name == BOBS_BICEP_ASSIGNMENT)
            .expect("Bob's Bicep assignment at oai-prod");
        assert_eq!(bobs.principal_id, BOB);
        assert_eq!(
            RoleName::from_definition_id(&bobs.role_definition_id),
            Some(RoleName::OpenAIUser)
        );
        assert!(
            observed.iter().all(|o| oai_prod().matches(&o.scope)),
            "keyless's own grant at the subscription is above the scope and filtered out"
        );
        assert_eq!(emulator.request_count("Token", 200), 1);
        assert_eq!(
            emulator.request_count("RoleAssignments_ListForScope", 200),
            1
        );
    }

    #[tokio::test]
    async fn create_adopts_an_equivalent_assignment_and_delete_is_idempotent() {
        let emulator = start(|_| {}).await;
        let clients = clients(&emulator);
        let first = assign(ALICE, PrincipalType::User, RoleName::OpenAIUser);
        let Created::Created(created) = clients
            .role_assignments
            .create_assignment(&first)
            .await
            .unwrap()
        else {
            panic!("first create")
        };
        assert_eq!(created.name, first.name.to_string());
        assert_eq!(
            created.description.as_deref(),
            Some("managed-by: keyless/team-a/access")
        );
        // The same PUT again: idempotent.
        assert!(matches!(
            clients
                .role_assignments
                .create_assignment(&first)
                .await
                .unwrap(),
            Created::Created(_)
        ));
        // The same (scope, principal, role) under another name: 409, adopted.
        let second = assign(ALICE, PrincipalType::User, RoleName::OpenAIUser);
        let Created::AlreadyExists(existing) = clients
            .role_assignments
            .create_assignment(&second)
            .await
            .unwrap()
        else {
            panic!("expected adoption")
        };
        assert_eq!(existing.name, first.name.to_string());
        assert_eq!(emulator.request_count("RoleAssignments_Create", 409), 1);

        let id = first.id();
        assert_eq!(
            clients
                .role_assignments
                .delete_assignment(&id)
                .await
                .unwrap(),
            keyless::azure::Deleted::Deleted
        );
        assert_eq!(
            clients
                .role_assignments
                .delete_assignment(&id)
                .await
                .unwrap(),
            keyless::azure::Deleted::AlreadyGone
        );
    }

    #[tokio::test]
    async fn arm_refusals_come_back_as_their_kinds() {
        let emulator = start(|config| config.assignment_limit = 3).await;
        let clients = clients(&emulator);
        let ra = &clients.role_assignments;

        let wrong_type = ra
            .create_assignment(&assign(TEAM, PrincipalType::User, RoleName::OpenAIUser))
            .await
            .unwrap_err();
        assert_eq!(
            (wrong_type.kind, wrong_type.retry()),
            (
                AzureErrorKind::UnmatchedPrincipalType,
                RetryDecision::WaitForChange
            )
        );

        let mut reused = assign(ALICE, PrincipalType::User, RoleName::OpenAIUser);
        reused.name = uuid::Uuid::parse_str(BOBS_BICEP_ASSIGNMENT).unwrap();
        let reused = ra.create_assignment(&reused).await.unwrap_err();
        assert_eq!(
            (reused.kind, reused.retry()),
            (
                AzureErrorKind::UpdateNotPermitted,
                RetryDecision::WaitForChange
            )
        );

        // The seed holds 2 assignments in the subscription; the limit is 3.
        ra.create_assignment(&assign(ALICE, PrincipalType::User, RoleName::OpenAIUser))
            .await
            .unwrap();
        let full = ra
            .create_assignment(&assign(
                ALICE,
                PrincipalType::User,
                RoleName::CognitiveServicesUser,
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (full.kind, full.retry()),
            (AzureErrorKind::LimitExceeded, RetryDecision::WaitForChange)
        );
        assert!(
            full.request_id.is_some(),
            "the request id is kept for support tickets"
        );
    }

    #[tokio::test]
    async fn keyless_cannot_assign_a_role_outside_the_allowed_set_and_says_what_the_admin_must_grant()
     {
        // The operator's delegation condition allows only Cognitive Services OpenAI User here.
        let others = ", a001fd3d-188f-4b5d-821b-7da978bf7442, a97b65f3-24c7-4388-baec-2e87135dc908, 53ca6127-db72-4b80-b1b0-d745d6d5456d";
        let seed = Seed::from_yaml(&seed_text().replace(others, "")).unwrap();
        let emulator = start_with_seed(seed, |_| {}).await;
        let clients = clients(&emulator);
        let before = emulator.role_assignments().len();

        let refused = clients
            .role_assignments
            .create_assignment(&assign(
                ALICE,
                PrincipalType::User,
                RoleName::OpenAIContributor,
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (refused.kind, refused.retry()),
            (
                AzureErrorKind::AuthorizationFailed,
                RetryDecision::WaitForChange
            )
        );
        assert!(
            refused
                .message
                .contains("Role Based Access Control Administrator"),
            "{refused}"
        );
        assert!(
            refused
                .message
                .contains("Cognitive Services OpenAI Contributor"),
            "{refused}"
        );
        assert!(refused.message.contains("ABAC condition"), "{refused}");
        assert_eq!(
            emulator.role_assignments().len(),
            before,
            "nothing was created"
        );

        // The allowed role still goes through.
        clients
            .role_assignments
            .create_assignment(&assign(ALICE, PrincipalType::User, RoleName::OpenAIUser))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_token_arm_does_not_accept_is_unauthorized() {
        let emulator = start(|_| {}).await;
        let clients =
            AzureClients::with_credential(&config(&emulator), Arc::new(FixedToken)).unwrap();
        let err = clients.accounts.get_account(&oai_prod()).await.unwrap_err();
        assert_eq!(
            (err.kind, err.retry()),
            (AzureErrorKind::Unauthorized, RetryDecision::Backoff)
        );
        assert!(!format!("{err} {err:?}").contains(TOKEN));
    }

    #[tokio::test]
    async fn observe_scope_reads_every_page() {
        let emulator = start(|config| config.page_size = 2).await;
        let clients = clients(&emulator);
        for role in RoleName::ALL {
            clients
                .role_assignments
                .create_assignment(&assign(ALICE, PrincipalType::User, role))
                .await
                .unwrap();
        }
        let observed = clients
            .role_assignments
            .observe_scope(&oai_prod())
            .await
            .unwrap();
        // Bob's Bicep assignment and Alice's four; the operator's grant is above the scope.
        assert_eq!(observed.len(), 5, "{observed:#?}");
        assert!(
            emulator.request_count("RoleAssignments_ListForScope", 200) >= 3,
            "several pages"
        );
    }

    #[tokio::test]
    async fn accounts_and_identities_are_read_and_a_missing_account_is_none() {
        let emulator = start(|_| {}).await;
        let clients = clients(&emulator);
        let account = clients
            .accounts
            .get_account(&oai_prod())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(account.kind, "OpenAI");
        assert!(account.local_auth_disabled);
        assert_eq!(account.custom_sub_domain_name.as_deref(), Some("oai-prod"));
        let gone = AccountScope::parse(&format!(
            "/subscriptions/{SUB}/resourceGroups/rg-ai-prod/providers/Microsoft.CognitiveServices/accounts/nope"
        ))
        .unwrap();
        assert_eq!(clients.accounts.get_account(&gone).await.unwrap(), None);

        let summarizer = format!(
            "/subscriptions/{SUB}/resourceGroups/rg-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-summarizer"
        );
        let identity = clients
            .identities
            .get_identity(&summarizer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            identity.principal_id,
            "95ce509f-d768-4c1d-b9ae-4595afb90593"
        );
        // The account lookup taught keyless the subscription to search.
        let by_client_id = clients
            .identities
            .find_identity_by_client_id("abfae246-2b2d-4cc2-b528-9067a57d93af")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(by_client_id.principal_id, identity.principal_id);
        let chat = format!(
            "/subscriptions/{SUB}/resourceGroups/rg-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-chat-backend"
        );
        let federated = clients
            .identities
            .federated_credentials(&chat)
            .await
            .unwrap();
        assert_eq!(federated.len(), 1);
        assert_eq!(
            federated[0].subject,
            "system:serviceaccount:team-chat:chat-backend"
        );
        assert_eq!(federated[0].audiences, ["api://AzureADTokenExchange"]);
    }

    #[tokio::test]
    async fn an_app_registrations_federated_credentials_are_read_and_flexible_ones_left_out() {
        let emulator = start(|config| config.replication_window = Duration::ZERO).await;
        let directory = clients(&emulator).directory;
        const APP: &str = "1f314dbd-f47f-4150-ba72-84dd3ee0450a";
        assert_eq!(
            directory
                .application_federated_credentials(APP)
                .await
                .unwrap(),
            Some(vec![]),
            "an app registration of this tenant without credentials"
        );
        for (name, subject, expression) in [
            ("scorer", "system:serviceaccount:batch:scorer", None),
            (
                "flexible",
                "",
                Some("claims['sub'] matches 'system:serviceaccount:*'"),
            ),
        ] {
            emulator
                .add_application_federated_credential(
                    APP,
                    FederatedCredential {
                        name: name.into(),
                        issuer: "https://oidc.keyless.example/cluster-1/".into(),
                        subject: subject.into(),
                        audiences: vec!["api://AzureADTokenExchange".into()],
                        claims_matching_expression: expression.map(str::to_string),
                    },
                )
                .unwrap();
        }
        let found = directory
            .application_federated_credentials(APP)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            found
                .iter()
                .map(|c| (c.name.as_str(), c.subject.as_str()))
                .collect::<Vec<_>>(),
            [("scorer", "system:serviceaccount:batch:scorer")]
        );
        // A managed identity has no application object; neither has another tenant's app.
        assert_eq!(
            directory
                .application_federated_credentials("abfae246-2b2d-4cc2-b528-9067a57d93af")
                .await
                .unwrap(),
            None
        );
        let foreign = emulator
            .add_service_principal(NewServicePrincipal {
                display_name: "someone-elses-app".into(),
                app_owner_organization_id: Some("99999999-9999-9999-9999-999999999999".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            directory
                .application_federated_credentials(&foreign.app_id)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            emulator.request_count("Graph_ListFederatedIdentityCredentials", 200),
            2
        );
    }

    #[tokio::test]
    async fn graph_resolves_names_escapes_hostile_ones_and_reports_ambiguity() {
        let emulator = start(|config| config.replication_window = Duration::ZERO).await;
        let directory = clients(&emulator).directory;
        assert_eq!(
            directory.user_by_upn("alice@contoso.com").await.unwrap().id,
            ALICE
        );
        let team = directory
            .group_by_display_name("ML Platform Team")
            .await
            .unwrap();
        assert_eq!(
            (team.id.as_str(), team.principal_type),
            (TEAM, PrincipalType::Group)
        );
        let app = directory
            .service_principal_by_app_id("1f314dbd-f47f-4150-ba72-84dd3ee0450a")
            .await
            .unwrap();
        assert_eq!(app.principal_type, PrincipalType::ServicePrincipal);
        assert_eq!(
            directory.object_by_id(BOB).await.unwrap().principal_type,
            PrincipalType::User
        );

        for hostile in [
            "O'Brien's team",
            "x' or displayName ne '",
            "''",
            "a&$top=1#",
        ] {
            let group = emulator
                .add_group(NewGroup {
                    display_name: hostile.to_string(),
                    ..NewGroup::default()
                })
                .unwrap();
            let found = directory.group_by_display_name(hostile).await.unwrap();
            assert_eq!(found.id, group.id, "{hostile}");
        }
        let missing = directory
            .group_by_display_name("No Such Team")
            .await
            .unwrap_err();
        assert_eq!(missing.kind, AzureErrorKind::NotFound);
        assert!(missing.message.contains("No Such Team"), "{missing}");

        emulator
            .add_group(NewGroup {
                display_name: "ML Platform Team".to_string(),
                ..NewGroup::default()
            })
            .unwrap();
        let ambiguous = directory
            .group_by_display_name("ML Platform Team")
            .await
            .unwrap_err();
        assert_eq!(
            (ambiguous.kind, ambiguous.retry()),
            (AzureErrorKind::Ambiguous, RetryDecision::WaitForChange)
        );
        assert!(
            ambiguous.message.contains("ML Platform Team") && ambiguous.message.contains(TEAM),
            "{ambiguous}"
        );

        let nobody = directory
            .user_by_upn("nobody@contoso.com")
            .await
            .unwrap_err();
        assert_eq!(nobody.kind, AzureErrorKind::NotFound);
    }

    #[tokio::test]
    async fn a_principal_still_replicating_is_principal_not_found_and_graph_403_names_the_permission()
     {
        let emulator = start(|config| config.replication_window = Duration::from_secs(3600)).await;
        let directory = clients(&emulator).directory;
        let fresh = emulator
            .add_user(NewUser {
                user_principal_name: "carol@contoso.com".to_string(),
                display_name: "Carol".to_string(),
                ..NewUser::default()
            })
            .unwrap();
        let replicating = directory.object_by_id(&fresh.id).await.unwrap_err();
        assert_eq!(
            (replicating.kind, replicating.retry()),
            (AzureErrorKind::PrincipalNotFound, RetryDecision::Backoff)
        );

        // App roles travel in the token, as Entra's do: a new keyless (a new token) sees the revocation.
        emulator.revoke_app_role(OPERATOR, "User.Read.All").unwrap();
        let directory = clients(&emulator).directory;
        let denied = directory
            .user_by_upn("alice@contoso.com")
            .await
            .unwrap_err();
        assert_eq!(denied.kind, AzureErrorKind::AuthorizationFailed);
        assert!(denied.message.contains("User.Read.All"), "{denied}");
    }

    #[tokio::test]
    async fn retry_after_is_honoured_and_the_call_succeeds() {
        let emulator = start(|_| {}).await;
        let clients = clients(&emulator);
        clients.accounts.get_account(&oai_prod()).await.unwrap();
        emulator.inject_fault(keyless_emulator::ScriptedFault {
            kind: keyless_emulator::FaultKind::Throttle,
            count: 1,
            operation: Some("Accounts_Get".to_string()),
        });
        emulator.inject_fault(keyless_emulator::ScriptedFault {
            kind: keyless_emulator::FaultKind::ServerError,
            count: 1,
            operation: Some("Accounts_Get".to_string()),
        });
        assert!(
            clients
                .accounts
                .get_account(&oai_prod())
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(emulator.request_count("Accounts_Get", 429), 1);
        assert_eq!(emulator.request_count("Accounts_Get", 500), 1);
        assert_eq!(emulator.request_count("Accounts_Get", 200), 2);
    }

    async fn burst(clients: &AzureClients, calls: usize) -> Vec<Result<(), AzureErrorKind>> {
        let scope = oai_prod();
        futures::future::join_all((0..calls).map(|_| {
            let accounts = clients.accounts.clone();
            let scope = scope.clone();
            async move {
                accounts
                    .get_account(&scope)
                    .await
                    .map(|_| ())
                    .map_err(|err| err.kind)
            }
        }))
        .await
    }

    /// ARM's buckets shrunk to 5 + 20/s, so a burst of 30 exceeds them.
    fn small_buckets() -> impl FnOnce(&mut EmulatorConfig) {
        move |config: &mut EmulatorConfig| {
            let bucket = keyless_emulator::Bucket {
                capacity: 5,
                refill_per_second: 20.0,
            };
            config.throttling = Throttling {
                enabled: true,
                reads: bucket,
                writes: bucket,
                deletes: bucket,
            };
        }
    }

    async fn warmed_up(emulator: &EmulatorHandle, pacing: BucketLimits) -> AzureClients {
        let mut config = config(emulator);
        config.retry.max_attempts = 1;
        config.pacing = PacingConfig {
            reads: pacing,
            writes: pacing,
            deletes: pacing,
            // These tests size the buckets themselves (each says why).
            reserve: 0,
        };
        let clients = clients_for(&config);
        // One call fetches the token and creates both buckets; then both refill to full, so they
        // start the burst level.
        clients.accounts.get_account(&oai_prod()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        emulator.reset_request_counts();
        clients
    }

    #[tokio::test]
    async fn the_listing_keeps_inherited_assignments_and_role_definitions_are_read_once_per_ttl() {
        let emulator = start(|_| {}).await;
        let with_ttl = |ttl: Duration| {
            let mut config = config(&emulator);
            config.role_definition_cache_ttl = ttl;
            clients_for(&config)
        };
        let clients = with_ttl(Duration::from_secs(3600));
        let listing = clients
            .role_assignments
            .observe_scope_listing(&oai_prod())
            .await
            .unwrap();
        assert!(
            listing
                .at_scope
                .iter()
                .any(|o| o.name == BOBS_BICEP_ASSIGNMENT)
        );
        // keyless's own delegation grant sits at the subscription: inherited, not the planner's.
        assert!(listing.inherited.iter().any(|o| {
            o.scope
                .eq_ignore_ascii_case(&format!("/subscriptions/{SUB}"))
        }));
        assert!(
            listing
                .at_scope
                .iter()
                .all(|o| oai_prod().matches(&o.scope))
        );

        let scope = oai_prod();
        let read = || {
            clients
                .role_definitions
                .role_definition(&scope, keyless::api::RoleName::OpenAIUser.definition_guid())
        };
        // Callers that miss the cache together (every account's first pass) cost one read.
        let (user, ..) = tokio::join!(read(), read(), read(), read());
        let user = user.unwrap();
        assert_eq!(user.role_name, "Cognitive Services OpenAI User");
        assert!(user.grants_data_plane() && !user.can_read_keys() && !user.custom);
        read().await.unwrap();
        assert_eq!(
            emulator.request_count("RoleDefinitions_Get", 200),
            1,
            "read once, then cached"
        );
        // With no cache time every read goes to ARM.
        let uncached = with_ttl(Duration::ZERO);
        for _ in 0..2 {
            uncached
                .role_definitions
                .role_definition(&scope, keyless::api::RoleName::OpenAIUser.definition_guid())
                .await
                .unwrap();
        }
        assert_eq!(emulator.request_count("RoleDefinitions_Get", 200), 3);
    }

    #[tokio::test]
    async fn pacing_spreads_a_burst_so_arm_never_throttles() {
        let emulator = start(small_buckets()).await;
        // Paced below ARM's bucket (5 + 20/s), as a second client of the same bucket would need:
        // with the same size and rate, requests that leave evenly paced but arrive bunched (a
        // loaded machine delays some more than others) find ARM's bucket a token short. With
        // 2 + 10/s, arrivals within any window stay under ARM's limit as long as the requests'
        // latencies differ by less than 300 ms (2 + 10·(Δ + 0.3) ≤ 5 + 20·Δ for every Δ ≥ 0);
        // the control below shows the same burst unpaced is throttled.
        let clients = warmed_up(
            &emulator,
            BucketLimits {
                capacity: 2,
                refill_per_second: 10.0,
            },
        )
        .await;
        let results = burst(&clients, 30).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(emulator.request_count("Accounts_Get", 429), 0);
        assert_eq!(emulator.request_count("Accounts_Get", 200), 30);
        assert!(
            clients.arm.rate_limit_remaining(SUB).reads.is_some(),
            "ARM's remaining count is exposed"
        );
    }

    /// A lease that ends at `until`, as the controller's fence sees it.
    fn lease_until(until: tokio::time::Instant) -> std::sync::Arc<keyless::azure::http::WriteGate> {
        std::sync::Arc::new(move || {
            if tokio::time::Instant::now() < until {
                Ok(())
            } else {
                Err("the lease has ended".to_string())
            }
        })
    }

    #[tokio::test]
    async fn a_write_whose_pacing_wait_outlives_the_lease_is_never_sent() {
        let emulator = start(|_| {}).await;
        // One write token, refilled once a second: the second write waits about a second.
        let clients = warmed_up(
            &emulator,
            BucketLimits {
                capacity: 1,
                refill_per_second: 1.0,
            },
        )
        .await;
        clients
            .role_assignments
            .create_assignment(&assign(ALICE, PrincipalType::User, RoleName::OpenAIUser))
            .await
            .unwrap();
        // The lease is valid when the write is decided and ends during the pacing wait.
        clients.fence_writes(lease_until(
            tokio::time::Instant::now() + Duration::from_millis(300),
        ));
        let refused = clients
            .role_assignments
            .create_assignment(&assign(BOB, PrincipalType::User, RoleName::OpenAIUser))
            .await
            .unwrap_err();
        assert_eq!(refused.kind, AzureErrorKind::Fenced, "{refused}");
        assert!(
            refused.to_string().contains("the lease has ended"),
            "{refused}"
        );
        assert_eq!(
            emulator.requests_of("RoleAssignments_Create"),
            1,
            "only the write made before the lease ended reached ARM"
        );
        let deleted = clients
            .role_assignments
            .delete_assignment(&format!(
                "{}/providers/Microsoft.Authorization/roleAssignments/{BOBS_BICEP_ASSIGNMENT}",
                oai_prod()
            ))
            .await
            .unwrap_err();
        assert_eq!(
            deleted.kind,
            AzureErrorKind::Fenced,
            "deletes are fenced too"
        );
        assert_eq!(emulator.requests_of("RoleAssignments_Delete"), 0);
        // Reads go on: a read by a replica that lost its lease changes nothing.
        clients
            .role_assignments
            .observe_scope(&oai_prod())
            .await
            .unwrap();

        // The control: the same wait under a lease that outlasts it, and the write goes out.
        clients.fence_writes(lease_until(
            tokio::time::Instant::now() + Duration::from_secs(60),
        ));
        clients
            .role_assignments
            .create_assignment(&assign(BOB, PrincipalType::User, RoleName::OpenAIUser))
            .await
            .unwrap();
        assert_eq!(emulator.requests_of("RoleAssignments_Create"), 2);
    }

    #[tokio::test]
    async fn without_pacing_the_same_burst_is_throttled() {
        // The control for the test above: it shows the burst does exceed ARM's bucket.
        let emulator = start(small_buckets()).await;
        let clients = warmed_up(
            &emulator,
            BucketLimits {
                capacity: 10_000,
                refill_per_second: 10_000.0,
            },
        )
        .await;
        let results = burst(&clients, 30).await;
        assert!(emulator.request_count("Accounts_Get", 429) > 0);
        assert!(
            results.contains(&Err(AzureErrorKind::Throttled)),
            "{results:?}"
        );
    }

    #[tokio::test]
    async fn no_token_or_assertion_appears_in_logs_or_errors() {
        let emulator = start(|config| config.replication_window = Duration::ZERO).await;
        let clients = clients(&emulator);
        let mut outputs = crate::secrets::Outputs::new();
        // Successes, at TRACE.
        let observed = clients
            .role_assignments
            .observe_scope(&oai_prod())
            .await
            .unwrap();
        outputs.add("observed", format!("{observed:?}"));
        let alice = clients.directory.user_by_upn("alice@contoso.com").await;
        outputs.add("alice", format!("{alice:?}"));
        // Refusals: a wrong principal type, an unknown user, a token for the wrong audience.
        let refused = clients
            .role_assignments
            .create_assignment(&assign(TEAM, PrincipalType::User, RoleName::OpenAIUser))
            .await
            .unwrap_err();
        outputs.add_error("wrong type", &refused);
        let missing = clients
            .directory
            .user_by_upn("nobody@contoso.com")
            .await
            .unwrap_err();
        outputs.add_error("unknown user", &missing);
        let graph_token = emulator
            .token_for(OPERATOR, keyless_emulator::Audience::Graph)
            .unwrap();
        #[derive(Debug)]
        struct Given(String);
        #[async_trait::async_trait]
        impl TokenCredential for Given {
            async fn get_token(
                &self,
                _: &[&str],
                _: Option<TokenRequestOptions<'_>>,
            ) -> azure_core::Result<AccessToken> {
                Ok(AccessToken::new(
                    self.0.clone(),
                    azure_core::time::OffsetDateTime::now_utc()
                        + azure_core::time::Duration::hours(1),
                ))
            }
        }
        let wrong_audience =
            AzureClients::with_credential(&config(&emulator), Arc::new(Given(graph_token)))
                .unwrap();
        let unauthorized = wrong_audience
            .accounts
            .get_account(&oai_prod())
            .await
            .unwrap_err();
        outputs.add_error("wrong audience", &unauthorized);
        outputs.add("credential", format!("{:?}", clients.credential));
        outputs.add("logs", crate::secrets::LogCapture::global().text());
        let seen = emulator.secrets();
        assert!(seen.len() >= 3, "the emulator saw {} secrets", seen.len());
        outputs.assert_no_secret(&seen);
    }
}
