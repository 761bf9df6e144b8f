//! End to end: the real `keyless run` code path (`controller::run`) on a real kube-apiserver
//! (`../shared/k8s`, see `support::cluster`) and the Azure emulator over HTTPS, with the real
//! workload identity credential. Every test has its own namespaces, account names and emulator on
//! the binary's shared control plane; the controller's client goes through the fault layer, so
//! tests can count its requests and inject faults.
//!
//! One test stays on the in-process stand-in (`support::apiserver`), because the real server
//! cannot do what it needs: `a_malformed_access_is_reported_and_does_not_stall_the_others` stores
//! an OpenAIAccess the CRD's schema rejects (the real server validates every write).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use keyless::api::{GrantState, OpenAIAccess, OpenAIAccount, condition_types};
use keyless::controller::{self, ControllerConfig};
use keyless_emulator::EmulatorHandle;
use keyless_emulator::config::Faults;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::time::Duration;
use support::cluster::{ISSUER, RunningController, TestEnv};
use support::example_seed::{
    AIS_DEV, ALICE, BOB, CHAT_BACKEND, CHAT_BACKEND_CLIENT, CHAT_BACKEND_ID, GROUP, OAI_PROD,
    OPENAI_USER, SUB, SUMMARIZER, SUMMARIZER_CLIENT, SUMMARIZER_ID,
};
use support::kube_faults::{Fault, KubeFaults, Verb};
use support::operator::{azure_clients, controller_config, emulator};
use support::wait::{EVENTUALLY_WITHIN, eventually, eventually_within};

/// One test's world: its namespaces (`team-chat`, `team-search`, `team-other`, each suffixed with
/// the test's id), its emulator, and the controller under test. Methods take the logical names the
/// tests read with (`"team-chat"`, `"prod"`) and map them to the test's real ones.
struct Harness {
    env: TestEnv,
    emulator: EmulatorHandle,
    /// The controller's client goes through these: counts and faults.
    faults: KubeFaults,
    running: Option<RunningController>,
}

impl Harness {
    /// The namespaces and the emulator, without a controller; `None` when the test must skip.
    async fn new() -> Option<Harness> {
        // Every test's log lines, at TRACE, for the secrets scan.
        support::secrets::LogCapture::global();
        let env = TestEnv::start().await?;
        for namespace in ["team-chat", "team-search", "team-other"] {
            env.namespace(namespace).await;
        }
        Some(Harness {
            env,
            emulator: emulator().await,
            faults: KubeFaults::new(),
            running: None,
        })
    }

    /// [`Harness::new`] with the controller started as instance `cluster-1`.
    async fn start() -> Option<Harness> {
        let mut harness = Harness::new().await?;
        harness.start_controller("cluster-1");
        Some(harness)
    }

    /// The test's real name of a namespace or a cluster-scoped object.
    fn n(&self, logical: &str) -> String {
        self.env.name(logical)
    }

    fn start_controller(&mut self, instance: &str) {
        self.start_controller_with(controller_config(instance));
    }

    fn start_controller_with(&mut self, config: ControllerConfig) {
        self.running = Some(self.spawn_controller(config));
    }

    fn spawn_controller(&self, config: ControllerConfig) -> RunningController {
        RunningController::spawn(
            self.env.controller_client(&self.faults),
            azure_clients(&self.emulator),
            config,
        )
    }

    async fn stop_controller(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
    }

    /// Federates id-chat-backend with `chat-backend` in this test's team-chat (the seed federates
    /// it with the literal `team-chat`, which this test's namespace is not).
    fn federate_chat_backend(&self) {
        self.federate(CHAT_BACKEND_ID, "team-chat", "chat-backend");
    }

    fn federate(&self, identity: &str, namespace: &str, service_account: &str) {
        let namespace = self.n(namespace);
        self.emulator
            .add_federated_credential(
                identity,
                keyless_emulator::state::FederatedCredential {
                    name: format!("{namespace}-{service_account}"),
                    issuer: ISSUER.into(),
                    subject: format!("system:serviceaccount:{namespace}:{service_account}"),
                    audiences: vec!["api://AzureADTokenExchange".into()],
                    claims_matching_expression: None,
                },
            )
            .unwrap();
    }

    async fn account(&self, name: &str, resource_id: &str, spec_extra: serde_json::Value) {
        let mut spec = json!({"resourceId": resource_id, "allowedNamespaces": {"names": [self.n("team-chat"), self.n("team-search")]}});
        spec.as_object_mut()
            .unwrap()
            .extend(spec_extra.as_object().unwrap().clone());
        let object: OpenAIAccount = serde_json::from_value(json!({"apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccount", "metadata": {"name": self.n(name)}, "spec": spec})).unwrap();
        self.env.create(&object).await;
    }

    /// An OpenAIAccess of `namespace` on the account `prod`; `spec_extra` is merged into its spec.
    async fn access_with(
        &self,
        namespace: &str,
        name: &str,
        principals: serde_json::Value,
        spec_extra: serde_json::Value,
    ) {
        let mut spec = json!({"accountRef": {"name": self.n("prod")}, "role": "OpenAIUser", "deletionPolicy": "Delete", "principals": principals});
        spec.as_object_mut()
            .unwrap()
            .extend(spec_extra.as_object().unwrap().clone());
        let object: OpenAIAccess = serde_json::from_value(json!({
            "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess",
            "metadata": {"name": name, "namespace": self.n(namespace)},
            "spec": spec
        }))
        .unwrap();
        self.env.create(&object).await;
    }

    async fn access(&self, namespace: &str, name: &str, principals: serde_json::Value) {
        self.access_with(namespace, name, principals, json!({}))
            .await;
    }

    async fn service_account(&self, namespace: &str, name: &str, client_id: &str) {
        let object: ServiceAccount = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": self.n(namespace), "annotations": {"azure.workload.identity/client-id": client_id}}
        }))
        .unwrap();
        self.env.create(&object).await;
    }

    fn accounts(&self) -> Api<OpenAIAccount> {
        Api::all(self.env.client.clone())
    }

    fn accesses(&self, namespace: &str) -> Api<OpenAIAccess> {
        Api::namespaced(self.env.client.clone(), &self.n(namespace))
    }

    async fn get_account(&self, name: &str) -> Option<OpenAIAccount> {
        self.accounts().get_opt(&self.n(name)).await.unwrap()
    }

    async fn get_access(&self, namespace: &str, name: &str) -> Option<OpenAIAccess> {
        self.accesses(namespace).get_opt(name).await.unwrap()
    }

    /// Whether the OpenAIAccount's status has a condition matching `check`.
    async fn account_condition(&self, name: &str, check: impl Fn(&Condition) -> bool) -> bool {
        self.get_account(name)
            .await
            .and_then(|a| a.status)
            .is_some_and(|s| s.conditions.iter().any(check))
    }

    async fn access_ready(&self, namespace: &str, name: &str) -> bool {
        self.get_access(namespace, name)
            .await
            .is_some_and(|a| ready(&a))
    }

    /// Read-modify-write of an OpenAIAccess, retried on a conflict with the controller's writes.
    async fn modify_access(&self, namespace: &str, name: &str, change: impl Fn(&mut OpenAIAccess)) {
        let api = self.accesses(namespace);
        modify(&api, name, change).await;
    }

    async fn modify_account(&self, name: &str, change: impl Fn(&mut OpenAIAccount)) {
        modify(&self.accounts(), &self.n(name), change).await;
    }

    /// The events about the object `kind`/`name` (a logical name for an OpenAIAccount).
    async fn events_about(&self, kind: &str, name: &str) -> Vec<Event> {
        let name = if kind == "OpenAIAccount" {
            self.n(name)
        } else {
            name.to_string()
        };
        Api::<Event>::all(self.env.client.clone())
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name.as_str())
                })
            })
            .collect()
    }

    async fn has_event(&self, kind: &str, name: &str, reason: &str) -> bool {
        self.events_about(kind, name)
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some(reason))
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
        self.accesses(namespace)
            .delete(name, &Default::default())
            .await
            .unwrap();
    }
}

async fn modify<K>(api: &Api<K>, name: &str, change: impl Fn(&mut K))
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for _ in 0..20 {
        let mut object = api.get(name).await.unwrap();
        change(&mut object);
        match api.replace(name, &PostParams::default(), &object).await {
            Ok(_) => return,
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(error) => panic!("replace {name}: {error}"),
        }
    }
    panic!("replace {name}: still conflicting after 20 attempts");
}

fn ready(access: &OpenAIAccess) -> bool {
    access.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == condition_types::READY && c.status == "True")
            && s.observed_generation == access.metadata.generation
    })
}

fn sorted(mut ids: Vec<&str>) -> Vec<String> {
    ids.sort();
    ids.into_iter().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_gets_its_assignments_and_becomes_ready() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.federate_chat_backend();
    h.account("prod", OAI_PROD, json!({})).await;
    h.service_account("team-chat", "chat-backend", CHAT_BACKEND_CLIENT)
        .await;
    h.access("team-chat", "chat", json!([
        {"user": "alice@contoso.com"},
        {"groupName": "ML Platform Team"},
        {"managedIdentity": format!("/subscriptions/{SUB}/resourceGroups/rg-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-summarizer")},
        {"serviceAccount": "chat-backend"},
        {"user": "bob@contoso.com"}
    ])).await;
    eventually("the access is Ready", async || {
        h.access_ready("team-chat", "chat").await
    })
    .await;
    assert_eq!(
        h.holders(),
        sorted(vec![ALICE, BOB, GROUP, SUMMARIZER, CHAT_BACKEND])
    );
    let access = h.get_access("team-chat", "chat").await.unwrap();
    let status = access.status.clone().unwrap();
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
    assert!(
        access
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"keyless.dev/cleanup".to_string())
    );
    let account = h.get_account("prod").await.unwrap().status.unwrap();
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
    eventually("creations are reported as events", async || {
        !h.events_about("OpenAIAccess", "chat").await.is_empty()
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principal_changes_add_before_removing_and_removed_principals_lose_their_grant() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}, {"objectId": SUMMARIZER, "principalType": "ServicePrincipal"}])).await;
    eventually("both granted", async || h.holders().len() == 3).await; // + bob's Bicep grant
    h.modify_access("team-chat", "chat", |a| {
        a.spec.principals = vec![
            serde_json::from_value(
                json!({"objectId": CHAT_BACKEND, "principalType": "ServicePrincipal"}),
            )
            .unwrap(),
        ];
    })
    .await;
    eventually(
        "alice and the summarizer are replaced by the chat backend",
        async || h.holders() == sorted(vec![BOB, CHAT_BACKEND]),
    )
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_grant_survives_one_of_its_declarers_and_deletion_removes_only_owned_grants() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
    h.access(
        "team-chat",
        "chat",
        json!([{"user": "alice@contoso.com"}, {"user": "bob@contoso.com"}]),
    )
    .await;
    h.access(
        "team-search",
        "search",
        json!([{"user": "alice@contoso.com"}]),
    )
    .await;
    eventually("both ready", async || {
        h.access_ready("team-chat", "chat").await && h.access_ready("team-search", "search").await
    })
    .await;
    h.delete_access("team-chat", "chat").await;
    eventually("the deleted object is gone", async || {
        h.get_access("team-chat", "chat").await.is_none()
    })
    .await;
    assert_eq!(
        h.holders(),
        sorted(vec![ALICE, BOB]),
        "alice is still declared; bob's grant was never ours"
    );
    h.delete_access("team-search", "search").await;
    eventually("the last declarer is gone", async || {
        h.get_access("team-search", "search").await.is_none()
    })
    .await;
    assert_eq!(h.holders(), sorted(vec![BOB]));
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_deleted_behind_keyless_back_is_repaired_at_resync() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}]))
        .await;
    eventually("granted", async || h.holders().contains(&ALICE.to_string())).await;
    let name = h
        .emulator
        .role_assignments()
        .into_iter()
        .find(|a| a.principal_id == ALICE)
        .unwrap()
        .name;
    h.emulator.delete_role_assignment(&name).unwrap();
    assert!(!h.holders().contains(&ALICE.to_string()));
    eventually("repaired", async || {
        h.holders().contains(&ALICE.to_string())
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_the_account_does_not_allow_gets_nothing_and_is_told_why() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
    h.access(
        "team-other",
        "sneaky",
        json!([{"user": "alice@contoso.com"}]),
    )
    .await;
    eventually("status written", async || {
        h.get_access("team-other", "sneaky")
            .await
            .and_then(|a| a.status)
            .is_some_and(|s| !s.principals.is_empty())
    })
    .await;
    let status = h
        .get_access("team-other", "sneaky")
        .await
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
    eventually("the denial is an event", async || {
        h.has_event("OpenAIAccess", "sneaky", "AccessDenied").await
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tightening_the_account_policy_revokes_owned_grants() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}]))
        .await;
    h.access(
        "team-search",
        "search",
        json!([{"objectId": SUMMARIZER, "principalType": "ServicePrincipal"}]),
    )
    .await;
    eventually("granted", async || h.holders().len() == 3).await;
    let search = h.n("team-search");
    h.modify_account("prod", |a| {
        a.spec.allowed_namespaces.as_mut().unwrap().names = vec![search.clone()];
    })
    .await;
    eventually("team-chat's grant is revoked", async || {
        h.holders() == sorted(vec![BOB, SUMMARIZER])
    })
    .await;
    // The status is written after the revocation, so it is awaited rather than read once.
    eventually("team-chat's status says why", async || {
        h.get_access("team-chat", "chat")
            .await
            .and_then(|a| a.status)
            .is_some_and(|s| {
                s.principals.first().and_then(|p| p.reason.as_deref())
                    == Some("NamespaceNotAllowed")
            })
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_down_during_a_deletion_holds_the_finalizer_until_the_grant_is_gone() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}]))
        .await;
    eventually("granted", async || {
        h.access_ready("team-chat", "chat").await
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
        h.get_access("team-chat", "chat").await.is_some(),
        "the finalizer holds while ARM is down"
    );
    assert!(h.holders().contains(&ALICE.to_string()));
    h.emulator.clear_faults();
    eventually("deleted once ARM is back", async || {
        h.get_access("team-chat", "chat").await.is_none()
    })
    .await;
    assert_eq!(h.holders(), sorted(vec![BOB]));
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_converges_without_duplicates_or_leaks() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
    h.access(
        "team-chat",
        "chat",
        json!([{"user": "alice@contoso.com"}, {"groupName": "ML Platform Team"}]),
    )
    .await;
    eventually("first grant made", async || !h.holders().is_empty()).await;
    h.stop_controller().await;
    h.access(
        "team-search",
        "search",
        json!([{"objectId": SUMMARIZER, "principalType": "ServicePrincipal"}]),
    )
    .await;
    h.start_controller("cluster-1");
    eventually("converged", async || {
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
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.federate_chat_backend();
    h.account("prod", OAI_PROD, json!({})).await;
    for i in 0..8 {
        h.access("team-chat", &format!("app-{i}"), json!([{"objectId": format!("00000000-0000-0000-0000-0000000000{i:02}"), "principalType": "ServicePrincipal"}])).await;
    }
    h.service_account("team-chat", "chat-backend", CHAT_BACKEND_CLIENT)
        .await;
    h.access("team-chat", "named", json!([{"user": "alice@contoso.com"}, {"groupName": "ML Platform Team"}, {"managedIdentity": SUMMARIZER_ID}, {"serviceAccount": "chat-backend"}])).await;
    eventually("all ready", async || {
        for i in 0..8 {
            if !h.access_ready("team-chat", &format!("app-{i}")).await {
                return false;
            }
        }
        h.access_ready("team-chat", "named").await
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

// Found by the fault layer's counts on the real server: every resync server-side applied each
// access's status again (9 accesses, 2 resyncs: 18 PATCHes of openaiaccesses/status), unchanged.
// The steady-state write budget is issue 18's; this test is its acceptance check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_resync_sends_no_kubernetes_write() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
    for i in 0..3 {
        h.access("team-chat", &format!("app-{i}"), json!([{"objectId": format!("00000000-0000-0000-0000-0000000000{i:02}"), "principalType": "ServicePrincipal"}])).await;
    }
    eventually("all ready", async || {
        for i in 0..3 {
            if !h.access_ready("team-chat", &format!("app-{i}")).await {
                return false;
            }
        }
        true
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.faults.reset_counts();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // Counted at the client, not inferred from resourceVersions: the apiserver drops no-op patches
    // without a new version, so only the request count proves a quiet pass writes nothing.
    let writes: u64 = [Verb::Create, Verb::Update, Verb::Patch, Verb::Delete]
        .into_iter()
        .map(|verb| h.faults.count_verb(verb))
        .sum();
    assert!(
        h.emulator.requests_of("RoleAssignments_ListForScope") > 0,
        "the controller was resyncing"
    );
    assert_eq!(
        writes,
        0,
        "a quiet resync sends no Kubernetes write: {:?}",
        h.faults.counts()
    );
    h.stop_controller().await;
}

/// The controller's reconciles so far, from its /metrics (every result).
/// Waits until the controller is quiet — for 1.5 s no reconcile finished and no Azure request
/// was sent (a slow pass in flight sends requests before it finishes) — and returns the
/// reconciles counted so far.
async fn quiet(h: &Harness, port: u16) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    let azure_requests = || h.emulator.request_counts().values().sum::<u64>();
    let last = AtomicU64::new(reconciles_total(port).await);
    let last_azure = AtomicU64::new(azure_requests());
    eventually("no reconcile and no Azure request for 1.5 s", async || {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = reconciles_total(port).await;
        let azure_now = azure_requests();
        let quiet_reconciles = last.swap(now, Ordering::Relaxed) == now;
        let quiet_azure = last_azure.swap(azure_now, Ordering::Relaxed) == azure_now;
        quiet_reconciles && quiet_azure
    })
    .await;
    last.load(Ordering::Relaxed)
}

// keyless writes an object's status (and an account's) at the end of a pass that changed
// something. That write is not a reason for another pass: it used to come back as a watch event
// and cost each account an echo pass — an ARM LIST — after every writing pass (the controller
// benchmark's small size measured 1.1 x the request floor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_that_writes_status_causes_no_echo_pass() {
    let Some(mut h) = Harness::new().await else {
        return;
    };
    let port = free_port();
    let mut config = controller_config("cluster-1");
    // No resync inside the test: every pass counted is one an event caused.
    config.resync_interval = Duration::from_secs(3600);
    config.http_addr = Some(format!("127.0.0.1:{port}").parse().unwrap());
    h.start_controller_with(config);
    h.account("prod", OAI_PROD, json!({})).await;
    h.access(
        "team-chat",
        "app",
        json!([{"objectId": ALICE, "principalType": "User"}]),
    )
    .await;
    eventually("ready", async || h.access_ready("team-chat", "app").await).await;
    let reconciles_before = quiet(&h, port).await;
    h.emulator.reset_request_counts();

    // One spec change: one pass, which grants bob and writes the status (and the account's).
    h.modify_access("team-chat", "app", |access| {
        access.spec.principals = serde_json::from_value(json!([
            {"objectId": ALICE, "principalType": "User"},
            {"objectId": BOB, "principalType": "User"}
        ]))
        .unwrap();
    })
    .await;
    eventually("bob granted and the status written", async || {
        h.access_ready("team-chat", "app").await && h.holders().contains(&BOB.to_string())
    })
    .await;
    let reconciles = quiet(&h, port).await - reconciles_before;
    let lists = h.emulator.requests_of("RoleAssignments_ListForScope");
    assert_eq!(
        (reconciles, lists),
        (1, 1),
        "one spec change costs one pass and one LIST; the pass's own status writes cost none"
    );
    h.stop_controller().await;
}

async fn reconciles_total(port: u16) -> u64 {
    let scrape = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    scrape
        .lines()
        .filter(|l| l.starts_with("keyless_reconciles_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn merge_patch<K>(api: &Api<K>, name: &str, patch: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(patch),
    )
    .await
    .unwrap_or_else(|e| panic!("patch {name}: {e}"));
}

// Issue 18: a cluster's churn costs nothing unless it changes what keyless reads. An account that
// allows namespaces by label used to be requeued (one ARM LIST each) by every event of every
// Namespace, and every ServiceAccount event scanned every OpenAIAccess.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_namespace_and_service_account_churn_costs_no_arm_request() {
    let Some(mut h) = Harness::new().await else {
        return;
    };
    let port = free_port();
    let mut config = controller_config("cluster-1");
    // No resync inside the test: every pass counted is one an event caused.
    config.resync_interval = Duration::from_secs(3600);
    config.http_addr = Some(format!("127.0.0.1:{port}").parse().unwrap());
    h.start_controller_with(config);
    h.federate_chat_backend();
    h.account(
        "prod",
        OAI_PROD,
        json!({"allowedNamespaces": {"names": [h.n("team-chat")], "selector": {"matchLabels": {"tier": "prod"}}}}),
    )
    .await;
    h.service_account("team-chat", "chat-backend", CHAT_BACKEND_CLIENT)
        .await;
    h.access(
        "team-chat",
        "app",
        json!([{"serviceAccount": "chat-backend"}]),
    )
    .await;
    let unrelated: Vec<String> = {
        let mut names = Vec::new();
        for i in 0..10 {
            names.push(h.env.namespace(&format!("churn-{i}")).await);
        }
        names
    };
    for i in 0..10 {
        h.service_account("team-chat", &format!("other-{i}"), CHAT_BACKEND_CLIENT)
            .await;
    }
    eventually("ready", async || h.access_ready("team-chat", "app").await).await;
    // Quiet first: a pass retried under load (a conflict, a slow answer) must not be counted as
    // caused by the churn.
    let reconciles_before = quiet(&h, port).await;
    h.emulator.reset_request_counts();

    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(h.env.client.clone());
    let service_accounts: Api<ServiceAccount> =
        Api::namespaced(h.env.client.clone(), &h.n("team-chat"));
    // 200 label changes of namespaces without OpenAIAccess objects.
    for round in 0..20 {
        for name in &unrelated {
            merge_patch(
                &namespaces,
                name,
                json!({"metadata": {"labels": {"churn": round.to_string()}}}),
            )
            .await;
        }
    }
    // 200 ServiceAccount updates: unnamed ones, and the named one's other annotations.
    for round in 0..10 {
        for i in 0..10 {
            merge_patch(
                &service_accounts,
                &format!("other-{i}"),
                json!({"metadata": {"annotations": {"churn": round.to_string()}}}),
            )
            .await;
        }
        for _ in 0..10 {
            let value = uuid::Uuid::new_v4().to_string();
            merge_patch(
                &service_accounts,
                "chat-backend",
                json!({"metadata": {"annotations": {"churn": value}}}),
            )
            .await;
        }
    }
    // 50 changes of the related namespace that are not its labels.
    for round in 0..50 {
        merge_patch(
            &namespaces,
            &h.n("team-chat"),
            json!({"metadata": {"annotations": {"churn": round.to_string()}}}),
        )
        .await;
    }
    // The watch events arrive within milliseconds on loopback; the settle time is generous.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let arm = h.emulator.request_counts();
    let arm_total: u64 = arm.values().sum();
    let churn_reconciles = reconciles_total(port).await - reconciles_before;
    eprintln!("churn: {arm_total} ARM requests {arm:?}, {churn_reconciles} reconciles");
    // Before issue 18 this churn cost 173 LISTs and 173 reconciles. Run alone it costs 0 and 0;
    // in the full, loaded test binary one pass (1 LIST) was seen in about one run of four, from a
    // trigger not yet found: the bound is the issue's (at most one reconcile per affected account).
    let lists = h.emulator.requests_of("RoleAssignments_ListForScope");
    assert_eq!(
        arm_total, lists,
        "unrelated churn sends no ARM request but a pass's LIST: {arm:?}"
    );
    assert!(
        churn_reconciles <= 1 && lists <= 1,
        "unrelated churn: at most one pass of the one account ({churn_reconciles} reconciles, {lists} LISTs)"
    );

    // The one change that matters still gets through: the related namespace's labels.
    merge_patch(
        &namespaces,
        &h.n("team-chat"),
        json!({"metadata": {"labels": {"tier": "prod"}}}),
    )
    .await;
    eventually("the label change reconciled the account", async || {
        h.emulator.requests_of("RoleAssignments_ListForScope") > lists
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let relevant = reconciles_total(port).await - reconciles_before - churn_reconciles;
    eprintln!(
        "one label change: {relevant} reconciles, {} LISTs",
        h.emulator.requests_of("RoleAssignments_ListForScope") - lists
    );
    assert_eq!(relevant, 1, "one reconcile of the one affected account");
    h.stop_controller().await;
}

// Issue 18: the export is applied when its data changes, not at every resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_export_is_not_applied_again_and_a_changed_one_is() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.federate_chat_backend();
    h.account("prod", OAI_PROD, json!({})).await;
    h.service_account("team-chat", "chat-backend", CHAT_BACKEND_CLIENT)
        .await;
    h.access_with(
        "team-chat",
        "chat",
        json!([{"serviceAccount": "chat-backend"}]),
        json!({"exportTo": {"configMapName": "openai"}}),
    )
    .await;
    let config_maps: Api<ConfigMap> = Api::namespaced(h.env.client.clone(), &h.n("team-chat"));
    eventually("the ConfigMap exists", async || {
        config_maps.get_opt("openai").await.unwrap().is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.faults.reset_counts();
    h.emulator.reset_request_counts();
    // 700 ms resync: about three passes.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let lists = h.emulator.requests_of("RoleAssignments_ListForScope");
    let applies = h.faults.count(Verb::Patch, "configmaps");
    eprintln!("quiet: {lists} LISTs, {applies} ConfigMap applies");
    assert!(lists >= 2, "the controller was resyncing: {lists} LISTs");
    assert_eq!(applies, 0, "an unchanged export is not applied again");

    let other_client = "0f0f0f0f-1111-2222-3333-444444444444";
    let service_accounts: Api<ServiceAccount> =
        Api::namespaced(h.env.client.clone(), &h.n("team-chat"));
    merge_patch(
        &service_accounts,
        "chat-backend",
        json!({"metadata": {"annotations": {"azure.workload.identity/client-id": other_client}}}),
    )
    .await;
    eventually("the ConfigMap has the new client id", async || {
        config_maps
            .get("openai")
            .await
            .unwrap()
            .data
            .is_some_and(|d| {
                d.get("AZURE_OPENAI_CLIENT_ID").map(String::as_str) == Some(other_client)
            })
    })
    .await;
    assert!(h.faults.count(Verb::Patch, "configmaps") >= 1);
    h.stop_controller().await;
}

// Issue 18: a deleted account's series go with it, even when its cleanup never completed (its
// finalizer removed by hand while ARM was down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_accounts_metrics_are_forgotten() {
    let Some(mut h) = Harness::new().await else {
        return;
    };
    let port = free_port();
    let mut config = controller_config("cluster-1");
    config.http_addr = Some(format!("127.0.0.1:{port}").parse().unwrap());
    h.start_controller_with(config);
    h.account("prod", OAI_PROD, json!({})).await;
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}]))
        .await;
    let scrape = async || {
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    eventually("the grant is counted", async || {
        scrape()
            .await
            .contains("keyless_grants{state=\"Granted\"} 1")
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
    h.accounts()
        .delete(&h.n("prod"), &Default::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        h.get_account("prod").await.is_some(),
        "the finalizer holds while ARM is down"
    );
    merge_patch(
        &h.accounts(),
        &h.n("prod"),
        json!({"metadata": {"finalizers": null}}),
    )
    .await;
    eventually("the account is gone", async || {
        h.get_account("prod").await.is_none()
    })
    .await;
    eventually("its grants are no longer counted", async || {
        scrape()
            .await
            .contains("keyless_grants{state=\"Granted\"} 0")
    })
    .await;
    h.emulator.clear_faults();
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_to_an_unregistered_account_says_so() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}]))
        .await;
    eventually("AccountNotFound reported", async || {
        h.get_access("team-chat", "chat")
            .await
            .and_then(|a| a.status)
            .is_some_and(|s| s.conditions.iter().any(|c| c.reason == "AccountNotFound"))
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_with_one_resource_id_the_newer_does_nothing() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
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
    )
    .await;
    eventually("the newer reports Conflict", async || {
        h.account_condition("prod-again", |c| {
            c.type_ == "Conflict" && c.status == "True"
        })
        .await
    })
    .await;
    eventually("the older has a status", async || {
        h.get_account("prod")
            .await
            .is_some_and(|a| a.status.is_some())
    })
    .await;
    assert!(
        !h.account_condition("prod", |c| c.type_ == "Conflict").await,
        "the older one is not in conflict"
    );
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_access_is_revoked_at_its_expiry_time() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3);
    h.access_with(
        "team-chat",
        "trial",
        json!([{"user": "alice@contoso.com"}]),
        json!({"deletionPolicy": "Retain", "expiresAt": expires.to_string()}),
    )
    .await;
    eventually("granted", async || h.holders().contains(&ALICE.to_string())).await;
    eventually("revoked after expiry, even under Retain", async || {
        !h.holders().contains(&ALICE.to_string())
    })
    .await;
    // The status is written after the revocation, not with it.
    eventually("the status says Expired", async || {
        principal_state(&h, "team-chat", "trial")
            .await
            .is_some_and(|(_, reason)| reason == "Expired")
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owned_assignment_nothing_declares_is_swept_but_another_instances_is_not() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
    let put = |principal: &str, instance: &str| {
        h.emulator
            .put_role_assignment(keyless_emulator::state::AdminRoleAssignment {
                name: None,
                scope: OAI_PROD.into(),
                role_definition_id: OPENAI_USER.into(),
                principal_id: principal.into(),
                principal_type: Some("ServicePrincipal".into()),
                description: Some(format!(
                    "keyless:v1 instance={instance} declared-by=gone/forced"
                )),
                condition: None,
                created_by: None,
            })
            .unwrap()
    };
    put(SUMMARIZER, "cluster-1");
    put(CHAT_BACKEND, "cluster-2");
    eventually("the orphan of this instance is swept", async || {
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
    let Some(h) = Harness::new().await else {
        return;
    };
    // The binary's control plane has the CRDs; the API answers this client as a server without
    // them would: 404 for the OpenAIAccount list.
    h.faults.inject(
        Fault::on(Verb::List)
            .resource("openaiaccounts")
            .respond(404),
    );
    let error = controller::run(
        h.env.controller_client(&h.faults),
        azure_clients(&h.emulator),
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

/// The one test left on the stand-in: the real server's schema validation refuses the malformed
/// object this test needs stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_access_is_reported_and_does_not_stall_the_others() {
    use support::apiserver::ApiServer;
    let emulator = emulator().await;
    let server = ApiServer::builder()
        .crds(keyless::api::crds())
        .namespace("team-chat")
        .namespace("team-search")
        .issuer(ISSUER)
        .build();
    let account: OpenAIAccount = serde_json::from_value(json!({"apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccount", "metadata": {"name": "prod"}, "spec": {"resourceId": OAI_PROD, "allowedNamespaces": {"names": ["team-chat", "team-search"]}}})).unwrap();
    server.seed(&account);
    // Stored as given (as an apiserver without the CRD's validation would): a role keyless does not know.
    server.seed_value(json!({
        "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess",
        "metadata": {"name": "broken", "namespace": "team-chat"},
        "spec": {"accountRef": {"name": "prod"}, "role": "Owner", "principals": [{"user": "alice@contoso.com"}]}
    }));
    let fine: OpenAIAccess = serde_json::from_value(json!({
        "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess",
        "metadata": {"name": "fine", "namespace": "team-search", "generation": 1},
        "spec": {"accountRef": {"name": "prod"}, "role": "OpenAIUser", "deletionPolicy": "Delete", "principals": [{"user": "alice@contoso.com"}]}
    }))
    .unwrap();
    server.seed(&fine);
    let running = RunningController::spawn(
        server.client(),
        azure_clients(&emulator),
        controller_config("cluster-1"),
    );
    eventually("the good one is ready", async || {
        server
            .get::<OpenAIAccess>(Some("team-search"), "fine")
            .is_some_and(|a| ready(&a))
    })
    .await;
    eventually("the broken one is reported", async || {
        let value = server
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
    running.stop().await.unwrap();
}

// ---- Part 2: federation, posture, export, operations ----

async fn principal_state(h: &Harness, namespace: &str, name: &str) -> Option<(GrantState, String)> {
    let status = h.get_access(namespace, name).await?.status?;
    let principal = status.principals.first()?;
    Some((principal.state?, principal.reason.clone()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_without_a_federated_credential_is_denied_until_one_is_added() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
    h.service_account("team-chat", "summarizer", SUMMARIZER_CLIENT)
        .await;
    h.access(
        "team-chat",
        "summaries",
        json!([{"serviceAccount": "summarizer"}]),
    )
    .await;
    eventually("denied for FederationMissing", async || {
        principal_state(&h, "team-chat", "summaries").await
            == Some((GrantState::Denied, "FederationMissing".into()))
    })
    .await;
    assert!(!h.holders().contains(&SUMMARIZER.to_string()));
    h.federate(SUMMARIZER_ID, "team-chat", "summarizer");
    eventually("granted once federated", async || {
        h.holders().contains(&SUMMARIZER.to_string())
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_federated_with_another_namespaces_service_account_is_reported() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
    // id-chat-backend is federated with team-chat/chat-backend (the seed); team-search borrows it.
    h.service_account("team-search", "borrower", CHAT_BACKEND_CLIENT)
        .await;
    h.access(
        "team-search",
        "borrow",
        json!([{"serviceAccount": "borrower"}]),
    )
    .await;
    eventually("denied", async || {
        principal_state(&h, "team-search", "borrow")
            .await
            .is_some_and(|(s, _)| s == GrantState::Denied)
    })
    .await;
    eventually("the shared identity is a finding", async || {
        h.events_about("OpenAIAccess", "borrow")
            .await
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
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({"requireFederation": false}))
        .await;
    h.service_account("team-chat", "summarizer", SUMMARIZER_CLIENT)
        .await;
    h.access(
        "team-chat",
        "summaries",
        json!([{"serviceAccount": "summarizer"}]),
    )
    .await;
    eventually("granted", async || {
        h.holders().contains(&SUMMARIZER.to_string())
    })
    .await;
    eventually("warned", async || {
        h.has_event("OpenAIAccess", "summaries", "FederationFinding")
            .await
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_that_still_accepts_keys_is_not_keyless_only() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("dev", AIS_DEV, json!({})).await;
    eventually("posture reported", async || {
        h.account_condition("dev", |c| c.type_ == "KeylessOnly" && c.status == "False")
            .await
    })
    .await;
    let status = h.get_account("dev").await.unwrap().status.unwrap();
    assert_eq!(status.kind.as_deref(), Some("AIServices"));
    assert_eq!(status.local_auth_disabled, Some(false));
    eventually("a warning event", async || {
        h.has_event("OpenAIAccount", "dev", "LocalAuthEnabled")
            .await
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_without_a_custom_subdomain_says_tokens_cannot_work() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("legacy", "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-ai-prod/providers/Microsoft.CognitiveServices/accounts/oai-legacy", json!({})).await;
    eventually("TokenAuthSupported=False", async || {
        h.account_condition("legacy", |c| {
            c.type_ == "TokenAuthSupported" && c.status == "False"
        })
        .await
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporting_a_managed_identitys_client_id_reads_the_identity_no_more_than_resolving_it() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
    h.access_with(
        "team-chat",
        "summarizer",
        json!([{"managedIdentity": SUMMARIZER_ID}]),
        json!({"exportTo": {"configMapName": "openai"}}),
    )
    .await;
    let config_maps: Api<ConfigMap> = Api::namespaced(h.env.client.clone(), &h.n("team-chat"));
    eventually("the ConfigMap names the identity's client id", async || {
        config_maps
            .get_opt("openai")
            .await
            .unwrap()
            .and_then(|c| c.data)
            .is_some_and(|d| {
                d.get("AZURE_OPENAI_CLIENT_ID").map(String::as_str) == Some(SUMMARIZER_CLIENT)
            })
    })
    .await;
    // Two more whole passes (resyncs), each of which exports again.
    let lists = h.emulator.requests_of("RoleAssignments_ListForScope");
    eventually("two more passes", async || {
        h.emulator.requests_of("RoleAssignments_ListForScope") >= lists + 2
    })
    .await;
    assert_eq!(
        h.emulator.requests_of("UserAssignedIdentities_Get"),
        1,
        "resolution read it once; export reads what resolution read"
    );
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_the_endpoint_and_the_single_workload_client_id() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.federate_chat_backend();
    h.account("prod", OAI_PROD, json!({})).await;
    h.service_account("team-chat", "chat-backend", CHAT_BACKEND_CLIENT)
        .await;
    h.access_with(
        "team-chat",
        "chat",
        json!([{"serviceAccount": "chat-backend"}, {"user": "alice@contoso.com"}]),
        json!({"exportTo": {"configMapName": "openai"}}),
    )
    .await;
    let config_maps: Api<ConfigMap> = Api::namespaced(h.env.client.clone(), &h.n("team-chat"));
    eventually("the ConfigMap exists", async || {
        config_maps.get_opt("openai").await.unwrap().is_some()
    })
    .await;
    let config_map = config_maps.get("openai").await.unwrap();
    let data = config_map.data.unwrap();
    assert_eq!(
        data["AZURE_OPENAI_ENDPOINT"],
        "https://oai-prod.openai.azure.com/"
    );
    assert_eq!(data["AZURE_OPENAI_CLIENT_ID"], CHAT_BACKEND_CLIENT);
    let owners = config_map.metadata.owner_references.unwrap();
    let access = h.get_access("team-chat", "chat").await.unwrap();
    assert_eq!(
        (
            owners[0].kind.as_str(),
            owners[0].name.as_str(),
            Some(&owners[0].uid)
        ),
        ("OpenAIAccess", "chat", access.metadata.uid.as_ref())
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
    let Some(h) = Harness::new().await else {
        return;
    };
    let lease_namespace = h.env.namespace("keyless-system").await;
    let mut replicas = Vec::new();
    let ports = [free_port(), free_port()];
    for (replica, port) in ports.iter().enumerate() {
        let mut config = controller_config("cluster-1");
        config.http_addr = Some(format!("127.0.0.1:{port}").parse().unwrap());
        config.leader = Some(keyless::ops::leader::LeaseConfig {
            name: "keyless".into(),
            namespace: lease_namespace.clone(),
            holder_id: format!("replica-{replica}"),
            lease_duration: Duration::from_secs(3),
            renew_interval: Duration::from_millis(500),
            retry_interval: Duration::from_millis(200),
        });
        replicas.push(h.spawn_controller(config));
    }
    h.account("prod", OAI_PROD, json!({})).await;
    for i in 0..6 {
        h.access_with(
            "team-chat",
            &format!("app-{i}"),
            json!([{"objectId": format!("00000000-0000-0000-0000-0000000000{i:02}"), "principalType": "ServicePrincipal"}]),
            json!({}),
        )
        .await;
    }
    let granted = || {
        h.emulator
            .role_assignments()
            .iter()
            .filter(|a| {
                a.scope.eq_ignore_ascii_case(OAI_PROD) && a.principal_id.starts_with("00000000-")
            })
            .count()
    };
    eventually("six grants", async || granted() == 6).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        h.emulator.request_count("RoleAssignments_Create", 201),
        6,
        "each grant written once, by the leader only"
    );
    assert_eq!(h.emulator.requests_of("RoleAssignments_Create"), 6);
    let lease = Api::<Lease>::namespaced(h.env.client.clone(), &lease_namespace)
        .get("keyless")
        .await
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
        replica.stop().await.unwrap();
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
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}]))
        .await;
    eventually("granted", async || {
        h.access_ready("team-chat", "chat").await
    })
    .await;
    h.emulator.delete_account(OAI_PROD).unwrap();
    eventually("the account reports it is gone", async || {
        h.account_condition("prod", |c| c.reason == "AzureAccountNotFound")
            .await
    })
    .await;
    h.delete_access("team-chat", "chat").await;
    eventually("nothing left to clean: the finalizer goes", async || {
        h.get_access("team-chat", "chat").await.is_none()
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_near_arms_assignment_limit_is_warned_about() {
    let Some(mut h) = Harness::new().await else {
        return;
    };
    for i in 0..3200u32 {
        h.emulator
            .put_role_assignment(keyless_emulator::state::AdminRoleAssignment {
                name: None,
                scope: OAI_PROD.into(),
                role_definition_id: OPENAI_USER.into(),
                principal_id: format!("10000000-0000-0000-0000-{i:012}"),
                principal_type: Some("ServicePrincipal".into()),
                description: None,
                condition: None,
                created_by: None,
            })
            .unwrap();
    }
    let mut config = controller_config("cluster-1");
    config.assignment_count_interval = Some(Duration::from_millis(300));
    h.account("prod", OAI_PROD, json!({})).await;
    h.start_controller_with(config);
    let warnings = async || {
        h.events_about("OpenAIAccount", "prod")
            .await
            .iter()
            .filter(|e| e.reason.as_deref() == Some("RoleAssignmentLimitNear"))
            .count()
    };
    eventually("a warning at 80 % of 4,000", async || warnings().await > 0).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        warnings().await,
        1,
        "one warning per crossing, not one per count"
    );
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistering_an_account_revokes_its_grants_and_its_accesses_say_so() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
    h.access(
        "team-chat",
        "chat",
        json!([{"user": "alice@contoso.com"}, {"user": "bob@contoso.com"}]),
    )
    .await;
    eventually("granted", async || {
        h.access_ready("team-chat", "chat").await
    })
    .await;
    h.accounts()
        .delete(&h.n("prod"), &Default::default())
        .await
        .unwrap();
    eventually(
        "the account is gone once its grants are revoked",
        async || h.get_account("prod").await.is_none(),
    )
    .await;
    assert_eq!(
        h.holders(),
        sorted(vec![BOB]),
        "deletionPolicy Delete revokes keyless's grants, never bob's Bicep one"
    );
    eventually("the access reports AccountNotFound", async || {
        h.get_access("team-chat", "chat")
            .await
            .and_then(|a| a.status)
            .is_some_and(|s| s.conditions.iter().any(|c| c.reason == "AccountNotFound"))
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistering_an_account_with_retain_leaves_its_grants_released() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({"deletionPolicy": "Retain"}))
        .await;
    h.access("team-chat", "chat", json!([{"user": "alice@contoso.com"}]))
        .await;
    eventually("granted", async || h.holders().contains(&ALICE.to_string())).await;
    h.accounts()
        .delete(&h.n("prod"), &Default::default())
        .await
        .unwrap();
    eventually("the account is gone", async || {
        h.get_account("prod").await.is_none()
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
    let Some(env) = TestEnv::start().await else {
        return;
    };
    assert_eq!(
        controller::discover_issuer(&env.client).await.as_deref(),
        Some(ISSUER),
        "up.sh ran with SA_ISSUER set to the emulator seed's issuer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_never_sees_another_tests_objects() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    let Some(other) = Harness::new().await else {
        return;
    };
    // Another test's account and access on the same control plane, never started.
    other.account("prod", OAI_PROD, json!({})).await;
    other
        .access("team-chat", "chat", json!([{"user": "alice@contoso.com"}]))
        .await;
    h.account("prod", OAI_PROD, json!({})).await;
    h.access(
        "team-chat",
        "mine",
        json!([{"objectId": SUMMARIZER, "principalType": "ServicePrincipal"}]),
    )
    .await;
    eventually("mine is ready", async || {
        h.access_ready("team-chat", "mine").await
    })
    .await;
    assert_eq!(h.holders(), sorted(vec![BOB, SUMMARIZER]));
    assert!(
        other
            .get_access("team-chat", "chat")
            .await
            .unwrap()
            .status
            .is_none(),
        "the other test's access was never reconciled by this controller"
    );
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_runs_as_the_charts_service_account_without_a_403() {
    let Some(helm) = support::chart_rbac::helm() else {
        return;
    };
    let Some(mut h) = Harness::new().await else {
        return;
    };
    // The chart's defaults: leader election on, ConfigMap export off.
    let rbac = support::chart_rbac::install(&h.env, &helm, &[]).await;
    assert!(
        rbac.applied
            .iter()
            .any(|a| a.starts_with("ClusterRoleBinding/"))
            && rbac.applied.iter().any(|a| a.starts_with("RoleBinding/")),
        "{:?}",
        rbac.applied
    );
    let client = rbac.client(&h.env, &h.faults).await;
    assert_eq!(
        controller::discover_issuer(&client).await.as_deref(),
        Some(ISSUER),
        "the chart lets keyless read the issuer"
    );
    // The client really is the ServiceAccount: what the chart does not grant is forbidden.
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::all(client.clone())
        .list(&Default::default())
        .await;
    assert!(
        matches!(secrets, Err(kube::Error::Api(ref s)) if s.code == 403),
        "{secrets:?}"
    );
    h.faults.reset_counts();
    let mut config = controller_config("cluster-1");
    config.enable_configmap_export = false;
    config.assignment_count_interval = Some(Duration::from_millis(500));
    config.leader = Some(keyless::ops::leader::LeaseConfig {
        name: rbac.lease_name.clone(),
        namespace: rbac.namespace.clone(),
        holder_id: "keyless-0".into(),
        lease_duration: Duration::from_secs(3),
        renew_interval: Duration::from_millis(500),
        retry_interval: Duration::from_millis(200),
    });
    h.running = Some(RunningController::spawn(
        client,
        azure_clients(&h.emulator),
        config,
    ));
    h.federate_chat_backend();
    h.account("prod", OAI_PROD, json!({})).await;
    h.service_account("team-chat", "chat-backend", CHAT_BACKEND_CLIENT)
        .await;
    h.access(
        "team-chat",
        "chat",
        json!([{"user": "alice@contoso.com"}, {"serviceAccount": "chat-backend"}]),
    )
    .await;
    eventually("the access is Ready", async || {
        h.access_ready("team-chat", "chat").await
    })
    .await;
    eventually("an event was recorded", async || {
        !h.events_about("OpenAIAccess", "chat").await.is_empty()
    })
    .await;
    h.delete_access("team-chat", "chat").await;
    eventually("the finalizer is removed", async || {
        h.get_access("team-chat", "chat").await.is_none()
    })
    .await;
    h.stop_controller().await;
    assert_eq!(
        h.faults.answers_with(403),
        0,
        "forbidden: {:?}",
        h.faults.answered_with(403)
    );
    for (verb, resource) in [
        (Verb::Watch, "openaiaccounts"),
        (Verb::Watch, "openaiaccesses"),
        (Verb::Patch, "openaiaccesses/status"),
        (Verb::Create, "events"),
        (Verb::Get, "leases"),
    ] {
        assert!(
            h.faults.count(verb, resource) > 0,
            "the test exercised {verb:?} {resource}: {:?}",
            h.faults.counts()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_status_says_who_can_call_it_and_why() {
    // The report's seed: one assignment of each origin on oai-prod and above it (see
    // tests/fixtures/report/seed.yaml), plus Bob's Bicep grant, which the access below adopts.
    let Some(env) = TestEnv::start().await else {
        return;
    };
    for namespace in ["team-chat", "team-search", "team-other"] {
        env.namespace(namespace).await;
    }
    let seed =
        keyless_emulator::Seed::from_file(std::path::Path::new("tests/fixtures/report/seed.yaml"))
            .unwrap();
    let mut h = Harness {
        env,
        emulator: keyless_emulator::Emulator::start(keyless_emulator::EmulatorConfig::new(seed))
            .await
            .unwrap(),
        faults: KubeFaults::new(),
        running: None,
    };
    h.start_controller("cluster-1");
    h.account("prod", OAI_PROD, json!({})).await;
    h.access(
        "team-chat",
        "chat",
        json!([{"user": "alice@contoso.com"}, {"user": "bob@contoso.com"}]),
    )
    .await;
    let id = |n: u8| format!("aaaaaaaa-0000-4000-8000-0000000000{n:02x}");
    let expected = keyless::api::AccountAccess {
        managed: 1,        // Alice, granted by this instance
        adopted: 1,        // Bob's Bicep guid() grant
        released: 1,       // keyless:released
        other_instance: 2, // other-cluster, and keyless-quickstart (not this instance)
        foreign: 2,        // made in the portal; the custom role with OpenAI data actions
        inherited: 3,      // subscription, resource group, Contributor on the resource group
        key_readers: 2,    // Cognitive Services User and Contributor can list keys
        unknown_roles: 0,
        foreign_principals: vec![id(1), id(5)],
        foreign_principals_omitted: 0,
        inherited_principals: vec![id(3), id(4), id(7)],
        inherited_principals_omitted: 0,
    };
    let mut last = None;
    let seen = async {
        for _ in 0..(EVENTUALLY_WITHIN.as_millis() / 250) {
            last = h
                .get_account("prod")
                .await
                .and_then(|a| a.status)
                .and_then(|s| s.access);
            if last.as_ref() == Some(&expected) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    }
    .await;
    assert!(seen, "status.access: {last:#?}");

    // `keyless report --kubeconfig` reads the same from the cluster: the access's status names
    // the adopted grant and declares Alice's.
    let report = keyless::report::command::report_from_cluster(
        &h.env.cluster.kubeconfig_path().to_path_buf(),
        &azure_clients(&h.emulator),
        &keyless::plan::InstanceId::new("cluster-1").unwrap(),
        true,
    )
    .await
    .unwrap();
    let chat = format!("{}/chat", h.n("team-chat"));
    let row = |principal: &str| {
        report
            .rows
            .iter()
            .find(|r| r.account == h.n("prod") && r.principal_id == principal)
            .unwrap_or_else(|| panic!("no row for {principal}: {report:#?}"))
    };
    assert_eq!(row(ALICE).origin, "managed");
    assert_eq!(row(ALICE).declared_by, vec![chat.clone()]);
    assert_eq!(row(ALICE).display_name.as_deref(), Some("Alice Martin"));
    assert_eq!(row(BOB).origin, "adopted");
    assert_eq!(row(BOB).declared_by, vec![chat]);
    assert_eq!(row(&id(1)).origin, "foreign");
    assert_eq!(row(&id(7)).inherited_from.as_deref(), Some("resourceGroup"));
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_assertion_appears_in_statuses_events_or_logs() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.federate_chat_backend();
    h.account("prod", OAI_PROD, json!({})).await;
    h.service_account("team-chat", "chat-backend", CHAT_BACKEND_CLIENT)
        .await;
    h.access(
        "team-chat",
        "chat",
        json!([
            {"user": "alice@contoso.com"},
            {"serviceAccount": "chat-backend"},
            {"user": "nobody@contoso.com"}
        ]),
    )
    .await;
    eventually("the unknown user is reported", async || {
        h.get_access("team-chat", "chat")
            .await
            .and_then(|a| a.status)
            .is_some_and(|s| s.principals.iter().any(|p| p.principal.contains("nobody")))
    })
    .await;
    eventually("events are written", async || {
        !h.events_about("OpenAIAccess", "chat").await.is_empty()
    })
    .await;
    let mut outputs = support::secrets::Outputs::new();
    let access = h.get_access("team-chat", "chat").await.unwrap();
    outputs.add(
        "access status",
        serde_json::to_string(&access.status).unwrap(),
    );
    let account = h.get_account("prod").await.unwrap();
    outputs.add(
        "account status",
        serde_json::to_string(&account.status).unwrap(),
    );
    for event in h.events_about("OpenAIAccess", "chat").await {
        outputs.add("event", serde_json::to_string(&event).unwrap());
    }
    h.stop_controller().await;
    outputs.add("logs", support::secrets::LogCapture::global().text());
    let seen = h.emulator.secrets();
    assert!(seen.len() >= 2, "the emulator saw {} secrets", seen.len());
    outputs.assert_no_secret(&seen);
}

// ---- Issue 17: a complete view, fenced leadership, the delete brake, honest status ----

/// A count from the environment (a test's size), or the default.
fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a count"))
        })
        .unwrap_or(default)
}

fn numbered(i: usize) -> String {
    format!("00000000-0000-0000-0000-{i:012}")
}

fn brake(prune_grace: Duration) -> std::sync::Arc<keyless::engine::brake::Brake> {
    std::sync::Arc::new(keyless::engine::brake::Brake::new(
        keyless::engine::brake::BrakeConfig {
            budget: 1000,
            window: Duration::from_secs(60),
            mass_share: 0.2,
            mass_minimum: 10,
            prune_grace,
        },
    ))
}

impl Harness {
    /// `n` OpenAIAccess objects in team-chat, each granting one numbered service principal.
    async fn numbered_accesses(&self, range: std::ops::Range<usize>) {
        for i in range {
            self.access_with(
                "team-chat",
                &format!("app-{i}"),
                json!([{"objectId": numbered(i), "principalType": "ServicePrincipal"}]),
                json!({}),
            )
            .await;
        }
    }

    fn numbered_grants(&self) -> usize {
        self.emulator
            .role_assignments()
            .iter()
            .filter(|a| {
                a.scope.eq_ignore_ascii_case(OAI_PROD) && a.principal_id.starts_with("00000000-")
            })
            .count()
    }

    async fn ready_reason(&self, account: &str) -> Option<(String, String)> {
        self.get_account(account)
            .await
            .and_then(|a| a.status)
            .and_then(|s| {
                s.conditions
                    .into_iter()
                    .find(|c| c.type_ == condition_types::READY)
            })
            .map(|c| (c.reason, c.message))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_with_a_slow_access_list_revoke_nothing_and_an_undeclared_grant_goes_after_the_grace()
 {
    let Some(mut h) = Harness::new().await else {
        return;
    };
    // The issue's size by default: 500 objects, 5 restarts. KEYLESS_RESTART_OBJECTS and
    // KEYLESS_RESTARTS shrink it (the rule does not depend on the count: the old code deleted
    // within the first pass, before the OpenAIAccess list arrived).
    let objects = env_count("KEYLESS_RESTART_OBJECTS", 500);
    let restarts = env_count("KEYLESS_RESTARTS", 5);
    let started = std::time::Instant::now();
    let mut config = controller_config("cluster-1");
    config.engine.brake = Some(brake(Duration::from_secs(2)));
    h.start_controller_with(config.clone());
    h.account("prod", OAI_PROD, json!({})).await;
    h.numbered_accesses(0..objects).await;
    // ARM's write bucket (200 + 10/s, which keyless paces to) makes 500 grants take ~30 s.
    eventually_within(
        EVENTUALLY_WITHIN + Duration::from_secs(objects as u64 / 5),
        "every object is granted",
        async || h.numbered_grants() == objects,
    )
    .await;
    h.stop_controller().await;

    h.faults.inject(
        Fault::on(Verb::List)
            .resource("openaiaccesses")
            .delay(Duration::from_secs(2)),
    );
    for restart in 0..restarts {
        h.emulator.reset_request_counts();
        let mut config = config.clone();
        config.engine.brake = Some(brake(Duration::from_secs(2)));
        h.start_controller_with(config);
        tokio::time::sleep(Duration::from_secs(5)).await;
        h.stop_controller().await;
        assert_eq!(
            h.emulator.requests_of("RoleAssignments_Delete"),
            0,
            "restart {restart}: no DELETE"
        );
        assert_eq!(h.numbered_grants(), objects);
    }

    // Positive control: while keyless is down, app-0 is deleted and its finalizer removed by hand.
    // Nothing present explains its grant any more: it goes once the view is complete and the
    // prune grace has passed.
    h.delete_access("team-chat", "app-0").await;
    h.modify_access("team-chat", "app-0", |a| a.metadata.finalizers = None)
        .await;
    eventually("app-0 is gone", async || {
        h.get_access("team-chat", "app-0").await.is_none()
    })
    .await;
    h.emulator.reset_request_counts();
    let mut config = config.clone();
    config.engine.brake = Some(brake(Duration::from_secs(2)));
    h.start_controller_with(config);
    // The emulator counts a request once it has answered it, a moment after the change: wait for
    // both, then check there was exactly one DELETE.
    eventually("the undeclared grant is revoked", async || {
        h.numbered_grants() == objects - 1 && h.emulator.requests_of("RoleAssignments_Delete") >= 1
    })
    .await;
    assert_eq!(h.emulator.requests_of("RoleAssignments_Delete"), 1);
    h.stop_controller().await;
    eprintln!(
        "restarts: {objects} objects x {restarts} restarts took {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_namespace_watch_revokes_nothing_and_the_account_says_why() {
    let Some(mut h) = Harness::new().await else {
        return;
    };
    h.faults
        .inject(Fault::on(Verb::Watch).resource("namespaces").respond(403));
    h.start_controller("cluster-1");
    h.account("prod", OAI_PROD, json!({})).await;
    h.access_with(
        "team-chat",
        "two",
        json!([
            {"objectId": numbered(1), "principalType": "ServicePrincipal"},
            {"objectId": numbered(2), "principalType": "ServicePrincipal"}
        ]),
        json!({}),
    )
    .await;
    eventually("both are granted: creates go on", async || {
        h.numbered_grants() == 2
    })
    .await;
    h.modify_access("team-chat", "two", |a| {
        a.spec.principals.pop();
    })
    .await;
    eventually(
        "the account says revocations wait for the view",
        async || {
            h.ready_reason("prod")
                .await
                .is_some_and(|(reason, message)| {
                    reason == "ViewIncomplete" && message.contains("403")
                })
        },
    )
    .await;
    assert_eq!(h.numbered_grants(), 2, "nothing revoked");
    assert_eq!(h.emulator.requests_of("RoleAssignments_Delete"), 0);
    assert!(h.has_event("OpenAIAccount", "prod", "ViewIncomplete").await);

    // The watch works again (and a namespace change shows it): the revocation goes.
    h.faults.clear_faults();
    h.env.namespace("team-new").await;
    eventually("the removed principal is revoked", async || {
        h.numbered_grants() == 1
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_whose_finalizer_cannot_be_added_gets_no_grant_and_the_others_converge() {
    let Some(mut h) = Harness::new().await else {
        return;
    };
    h.faults.inject(
        Fault::on(Verb::Patch)
            .resource("openaiaccesses")
            .name("app-1")
            .respond(500),
    );
    h.start_controller("cluster-1");
    h.account("prod", OAI_PROD, json!({})).await;
    h.numbered_accesses(0..4).await;
    eventually("the other three are Ready", async || {
        h.access_ready("team-chat", "app-0").await
            && h.access_ready("team-chat", "app-2").await
            && h.access_ready("team-chat", "app-3").await
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let holders = h.holders_numbered();
    assert!(!holders.contains(&numbered(1)), "{holders:?}");
    assert_eq!(holders.len(), 3);
    let app1 = h.get_access("team-chat", "app-1").await.unwrap();
    assert!(app1.metadata.finalizers.is_none());
    h.stop_controller().await;
}

impl Harness {
    fn holders_numbered(&self) -> Vec<String> {
        self.emulator
            .role_assignments()
            .into_iter()
            .filter(|a| {
                a.scope.eq_ignore_ascii_case(OAI_PROD) && a.principal_id.starts_with("00000000-")
            })
            .map(|a| a.principal_id)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_most_objects_at_once_holds_every_revocation_until_a_person_confirms() {
    let Some(mut h) = Harness::new().await else {
        return;
    };
    let mut config = controller_config("cluster-1");
    config.engine.brake = Some(brake(Duration::ZERO));
    h.start_controller_with(config.clone());
    h.account("prod", OAI_PROD, json!({})).await;
    h.numbered_accesses(0..20).await;
    eventually("twenty grants", async || h.numbered_grants() == 20).await;
    // 60 %: twelve objects deleted at once, as the controller sees it: while it is stopped, so its
    // next pass finds all twelve. Deleted one by one under a running controller, they can fall
    // into several passes each below the brake's minimum (10), which revoke them as ordinary
    // removals; under CI's load this test saw exactly that.
    h.stop_controller().await;
    for i in 0..12 {
        h.delete_access("team-chat", &format!("app-{i}")).await;
    }
    h.start_controller_with(config);
    eventually("the account says the revocations are held", async || {
        h.ready_reason("prod")
            .await
            .is_some_and(|(reason, message)| {
                reason == "RevocationsBlocked"
                    && message.contains("keyless.dev/confirm-revocations")
            })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.numbered_grants(), 20, "nothing revoked");
    assert_eq!(h.emulator.requests_of("RoleAssignments_Delete"), 0);
    assert!(
        h.has_event("OpenAIAccount", "prod", "RevocationsBlocked")
            .await
    );
    eventually(
        "a deleted object says what its finalizer waits for",
        async || {
            h.get_access("team-chat", "app-0")
                .await
                .and_then(|a| a.status)
                .is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == condition_types::READY
                            && c.reason == "Terminating"
                            && c.message.contains("keyless.dev/confirm-revocations")
                    })
                })
        },
    )
    .await;

    h.modify_account("prod", |a| {
        a.metadata
            .annotations
            .get_or_insert_default()
            .insert("keyless.dev/confirm-revocations".into(), "12".into());
    })
    .await;
    eventually("the confirmed revocations are made", async || {
        h.numbered_grants() == 8
    })
    .await;
    eventually("the objects are gone", async || {
        h.get_access("team-chat", "app-0").await.is_none()
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_account_gets_no_writes() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
    h.modify_account("prod", |a| {
        a.metadata
            .annotations
            .get_or_insert_default()
            .insert("keyless.dev/paused".into(), "true".into());
    })
    .await;
    h.numbered_accesses(0..2).await;
    eventually("the account says it is paused", async || {
        h.ready_reason("prod")
            .await
            .is_some_and(|(reason, _)| reason == "Paused")
    })
    .await;
    assert_eq!(h.numbered_grants(), 0);
    assert_eq!(h.emulator.requests_of("RoleAssignments_Create"), 0);
    h.modify_account("prod", |a| {
        a.metadata
            .annotations
            .get_or_insert_default()
            .remove("keyless.dev/paused");
    })
    .await;
    eventually("unpaused, the grants are made", async || {
        h.numbered_grants() == 2
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_steady_state_sends_no_patch_and_one_list_per_resync() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
    h.numbered_accesses(0..5).await;
    eventually("all Ready", async || {
        let mut all = true;
        for i in 0..5 {
            all &= h.access_ready("team-chat", &format!("app-{i}")).await;
        }
        all && h
            .account_condition("prod", |c| {
                c.type_ == condition_types::READY && c.status == "True"
            })
            .await
    })
    .await;
    // Let the last writes' watch events come back before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.faults.reset_counts();
    h.emulator.reset_request_counts();
    // Resync is 700 ms: about four resyncs.
    tokio::time::sleep(Duration::from_millis(2900)).await;
    assert_eq!(
        h.faults.count_verb(Verb::Patch),
        0,
        "no PATCH on quiet passes: {:?}",
        h.faults.counts()
    );
    let lists = h.emulator.requests_of("RoleAssignments_ListForScope");
    assert!((2..=6).contains(&lists), "one LIST per resync: {lists}");
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_the_type_rejects_keeps_its_grants_and_principals_with_one_status_write() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
    h.numbered_accesses(0..3).await;
    eventually("all three granted and Ready", async || {
        h.numbered_grants() == 3
            && h.access_ready("team-chat", "app-0").await
            && h.access_ready("team-chat", "app-1").await
            && h.access_ready("team-chat", "app-2").await
    })
    .await;
    // Counted from before the bad status is written: the controller may answer it at once, and a
    // quiet pass writes nothing, so every status write from here on is the Stalled one.
    h.faults.reset_counts();
    h.emulator.reset_request_counts();
    // A time the API server accepts (RFC 3339) but the type cannot hold: 9999-12-31T23:59:59 at
    // -23:59 is in the year 10000 in UTC.
    let out_of_range = "9999-12-31T23:59:59-23:59";
    let before = h.get_access("team-chat", "app-1").await.unwrap();
    let principals_before = before.status.as_ref().unwrap().principals.len();
    let dynamic = Api::<kube::api::DynamicObject>::namespaced_with(
        h.env.client.clone(),
        &h.n("team-chat"),
        &kube::api::ApiResource::erase::<OpenAIAccess>(&()),
    );
    dynamic
        .patch_status(
            "app-1",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"principals": [{
                "principal": format!("objectId:{}", numbered(1)),
                "objectId": numbered(1),
                "state": "Granted",
                "grantedAt": out_of_range,
            }]}})),
        )
        .await
        .unwrap();
    let raw = || async { dynamic.get("app-1").await.unwrap().data["status"].clone() };
    eventually("the object is Stalled naming its status", async || {
        raw().await["conditions"].as_array().is_some_and(|c| {
            c.iter().any(|c| {
                c["type"] == "Stalled"
                    && c["status"] == "True"
                    && c["reason"] == "InvalidStatus"
                    && c["message"].as_str().is_some_and(|m| m.contains("status"))
            })
        })
    })
    .await;
    // Four resyncs later: one status write for it, its principals kept, nothing revoked.
    tokio::time::sleep(Duration::from_millis(2800)).await;
    let status = raw().await;
    assert_eq!(
        status["principals"][0]["grantedAt"], out_of_range,
        "principals[] kept as they were"
    );
    assert_eq!(
        status["principals"].as_array().unwrap().len(),
        principals_before
    );
    assert_eq!(
        h.faults.count(Verb::Patch, "openaiaccesses/status"),
        1,
        "written once: {:?}",
        h.faults.counts()
    );
    assert_eq!(h.emulator.requests_of("RoleAssignments_Delete"), 0);
    assert_eq!(h.numbered_grants(), 3);
    // The others still converge: a new object on the account gets its grant.
    h.numbered_accesses(3..4).await;
    eventually("the new object is granted", async || {
        h.numbered_grants() == 4
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_the_type_rejects_keeps_its_grants_and_principals_and_the_others_converge() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    h.account("prod", OAI_PROD, json!({})).await;
    h.numbered_accesses(0..3).await;
    eventually("all three granted and Ready", async || {
        h.numbered_grants() == 3
            && h.access_ready("team-chat", "app-0").await
            && h.access_ready("team-chat", "app-1").await
            && h.access_ready("team-chat", "app-2").await
    })
    .await;
    h.faults.reset_counts();
    h.emulator.reset_request_counts();
    // An expiry the API server accepts (RFC 3339) but the type cannot hold: 9999-12-31T23:59:59
    // at -23:59 is in the year 10000 in UTC. Read as absent, app-1's grant would be revoked.
    let out_of_range = "9999-12-31T23:59:59-23:59";
    let before = h.get_access("team-chat", "app-1").await.unwrap();
    let principals_before = before.status.as_ref().unwrap().principals.len();
    let dynamic = Api::<kube::api::DynamicObject>::namespaced_with(
        h.env.client.clone(),
        &h.n("team-chat"),
        &kube::api::ApiResource::erase::<OpenAIAccess>(&()),
    );
    dynamic
        .patch(
            "app-1",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"expiresAt": out_of_range}})),
        )
        .await
        .unwrap();
    let raw = || async { dynamic.get("app-1").await.unwrap() };
    eventually("the object is Stalled naming its spec", async || {
        raw().await.data["status"]["conditions"]
            .as_array()
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c["type"] == "Stalled"
                        && c["status"] == "True"
                        && c["reason"] == "InvalidSpec"
                        && c["message"].as_str().is_some_and(|m| m.contains("spec"))
                })
            })
    })
    .await;
    // Four resyncs later: one status write for it, its principals and finalizer kept, nothing
    // revoked.
    tokio::time::sleep(Duration::from_millis(2800)).await;
    let object = raw().await;
    assert_eq!(
        object.data["status"]["principals"]
            .as_array()
            .unwrap()
            .len(),
        principals_before,
        "principals[] kept"
    );
    assert!(
        object
            .metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty()),
        "its finalizer stays"
    );
    assert_eq!(
        h.faults.count(Verb::Patch, "openaiaccesses/status"),
        1,
        "written once: {:?}",
        h.faults.counts()
    );
    assert_eq!(h.emulator.requests_of("RoleAssignments_Delete"), 0);
    assert_eq!(h.numbered_grants(), 3);
    // The others still converge: a new object on the account gets its grant.
    h.numbered_accesses(3..4).await;
    eventually("the new object is granted", async || {
        h.numbered_grants() == 4
    })
    .await;
    h.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_taken_over_mid_convergence_without_duplicates_or_gaps() {
    let Some(h) = Harness::new().await else {
        return;
    };
    const OBJECTS: usize = 30;
    let lease_namespace = h.env.namespace("keyless-system").await;
    // Slow ARM, so the leader is killed mid-convergence.
    h.emulator.set_faults(Faults {
        latency: Duration::from_millis(150),
        ..Faults::default()
    });
    let mut replicas: Vec<Option<RunningController>> = Vec::new();
    for replica in 0..2 {
        let mut config = controller_config("cluster-1");
        config.leader = Some(keyless::ops::leader::LeaseConfig {
            name: "keyless".into(),
            namespace: lease_namespace.clone(),
            holder_id: format!("replica-{replica}"),
            lease_duration: Duration::from_secs(3),
            renew_interval: Duration::from_millis(500),
            retry_interval: Duration::from_millis(200),
        });
        replicas.push(Some(h.spawn_controller(config)));
    }
    h.account("prod", OAI_PROD, json!({})).await;
    h.numbered_accesses(0..OBJECTS).await;
    eventually("convergence has started", async || h.numbered_grants() >= 3).await;
    let holder = Api::<Lease>::namespaced(h.env.client.clone(), &lease_namespace)
        .get("keyless")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    let leader: usize = holder.trim_start_matches("replica-").parse().unwrap();
    // From now on every OpenAIAccess LIST takes 2 s, as on a big cluster: a standby that had to
    // list cold on taking over would pay it before its first write; a warm one lists nothing.
    h.faults.inject(
        Fault::on(Verb::List)
            .resource("openaiaccesses")
            .delay(Duration::from_secs(2)),
    );
    let lists_before = h.faults.count(Verb::List, "openaiaccesses");
    replicas[leader].take().unwrap().kill();
    let killed_at = jiff::Timestamp::now();
    let before: std::collections::BTreeSet<String> = h
        .emulator
        .role_assignments()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert!(
        before.len() < OBJECTS + 10,
        "killed mid-convergence ({} assignments)",
        before.len()
    );
    eventually("the new leader completes the grants", async || {
        h.numbered_grants() == OBJECTS
    })
    .await;
    let assignments: Vec<_> = h
        .emulator
        .role_assignments()
        .into_iter()
        .filter(|a| a.principal_id.starts_with("00000000-"))
        .collect();
    let principals: std::collections::BTreeSet<&str> = assignments
        .iter()
        .map(|a| a.principal_id.as_str())
        .collect();
    assert_eq!(principals.len(), OBJECTS, "no missing assignment");
    assert_eq!(assignments.len(), OBJECTS, "no duplicate");
    // Takeover: from the kill to the new leader's first write (ARM's createdOn of the first
    // assignment made after the kill). Reported, not asserted: wall-clock limits belong in
    // benchmarks. With a 3 s lease it is the lease's expiry plus one retry and one pass.
    let first_write = assignments
        .iter()
        .filter(|a| !before.contains(&a.name))
        .map(|a| a.created_on)
        .min()
        .unwrap();
    let takeover = first_write.duration_since(killed_at);
    let cold_lists = h.faults.count(Verb::List, "openaiaccesses") - lists_before;
    eprintln!(
        "takeover: {:.1} s from kill to the new leader's first ARM write (lease 3 s, renew 0.5 s, retry 0.2 s; OpenAIAccess LIST slowed to 2 s; {cold_lists} OpenAIAccess LISTs after the kill)",
        takeover.as_secs_f64()
    );
    assert!(
        takeover.is_positive(),
        "the first write came after the kill"
    );
    assert_eq!(
        cold_lists, 0,
        "the standby's stores were warm: it listed no OpenAIAccess to take over"
    );
    for replica in replicas.into_iter().flatten() {
        replica.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_is_stolen_mid_pass_writes_nothing_more_to_arm() {
    let Some(h) = Harness::new().await else {
        return;
    };
    const OBJECTS: usize = 40;
    let lease_namespace = h.env.namespace("keyless-system").await;
    // Slow ARM (one write every ~150 ms), so the steal lands mid-pass.
    h.emulator.set_faults(Faults {
        latency: Duration::from_millis(150),
        ..Faults::default()
    });
    // The Lease exists, free, carrying this test's scope label: the test bed's client only lists
    // and watches objects with it, and the leader's watch on its Lease is what this test is about.
    let leases = Api::<Lease>::namespaced(h.env.client.clone(), &lease_namespace);
    leases
        .create(
            &PostParams::default(),
            &Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some("keyless".into()),
                    labels: Some(h.env.labels()),
                    ..Default::default()
                },
                spec: Some(Default::default()),
            },
        )
        .await
        .unwrap();
    let mut config = controller_config("cluster-1");
    // A renew interval long enough that, finding out only at its next renewal, the leader would
    // make a dozen more writes after the steal.
    config.leader = Some(keyless::ops::leader::LeaseConfig {
        name: "keyless".into(),
        namespace: lease_namespace.clone(),
        holder_id: "replica-0".into(),
        lease_duration: Duration::from_secs(10),
        renew_interval: Duration::from_secs(3),
        retry_interval: Duration::from_millis(200),
    });
    let replica = h.spawn_controller(config);
    h.account("prod", OAI_PROD, json!({})).await;
    h.numbered_accesses(0..OBJECTS).await;
    eventually("the pass is under way", async || h.numbered_grants() >= 3).await;

    // Another holder overwrites the lease, which has not expired.
    let mut lease = leases.get("keyless").await.unwrap();
    assert_eq!(
        lease.spec.as_ref().unwrap().holder_identity.as_deref(),
        Some("replica-0")
    );
    let spec = lease.spec.as_mut().unwrap();
    spec.holder_identity = Some("intruder".into());
    spec.lease_duration_seconds = Some(3600);
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    leases
        .replace("keyless", &PostParams::default(), &lease)
        .await
        .unwrap();
    let writes_at_steal = h.emulator.requests_of("RoleAssignments_Create");

    // Longer than the renew interval: without the lease watch the old leader would still write.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let writes_after = h.emulator.requests_of("RoleAssignments_Create");
    eprintln!(
        "stolen lease: {writes_at_steal} creates before the steal, {} after it",
        writes_after - writes_at_steal
    );
    assert!(
        writes_after <= writes_at_steal + 1,
        "at most the write already in flight at the steal reaches ARM ({writes_at_steal} then {writes_after})"
    );
    assert!(
        h.numbered_grants() < OBJECTS,
        "the pass was dropped, not finished"
    );
    assert_eq!(
        leases
            .get("keyless")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity
            .as_deref(),
        Some("intruder"),
        "the old leader stood down instead of fighting for the lease"
    );
    replica.stop().await.unwrap();
}

// Issue 18: keyless's own recorder (bounded memory) still folds a repeat into the first Event's
// series, and the API server accepts the series patch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_event_is_one_event_whose_series_counts_the_repeats() {
    let Some(env) = TestEnv::start().await else {
        return;
    };
    let name = format!("events-{}", uuid::Uuid::new_v4());
    let config_maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    let regarding: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    let regarding = config_maps
        .create(&PostParams::default(), &regarding)
        .await
        .unwrap();
    let reference = kube::Resource::object_ref(&regarding, &());
    let recorder = controller::events::EventRecorder::new(
        env.client.clone(),
        "keyless",
        Some("test".into()),
        Duration::from_secs(360),
        16,
    );
    for reason in [
        "RoleAssignmentCreated",
        "RoleAssignmentCreated",
        "RoleAssignmentCreated",
        "AccessDenied",
    ] {
        let event = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Normal,
            reason: reason.into(),
            note: Some("a note".into()),
            action: "Apply".into(),
            secondary: None,
        };
        recorder.publish(&event, &reference).await.unwrap();
    }
    let events: Vec<Event> = Api::<Event>::namespaced(env.client.clone(), "default")
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str()))
        .collect();
    let reasons: Vec<(Option<String>, Option<i32>)> = {
        let mut r: Vec<_> = events
            .iter()
            .map(|e| (e.reason.clone(), e.series.as_ref().map(|s| s.count)))
            .collect();
        r.sort();
        r
    };
    assert_eq!(
        reasons,
        vec![
            (Some("AccessDenied".into()), None),
            (Some("RoleAssignmentCreated".into()), Some(3)),
        ]
    );
    assert_eq!(recorder.remembered(), 2);
}
