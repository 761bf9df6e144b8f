//! Enforcement Exclusive end to end: the real `controller::run` on a real kube-apiserver
//! (`../shared/k8s`, see `support::cluster`) and the Azure emulator over HTTPS.
//!
//! The workload on oai-prod, under enforcement Exclusive: Alice is declared and holds an
//! assignment made in the portal (adopted: declared, so it stays); Bob holds the seed's Bicep
//! assignment and is exempt (break-glass); Carol holds one clicked in the portal that nothing
//! declares (revoked after the grace); Dave holds one at the resource group (inherited: never
//! revoked); Frank's carries an ABAC condition (never revoked).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyless::api::{ExclusiveRevocation, OpenAIAccess, OpenAIAccount, condition_types};
use keyless_emulator::journal::WriteKind;
use keyless_emulator::{AdminRoleAssignment, EmulatorHandle};
use kube::api::Api;
use serde_json::json;
use std::time::Duration;
use support::cluster::{RunningController, TestEnv};
use support::example_seed::{ALICE, BOB, BOB_BICEP, OAI_PROD, OPENAI_USER};
use support::kube_faults::{Fault, KubeFaults, Verb};
use support::operator::{azure_clients, controller_config, emulator};
use support::wait::eventually;

const RG: &str = "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-ai-prod";
const CAROL: &str = "c0c0c0c0-0000-4000-8000-00000000ca01";
const DAVE: &str = "d0d0d0d0-0000-4000-8000-00000000da01";
const FRANK: &str = "f0f0f0f0-0000-4000-8000-00000000fa01";
const GINA: &str = "90909090-0000-4000-8000-0000000091aa";
/// Who clicked in the portal: ARM's `createdBy`.
const PORTAL_ADMIN: &str = "adadadad-0000-4000-8000-0000000000ad";
const CAROLS: &str = "c4c4c4c4-1111-4222-8333-444444444401";
const ALICES: &str = "a4a4a4a4-1111-4222-8333-444444444401";
const DAVES: &str = "d4d4d4d4-1111-4222-8333-444444444401";
const FRANKS: &str = "f4f4f4f4-1111-4222-8333-444444444401";
const GINAS: &str = "94949494-1111-4222-8333-444444444401";
const INSTANCE: &str = "cluster-1";

struct Harness {
    env: TestEnv,
    emulator: EmulatorHandle,
    faults: KubeFaults,
    running: Option<RunningController>,
    namespace: String,
}

fn foreign(name: &str, scope: &str, principal: &str) -> AdminRoleAssignment {
    AdminRoleAssignment {
        name: Some(name.into()),
        scope: scope.into(),
        role_definition_id: OPENAI_USER.into(),
        principal_id: principal.into(),
        principal_type: Some("User".into()),
        description: None,
        condition: None,
        created_by: Some(PORTAL_ADMIN.into()),
    }
}

impl Harness {
    /// The namespace, the emulator, the workload and the account under Exclusive; no controller.
    async fn start() -> Option<Harness> {
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
        for assignment in [
            foreign(ALICES, OAI_PROD, ALICE),
            foreign(CAROLS, OAI_PROD, CAROL),
            foreign(DAVES, RG, DAVE),
            AdminRoleAssignment {
                condition: Some("@Resource[Microsoft.CognitiveServices/accounts/deployments:name] StringEquals 'gpt'".into()),
                ..foreign(FRANKS, OAI_PROD, FRANK)
            },
        ] {
            harness.emulator.put_role_assignment(assignment).unwrap();
        }
        let account: OpenAIAccount = serde_json::from_value(json!({
            "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccount",
            "metadata": {"name": harness.account_name()},
            "spec": {
                "resourceId": OAI_PROD,
                "allowedNamespaces": {"names": [harness.namespace]},
                "enforcement": "Exclusive",
                "exclusiveExemptions": [BOB],
            }
        }))
        .unwrap();
        harness.env.create(&account).await;
        harness
            .declare("chat", json!({"objectId": ALICE, "principalType": "User"}))
            .await;
        Some(harness)
    }

    async fn declare(&self, name: &str, principal: serde_json::Value) {
        let access: OpenAIAccess = serde_json::from_value(json!({
            "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"accountRef": {"name": self.account_name()}, "role": "OpenAIUser", "principals": [principal]}
        }))
        .unwrap();
        self.env.create(&access).await;
    }

    fn run(&mut self, grace: Duration) {
        let mut config = controller_config(INSTANCE);
        config.engine.exclusive_grace = grace;
        self.running = Some(RunningController::spawn(
            self.env.controller_client(&self.faults),
            azure_clients(&self.emulator),
            config,
        ));
    }

    async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
    }

    fn account_name(&self) -> String {
        self.env.name("prod")
    }

    async fn account(&self) -> Option<OpenAIAccount> {
        Api::<OpenAIAccount>::all(self.env.client.clone())
            .get_opt(&self.account_name())
            .await
            .unwrap()
    }

    async fn listed(&self) -> Vec<ExclusiveRevocation> {
        self.account()
            .await
            .and_then(|a| a.status)
            .map(|s| s.exclusive_revocations)
            .unwrap_or_default()
    }

    async fn condition(&self, kind: &str) -> Option<(String, String, String)> {
        self.account().await.and_then(|a| a.status).and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.type_ == kind)
                .map(|c| (c.status, c.reason, c.message))
        })
    }

    /// Names of the assignments ARM holds now.
    fn present(&self) -> Vec<String> {
        self.emulator
            .role_assignments()
            .into_iter()
            .map(|a| a.name.to_ascii_lowercase())
            .collect()
    }

    fn deleted(&self) -> Vec<String> {
        self.emulator
            .assignment_writes()
            .into_iter()
            .filter(|w| w.kind == WriteKind::Deleted)
            .map(|w| w.name)
            .collect()
    }

    async fn passes(&self, n: u64) {
        let start = self.emulator.requests_of("RoleAssignments_ListForScope");
        eventually(&format!("{n} more passes"), async || {
            self.emulator.requests_of("RoleAssignments_ListForScope") >= start + n
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_lists_then_revokes_exactly_the_undeclared_account_scope_assignments_after_the_grace()
 {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    // A grace far longer than the test: the controller only lists.
    h.run(Duration::from_secs(3600));
    eventually("the status lists Carol's assignment", async || {
        h.listed().await.iter().any(|r| r.assignment_name == CAROLS)
    })
    .await;
    h.passes(3).await;
    let listed = h.listed().await;
    let names: Vec<&str> = listed.iter().map(|r| r.assignment_name.as_str()).collect();
    assert_eq!(names, vec![CAROLS], "only Carol's is to be revoked");
    assert_eq!(listed[0].principal_id, CAROL);
    assert_eq!(listed[0].created_by.as_deref(), Some(PORTAL_ADMIN));
    let (status, reason, message) = h
        .condition(condition_types::EXCLUSIVE_REVOCATIONS_PENDING)
        .await
        .unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "GraceRunning"));
    assert!(
        message.contains(CAROLS) && message.contains(PORTAL_ADMIN),
        "{message}"
    );
    assert!(h.deleted().is_empty(), "nothing revoked within the grace");
    assert!(h.present().contains(&CAROLS.to_string()));
    h.stop().await;

    // A new controller with no grace: the time Carol's was listed comes from the status, so it
    // goes on the first pass.
    h.run(Duration::ZERO);
    eventually("Carol's assignment is revoked", async || {
        !h.present().contains(&CAROLS.to_string())
    })
    .await;
    h.passes(3).await;
    assert_eq!(h.deleted(), vec![CAROLS.to_string()], "exactly Carol's");
    let present = h.present();
    for (kept, why) in [
        (ALICES, "declared (adopted)"),
        (BOB_BICEP, "exempt"),
        (DAVES, "inherited"),
        (FRANKS, "ABAC condition"),
    ] {
        assert!(present.contains(&kept.to_string()), "{why}: {kept} kept");
    }
    eventually("the list is empty", async || h.listed().await.is_empty()).await;
    eventually(
        "an ExclusiveRevocation event names the creator",
        async || {
            Api::<k8s_openapi::api::events::v1::Event>::all(h.env.client.clone())
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("ExclusiveRevocation")
                        && e.note
                            .as_deref()
                            .is_some_and(|n| n.contains(CAROLS) && n.contains(PORTAL_ADMIN))
                })
        },
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_revokes_nothing_while_a_declaration_is_unresolved_or_another_instance_is_there()
{
    let Some(mut h) = Harness::start().await else {
        return;
    };
    // A declaration that cannot be resolved: its principal might be Carol.
    h.declare("ghost", json!({"user": "ghost@contoso.com"}))
        .await;
    h.run(Duration::ZERO);
    eventually("Exclusive is held", async || {
        h.condition(condition_types::EXCLUSIVE_ENFORCED)
            .await
            .is_some_and(|(status, reason, _)| status == "False" && reason == "Held")
    })
    .await;
    h.passes(3).await;
    assert!(h.deleted().is_empty(), "held: nothing revoked");
    let (_, _, message) = h
        .condition(condition_types::EXCLUSIVE_ENFORCED)
        .await
        .unwrap();
    assert!(message.contains("ghost"), "{message}");

    // The declaration is corrected to a principal that resolves: Carol's goes (grace zero), and
    // nothing else.
    let accesses = Api::<OpenAIAccess>::namespaced(h.env.client.clone(), &h.namespace);
    let mut ghost = accesses.get("ghost").await.unwrap();
    ghost.spec.principals =
        vec![serde_json::from_value(json!({"user": "bob@contoso.com"})).unwrap()];
    accesses
        .replace("ghost", &Default::default(), &ghost)
        .await
        .unwrap();
    eventually("Carol's assignment is revoked", async || {
        !h.present().contains(&CAROLS.to_string())
    })
    .await;
    assert_eq!(h.deleted(), vec![CAROLS.to_string()]);

    // Another keyless instance's grant on the account: Exclusive is refused, and a new portal
    // grant stays.
    h.emulator
        .put_role_assignment(AdminRoleAssignment {
            description: Some("keyless:v1 instance=cluster-2 declared-by=elsewhere/chat".into()),
            created_by: None,
            ..foreign("e4e4e4e4-1111-4222-8333-444444444401", OAI_PROD, FRANK)
        })
        .unwrap();
    h.emulator
        .put_role_assignment(foreign(GINAS, OAI_PROD, GINA))
        .unwrap();
    eventually("Exclusive is refused", async || {
        h.condition(condition_types::EXCLUSIVE_ENFORCED)
            .await
            .is_some_and(|(status, reason, message)| {
                status == "False" && reason == "OtherInstance" && message.contains("cluster-2")
            })
    })
    .await;
    h.passes(3).await;
    assert!(
        h.present().contains(&GINAS.to_string()),
        "refused: Gina's stays"
    );
    assert_eq!(h.deleted(), vec![CAROLS.to_string()]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_revokes_nothing_from_an_incomplete_view() {
    let Some(mut h) = Harness::start().await else {
        return;
    };
    // The Namespace watch is forbidden: keyless cannot know every declaration.
    h.faults
        .inject(Fault::on(Verb::Watch).resource("namespaces").respond(403));
    h.run(Duration::ZERO);
    eventually("Exclusive is held by the view", async || {
        h.condition(condition_types::EXCLUSIVE_ENFORCED)
            .await
            .is_some_and(|(status, reason, message)| {
                status == "False" && reason == "Held" && message.contains("incomplete")
            })
    })
    .await;
    h.passes(3).await;
    assert!(
        h.deleted().is_empty(),
        "nothing revoked from an incomplete view"
    );
    assert!(h.present().contains(&CAROLS.to_string()));

    // The same account and objects with the watch allowed again (a fresh controller, not to wait
    // for the watcher's backoff): Carol's goes.
    h.stop().await;
    h.faults.clear_faults();
    h.run(Duration::ZERO);
    eventually(
        "Carol's assignment is revoked once the view is whole",
        async || !h.present().contains(&CAROLS.to_string()),
    )
    .await;
    assert_eq!(h.deleted(), vec![CAROLS.to_string()]);
    h.stop().await;
}
