//! End to end: the real `keyless run` code path (`controller::run`) on the Kubernetes API stand-in
//! and the Azure emulator over HTTPS, with the real workload identity credential.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyless::api::{GrantState, OpenAIAccess, OpenAIAccount, condition_types};
use keyless::azure::credential::{CredentialChoice, CredentialSettings};
use keyless::azure::{AzureClients, AzureConfig, cloud::EndpointOverrides, retry::RetryConfig};
use keyless::controller::{self, ControllerConfig};
use keyless::emulator::config::{EmulatorConfig, Faults};
use keyless::emulator::seed::Seed;
use keyless::emulator::{Emulator, EmulatorHandle};
use keyless::engine::EngineConfig;
use keyless::plan::InstanceId;
use k8s_openapi::api::core::v1::ServiceAccount;
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
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
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
        },
        resync_interval: Duration::from_millis(700),
        concurrency: 2,
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(400),
        enable_configmap_export: false,
    }
}

impl Harness {
    async fn start() -> Harness {
        let emulator = Emulator::start(EmulatorConfig::new(Seed::example().unwrap())).await.unwrap();
        let server = ApiServer::builder()
            .crds(keyless::api::crds())
            .namespace("team-chat")
            .namespace("team-search")
            .namespace("team-other")
            .issuer(ISSUER)
            .build();
        let mut harness = Harness { server, emulator, stop: None, task: None };
        harness.start_controller("cluster-1");
        harness
    }

    fn start_controller(&mut self, instance: &str) {
        let azure = AzureClients::from_config_with_env(&azure_config(&self.emulator), &|_| None).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let client = self.server.client();
        let config = controller_config(instance);
        self.task = Some(tokio::spawn(async move {
            controller::run(client, azure, config, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        }));
        self.stop = Some(stop);
    }

    async fn stop_controller(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    fn account(&self, name: &str, resource_id: &str, spec_extra: serde_json::Value) {
        let mut spec = json!({"resourceId": resource_id, "allowedNamespaces": {"names": ["team-chat", "team-search"]}});
        spec.as_object_mut().unwrap().extend(spec_extra.as_object().unwrap().clone());
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

    fn get_access(&self, namespace: &str, name: &str) -> Option<OpenAIAccess> {
        self.server.get::<OpenAIAccess>(Some(namespace), name)
    }

    /// (principal id, description) of every OpenAI User assignment on oai-prod.
    fn grants(&self) -> Vec<(String, Option<String>)> {
        let mut grants: Vec<_> = self
            .emulator
            .role_assignments()
            .into_iter()
            .filter(|a| a.scope.eq_ignore_ascii_case(OAI_PROD) && a.role_definition_guid == OPENAI_USER)
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
        s.conditions.iter().any(|c| c.type_ == condition_types::READY && c.status == "True")
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
    eventually("the access is Ready", || h.get_access("team-chat", "chat").is_some_and(|a| ready(&a))).await;
    assert_eq!(h.holders(), sorted(vec![ALICE, BOB, GROUP, SUMMARIZER, CHAT_BACKEND]));
    let status = h.get_access("team-chat", "chat").unwrap().status.unwrap();
    assert_eq!(status.summary.as_deref(), Some("5/5 granted"));
    let bob = status.principals.iter().find(|p| p.principal == "user:bob@contoso.com").unwrap();
    assert_eq!(bob.reason.as_deref(), Some("Adopted"), "bob's Bicep assignment is adopted, not duplicated");
    let access = h.get_access("team-chat", "chat").unwrap();
    assert!(access.metadata.finalizers.unwrap_or_default().contains(&"keyless.dev/cleanup".to_string()));
    let account = h.server.get::<OpenAIAccount>(None, "prod").unwrap().status.unwrap();
    assert_eq!(account.endpoint.as_deref(), Some("https://oai-prod.openai.azure.com/"));
    assert!(account.conditions.iter().any(|c| c.type_ == "KeylessOnly" && c.status == "True"));
    eventually("creations are reported as events", || !h.server.events_about("OpenAIAccess", "chat").is_empty()).await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principal_changes_add_before_removing_and_removed_principals_lose_their_grant() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}, {"objectId": SUMMARIZER, "principalType": "ServicePrincipal"}]));
    eventually("both granted", || h.holders().len() == 3).await; // + bob's Bicep grant
    h.server.modify::<OpenAIAccess>(Some("team-chat"), "chat", |a| {
        a.spec.principals = vec![serde_json::from_value(json!({"objectId": CHAT_BACKEND, "principalType": "ServicePrincipal"})).unwrap()];
    });
    eventually("alice and the summarizer are replaced by the chat backend", || h.holders() == sorted(vec![BOB, CHAT_BACKEND])).await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_grant_survives_one_of_its_declarers_and_deletion_removes_only_owned_grants() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}, {"user": "bob@contoso.com"}]));
    h.access("team-search", "search", json!([{"user": "alice@contoso.com"}]));
    eventually("both ready", || h.get_access("team-chat", "chat").is_some_and(|a| ready(&a)) && h.get_access("team-search", "search").is_some_and(|a| ready(&a))).await;
    h.delete_access("team-chat", "chat").await;
    eventually("the deleted object is gone", || h.get_access("team-chat", "chat").is_none()).await;
    assert_eq!(h.holders(), sorted(vec![ALICE, BOB]), "alice is still declared; bob's grant was never ours");
    h.delete_access("team-search", "search").await;
    eventually("the last declarer is gone", || h.get_access("team-search", "search").is_none()).await;
    assert_eq!(h.holders(), sorted(vec![BOB]));
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_deleted_behind_keyless_back_is_repaired_at_resync() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}]));
    eventually("granted", || h.holders().contains(&ALICE.to_string())).await;
    let name = h.emulator.role_assignments().into_iter().find(|a| a.principal_id == ALICE).unwrap().name;
    h.emulator.delete_role_assignment(&name).unwrap();
    assert!(!h.holders().contains(&ALICE.to_string()));
    eventually("repaired", || h.holders().contains(&ALICE.to_string())).await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_the_account_does_not_allow_gets_nothing_and_is_told_why() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    h.access("team-other", "sneaky", json!([{"user": "alice@contoso.com"}]));
    eventually("status written", || h.get_access("team-other", "sneaky").and_then(|a| a.status).is_some_and(|s| !s.principals.is_empty())).await;
    let status = h.get_access("team-other", "sneaky").unwrap().status.unwrap();
    assert_eq!(status.principals[0].state, Some(GrantState::Denied));
    assert_eq!(status.principals[0].reason.as_deref(), Some("NamespaceNotAllowed"));
    assert!(status.conditions.iter().any(|c| c.type_ == "Stalled" && c.status == "True"));
    assert_eq!(h.holders(), sorted(vec![BOB]));
    eventually("the denial is an event", || h.server.events_about("OpenAIAccess", "sneaky").iter().any(|e| e.reason.as_deref() == Some("AccessDenied"))).await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tightening_the_account_policy_revokes_owned_grants() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}]));
    h.access("team-search", "search", json!([{"objectId": SUMMARIZER, "principalType": "ServicePrincipal"}]));
    eventually("granted", || h.holders().len() == 3).await;
    h.server.modify::<OpenAIAccount>(None, "prod", |a| {
        a.spec.allowed_namespaces.as_mut().unwrap().names = vec!["team-search".into()];
    });
    eventually("team-chat's grant is revoked", || h.holders() == sorted(vec![BOB, SUMMARIZER])).await;
    let status = h.get_access("team-chat", "chat").unwrap().status.unwrap();
    assert_eq!(status.principals[0].reason.as_deref(), Some("NamespaceNotAllowed"));
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_down_during_a_deletion_holds_the_finalizer_until_the_grant_is_gone() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}]));
    eventually("granted", || h.get_access("team-chat", "chat").is_some_and(|a| ready(&a))).await;
    h.emulator.set_faults(Faults { unavailable_rate: 1.0, operations: vec!["RoleAssignments_Delete".into(), "RoleAssignments_ListForScope".into()], ..Faults::default() });
    h.delete_access("team-chat", "chat").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(h.get_access("team-chat", "chat").is_some(), "the finalizer holds while ARM is down");
    assert!(h.holders().contains(&ALICE.to_string()));
    h.emulator.clear_faults();
    eventually("deleted once ARM is back", || h.get_access("team-chat", "chat").is_none()).await;
    assert_eq!(h.holders(), sorted(vec![BOB]));
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_converges_without_duplicates_or_leaks() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}, {"groupName": "ML Platform Team"}]));
    eventually("first grant made", || !h.holders().is_empty()).await;
    h.stop_controller().await;
    h.access("team-search", "search", json!([{"objectId": SUMMARIZER, "principalType": "ServicePrincipal"}]));
    h.start_controller("cluster-1");
    eventually("converged", || h.holders() == sorted(vec![ALICE, BOB, GROUP, SUMMARIZER])).await;
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
    eventually("all ready", || (0..8).all(|i| h.get_access("team-chat", &format!("app-{i}")).is_some_and(|a| ready(&a)))).await;
    // Quiet now: from here on only resyncs run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.emulator.reset_request_counts();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let lists = h.emulator.requests_of("RoleAssignments_ListForScope");
    let writes = h.emulator.requests_of("RoleAssignments_Create") + h.emulator.requests_of("RoleAssignments_Delete");
    // 700 ms resync over 2.2 s: 3 passes, give or take one at the edges — never one per object.
    assert!((2..=4).contains(&lists), "{lists} LISTs");
    assert_eq!(writes, 0, "nothing to do costs no writes");
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_to_an_unregistered_account_says_so() {
    let mut h = Harness::start().await;
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}]));
    eventually("AccountNotFound reported", || {
        h.get_access("team-chat", "chat").and_then(|a| a.status).is_some_and(|s| s.conditions.iter().any(|c| c.reason == "AccountNotFound"))
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_with_one_resource_id_the_newer_does_nothing() {
    let mut h = Harness::start().await;
    h.account("prod", OAI_PROD, json!({}));
    tokio::time::sleep(Duration::from_millis(1100)).await; // creationTimestamp has second precision
    h.account("prod-again", &OAI_PROD.to_uppercase().replace("RESOURCEGROUPS", "resourceGroups").replace("SUBSCRIPTIONS", "subscriptions").replace("PROVIDERS", "providers").replace("ACCOUNTS", "accounts"), json!({}));
    eventually("the newer reports Conflict", || {
        h.server.get::<OpenAIAccount>(None, "prod-again").and_then(|a| a.status).is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Conflict" && c.status == "True"))
    })
    .await;
    let older = h.server.get::<OpenAIAccount>(None, "prod").unwrap().status.unwrap();
    assert!(!older.conditions.iter().any(|c| c.type_ == "Conflict"));
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
    eventually("revoked after expiry, even under Retain", || !h.holders().contains(&ALICE.to_string())).await;
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
                description: Some(format!("keyless:v1 instance={instance} declared-by=gone/forced")),
                condition: None,
            })
            .unwrap()
    };
    put(SUMMARIZER, "cluster-1");
    put(CHAT_BACKEND, "cluster-2");
    eventually("the orphan of this instance is swept", || !h.holders().contains(&SUMMARIZER.to_string())).await;
    assert!(h.holders().contains(&CHAT_BACKEND.to_string()), "another instance's grant is not ours to delete");
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_without_the_crds_installed_is_one_clear_error() {
    let emulator = Emulator::start(EmulatorConfig::new(Seed::example().unwrap())).await.unwrap();
    let server = ApiServer::builder().build();
    let azure = AzureClients::from_config_with_env(&azure_config(&emulator), &|_| None).unwrap();
    let error = controller::run(server.client(), azure, controller_config("cluster-1"), async {}).await.unwrap_err();
    assert!(error.to_string().contains("CRDs are not installed"), "{error}");
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
    h.access("team-search", "fine", json!([{"user": "alice@contoso.com"}]));
    eventually("the good one is ready", || h.get_access("team-search", "fine").is_some_and(|a| ready(&a))).await;
    eventually("the broken one is reported", || {
        let value = h.server.get_value::<OpenAIAccess>(Some("team-chat"), "broken").unwrap();
        value["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["reason"] == "InvalidSpec" && c["message"].as_str().unwrap_or_default().contains("Owner")))
    })
    .await;
    h.stop_controller().await;
}
