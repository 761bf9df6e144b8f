//! Management Observe end to end: the real `controller::run` on a real kube-apiserver
//! (`../shared/k8s`, see `support::cluster`) and the Azure emulator over HTTPS. Under Observe the
//! controller plans and reports exactly as under Manage and sends no ARM write; switching to Manage
//! sends the writes the status listed.
//!
//! The workload on oai-prod: Alice is declared and has no assignment (a create); Bob is declared
//! and already holds one made by Bicep (an adoption, no write); the ML Platform group holds one this
//! instance made for the same object and is no longer declared (a delete).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyless::api::{
    GrantState, OpenAIAccess, OpenAIAccount, PlannedAction, PlannedWrite, condition_types, reasons,
};
use keyless_emulator::journal::WriteKind;
use keyless_emulator::{AdminRoleAssignment, EmulatorHandle};
use kube::api::{Api, PostParams};
use serde_json::json;
use support::cluster::{RunningController, TestEnv};
use support::example_seed::{ALICE, BOB, GROUP, OAI_PROD, OPENAI_USER};
use support::kube_faults::KubeFaults;
use support::operator::{azure_clients, controller_config, emulator};
use support::wait::eventually;

const INSTANCE: &str = "cluster-1";

struct Harness {
    env: TestEnv,
    emulator: EmulatorHandle,
    faults: KubeFaults,
    running: Option<RunningController>,
    namespace: String,
}

impl Harness {
    /// The namespace, the emulator and the workload, with a controller; `observe_flag` is
    /// `keyless run --observe`. `None` when the test must skip.
    async fn start(observe_flag: bool, management: Option<&str>) -> Option<Harness> {
        support::secrets::LogCapture::global();
        let env = TestEnv::start().await?;
        let namespace = env.namespace("team-chat").await;
        let harness = Harness {
            env,
            emulator: emulator().await,
            faults: KubeFaults::new(),
            running: None,
            namespace,
        };
        // The grant this instance made for the group, which nothing declares any more.
        harness
            .emulator
            .put_role_assignment(AdminRoleAssignment {
                name: Some("0b3c9a52-3f1e-4c55-9a43-2f4e6f0c1d11".into()),
                scope: OAI_PROD.into(),
                role_definition_id: OPENAI_USER.into(),
                principal_id: GROUP.into(),
                principal_type: Some("Group".into()),
                description: Some(format!(
                    "keyless:v1 instance={INSTANCE} declared-by={}/chat",
                    harness.namespace
                )),
                condition: None,
                created_by: None,
            })
            .unwrap();
        let mut spec =
            json!({"resourceId": OAI_PROD, "allowedNamespaces": {"names": [harness.namespace]}});
        if let Some(management) = management {
            spec["management"] = json!(management);
        }
        let account: OpenAIAccount = serde_json::from_value(json!({"apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccount", "metadata": {"name": harness.account_name()}, "spec": spec})).unwrap();
        harness.env.create(&account).await;
        let access: OpenAIAccess = serde_json::from_value(json!({
            "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess",
            "metadata": {"name": "chat", "namespace": harness.namespace},
            "spec": {"accountRef": {"name": harness.account_name()}, "role": "OpenAIUser", "principals": [
                {"objectId": ALICE, "principalType": "User"},
                {"objectId": BOB, "principalType": "User"},
            ]}
        }))
        .unwrap();
        harness.env.create(&access).await;
        let mut config = controller_config(INSTANCE);
        config.engine.observe = observe_flag;
        let mut harness = harness;
        harness.running = Some(RunningController::spawn(
            harness.env.controller_client(&harness.faults),
            azure_clients(&harness.emulator),
            config,
        ));
        Some(harness)
    }

    fn account_name(&self) -> String {
        self.env.name("prod")
    }

    fn accounts(&self) -> Api<OpenAIAccount> {
        Api::all(self.env.client.clone())
    }

    fn accesses(&self) -> Api<OpenAIAccess> {
        Api::namespaced(self.env.client.clone(), &self.namespace)
    }

    async fn account(&self) -> Option<OpenAIAccount> {
        self.accounts().get_opt(&self.account_name()).await.unwrap()
    }

    async fn access(&self) -> Option<OpenAIAccess> {
        self.accesses().get_opt("chat").await.unwrap()
    }

    async fn planned(&self) -> Vec<PlannedWrite> {
        self.account()
            .await
            .and_then(|a| a.status)
            .map(|s| s.planned_writes)
            .unwrap_or_default()
    }

    /// (state, reason) of the access's row for `object_id`.
    async fn row(&self, object_id: &str) -> Option<(Option<GrantState>, Option<String>)> {
        self.access().await.and_then(|a| a.status).and_then(|s| {
            s.principals
                .into_iter()
                .find(|p| p.object_id.as_deref() == Some(object_id))
                .map(|p| (p.state, p.reason))
        })
    }

    async fn managed_condition(&self) -> Option<(String, String, String)> {
        self.account().await.and_then(|a| a.status).and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.type_ == condition_types::MANAGED)
                .map(|c| (c.status, c.reason, c.message))
        })
    }

    /// Every ARM role assignment write request, whatever its answer.
    fn write_requests(&self) -> u64 {
        self.emulator.requests_of("RoleAssignments_Create")
            + self.emulator.requests_of("RoleAssignments_Delete")
    }

    /// Waits for `n` more LISTs of the account's role assignments: `n` more passes.
    async fn passes(&self, n: u64) {
        let start = self.emulator.requests_of("RoleAssignments_ListForScope");
        eventually(&format!("{n} more passes"), async || {
            self.emulator.requests_of("RoleAssignments_ListForScope") >= start + n
        })
        .await;
    }

    /// Waits until the status lists the workload's two writes and every row says what it would do.
    async fn observed(&self) -> Vec<PlannedWrite> {
        eventually("the status lists the planned writes", async || {
            self.planned().await.len() == 2
                && self
                    .row(ALICE)
                    .await
                    .is_some_and(|r| r.1.as_deref() == Some(reasons::WOULD_CREATE))
                && self
                    .row(BOB)
                    .await
                    .is_some_and(|r| r.1.as_deref() == Some(reasons::WOULD_ADOPT))
        })
        .await;
        self.planned().await
    }

    async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
    }
}

/// The journal's view of a write: (kind, assignment name, principal, role GUID).
fn key(
    kind: WriteKind,
    name: &str,
    principal: &str,
    role: &str,
) -> (WriteKind, String, String, String) {
    (
        kind,
        name.to_ascii_lowercase(),
        principal.to_ascii_lowercase(),
        role.to_ascii_lowercase(),
    )
}

fn planned_keys(planned: &[PlannedWrite]) -> Vec<(WriteKind, String, String, String)> {
    planned
        .iter()
        .map(|w| {
            let kind = match w.action {
                PlannedAction::Create => WriteKind::Created,
                PlannedAction::Release => WriteKind::Updated,
                PlannedAction::Delete => WriteKind::Deleted,
            };
            key(
                kind,
                &w.assignment_name,
                &w.principal_id,
                &w.role_definition_id,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observed_account_gets_no_write_and_the_first_manage_pass_sends_what_its_status_listed()
{
    let Some(mut h) = Harness::start(false, Some("Observe")).await else {
        return;
    };
    let planned = h.observed().await;
    let actions: Vec<(PlannedAction, &str)> = planned
        .iter()
        .map(|w| (w.action, w.principal_id.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            (PlannedAction::Create, ALICE),
            (PlannedAction::Delete, GROUP)
        ]
    );
    assert_eq!(
        h.row(ALICE).await.unwrap().0,
        Some(GrantState::Pending),
        "not created: still pending"
    );
    assert_eq!(h.row(BOB).await.unwrap().0, Some(GrantState::Granted));
    let (status, reason, message) = h.managed_condition().await.unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", reasons::OBSERVE)
    );
    assert!(message.contains("spec.management"), "{message}");
    // The finalizer is added under Observe too, so a later Manage cannot miss a deletion.
    assert!(
        h.access()
            .await
            .unwrap()
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&keyless::api::CLEANUP_FINALIZER.to_string())
    );

    eventually("a WritesPlanned event on the account", async || {
        Api::<k8s_openapi::api::events::v1::Event>::all(h.env.client.clone())
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("WritesPlanned")
                    && e.regarding
                        .as_ref()
                        .is_some_and(|r| r.name.as_deref() == Some(h.account_name().as_str()))
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.contains("1 creates, 1 deletes"))
            })
    })
    .await;

    h.passes(3).await;
    assert_eq!(h.write_requests(), 0, "no ARM write request over 3 resyncs");
    assert!(h.emulator.assignment_writes().is_empty());
    assert_eq!(h.planned().await, planned, "the same plan each pass");

    // Switch to Manage, nothing else changing: the first Manage pass sends what the status listed.
    let api = h.accounts();
    let mut account = api.get(&h.account_name()).await.unwrap();
    account.spec.management = keyless::api::Management::Manage;
    api.replace(&h.account_name(), &PostParams::default(), &account)
        .await
        .unwrap();
    eventually("the account is managed and converged", async || {
        h.managed_condition()
            .await
            .is_some_and(|(status, _, _)| status == "True")
            && h.planned().await.is_empty()
            && h.emulator.assignment_writes().len() >= 2
    })
    .await;
    h.passes(2).await;
    let sent: Vec<_> = h
        .emulator
        .assignment_writes()
        .iter()
        .map(|w| key(w.kind, &w.name, &w.principal_id, &w.role_definition_guid))
        .collect();
    assert_eq!(sent, planned_keys(&planned));
    assert_eq!(h.row(ALICE).await.unwrap().0, Some(GrantState::Granted));
    assert_eq!(
        h.row(BOB).await.unwrap().1.as_deref(),
        Some(reasons::ADOPTED)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_on_the_command_line_overrides_manage_and_a_deletion_under_it_sends_no_delete() {
    let Some(mut h) = Harness::start(true, Some("Manage")).await else {
        return;
    };
    let planned = h.observed().await;
    assert_eq!(planned.len(), 2);
    let (status, reason, message) = h.managed_condition().await.unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", reasons::OBSERVE)
    );
    assert!(message.contains("--observe"), "{message}");
    h.passes(3).await;
    assert_eq!(h.write_requests(), 0);

    // Deleting the OpenAIAccess: its finalizer goes at once, and Alice's grant is not revoked
    // (there is none) nor is anything else touched.
    h.accesses()
        .delete("chat", &Default::default())
        .await
        .unwrap();
    eventually("the deleted OpenAIAccess is gone", async || {
        h.access().await.is_none()
    })
    .await;
    // The account too.
    h.accounts()
        .delete(&h.account_name(), &Default::default())
        .await
        .unwrap();
    eventually("the deleted OpenAIAccount is gone", async || {
        h.account().await.is_none()
    })
    .await;
    assert_eq!(h.write_requests(), 0, "no DELETE under Observe");
    assert!(
        h.emulator
            .role_assignments()
            .iter()
            .any(|a| a.principal_id == GROUP),
        "the owned grant is left as it was"
    );
    h.stop().await;
}
