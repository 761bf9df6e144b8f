//! End to end: the real `keyless run` code path (`controller::run`) on the Kubernetes API stand-in
//! and the Azure emulator over HTTPS, with the real workload identity credential.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use k8s_openapi::api::core::v1::ServiceAccount;
use keyless::api::{GrantState, OpenAIAccess, OpenAIAccount, condition_types};
use keyless::azure::credential::{CredentialChoice, CredentialSettings};
use keyless::azure::{AzureClients, AzureConfig, cloud::EndpointOverrides, retry::RetryConfig};
use keyless::controller::{self, ControllerConfig};
use keyless::emulator::config::{EmulatorConfig, Faults};
use keyless::emulator::seed::Seed;
use keyless::emulator::{Emulator, EmulatorHandle};
use keyless::engine::EngineConfig;
use keyless::plan::InstanceId;
use serde_json::json;
use std::time::Duration;
use support::apiserver::ApiServer;

const ISSUER: &str = "https://oidc.keyless.example/cluster-1/";
const SUB: &str = "3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f";
const OAI_PROD: &str = "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-ai-prod/providers/Microsoft.CognitiveServices/accounts/oai-prod";
const ALICE: &str = "82f6c951-ea04-4434-a839-f80b32aa6337";
const BOB: &str = "16cb6f20-2462-4c3e-91e6-df2449d889ba";
const GROUP: &str = "d81d0366-c3d7-4b8d-92f3-1be6d6479d9a";
const SUMMARIZER: &str = "95ce509f-d768-4c1d-b9ae-4595afb90593";
const CHAT_BACKEND: &str = "119b5110-65ac-46fc-92d3-7aea0a858ce8";
const CHAT_BACKEND_CLIENT: &str = "4b3c0789-1890-448c-aca3-a44e891753f7";
const OPENAI_USER: &str = "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd";

struct Harness {
    server: ApiServer,
    emulator: EmulatorHandle,
    running: Option<Running>,
}

fn azure_config(emulator: &EmulatorHandle) -> AzureConfig {
    let endpoint = url::Url::parse(emulator.endpoint()).unwrap();
    AzureConfig {
        endpoints: EndpointOverrides {
            arm_endpoint: Some(endpoint.clone()),
            graph_endpoint: Some(endpoint.clone()),
            authority_host: Some(endpoint),
            ..EndpointOverrides::default()
        },
        credential: CredentialSettings {
            choice: CredentialChoice::WorkloadIdentity,
            tenant_id: Some(emulator.tenant_id()),
            client_id: emulator.operator_client_id().map(str::to_string),
            federated_token_file: emulator.federated_token_file().map(|p| p.to_path_buf()),
        },
        ca_files: vec![emulator.ca_file().to_path_buf()],
        timeout: Duration::from_secs(5),
        retry: RetryConfig {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_retry_after: Duration::from_secs(1),
        },
        ..AzureConfig::default()
    }
}

fn controller_config(instance: &str) -> ControllerConfig {
    ControllerConfig {
        engine: EngineConfig {
            instance: InstanceId::new(instance).unwrap(),
            max_deletes_per_pass: 50,
            replication_deadline: Duration::from_secs(600),
            propagation_grace: Duration::ZERO,
            federation_issuer: Some(ISSUER.into()),
            dry_run: false,
            prune: true,
            brake: None,
            fence: None,
            resolution_cache: Some(std::sync::Arc::new(keyless::engine::ResolutionCache::new(
                Duration::from_secs(600),
            ))),
        },
        resync_interval: Duration::from_millis(700),
        concurrency: 2,
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(400),
        enable_configmap_export: true,
        http_addr: None,
        leader: None,
        assignment_count_interval: None,
        view_failure_threshold: 3,
        view_poll_interval: Duration::from_millis(100),
        arm_attempt_timeout: Duration::from_secs(5),
    }
}

/// A running `keyless run` on the stand-in and the emulator; stop it with [`Running::stop`].
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

fn spawn_controller(
    server: &ApiServer,
    emulator: &EmulatorHandle,
    config: ControllerConfig,
) -> Running {
    let azure = AzureClients::from_config_with_env(&azure_config(emulator), &|_| None).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let client = server.client();
    let task = tokio::spawn(async move {
        controller::run(client, azure, config, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Running { stop, task }
}

impl Harness {
    async fn start() -> Harness {
        let emulator = Emulator::start(EmulatorConfig::new(Seed::example().unwrap()))
            .await
            .unwrap();
        let server = ApiServer::builder()
            .crds(keyless::api::crds())
            .namespace("team-chat")
            .namespace("team-search")
            .namespace("team-other")
            .issuer(ISSUER)
            .build();
        let mut harness = Harness {
            server,
            emulator,
            running: None,
        };
        harness.start_controller("cluster-1");
        harness
    }

    fn start_controller(&mut self, instance: &str) {
        self.running = Some(spawn_controller(
            &self.server,
            &self.emulator,
            controller_config(instance),
        ));
    }

    async fn stop_controller(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    fn account(&self, name: &str, resource_id: &str, spec_extra: serde_json::Value) {
        let mut spec = json!({"resourceId": resource_id, "allowedNamespaces": {"names": ["team-chat", "team-search"]}});
        spec.as_object_mut()
            .unwrap()
            .extend(spec_extra.as_object().unwrap().clone());
        let object: OpenAIAccount = serde_json::from_value(json!({"apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccount", "metadata": {"name": name}, "spec": spec})).unwrap();
        self.server.seed(&object);
    }

    fn access(&self, namespace: &str, name: &str, principals: serde_json::Value) {
        let object: OpenAIAccess = serde_json::from_value(json!({
            "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess",
            "metadata": {"name": name, "namespace": namespace, "generation": 1},
            "spec": {"accountRef": {"name": "prod"}, "role": "OpenAIUser", "deletionPolicy": "Delete", "principals": principals}
        }))
        .unwrap();
        self.server.seed(&object);
    }

    /// Whether the OpenAIAccount's status has a condition matching `check`.
    fn account_condition(
        &self,
        name: &str,
        check: impl Fn(&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition) -> bool,
    ) -> bool {
        self.server
            .get::<OpenAIAccount>(None, name)
            .and_then(|a| a.status)
            .is_some_and(|s| s.conditions.iter().any(check))
    }

    fn get_access(&self, namespace: &str, name: &str) -> Option<OpenAIAccess> {
        self.server.get::<OpenAIAccess>(Some(namespace), name)
    }

    /// (principal id, description) of every OpenAI User assignment on oai-prod.
    fn grants(&self) -> Vec<(String, Option<String>)> {
        let mut grants: Vec<_> = self
            .emulator
            .role_assignments()
            .into_iter()
            .filter(|a| {
                a.scope.eq_ignore_ascii_case(OAI_PROD) && a.role_definition_guid == OPENAI_USER
            })
            .map(|a| (a.principal_id, a.description))
            .collect();
        grants.sort();
        grants
    }

    fn holders(&self) -> Vec<String> {
        self.grants().into_iter().map(|(p, _)| p).collect()
    }

    async fn delete_access(&self, namespace: &str, name: &str) {
        let api: kube::Api<OpenAIAccess> = kube::Api::namespaced(self.server.client(), namespace);
        api.delete(name, &Default::default()).await.unwrap();
    }
}

fn ready(access: &OpenAIAccess) -> bool {
    access.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == condition_types::READY && c.status == "True")
            && s.observed_generation == access.metadata.generation
    })
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn sorted(mut ids: Vec<&str>) -> Vec<String> {
    ids.sort();
    ids.into_iter().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_gets_its_assignments_and_becomes_ready() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    h.server.seed(&serde_json::from_value::<ServiceAccount>(json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "chat-backend", "namespace": "team-chat", "annotations": {"azure.workload.identity/client-id": CHAT_BACKEND_CLIENT}}
    })).unwrap());
    h.access("team-chat", "chat", json!([
        {"user": "alice@contoso.com"},
        {"groupName": "ML Platform Team"},
        {"managedIdentity": format!("/subscriptions/{SUB}/resourceGroups/rg-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-summarizer")},
        {"serviceAccount": "chat-backend"},
        {"user": "bob@contoso.com"}
    ]));
    eventually("the access is Ready", || {
        h.get_access("team-chat", "chat").is_some_and(|a| ready(&a))
    })
    .await;
    assert_eq!(
        h.holders(),
        sorted(vec![ALICE, BOB, GROUP, SUMMARIZER, CHAT_BACKEND])
    );
    let status = h.get_access("team-chat", "chat").unwrap().status.unwrap();
    assert_eq!(status.summary.as_deref(), Some("5/5 granted"));
    let bob = status
        .principals
        .iter()
        .find(|p| p.principal == "user:bob@contoso.com")
        .unwrap();
    assert_eq!(
        bob.reason.as_deref(),
        Some("Adopted"),
        "bob's Bicep assignment is adopted, not duplicated"
    );
    let access = h.get_access("team-chat", "chat").unwrap();
    assert!(
        access
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"keyless.dev/cleanup".to_string())
    );
    let account = h
        .server
        .get::<OpenAIAccount>(None, "prod")
        .unwrap()
        .status
        .unwrap();
    assert_eq!(
        account.endpoint.as_deref(),
        Some("https://oai-prod.openai.azure.com/")
    );
    assert!(
        account
            .conditions
            .iter()
            .any(|c| c.type_ == "KeylessOnly" && c.status == "True")
    );
    eventually("creations are reported as events", || {
        !h.server.events_about("OpenAIAccess", "chat").is_empty()
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principal_changes_add_before_removing_and_removed_principals_lose_their_grant() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}, {"objectId": SUMMARIZER, "principalType": "ServicePrincipal"}]));
    eventually("both granted", || h.holders().len() == 3).await; // + bob's Bicep grant
    h.server
        .modify::<OpenAIAccess>(Some("team-chat"), "chat", |a| {
            a.spec.principals = vec![
                serde_json::from_value(
                    json!({"objectId": CHAT_BACKEND, "principalType": "ServicePrincipal"}),
                )
                .unwrap(),
            ];
        });
    eventually(
        "alice and the summarizer are replaced by the chat backend",
        || h.holders() == sorted(vec![BOB, CHAT_BACKEND]),
    )
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_grant_survives_one_of_its_declarers_and_deletion_removes_only_owned_grants() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    h.access(
        "team-chat",
        "chat",
        json!([{"user": "alice@contoso.com"}, {"user": "bob@contoso.com"}]),
    );
    h.access(
        "team-search",
        "search",
        json!([{"user": "alice@contoso.com"}]),
    );
    eventually("both ready", || {
        h.get_access("team-chat", "chat").is_some_and(|a| ready(&a))
            && h.get_access("team-search", "search")
                .is_some_and(|a| ready(&a))
    })
    .await;
    h.delete_access("team-chat", "chat").await;
    eventually("the deleted object is gone", || {
        h.get_access("team-chat", "chat").is_none()
    })
    .await;
    assert_eq!(
        h.holders(),
        sorted(vec![ALICE, BOB]),
        "alice is still declared; bob's grant was never ours"
    );
    h.delete_access("team-search", "search").await;
    eventually("the last declarer is gone", || {
        h.get_access("team-search", "search").is_none()
    })
    .await;
    assert_eq!(h.holders(), sorted(vec![BOB]));
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_deleted_behind_keyless_back_is_repaired_at_resync() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}]));
    eventually("granted", || h.holders().contains(&ALICE.to_string())).await;
    let name = h
        .emulator
        .role_assignments()
        .into_iter()
        .find(|a| a.principal_id == ALICE)
        .unwrap()
        .name;
    h.emulator.delete_role_assignment(&name).unwrap();
    assert!(!h.holders().contains(&ALICE.to_string()));
    eventually("repaired", || h.holders().contains(&ALICE.to_string())).await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_the_account_does_not_allow_gets_nothing_and_is_told_why() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    h.access(
        "team-other",
        "sneaky",
        json!([{"user": "alice@contoso.com"}]),
    );
    eventually("status written", || {
        h.get_access("team-other", "sneaky")
            .and_then(|a| a.status)
            .is_some_and(|s| !s.principals.is_empty())
    })
    .await;
    let status = h
        .get_access("team-other", "sneaky")
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.principals[0].state, Some(GrantState::Denied));
    assert_eq!(
        status.principals[0].reason.as_deref(),
        Some("NamespaceNotAllowed")
    );
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "True")
    );
    assert_eq!(h.holders(), sorted(vec![BOB]));
    eventually("the denial is an event", || {
        h.server
            .events_about("OpenAIAccess", "sneaky")
            .iter()
            .any(|e| e.reason.as_deref() == Some("AccessDenied"))
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tightening_the_account_policy_revokes_owned_grants() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}]));
    h.access(
        "team-search",
        "search",
        json!([{"objectId": SUMMARIZER, "principalType": "ServicePrincipal"}]),
    );
    eventually("granted", || h.holders().len() == 3).await;
    h.server.modify::<OpenAIAccount>(None, "prod", |a| {
        a.spec.allowed_namespaces.as_mut().unwrap().names = vec!["team-search".into()];
    });
    eventually("team-chat's grant is revoked", || {
        h.holders() == sorted(vec![BOB, SUMMARIZER])
    })
    .await;
    let status = h.get_access("team-chat", "chat").unwrap().status.unwrap();
    assert_eq!(
        status.principals[0].reason.as_deref(),
        Some("NamespaceNotAllowed")
    );
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_down_during_a_deletion_holds_the_finalizer_until_the_grant_is_gone() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}]));
    eventually("granted", || {
        h.get_access("team-chat", "chat").is_some_and(|a| ready(&a))
    })
    .await;
    h.emulator.set_faults(Faults {
        unavailable_rate: 1.0,
        operations: vec![
            "RoleAssignments_Delete".into(),
            "RoleAssignments_ListForScope".into(),
        ],
        ..Faults::default()
    });
    h.delete_access("team-chat", "chat").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        h.get_access("team-chat", "chat").is_some(),
        "the finalizer holds while ARM is down"
    );
    assert!(h.holders().contains(&ALICE.to_string()));
    h.emulator.clear_faults();
    eventually("deleted once ARM is back", || {
        h.get_access("team-chat", "chat").is_none()
    })
    .await;
    assert_eq!(h.holders(), sorted(vec![BOB]));
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_converges_without_duplicates_or_leaks() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    h.access(
        "team-chat",
        "chat",
        json!([{"user": "alice@contoso.com"}, {"groupName": "ML Platform Team"}]),
    );
    eventually("first grant made", || !h.holders().is_empty()).await;
    h.stop_controller().await;
    h.access(
        "team-search",
        "search",
        json!([{"objectId": SUMMARIZER, "principalType": "ServicePrincipal"}]),
    );
    h.start_controller("cluster-1");
    eventually("converged", || {
        h.holders() == sorted(vec![ALICE, BOB, GROUP, SUMMARIZER])
    })
    .await;
    let grants = h.grants();
    let mut principals: Vec<_> = grants.iter().map(|(p, _)| p.clone()).collect();
    principals.dedup();
    assert_eq!(principals.len(), grants.len(), "no duplicate assignment");
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_objects_on_one_account_cost_one_list_per_resync() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    for i in 0..8 {
        h.access("team-chat", &format!("app-{i}"), json!([{"objectId": format!("00000000-0000-0000-0000-0000000000{i:02}"), "principalType": "ServicePrincipal"}]));
    }
    h.server.seed(&service_account(
        "team-chat",
        "chat-backend",
        CHAT_BACKEND_CLIENT,
    ));
    h.access("team-chat", "named", json!([{"user": "alice@contoso.com"}, {"groupName": "ML Platform Team"}, {"managedIdentity": SUMMARIZER_ID}, {"serviceAccount": "chat-backend"}]));
    eventually("all ready", || {
        (0..8).all(|i| {
            h.get_access("team-chat", &format!("app-{i}"))
                .is_some_and(|a| ready(&a))
        }) && h
            .get_access("team-chat", "named")
            .is_some_and(|a| ready(&a))
    })
    .await;
    // Quiet now: from here on only resyncs run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.emulator.reset_request_counts();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let lists = h.emulator.requests_of("RoleAssignments_ListForScope");
    let writes = h.emulator.requests_of("RoleAssignments_Create")
        + h.emulator.requests_of("RoleAssignments_Delete");
    // 700 ms resync over 2.2 s: 3 passes, give or take one at the edges — never one per object.
    assert!((2..=4).contains(&lists), "{lists} LISTs");
    assert_eq!(writes, 0, "nothing to do costs no writes");
    let lookups: u64 = [
        "Graph_GetUser",
        "Graph_ListGroups",
        "Graph_GetServicePrincipal",
        "UserAssignedIdentities_Get",
        "UserAssignedIdentities_ListBySubscription",
        "FederatedIdentityCredentials_List",
    ]
    .iter()
    .map(|op| h.emulator.requests_of(op))
    .sum();
    assert_eq!(
        lookups, 0,
        "resolved principals are not looked up again at every resync"
    );
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_to_an_unregistered_account_says_so() {
    let mut h = Harness::start().await;
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}]));
    eventually("AccountNotFound reported", || {
        h.get_access("team-chat", "chat")
            .and_then(|a| a.status)
            .is_some_and(|s| s.conditions.iter().any(|c| c.reason == "AccountNotFound"))
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_with_one_resource_id_the_newer_does_nothing() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    tokio::time::sleep(Duration::from_millis(1100)).await; // creationTimestamp has second precision
    h.account(
        "prod-again",
        &OAI_PROD
            .to_uppercase()
            .replace("RESOURCEGROUPS", "resourceGroups")
            .replace("SUBSCRIPTIONS", "subscriptions")
            .replace("PROVIDERS", "providers")
            .replace("ACCOUNTS", "accounts"),
        json!({}),
    );
    eventually("the newer reports Conflict", || {
        h.account_condition("prod-again", |c| {
            c.type_ == "Conflict" && c.status == "True"
        })
    })
    .await;
    assert!(
        h.server
            .get::<OpenAIAccount>(None, "prod")
            .is_some_and(|a| a.status.is_some())
    );
    assert!(
        !h.account_condition("prod", |c| c.type_ == "Conflict"),
        "the older one is not in conflict"
    );
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_access_is_revoked_at_its_expiry_time() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3);
    let object: OpenAIAccess = serde_json::from_value(json!({
        "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess",
        "metadata": {"name": "trial", "namespace": "team-chat", "generation": 1},
        "spec": {"accountRef": {"name": "prod"}, "role": "OpenAIUser", "deletionPolicy": "Retain",
                 "expiresAt": expires.to_string(), "principals": [{"user": "alice@contoso.com"}]}
    }))
    .unwrap();
    h.server.seed(&object);
    eventually("granted", || h.holders().contains(&ALICE.to_string())).await;
    eventually("revoked after expiry, even under Retain", || {
        !h.holders().contains(&ALICE.to_string())
    })
    .await;
    let status = h.get_access("team-chat", "trial").unwrap().status.unwrap();
    assert_eq!(status.principals[0].reason.as_deref(), Some("Expired"));
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owned_assignment_nothing_declares_is_swept_but_another_instances_is_not() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    let put = |principal: &str, instance: &str| {
        h.emulator
            .put_role_assignment(keyless::emulator::state::AdminRoleAssignment {
                name: None,
                scope: OAI_PROD.into(),
                role_definition_id: OPENAI_USER.into(),
                principal_id: principal.into(),
                principal_type: Some("ServicePrincipal".into()),
                description: Some(format!(
                    "keyless:v1 instance={instance} declared-by=gone/forced"
                )),
                condition: None,
            })
            .unwrap()
    };
    put(SUMMARIZER, "cluster-1");
    put(CHAT_BACKEND, "cluster-2");
    eventually("the orphan of this instance is swept", || {
        !h.holders().contains(&SUMMARIZER.to_string())
    })
    .await;
    assert!(
        h.holders().contains(&CHAT_BACKEND.to_string()),
        "another instance's grant is not ours to delete"
    );
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_without_the_crds_installed_is_one_clear_error() {
    let emulator = Emulator::start(EmulatorConfig::new(Seed::example().unwrap()))
        .await
        .unwrap();
    let server = ApiServer::builder().build();
    let azure = AzureClients::from_config_with_env(&azure_config(&emulator), &|_| None).unwrap();
    let error = controller::run(
        server.client(),
        azure,
        controller_config("cluster-1"),
        async {},
    )
    .await
    .unwrap_err();
    assert!(
        error.to_string().contains("CRDs are not installed"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_access_is_reported_and_does_not_stall_the_others() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    // Stored as given (as an apiserver without the CRD's validation would): a role keyless does not know.
    h.server.seed_value(json!({
        "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess",
        "metadata": {"name": "broken", "namespace": "team-chat"},
        "spec": {"accountRef": {"name": "prod"}, "role": "Owner", "principals": [{"user": "alice@contoso.com"}]}
    }));
    h.access(
        "team-search",
        "fine",
        json!([{"user": "alice@contoso.com"}]),
    );
    eventually("the good one is ready", || {
        h.get_access("team-search", "fine")
            .is_some_and(|a| ready(&a))
    })
    .await;
    eventually("the broken one is reported", || {
        let value = h
            .server
            .get_value::<OpenAIAccess>(Some("team-chat"), "broken")
            .unwrap();
        value["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter().any(|c| {
                c["reason"] == "InvalidSpec"
                    && c["message"].as_str().unwrap_or_default().contains("Owner")
            })
        })
    })
    .await;
    h.stop_controller().await;
}

// ---- Part 2: federation, posture, export, operations ----

const SUMMARIZER_ID: &str = "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-summarizer";
const SUMMARIZER_CLIENT: &str = "abfae246-2b2d-4cc2-b528-9067a57d93af";
const AIS_DEV: &str = "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-ai-prod/providers/Microsoft.CognitiveServices/accounts/ais-dev";

fn service_account(namespace: &str, name: &str, client_id: &str) -> ServiceAccount {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace, "annotations": {"azure.workload.identity/client-id": client_id}}
    }))
    .unwrap()
}

fn principal_state(h: &Harness, namespace: &str, name: &str) -> Option<(GrantState, String)> {
    let status = h.get_access(namespace, name)?.status?;
    let principal = status.principals.first()?;
    Some((principal.state?, principal.reason.clone()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_without_a_federated_credential_is_denied_until_one_is_added() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    h.server.seed(&service_account(
        "team-chat",
        "summarizer",
        SUMMARIZER_CLIENT,
    ));
    h.access(
        "team-chat",
        "summaries",
        json!([{"serviceAccount": "summarizer"}]),
    );
    eventually("denied for FederationMissing", || {
        principal_state(&h, "team-chat", "summaries")
            == Some((GrantState::Denied, "FederationMissing".into()))
    })
    .await;
    assert!(!h.holders().contains(&SUMMARIZER.to_string()));
    h.emulator
        .add_federated_credential(
            SUMMARIZER_ID,
            keyless::emulator::state::FederatedCredential {
                name: "team-chat-summarizer".into(),
                issuer: ISSUER.into(),
                subject: "system:serviceaccount:team-chat:summarizer".into(),
                audiences: vec!["api://AzureADTokenExchange".into()],
            },
        )
        .unwrap();
    eventually("granted once federated", || {
        h.holders().contains(&SUMMARIZER.to_string())
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_federated_with_another_namespaces_service_account_is_reported() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    // id-chat-backend is federated with team-chat/chat-backend; team-search borrows it.
    h.server.seed(&service_account(
        "team-search",
        "borrower",
        CHAT_BACKEND_CLIENT,
    ));
    h.access(
        "team-search",
        "borrow",
        json!([{"serviceAccount": "borrower"}]),
    );
    eventually("denied", || {
        principal_state(&h, "team-search", "borrow").is_some_and(|(s, _)| s == GrantState::Denied)
    })
    .await;
    eventually("the shared identity is a finding", || {
        h.server
            .events_about("OpenAIAccess", "borrow")
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("FederationFinding")
                    && e.note
                        .as_deref()
                        .unwrap_or_default()
                        .contains("team-chat:chat-backend")
            })
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_required_federation_the_same_finding_is_a_warning_and_the_grant_is_made() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({"requireFederation": false}));
    h.server.seed(&service_account(
        "team-chat",
        "summarizer",
        SUMMARIZER_CLIENT,
    ));
    h.access(
        "team-chat",
        "summaries",
        json!([{"serviceAccount": "summarizer"}]),
    );
    eventually("granted", || h.holders().contains(&SUMMARIZER.to_string())).await;
    eventually("warned", || {
        h.server
            .events_about("OpenAIAccess", "summaries")
            .iter()
            .any(|e| e.reason.as_deref() == Some("FederationFinding"))
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_that_still_accepts_keys_is_not_keyless_only() {
    let mut h = Harness::start().await;
    h.account("dev", AIS_DEV, json!({}));
    eventually("posture reported", || {
        h.account_condition("dev", |c| c.type_ == "KeylessOnly" && c.status == "False")
    })
    .await;
    let status = h
        .server
        .get::<OpenAIAccount>(None, "dev")
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.kind.as_deref(), Some("AIServices"));
    assert_eq!(status.local_auth_disabled, Some(false));
    eventually("a warning event", || {
        h.server
            .events_about("OpenAIAccount", "dev")
            .iter()
            .any(|e| e.reason.as_deref() == Some("LocalAuthEnabled"))
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_without_a_custom_subdomain_says_tokens_cannot_work() {
    let mut h = Harness::start().await;
    h.account("legacy", "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-ai-prod/providers/Microsoft.CognitiveServices/accounts/oai-legacy", json!({}));
    eventually("TokenAuthSupported=False", || {
        h.account_condition("legacy", |c| {
            c.type_ == "TokenAuthSupported" && c.status == "False"
        })
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_the_endpoint_and_the_single_workload_client_id() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    h.server.seed(&service_account(
        "team-chat",
        "chat-backend",
        CHAT_BACKEND_CLIENT,
    ));
    let object: OpenAIAccess = serde_json::from_value(json!({
        "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess",
        "metadata": {"name": "chat", "namespace": "team-chat", "generation": 1, "uid": "2c5f8f7e-0000-4000-8000-000000000001"},
        "spec": {"accountRef": {"name": "prod"}, "role": "OpenAIUser", "deletionPolicy": "Delete",
                 "exportTo": {"configMapName": "openai"},
                 "principals": [{"serviceAccount": "chat-backend"}, {"user": "alice@contoso.com"}]}
    }))
    .unwrap();
    h.server.seed(&object);
    eventually("the ConfigMap exists", || {
        h.server
            .get::<k8s_openapi::api::core::v1::ConfigMap>(Some("team-chat"), "openai")
            .is_some()
    })
    .await;
    let config_map = h
        .server
        .get::<k8s_openapi::api::core::v1::ConfigMap>(Some("team-chat"), "openai")
        .unwrap();
    let data = config_map.data.unwrap();
    assert_eq!(
        data["AZURE_OPENAI_ENDPOINT"],
        "https://oai-prod.openai.azure.com/"
    );
    assert_eq!(data["AZURE_OPENAI_CLIENT_ID"], CHAT_BACKEND_CLIENT);
    let owners = config_map.metadata.owner_references.unwrap();
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].name.as_str()),
        ("OpenAIAccess", "chat")
    );
    h.stop_controller().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader_and_make_each_write_once() {
    let emulator = Emulator::start(EmulatorConfig::new(Seed::example().unwrap()))
        .await
        .unwrap();
    let server = ApiServer::builder()
        .crds(keyless::api::crds())
        .namespace("team-chat")
        .namespace("keyless-system")
        .issuer(ISSUER)
        .build();
    let mut replicas = Vec::new();
    let ports = [free_port(), free_port()];
    for (replica, port) in ports.iter().enumerate() {
        let mut config = controller_config("cluster-1");
        config.http_addr = Some(format!("127.0.0.1:{port}").parse().unwrap());
        // The fence needs one attempt's time of lease left before each write.
        config.arm_attempt_timeout = Duration::from_secs(1);
        config.leader = Some(keyless::ops::leader::LeaseConfig {
            name: "keyless".into(),
            namespace: "keyless-system".into(),
            holder_id: format!("replica-{replica}"),
            lease_duration: Duration::from_secs(3),
            renew_interval: Duration::from_millis(500),
            retry_interval: Duration::from_millis(200),
        });
        replicas.push(spawn_controller(&server, &emulator, config));
    }
    let account: OpenAIAccount = serde_json::from_value(json!({"apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccount", "metadata": {"name": "prod"}, "spec": {"resourceId": OAI_PROD, "allowedNamespaces": {"names": ["team-chat"]}}})).unwrap();
    server.seed(&account);
    for i in 0..6 {
        let access: OpenAIAccess = serde_json::from_value(json!({
            "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess",
            "metadata": {"name": format!("app-{i}"), "namespace": "team-chat"},
            "spec": {"accountRef": {"name": "prod"}, "principals": [{"objectId": format!("00000000-0000-0000-0000-0000000000{i:02}"), "principalType": "ServicePrincipal"}]}
        }))
        .unwrap();
        server.seed(&access);
    }
    let granted = || {
        emulator
            .role_assignments()
            .iter()
            .filter(|a| {
                a.scope.eq_ignore_ascii_case(OAI_PROD) && a.principal_id.starts_with("00000000-")
            })
            .count()
    };
    eventually("six grants", || granted() == 6).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        emulator.request_count("RoleAssignments_Create", 201),
        6,
        "each grant written once, by the leader only"
    );
    assert_eq!(emulator.requests_of("RoleAssignments_Create"), 6);
    let lease = server
        .get::<k8s_openapi::api::coordination::v1::Lease>(Some("keyless-system"), "keyless")
        .unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap();
    assert!(holder.starts_with("replica-"));

    // Both replicas are ready (a standby too), and the metrics scrape parses as Prometheus text.
    let http = reqwest::Client::new();
    for port in ports {
        let ready = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
    }
    let leader_port = ports[holder
        .trim_start_matches("replica-")
        .parse::<usize>()
        .unwrap()];
    let scrape = http
        .get(format!("http://127.0.0.1:{leader_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_prometheus_text(&scrape);
    assert!(
        scrape.contains("keyless_reconciles_total{result=\"ok\"}"),
        "{scrape}"
    );
    assert!(scrape.contains("keyless_leader 1"), "{scrape}");
    assert!(
        scrape.contains("keyless_grants{state=\"Granted\"} 6"),
        "{scrape}"
    );
    assert!(
        scrape.contains("keyless_azure_requests_total{service=\"arm\""),
        "{scrape}"
    );
    assert!(
        !scrape.contains("team-chat") && !scrape.contains("app-0"),
        "no object names in labels"
    );

    for replica in replicas {
        replica.stop().await;
    }
}

/// Every line is a comment, blank, or `name{labels} value`.
fn assert_prometheus_text(text: &str) {
    let sample = regex::Regex::new(r#"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? [-+0-9.eEInfNa]+$"#).unwrap();
    for line in text.lines() {
        assert!(
            line.is_empty() || line.starts_with('#') || sample.is_match(line),
            "not Prometheus text: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_deleted_in_azure_is_reported_and_releases_deleting_objects() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}]));
    eventually("granted", || {
        h.get_access("team-chat", "chat").is_some_and(|a| ready(&a))
    })
    .await;
    h.emulator.delete_account(OAI_PROD).unwrap();
    eventually("the account reports it is gone", || {
        h.account_condition("prod", |c| c.reason == "AzureAccountNotFound")
    })
    .await;
    h.delete_access("team-chat", "chat").await;
    eventually("nothing left to clean: the finalizer goes", || {
        h.get_access("team-chat", "chat").is_none()
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_near_arms_assignment_limit_is_warned_about() {
    let emulator = Emulator::start(EmulatorConfig::new(Seed::example().unwrap()))
        .await
        .unwrap();
    for i in 0..3200u32 {
        emulator
            .put_role_assignment(keyless::emulator::state::AdminRoleAssignment {
                name: None,
                scope: OAI_PROD.into(),
                role_definition_id: OPENAI_USER.into(),
                principal_id: format!("10000000-0000-0000-0000-{i:012}"),
                principal_type: Some("ServicePrincipal".into()),
                description: None,
                condition: None,
            })
            .unwrap();
    }
    let server = ApiServer::builder()
        .crds(keyless::api::crds())
        .issuer(ISSUER)
        .build();
    let mut config = controller_config("cluster-1");
    config.assignment_count_interval = Some(Duration::from_millis(300));
    let account: OpenAIAccount = serde_json::from_value(json!({"apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccount", "metadata": {"name": "prod"}, "spec": {"resourceId": OAI_PROD}})).unwrap();
    server.seed(&account);
    let running = spawn_controller(&server, &emulator, config);
    eventually("a warning at 80 % of 4,000", || {
        server
            .events_about("OpenAIAccount", "prod")
            .iter()
            .any(|e| e.reason.as_deref() == Some("RoleAssignmentLimitNear"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let warnings = server
        .events_about("OpenAIAccount", "prod")
        .iter()
        .filter(|e| e.reason.as_deref() == Some("RoleAssignmentLimitNear"))
        .count();
    assert_eq!(warnings, 1, "one warning per crossing, not one per count");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistering_an_account_revokes_its_grants_and_its_accesses_say_so() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    h.access(
        "team-chat",
        "chat",
        json!([{"user": "alice@contoso.com"}, {"user": "bob@contoso.com"}]),
    );
    eventually("granted", || {
        h.get_access("team-chat", "chat").is_some_and(|a| ready(&a))
    })
    .await;
    let api: kube::Api<OpenAIAccount> = kube::Api::all(h.server.client());
    api.delete("prod", &Default::default()).await.unwrap();
    eventually("the account is gone once its grants are revoked", || {
        h.server.get::<OpenAIAccount>(None, "prod").is_none()
    })
    .await;
    assert_eq!(
        h.holders(),
        sorted(vec![BOB]),
        "deletionPolicy Delete revokes keyless's grants, never bob's Bicep one"
    );
    eventually("the access reports AccountNotFound", || {
        h.get_access("team-chat", "chat")
            .and_then(|a| a.status)
            .is_some_and(|s| s.conditions.iter().any(|c| c.reason == "AccountNotFound"))
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistering_an_account_with_retain_leaves_its_grants_released() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({"deletionPolicy": "Retain"}));
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}]));
    eventually("granted", || h.holders().contains(&ALICE.to_string())).await;
    let api: kube::Api<OpenAIAccount> = kube::Api::all(h.server.client());
    api.delete("prod", &Default::default()).await.unwrap();
    eventually("the account is gone", || {
        h.server.get::<OpenAIAccount>(None, "prod").is_none()
    })
    .await;
    let alice = h
        .grants()
        .into_iter()
        .find(|(p, _)| p == ALICE)
        .expect("retained");
    assert!(
        !alice.1.unwrap_or_default().contains("instance=cluster-1"),
        "released: no keyless instance will delete it"
    );
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_account_issuer_is_discovered_from_the_apiserver() {
    let server = ApiServer::builder()
        .issuer("https://oidc.example.test/cluster-9")
        .build();
    assert_eq!(
        controller::discover_issuer(&server.client())
            .await
            .as_deref(),
        Some("https://oidc.example.test/cluster-9")
    );
}
