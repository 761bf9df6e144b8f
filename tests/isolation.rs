//! Isolation and ownership, end to end: the real controller (`controller::run`) on the real
//! kube-apiserver (`../shared/k8s`, see `support::cluster`) and the Azure emulator over HTTPS. Each
//! test is an escape someone could try — a tenant reaching past its OpenAIAccount, or one keyless
//! installation reaching into another's grants — and asserts it is refused, with the emulator's
//! request counts as the evidence that nothing was written (or looked up) that should not be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use k8s_openapi::api::core::v1::ServiceAccount;
use keyless::api::{GrantState, OpenAIAccess, OpenAIAccount, PrincipalStatus, condition_types};
use keyless::plan::InstanceId;
use keyless::plan::ownership::ownership_marker;
use keyless_emulator::EmulatorHandle;
use keyless_emulator::journal::WriteKind;
use keyless_emulator::state::AdminRoleAssignment;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::time::Duration;
use support::cluster::{RunningController, TestEnv};
use support::example_seed::{
    AIS_DEV, ALICE, BOB, OAI_PROD, OPENAI_USER, SCORER_APP_ID, SCORER_SP, SUB, SUMMARIZER, holders,
};
use support::kube_faults::KubeFaults;
use support::operator::{azure_clients, controller_config, emulator};
use support::wait::eventually;

fn summarizer() -> serde_json::Value {
    json!({"managedIdentity": format!("/subscriptions/{SUB}/resourceGroups/rg-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-summarizer")})
}

/// One installation's world on the shared control plane: its own test id (so its controller sees
/// only its own objects), its namespaces `team-chat`, `team-search` (allowed) and `team-other`.
struct World {
    env: TestEnv,
    faults: KubeFaults,
    running: Option<RunningController>,
}

impl World {
    async fn new() -> Option<World> {
        let env = TestEnv::start().await?;
        for namespace in ["team-chat", "team-search", "team-other"] {
            env.namespace(namespace).await;
        }
        Some(World {
            env,
            faults: KubeFaults::new(),
            running: None,
        })
    }

    fn n(&self, logical: &str) -> String {
        self.env.name(logical)
    }

    fn start(&mut self, emulator: &EmulatorHandle, instance: &str) {
        self.running = Some(RunningController::spawn(
            self.env.controller_client(&self.faults),
            azure_clients(emulator),
            controller_config(instance),
        ));
    }

    async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
    }

    /// The OpenAIAccount `name` for `resource_id`, allowing team-chat and team-search.
    async fn account(&self, name: &str, resource_id: &str, extra: serde_json::Value) {
        let mut spec = json!({"resourceId": resource_id, "allowedNamespaces": {"names": [self.n("team-chat"), self.n("team-search")]}});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let object: OpenAIAccount = serde_json::from_value(json!({"apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccount", "metadata": {"name": self.n(name)}, "spec": spec})).unwrap();
        self.env.create(&object).await;
    }

    async fn access(
        &self,
        namespace: &str,
        name: &str,
        account: &str,
        principals: serde_json::Value,
        extra: serde_json::Value,
    ) {
        let mut spec = json!({"accountRef": {"name": self.n(account)}, "role": "OpenAIUser", "principals": principals});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let object: OpenAIAccess = serde_json::from_value(json!({
            "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccess",
            "metadata": {"name": name, "namespace": self.n(namespace)},
            "spec": spec
        }))
        .unwrap();
        self.env.create(&object).await;
    }

    async fn service_account(&self, namespace: &str, name: &str, client_id: &str) {
        let object: ServiceAccount = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": self.n(namespace), "annotations": {"azure.workload.identity/client-id": client_id}}
        }))
        .unwrap();
        self.env.create(&object).await;
    }

    fn accesses(&self, namespace: &str) -> Api<OpenAIAccess> {
        Api::namespaced(self.env.client.clone(), &self.n(namespace))
    }

    async fn get_access(&self, namespace: &str, name: &str) -> Option<OpenAIAccess> {
        self.accesses(namespace).get_opt(name).await.unwrap()
    }

    /// The status entry of `principal` (as status names it, e.g. `user:alice@contoso.com`).
    async fn principal(
        &self,
        namespace: &str,
        name: &str,
        principal: &str,
    ) -> Option<PrincipalStatus> {
        self.get_access(namespace, name)
            .await?
            .status?
            .principals
            .into_iter()
            .find(|p| p.principal == principal)
    }

    async fn state(&self, namespace: &str, name: &str, principal: &str) -> Option<GrantState> {
        self.principal(namespace, name, principal)
            .await
            .and_then(|p| p.state)
    }

    async fn modify_access(&self, namespace: &str, name: &str, change: impl Fn(&mut OpenAIAccess)) {
        let api = self.accesses(namespace);
        for _ in 0..20 {
            let mut object = api.get(name).await.unwrap();
            change(&mut object);
            match api.replace(name, &PostParams::default(), &object).await {
                Ok(_) => return,
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(error) => panic!("replace {name}: {error}"),
            }
        }
        panic!("replace {name}: still conflicting");
    }

    async fn delete_access(&self, namespace: &str, name: &str) {
        self.accesses(namespace)
            .delete(name, &Default::default())
            .await
            .unwrap();
    }

    async fn account_condition(&self, name: &str, type_: &str) -> Option<String> {
        Api::<OpenAIAccount>::all(self.env.client.clone())
            .get(&self.n(name))
            .await
            .unwrap()
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_ && c.status == "True")
            .map(|c| c.message)
    }
}

fn sorted(ids: &[&str]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    ids.sort();
    ids
}

/// Several resyncs (700 ms each in the test configuration): long enough for a wrong write to happen.
async fn a_few_resyncs() {
    tokio::time::sleep(Duration::from_millis(2500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_registration_without_a_federated_credential_cannot_pass_as_a_workload_identity() {
    let Some(mut w) = World::new().await else {
        return;
    };
    let emulator = emulator().await;
    w.account(
        "prod",
        OAI_PROD,
        json!({"requireFederation": true, "allowedPrincipalKinds": ["WorkloadIdentity", "ManagedIdentity"]}),
    )
    .await;
    // Anyone with `edit` in team-chat can annotate a ServiceAccount with an app registration's id.
    w.service_account("team-chat", "scorer", SCORER_APP_ID)
        .await;
    w.access(
        "team-chat",
        "chat",
        "prod",
        json!([{"serviceAccount": "scorer"}, summarizer()]),
        json!({}),
    )
    .await;
    w.start(&emulator, "cluster-1");
    eventually("the managed identity is granted and the app registration denied", async || {
        w.state("team-chat", "chat", &format!("managedIdentity:/subscriptions/{SUB}/resourceGroups/rg-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-summarizer")).await
            == Some(GrantState::Granted)
            && w.state("team-chat", "chat", "serviceAccount:scorer").await == Some(GrantState::Denied)
    })
    .await;
    a_few_resyncs().await;
    let scorer = w
        .principal("team-chat", "chat", "serviceAccount:scorer")
        .await
        .unwrap();
    assert!(
        scorer
            .message
            .as_deref()
            .unwrap_or_default()
            .contains(SCORER_APP_ID),
        "the status names the app: {scorer:?}"
    );
    assert_eq!(
        emulator.requests_of("RoleAssignments_Create"),
        1,
        "one PUT, for the managed identity; none for the app registration"
    );
    assert!(!holders(&emulator, OAI_PROD).contains(&SCORER_SP.to_string()));
    assert!(
        emulator.request_count("Graph_ListFederatedIdentityCredentials", 200) >= 1,
        "the application's federated credentials were read"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_resolved_for_a_lenient_account_is_not_granted_on_a_strict_one() {
    let Some(mut w) = World::new().await else {
        return;
    };
    let emulator = emulator().await;
    w.account(
        "open",
        OAI_PROD,
        json!({"requireFederation": false, "allowedPrincipalKinds": ["WorkloadIdentity", "ServicePrincipal"]}),
    )
    .await;
    w.account("strict", AIS_DEV, json!({"requireFederation": true}))
        .await;
    w.service_account("team-chat", "scorer", SCORER_APP_ID)
        .await;
    w.access(
        "team-chat",
        "lenient",
        "open",
        json!([{"serviceAccount": "scorer"}]),
        json!({}),
    )
    .await;
    w.start(&emulator, "cluster-1");
    eventually(
        "the lenient account grants the app's service principal",
        async || {
            w.state("team-chat", "lenient", "serviceAccount:scorer")
                .await
                == Some(GrantState::Granted)
        },
    )
    .await;
    // The resolution is now warm in the cache; the same ServiceAccount on the strict account.
    w.access(
        "team-chat",
        "strict",
        "strict",
        json!([{"serviceAccount": "scorer"}]),
        json!({}),
    )
    .await;
    eventually("the strict account denies it", async || {
        w.state("team-chat", "strict", "serviceAccount:scorer")
            .await
            == Some(GrantState::Denied)
    })
    .await;
    a_few_resyncs().await;
    assert_eq!(holders(&emulator, OAI_PROD), sorted(&[BOB, SCORER_SP]));
    assert!(
        holders(&emulator, AIS_DEV).is_empty(),
        "nothing granted on the strict account"
    );
    assert_eq!(
        emulator.requests_of("RoleAssignments_Create"),
        1,
        "one PUT in all: the lenient account's"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_on_an_account_that_does_not_allow_it_revokes_with_the_object() {
    let Some(mut w) = World::new().await else {
        return;
    };
    let emulator = emulator().await;
    // allowRetain defaults to false.
    w.account("prod", OAI_PROD, json!({})).await;
    w.access(
        "team-chat",
        "chat",
        "prod",
        json!([{"user": "alice@contoso.com"}]),
        json!({"deletionPolicy": "Retain"}),
    )
    .await;
    w.start(&emulator, "cluster-1");
    // Granted, and the refused Retain said (from the pass after the create on).
    eventually(
        "alice is granted and told Retain is not honoured",
        async || {
            w.principal("team-chat", "chat", "user:alice@contoso.com")
                .await
                .is_some_and(|p| {
                    p.state == Some(GrantState::Granted)
                        && p.message
                            .as_deref()
                            .unwrap_or_default()
                            .contains("RetainNotAllowed")
                })
        },
    )
    .await;
    w.delete_access("team-chat", "chat").await;
    eventually("the object is gone and so is the grant", async || {
        w.get_access("team-chat", "chat").await.is_none()
            && holders(&emulator, OAI_PROD) == sorted(&[BOB])
    })
    .await;
    assert_eq!(emulator.requests_of("RoleAssignments_Delete"), 1);
    assert!(
        emulator.role_assignments().iter().all(|a| !a
            .description
            .as_deref()
            .unwrap_or_default()
            .contains("released")),
        "nothing was released"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_account_never_write_or_delete_each_others_grants() {
    // Two installations (cluster-1 and cluster-2), each with its own objects, on one Azure account.
    let Some(mut one) = World::new().await else {
        return;
    };
    let Some(mut two) = World::new().await else {
        return;
    };
    let emulator = emulator().await;
    one.account("prod", OAI_PROD, json!({})).await;
    two.account("prod", OAI_PROD, json!({})).await;
    // Both declare alice; only cluster-2 declares the summarizer.
    one.access(
        "team-chat",
        "chat",
        "prod",
        json!([{"user": "alice@contoso.com"}]),
        json!({}),
    )
    .await;
    two.access(
        "team-chat",
        "chat",
        "prod",
        json!([{"user": "alice@contoso.com"}, summarizer()]),
        json!({}),
    )
    .await;
    // cluster-1 grants alice first. Then ARM's LIST lags (a read replica behind the write):
    // cluster-2's LIST does not show cluster-1's fresh grant, so it PUTs alice under its own name
    // and meets the grant: a 409 and adoption, never an overwrite of the other's marker.
    one.start(&emulator, "cluster-1");
    eventually("cluster-1 grants alice", async || {
        one.state("team-chat", "chat", "user:alice@contoso.com")
            .await
            == Some(GrantState::Granted)
    })
    .await;
    let mut lagging = emulator.faults();
    lagging.list_lag = Duration::from_secs(3600);
    emulator.set_faults(lagging);
    let conflicts_before = emulator.request_count("RoleAssignments_Create", 409);
    two.start(&emulator, "cluster-2");
    eventually("both objects are granted", async || {
        one.state("team-chat", "chat", "user:alice@contoso.com")
            .await
            == Some(GrantState::Granted)
            && two
                .state("team-chat", "chat", "user:alice@contoso.com")
                .await
                == Some(GrantState::Granted)
    })
    .await;
    a_few_resyncs().await;
    assert_eq!(
        holders(&emulator, OAI_PROD),
        sorted(&[ALICE, BOB, SUMMARIZER])
    );
    let writes = emulator.assignment_writes();
    for write in &writes {
        let writers: std::collections::BTreeSet<String> = writes
            .iter()
            .filter(|w| w.name == write.name)
            .filter_map(|w| {
                let marker = w.description.as_deref()?;
                Some(
                    marker
                        .split_whitespace()
                        .find(|p| p.starts_with("instance="))?
                        .to_string(),
                )
            })
            .collect();
        assert!(
            writers.len() <= 1,
            "one name, one owner: {writers:?} on {}",
            write.name
        );
    }
    // Created once, by cluster-1. (While the LIST lags, each instance PUTs its own grants again
    // under their own names each pass: ARM answers 200, same marker; a cost, not a change.)
    let alice_creates = writes
        .iter()
        .filter(|w| w.principal_id == ALICE && w.kind == WriteKind::Created)
        .count();
    assert_eq!(
        alice_creates, 1,
        "alice's grant was created once: {writes:?}"
    );
    assert!(
        writes.iter().filter(|w| w.principal_id == ALICE).all(|w| w
            .description
            .as_deref()
            .is_some_and(|d| d.contains("instance=cluster-1 "))),
        "only cluster-1 ever wrote alice's grant: {writes:?}"
    );
    assert!(
        emulator.request_count("RoleAssignments_Create", 409) > conflicts_before,
        "the lagging LIST sent cluster-2 to a PUT that met cluster-1's grant"
    );
    emulator.clear_faults();

    // cluster-2 stops; its object goes away behind its back. cluster-1 sees cluster-2's summarizer
    // grant declared by nobody it knows: not its to delete.
    two.stop().await;
    two.delete_access("team-chat", "chat").await;
    let deletes_before = emulator.requests_of("RoleAssignments_Delete");
    a_few_resyncs().await;
    assert_eq!(
        emulator.requests_of("RoleAssignments_Delete"),
        deletes_before
    );
    assert!(holders(&emulator, OAI_PROD).contains(&SUMMARIZER.to_string()));
    one.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_with_one_instance_id_delete_nothing_and_say_so() {
    let Some(mut w) = World::new().await else {
        return;
    };
    let emulator = emulator().await;
    // Another cluster installed with the same instance id: its marker carries its own fingerprint.
    let twin = InstanceId::new("cluster-1")
        .unwrap()
        .with_fingerprint("7c9e6679-7425-40de-944b-e07fc1f90ae7")
        .unwrap();
    emulator
        .put_role_assignment(AdminRoleAssignment {
            name: None,
            scope: OAI_PROD.into(),
            role_definition_id: OPENAI_USER.into(),
            principal_id: "d81d0366-c3d7-4b8d-92f3-1be6d6479d9a".into(),
            principal_type: Some("Group".into()),
            description: Some(ownership_marker(&twin, "team-x/elsewhere")),
            condition: None,
            created_by: None,
        })
        .unwrap();
    w.account("prod", OAI_PROD, json!({})).await;
    w.access(
        "team-chat",
        "chat",
        "prod",
        json!([{"user": "alice@contoso.com"}, summarizer()]),
        json!({}),
    )
    .await;
    w.start(&emulator, "cluster-1");
    eventually("the collision is reported on the account", async || {
        w.account_condition("prod", condition_types::INSTANCE_ID_COLLISION)
            .await
            .is_some()
    })
    .await;
    let message = w
        .account_condition("prod", condition_types::INSTANCE_ID_COLLISION)
        .await
        .unwrap();
    assert!(
        message.contains("7c9e6679-7425-40de-944b-e07fc1f90ae7"),
        "{message}"
    );
    eventually("alice is granted (creates go on)", async || {
        w.state("team-chat", "chat", "user:alice@contoso.com").await == Some(GrantState::Granted)
    })
    .await;
    // A principal removed while the collision lasts: its grant stays, and so does the twin's.
    w.modify_access("team-chat", "chat", |a| {
        a.spec.principals.retain(|p| p.user.is_some());
    })
    .await;
    a_few_resyncs().await;
    assert_eq!(emulator.requests_of("RoleAssignments_Delete"), 0);
    let held = holders(&emulator, OAI_PROD);
    assert!(held.contains(&SUMMARIZER.to_string()), "{held:?}");
    assert!(held.contains(&"d81d0366-c3d7-4b8d-92f3-1be6d6479d9a".to_string()));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_outside_the_account_cannot_freeze_its_revocations() {
    let Some(mut w) = World::new().await else {
        return;
    };
    let emulator = emulator().await;
    w.account("prod", OAI_PROD, json!({})).await;
    w.access(
        "team-chat",
        "chat",
        "prod",
        json!([{"user": "alice@contoso.com"}, summarizer()]),
        json!({}),
    )
    .await;
    // team-other is not allowed; its object names a missing ServiceAccount and a group.
    w.access(
        "team-other",
        "blocker",
        "prod",
        json!([{"serviceAccount": "does-not-exist"}, {"groupName": "ML Platform Team"}]),
        json!({}),
    )
    .await;
    w.start(&emulator, "cluster-1");
    eventually("team-chat's grants are made", async || {
        holders(&emulator, OAI_PROD) == sorted(&[ALICE, BOB, SUMMARIZER])
    })
    .await;
    w.modify_access("team-chat", "chat", |a| {
        a.spec.principals.retain(|p| p.user.is_some());
    })
    .await;
    eventually("the removed principal's grant is revoked", async || {
        holders(&emulator, OAI_PROD) == sorted(&[ALICE, BOB])
    })
    .await;
    assert_eq!(emulator.requests_of("RoleAssignments_Delete"), 1);
    // The blocker learned nothing and cost no lookup.
    for principal in [
        "serviceAccount:does-not-exist",
        "groupName:ML Platform Team",
    ] {
        let status = w
            .principal("team-other", "blocker", principal)
            .await
            .unwrap();
        assert_eq!(status.state, Some(GrantState::Denied), "{status:?}");
        assert_eq!(status.object_id, None, "no directory oracle: {status:?}");
    }
    assert_eq!(
        emulator.requests_of("Graph_ListGroups") + emulator.requests_of("Graph_GetGroup"),
        0,
        "the denied namespace's group was never looked up"
    );
    // Nor does it hang in Terminating.
    w.delete_access("team-other", "blocker").await;
    eventually("the blocker is deleted", async || {
        w.get_access("team-other", "blocker").await.is_none()
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfingerprinted_name_is_read_before_it_is_written_so_a_twins_marker_survives() {
    use keyless::azure::Created;
    use keyless::plan::ownership::grant_name;
    use keyless::plan::{AccountScope, NewAssignment, PrincipalType};
    let emulator = emulator().await;
    let clients = azure_clients(&emulator);
    let scope = AccountScope::parse(OAI_PROD).unwrap();
    // Two installations given the id `pipeline` without fingerprints (file mode without
    // --instance-fingerprint) name alice's grant alike. One made it; the other's LIST lags.
    let bare = InstanceId::new("pipeline").unwrap();
    let name = grant_name(&bare, &scope, ALICE, keyless::api::RoleName::OpenAIUser);
    let first = "keyless:v1 instance=pipeline declared-by=team-a/first";
    emulator
        .put_role_assignment(AdminRoleAssignment {
            name: Some(name.to_string()),
            scope: OAI_PROD.into(),
            role_definition_id: OPENAI_USER.into(),
            principal_id: ALICE.into(),
            principal_type: Some("User".into()),
            description: Some(first.into()),
            condition: None,
            created_by: None,
        })
        .unwrap();
    let second = NewAssignment {
        scope: scope.clone(),
        name,
        principal_id: ALICE.into(),
        principal_type: PrincipalType::User,
        role: keyless::api::RoleName::OpenAIUser,
        description: ownership_marker(&bare, "team-b/second"),
    };
    emulator.reset_request_counts();
    let created = clients
        .role_assignments
        .create_assignment(&second)
        .await
        .unwrap();
    assert!(
        matches!(&created, Created::AlreadyExists(existing) if existing.description.as_deref() == Some(first)),
        "{created:?}"
    );
    assert_eq!(emulator.request_count("RoleAssignments_Get", 200), 1);
    assert_eq!(emulator.requests_of("RoleAssignments_Create"), 0, "no PUT");
    let stored = emulator
        .role_assignments()
        .into_iter()
        .find(|a| a.name == name.to_string())
        .unwrap();
    assert_eq!(
        stored.description.as_deref(),
        Some(first),
        "the first marker survives"
    );

    // A fingerprinted installation's name is its own: no read, straight to the PUT.
    let here = bare
        .with_fingerprint("0f8fad5b-d9cb-469f-a165-70867728950e")
        .unwrap();
    let own = NewAssignment {
        name: grant_name(
            &here,
            &scope,
            SUMMARIZER,
            keyless::api::RoleName::OpenAIUser,
        ),
        principal_id: SUMMARIZER.into(),
        principal_type: PrincipalType::ServicePrincipal,
        description: ownership_marker(&here, "team-a/first"),
        ..second
    };
    emulator.reset_request_counts();
    let created = clients
        .role_assignments
        .create_assignment(&own)
        .await
        .unwrap();
    assert!(matches!(created, Created::Created(_)), "{created:?}");
    assert_eq!(emulator.requests_of("RoleAssignments_Get"), 0);
    assert_eq!(emulator.request_count("RoleAssignments_Create", 201), 1);
}
