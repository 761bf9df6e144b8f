//! The engine over an in-memory Azure: how a pass sequences reads and writes and turns their
//! results into status. (File mode and the controller are tested against the emulator over HTTPS.)

use super::*;
use crate::api::{
    AccountRef, AllowedNamespaces, DeletionPolicy, Principal, PrincipalKind, RoleName,
};
use crate::azure::{Deleted, DirectoryObject, FederatedCredential, ManagedIdentity};
use crate::plan::{NewAssignment, ObservedAssignment, PrincipalType};
use async_trait::async_trait;
use std::sync::Mutex;

const SCOPE: &str = "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-ai-prod/providers/Microsoft.CognitiveServices/accounts/oai-prod";

#[derive(Default)]
struct FakeAzure {
    assignments: Mutex<Vec<ObservedAssignment>>,
    calls: Mutex<Vec<String>>,
    fail_creates_for: Mutex<Vec<String>>,
    /// Creates the client lets through before its own fence closes (None: never closes).
    client_fence_after: Mutex<Option<usize>>,
    /// Directory objects whose type differs from what a PUT may send: ARM's UnmatchedPrincipalType.
    directory_types: Vec<(String, PrincipalType)>,
    account_missing: bool,
    identities: Vec<(ManagedIdentity, Vec<FederatedCredential>)>,
    /// Application objects by app id, with their federated credentials.
    applications: Vec<(String, Vec<FederatedCredential>)>,
    /// Service principals by app id (besides `client-chat`): app id, object id.
    service_principals: Vec<(String, String)>,
}

impl FakeAzure {
    fn calls(&self, prefix: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }
    fn azure(&self) -> Azure<'_> {
        Azure {
            assignments: self,
            accounts: self,
            identities: self,
            directory: self,
        }
    }
}

#[async_trait]
impl RoleAssignments for FakeAzure {
    async fn observe_scope(
        &self,
        _scope: &AccountScope,
    ) -> Result<Vec<ObservedAssignment>, AzureError> {
        self.calls.lock().unwrap().push("list".into());
        Ok(self.assignments.lock().unwrap().clone())
    }
    async fn create_assignment(&self, a: &NewAssignment) -> Result<Created, AzureError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("put {}", a.principal_id));
        if let Some(left) = self.client_fence_after.lock().unwrap().as_mut() {
            if *left == 0 {
                self.calls.lock().unwrap().pop();
                return Err(AzureError::new(
                    AzureErrorKind::Fenced,
                    "create_role_assignment: not sent to ARM: the lease has 200ms left",
                ));
            }
            *left -= 1;
        }
        if let Some((_, actual)) = self
            .directory_types
            .iter()
            .find(|(id, actual)| *id == a.principal_id && *actual != a.principal_type)
        {
            let mut error = AzureError::new(
                AzureErrorKind::UnmatchedPrincipalType,
                format!(
                    "create role assignment: ARM answered 400 UnmatchedPrincipalType: The principal with ID '{}' has type '{actual}', which is different from the PrinciaplType '{}' in the request.",
                    a.principal_id.replace('-', ""),
                    a.principal_type
                ),
            );
            error.code = Some("UnmatchedPrincipalType".into());
            return Err(error);
        }
        let failing = self.fail_creates_for.lock().unwrap();
        if failing.contains(&a.principal_id)
            || failing.contains(&format!("{} {}", a.principal_id, a.role))
        {
            return Err(AzureError::new(AzureErrorKind::Transient, "503 from ARM"));
        }
        let mut list = self.assignments.lock().unwrap();
        if let Some(existing) = list.iter().find(|o| {
            o.principal_id == a.principal_id
                && RoleName::from_definition_id(&o.role_definition_id) == Some(a.role)
                && o.name != a.name.to_string()
        }) {
            return Ok(Created::AlreadyExists(existing.clone()));
        }
        list.retain(|o| o.name != a.name.to_string());
        let created = ObservedAssignment {
            id: a.id(),
            name: a.name.to_string(),
            scope: a.scope.to_string(),
            principal_id: a.principal_id.clone(),
            principal_type: Some(a.principal_type.to_string()),
            role_definition_id: a.role.definition_id(a.scope.subscription_id()),
            description: Some(a.description.clone()),
            condition: None,
            created_on: Some("2026-11-28T11:00:00Z".parse().unwrap()),
        };
        list.push(created.clone());
        Ok(Created::Created(created))
    }
    async fn delete_assignment(&self, id: &str) -> Result<Deleted, AzureError> {
        self.calls.lock().unwrap().push(format!("delete {id}"));
        let mut list = self.assignments.lock().unwrap();
        let before = list.len();
        list.retain(|o| o.id != id);
        Ok(if list.len() < before {
            Deleted::Deleted
        } else {
            Deleted::AlreadyGone
        })
    }
}

#[async_trait]
impl Accounts for FakeAzure {
    async fn get_account(&self, _scope: &AccountScope) -> Result<Option<AccountInfo>, AzureError> {
        self.calls.lock().unwrap().push("get account".into());
        Ok((!self.account_missing).then(|| AccountInfo {
            kind: "OpenAI".into(),
            endpoint: Some("https://oai-prod.openai.azure.com/".into()),
            local_auth_disabled: true,
            custom_sub_domain_name: Some("oai-prod".into()),
        }))
    }
}

#[async_trait]
impl ManagedIdentities for FakeAzure {
    async fn get_identity(&self, resource_id: &str) -> Result<Option<ManagedIdentity>, AzureError> {
        Ok(self
            .identities
            .iter()
            .map(|(i, _)| i)
            .find(|i| i.resource_id.eq_ignore_ascii_case(resource_id))
            .cloned())
    }
    async fn find_identity_by_client_id(
        &self,
        client_id: &str,
    ) -> Result<Option<ManagedIdentity>, AzureError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("find identity {client_id}"));
        Ok(self
            .identities
            .iter()
            .map(|(i, _)| i)
            .find(|i| i.client_id == client_id)
            .cloned())
    }
    async fn federated_credentials(
        &self,
        resource_id: &str,
    ) -> Result<Vec<FederatedCredential>, AzureError> {
        Ok(self
            .identities
            .iter()
            .find(|(i, _)| i.resource_id == resource_id)
            .map(|(_, c)| c.clone())
            .unwrap_or_default())
    }
}

#[async_trait]
impl Directory for FakeAzure {
    async fn user_by_upn(&self, upn: &str) -> Result<DirectoryObject, AzureError> {
        self.calls.lock().unwrap().push(format!("user {upn}"));
        if upn == "alice@contoso.com" {
            Ok(DirectoryObject {
                id: oid(1),
                principal_type: PrincipalType::User,
                display_name: None,
            })
        } else {
            Err(AzureError::new(
                AzureErrorKind::NotFound,
                format!("user {upn} not found"),
            ))
        }
    }
    async fn group_by_display_name(&self, name: &str) -> Result<DirectoryObject, AzureError> {
        Err(AzureError::new(
            AzureErrorKind::NotFound,
            format!("group {name} not found"),
        ))
    }
    async fn service_principal_by_app_id(
        &self,
        app_id: &str,
    ) -> Result<DirectoryObject, AzureError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("service principal {app_id}"));
        if let Some((_, id)) = self
            .service_principals
            .iter()
            .find(|(app, _)| app == app_id)
        {
            return Ok(DirectoryObject {
                id: id.clone(),
                principal_type: PrincipalType::ServicePrincipal,
                display_name: None,
            });
        }
        if app_id == "client-chat" {
            // An app registration (not a managed identity) that the chat ServiceAccount uses.
            return Ok(DirectoryObject {
                id: oid(7),
                principal_type: PrincipalType::ServicePrincipal,
                display_name: None,
            });
        }
        Err(AzureError::new(
            AzureErrorKind::NotFound,
            format!("app {app_id} not found"),
        ))
    }
    async fn object_by_id(&self, object_id: &str) -> Result<DirectoryObject, AzureError> {
        Err(AzureError::new(
            AzureErrorKind::NotFound,
            format!("{object_id} not found"),
        ))
    }
    async fn application_federated_credentials(
        &self,
        app_id: &str,
    ) -> Result<Option<Vec<FederatedCredential>>, AzureError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("application credentials {app_id}"));
        Ok(self
            .applications
            .iter()
            .find(|(id, _)| id == app_id)
            .map(|(_, c)| c.clone()))
    }
}

fn oid(n: u8) -> String {
    format!("00000000-0000-0000-0000-0000000000{n:02x}")
}

fn config() -> EngineConfig {
    EngineConfig {
        instance: InstanceId::new("cluster-a").unwrap(),
        max_deletes_per_pass: 50,
        replication_deadline: Duration::from_secs(600),
        propagation_grace: Duration::from_secs(300),
        federation_issuer: Some("https://oidc.example/".into()),
        dry_run: false,
        observe: false,
        resolution_cache: None,
        prune: true,
        brake: None,
        fence: None,
        exclusive_grace: std::time::Duration::ZERO,
    }
}

fn now() -> Timestamp {
    "2026-11-28T12:00:00Z".parse().unwrap()
}

fn source(accesses: Vec<AccessSource>) -> ScopeSource {
    ScopeSource {
        account_name: "prod".into(),
        account_generation: Some(1),
        account: OpenAIAccountSpec {
            resource_id: SCOPE.into(),
            allowed_namespaces: Some(AllowedNamespaces {
                names: vec!["team-a".into(), "team-b".into()],
                selector: None,
            }),
            allowed_roles: vec![RoleName::OpenAIUser],
            allowed_principal_kinds: PrincipalKind::ALL.to_vec(),
            require_federation: true,
            deletion_policy: DeletionPolicy::Delete,
            allow_retain: false,
            management: crate::api::Management::Manage,
            enforcement: crate::api::Enforcement::Additive,
            exclusive_exemptions: Vec::new(),
            exclusive_exempt_creators: Vec::new(),
        },
        account_being_deleted: false,
        accesses,
        service_accounts: BTreeMap::from([(
            ObjectKey {
                namespace: "team-a".into(),
                name: "chat".into(),
            },
            ServiceAccountInfo {
                client_id: Some("client-chat".into()),
            },
        )]),
        namespaces: NamespaceLabels::new(),
        view: ViewCompleteness::Complete,
        malformed: Vec::new(),
        paused: false,
        confirmed_revocations: None,
        exclusive_reported: Vec::new(),
    }
}

fn access(namespace: &str, name: &str, principals: Vec<Principal>) -> AccessSource {
    AccessSource {
        key: ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        },
        generation: Some(1),
        spec: std::sync::Arc::new(OpenAIAccessSpec {
            account_ref: AccountRef {
                name: "prod".into(),
            },
            role: RoleName::OpenAIUser,
            principals,
            expires_at: None,
            deletion_policy: DeletionPolicy::Delete,
            export_to: None,
        }),
        being_deleted: false,
        previous: None,
    }
}

fn object(n: u8) -> Principal {
    Principal {
        object_id: Some(oid(n)),
        principal_type: Some(PrincipalType::ServicePrincipal),
        ..Default::default()
    }
}

fn ready(result: &AccessResult) -> &Condition {
    result
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
}

#[tokio::test]
async fn a_pass_creates_missing_grants_with_one_list_and_one_put_each() {
    let azure = FakeAzure::default();
    let outcome = run_pass(
        azure.azure(),
        &source(vec![access("team-a", "chat", vec![object(1), object(2)])]),
        &config(),
        now(),
    )
    .await;
    assert_eq!(azure.calls("list"), 1);
    assert_eq!(azure.calls("put"), 2);
    let status = &outcome.accesses[0].status;
    assert_eq!(status.summary.as_deref(), Some("2/2 granted"));
    assert_eq!(
        status.principals[0].granted_at,
        Some(Time("2026-11-28T11:00:00Z".parse().unwrap())),
        "createdOn from ARM"
    );
    assert_eq!(
        ready(&outcome.accesses[0]).status,
        "True",
        "created an hour ago: past the grace"
    );

    // The second pass costs the reads only.
    let again = run_pass(
        azure.azure(),
        &source(vec![access("team-a", "chat", vec![object(1), object(2)])]),
        &config(),
        now(),
    )
    .await;
    assert!(!again.changed());
    assert_eq!(azure.calls("put"), 2);
    assert_eq!(azure.calls("list"), 2);
}

use crate::api::common::{Condition, Time};

#[tokio::test]
async fn a_fresh_grant_is_not_ready_until_the_propagation_grace_has_passed() {
    let azure = FakeAzure::default();
    let early: Timestamp = "2026-11-28T11:02:00Z".parse().unwrap();
    let outcome = run_pass(
        azure.azure(),
        &source(vec![access("team-a", "chat", vec![object(1)])]),
        &config(),
        early,
    )
    .await;
    let condition = ready(&outcome.accesses[0]);
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", reasons::PROPAGATING)
    );
    assert!(
        condition.message.contains("2026-11-28T11:05:00Z"),
        "{}",
        condition.message
    );
    assert_eq!(
        outcome.ready_at,
        Some("2026-11-28T11:05:00Z".parse().unwrap())
    );
    assert_eq!(outcome.requeue_at, None, "nothing else is due");
}

#[tokio::test]
async fn the_pass_after_a_create_computes_the_status_the_create_wrote() {
    // Otherwise every object would be written twice: once by the pass that grants, once by the
    // next (a restart, a resync), for nothing but a message.
    let azure = FakeAzure::default();
    let accesses = || source(vec![access("team-a", "chat", vec![object(1), object(2)])]);
    let created = run_pass(azure.azure(), &accesses(), &config(), now()).await;
    assert_eq!(azure.calls("put"), 2);
    let found = run_pass(azure.azure(), &accesses(), &config(), now()).await;
    assert_eq!(azure.calls("put"), 2, "nothing to create the second time");
    assert_eq!(created.accesses[0].status, found.accesses[0].status);
}

#[tokio::test]
async fn an_expiry_is_due_on_time_and_a_grant_turning_ready_is_only_a_status() {
    let azure = FakeAzure::default();
    let early: Timestamp = "2026-11-28T11:02:00Z".parse().unwrap();
    let mut expiring = access("team-a", "chat", vec![object(1)]);
    std::sync::Arc::make_mut(&mut expiring.spec).expires_at =
        Some(Time("2026-11-28T11:04:00Z".parse().unwrap()));
    let outcome = run_pass(azure.azure(), &source(vec![expiring]), &config(), early).await;
    assert_eq!(
        outcome.requeue_at,
        Some("2026-11-28T11:04:00Z".parse().unwrap()),
        "the expiry, on time"
    );
    assert_eq!(
        outcome.ready_at,
        Some("2026-11-28T11:05:00Z".parse().unwrap()),
        "the grant's propagation grace, apart"
    );
}

#[tokio::test]
async fn a_create_that_fails_keeps_the_old_grant_of_a_principal_change() {
    let azure = FakeAzure::default();
    let first = run_pass(
        azure.azure(),
        &source(vec![access("team-a", "chat", vec![object(1)])]),
        &config(),
        now(),
    )
    .await;
    let mut edited = access("team-a", "chat", vec![object(2)]);
    edited.previous = Some(std::sync::Arc::new(first.accesses[0].status.clone()));
    azure.fail_creates_for.lock().unwrap().push(oid(2));
    let outcome = run_pass(
        azure.azure(),
        &source(vec![edited.clone()]),
        &config(),
        now(),
    )
    .await;
    assert_eq!(
        azure.calls("delete"),
        0,
        "the old grant stays until the new one exists"
    );
    assert!(
        outcome
            .results
            .iter()
            .all(|r| !matches!(r, WriteResult::Done)),
        "the old grant's delete is not even attempted: the replacement must propagate first"
    );
    assert_eq!(outcome.retry, Some(RetryDecision::Backoff));
    assert_eq!(
        outcome.accesses[0].status.principals[0].state,
        Some(GrantState::Failed)
    );

    azure.fail_creates_for.lock().unwrap().clear();
    let held = || -> Vec<String> {
        azure
            .assignments
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.principal_id.clone())
            .collect()
    };
    run_pass(
        azure.azure(),
        &source(vec![edited.clone()]),
        &config(),
        now(),
    )
    .await;
    assert_eq!(held(), vec![oid(1), oid(2)], "made; the old one waits");
    // The next pass sees the replacement past its propagation grace (created an hour earlier).
    run_pass(azure.azure(), &source(vec![edited]), &config(), now()).await;
    assert_eq!(held(), vec![oid(2)], "made, then broken");
}

#[tokio::test]
async fn an_unmatched_principal_type_is_denied_naming_the_type_arm_expects() {
    // The spec says ServicePrincipal (object()); the directory holds a user.
    let azure = FakeAzure {
        directory_types: vec![(oid(1), PrincipalType::User)],
        ..Default::default()
    };
    let outcome = run_pass(
        azure.azure(),
        &source(vec![access("team-a", "chat", vec![object(1)])]),
        &config(),
        now(),
    )
    .await;
    assert_eq!(azure.calls("put"), 1);
    assert!(azure.assignments.lock().unwrap().is_empty());
    let status = &outcome.accesses[0].status.principals[0];
    assert_eq!(status.state, Some(GrantState::Denied));
    assert_eq!(status.reason.as_deref(), Some("UnmatchedPrincipalType"));
    let message = status.message.as_deref().unwrap();
    assert!(
        message.contains("is a User") && message.contains("set principalType: User"),
        "{message}"
    );
    assert_eq!(status.role_assignment_id, None, "nothing was created");
    assert_eq!(
        outcome.retry, None,
        "a spec to correct, not a failure to back off on"
    );
}

#[tokio::test]
async fn a_409_adopts_the_existing_assignment() {
    let azure = FakeAzure::default();
    azure.assignments.lock().unwrap().push(ObservedAssignment {
        id: format!("{SCOPE}/providers/Microsoft.Authorization/roleAssignments/9d3e5b1a-7c2f-4e8d-b6a0-1f2e3d4c5b6a"),
        name: "9d3e5b1a-7c2f-4e8d-b6a0-1f2e3d4c5b6a".into(),
        // A different scope casing hides it from the planner's view of this scope, as a stale
        // LIST would; the PUT's 409 then finds it.
        scope: "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-other/providers/Microsoft.CognitiveServices/accounts/oai-prod".into(),
        principal_id: oid(1),
        principal_type: Some("ServicePrincipal".into()),
        role_definition_id: RoleName::OpenAIUser.definition_id("x"),
        description: None,
        condition: None,
        created_on: Some("2026-01-01T00:00:00Z".parse().unwrap()),
    });
    let outcome = run_pass(
        azure.azure(),
        &source(vec![access("team-a", "chat", vec![object(1)])]),
        &config(),
        now(),
    )
    .await;
    let status = &outcome.accesses[0].status.principals[0];
    assert_eq!(status.state, Some(GrantState::Granted));
    assert_eq!(status.reason.as_deref(), Some(reasons::ADOPTED));
}

#[tokio::test]
async fn a_409_on_an_assignment_carrying_our_marker_is_granted_not_adopted() {
    let azure = FakeAzure::default();
    let ours = crate::plan::ownership::ownership_marker(&config().instance, "team-a/chat");
    {
        let name = "9d3e5b1a-7c2f-4e8d-b6a0-1f2e3d4c5b6a";
        let description = Some(ours);
        azure.assignments.lock().unwrap().push(ObservedAssignment {
            id: format!("{SCOPE}/providers/Microsoft.Authorization/roleAssignments/{name}"),
            name: name.into(),
            // Hidden from this pass's LIST (see the test above); the PUT's 409 finds it.
            scope: "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-other/providers/Microsoft.CognitiveServices/accounts/oai-prod".into(),
            principal_id: oid(1),
            principal_type: Some("ServicePrincipal".into()),
            role_definition_id: RoleName::OpenAIUser.definition_id("x"),
            description,
            condition: None,
            created_on: Some("2026-01-01T00:00:00Z".parse().unwrap()),
        });
    }
    let outcome = run_pass(
        azure.azure(),
        &source(vec![access("team-a", "chat", vec![object(1)])]),
        &config(),
        now(),
    )
    .await;
    let status = &outcome.accesses[0].status.principals[0];
    assert_eq!(status.state, Some(GrantState::Granted));
    assert_eq!(status.reason.as_deref(), Some(reasons::GRANTED));
    assert!(
        status
            .role_assignment_id
            .as_deref()
            .is_some_and(|id| id.ends_with("9d3e5b1a-7c2f-4e8d-b6a0-1f2e3d4c5b6a")),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_credential_added_counts_at_the_next_pass_even_with_a_warm_cache() {
    let identity = ManagedIdentity { resource_id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-chat".into(), principal_id: oid(9), client_id: "client-chat".into(), tenant_id: "t".into() };
    let ours = FederatedCredential {
        name: "chat".into(),
        issuer: "https://oidc.example".into(),
        subject: "system:serviceaccount:team-a:chat".into(),
        audiences: vec!["api://AzureADTokenExchange".into()],
    };
    let cache = std::sync::Arc::new(ResolutionCache::new(Duration::from_secs(3600)));
    let config = EngineConfig {
        resolution_cache: Some(cache),
        ..config()
    };
    let sa = Principal {
        service_account: Some("chat".into()),
        ..Default::default()
    };
    let pass = async |credentials: Vec<FederatedCredential>| {
        let azure = FakeAzure {
            identities: vec![(identity.clone(), credentials)],
            ..Default::default()
        };
        let outcome = run_pass(
            azure.azure(),
            &source(vec![access("team-a", "chat", vec![sa.clone()])]),
            &config,
            now(),
        )
        .await;
        outcome.accesses[0].status.principals[0].state
    };
    assert_eq!(pass(vec![]).await, Some(GrantState::Denied));
    assert_eq!(pass(vec![ours.clone()]).await, Some(GrantState::Granted));
    // Federated facts are cached (for the federation TTL): the next pass does not look again.
    assert_eq!(pass(vec![]).await, Some(GrantState::Granted));
}

#[tokio::test]
async fn a_service_account_without_a_federated_credential_is_denied() {
    let identity = ManagedIdentity { resource_id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-chat".into(), principal_id: oid(9), client_id: "client-chat".into(), tenant_id: "t".into() };
    let other = FederatedCredential {
        name: "other".into(),
        issuer: "https://oidc.example/".into(),
        subject: "system:serviceaccount:team-b:worker".into(),
        audiences: vec![],
    };
    let azure = FakeAzure {
        identities: vec![(identity.clone(), vec![other.clone()])],
        ..Default::default()
    };
    let sa = Principal {
        service_account: Some("chat".into()),
        ..Default::default()
    };
    let outcome = run_pass(
        azure.azure(),
        &source(vec![access("team-a", "chat", vec![sa.clone()])]),
        &config(),
        now(),
    )
    .await;
    let status = &outcome.accesses[0].status.principals[0];
    assert_eq!(
        (status.state, status.reason.as_deref()),
        (Some(GrantState::Denied), Some(reasons::FEDERATION_MISSING))
    );
    assert_eq!(azure.calls("put"), 0);
    assert!(
        outcome
            .events
            .iter()
            .any(|e| e.reason == "FederationFinding" && e.note.contains("team-b:worker")),
        "shared identity reported"
    );

    let ours = FederatedCredential {
        name: "chat".into(),
        issuer: "https://oidc.example".into(),
        subject: "system:serviceaccount:team-a:chat".into(),
        audiences: vec!["api://AzureADTokenExchange".into()],
    };
    let azure = FakeAzure {
        identities: vec![(identity, vec![other, ours])],
        ..Default::default()
    };
    let outcome = run_pass(
        azure.azure(),
        &source(vec![access("team-a", "chat", vec![sa])]),
        &config(),
        now(),
    )
    .await;
    assert_eq!(
        outcome.accesses[0].status.principals[0].state,
        Some(GrantState::Granted)
    );
    assert_eq!(
        outcome.accesses[0].status.principals[0]
            .object_id
            .as_deref(),
        Some(oid(9).as_str())
    );
}

#[tokio::test]
async fn a_missing_account_completes_cleanup_without_writes() {
    let azure = FakeAzure {
        account_missing: true,
        ..Default::default()
    };
    let mut leaving = access("team-a", "chat", vec![object(1)]);
    leaving.being_deleted = true;
    let outcome = run_pass(azure.azure(), &source(vec![leaving]), &config(), now()).await;
    assert!(outcome.accesses[0].cleanup_complete);
    assert_eq!(
        azure.calls("list"),
        0,
        "no LIST for an account that is gone"
    );
}

#[tokio::test]
async fn a_deleted_object_is_clean_once_its_delete_succeeded() {
    let azure = FakeAzure::default();
    run_pass(
        azure.azure(),
        &source(vec![access("team-a", "chat", vec![object(1)])]),
        &config(),
        now(),
    )
    .await;
    let mut leaving = access("team-a", "chat", vec![object(1)]);
    leaving.being_deleted = true;
    let outcome = run_pass(azure.azure(), &source(vec![leaving]), &config(), now()).await;
    assert_eq!(azure.calls("delete"), 1);
    assert!(outcome.accesses[0].cleanup_complete);
    assert!(azure.assignments.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_unknown_user_is_pending_as_possibly_replicating() {
    let azure = FakeAzure::default();
    let bob = Principal {
        user: Some("nobody@contoso.com".into()),
        ..Default::default()
    };
    let outcome = run_pass(
        azure.azure(),
        &source(vec![access("team-a", "chat", vec![bob])]),
        &config(),
        now(),
    )
    .await;
    let status = &outcome.accesses[0].status.principals[0];
    assert_eq!(
        (status.state, status.reason.as_deref()),
        (Some(GrantState::Pending), Some(reasons::REPLICATING))
    );
}

#[tokio::test]
async fn a_plan_only_pass_writes_nothing() {
    let azure = FakeAzure::default();
    let config = EngineConfig {
        dry_run: true,
        observe: false,
        ..config()
    };
    let outcome = run_pass(
        azure.azure(),
        &source(vec![access("team-a", "chat", vec![object(1)])]),
        &config,
        now(),
    )
    .await;
    assert!(outcome.changed());
    assert_eq!(azure.calls("put"), 0);
}

// Management Observe. The workload: object 1 granted and kept, object 2 granted and then removed
// from the spec (a delete), object 4 new (a create), object 5 granted by someone else (an adoption).
async fn observe_workload() -> FakeAzure {
    let azure = granted(2).await;
    azure.assignments.lock().unwrap().push(ObservedAssignment {
        id: format!("{SCOPE}/providers/Microsoft.Authorization/roleAssignments/portal-5"),
        name: "portal-5".into(),
        scope: SCOPE.into(),
        principal_id: oid(5),
        principal_type: Some("ServicePrincipal".into()),
        role_definition_id: RoleName::OpenAIUser
            .definition_id("3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f"),
        description: None,
        condition: None,
        created_on: Some("2026-11-01T00:00:00Z".parse().unwrap()),
    });
    azure
}

fn observe_source(management: crate::api::Management) -> ScopeSource {
    let mut source = source(vec![access(
        "team-a",
        "chat",
        vec![object(1), object(4), object(5)],
    )]);
    source.account.management = management;
    source
}

fn row(outcome: &PassOutcome, n: u8) -> &PrincipalStatus {
    outcome.accesses[0]
        .status
        .principals
        .iter()
        .find(|p| p.object_id.as_deref() == Some(oid(n).as_str()))
        .unwrap()
}

#[tokio::test]
async fn under_observe_no_write_is_sent_and_each_row_says_the_write_manage_would_make() {
    use crate::api::{Management, PlannedAction};
    let azure = observe_workload().await;
    let writes_before = azure.calls("put") + azure.calls("delete");
    for _ in 0..3 {
        let outcome = run_pass(
            azure.azure(),
            &observe_source(Management::Observe),
            &config(),
            now(),
        )
        .await;
        assert_eq!(outcome.management, Management::Observe);
        let planned: Vec<(PlannedAction, String)> = outcome
            .planned_writes
            .iter()
            .map(|w| (w.action, w.principal_id.clone()))
            .collect();
        assert_eq!(
            planned,
            vec![
                (PlannedAction::Create, oid(4)),
                (PlannedAction::Delete, oid(2))
            ]
        );
        let state = |n| (row(&outcome, n).state, row(&outcome, n).reason.as_deref());
        assert_eq!(
            state(1),
            (Some(GrantState::Granted), Some(reasons::GRANTED))
        );
        assert_eq!(
            state(4),
            (Some(GrantState::Pending), Some(reasons::WOULD_CREATE))
        );
        assert_eq!(
            state(5),
            (Some(GrantState::Granted), Some(reasons::WOULD_ADOPT))
        );
        assert!(
            outcome
                .results
                .iter()
                .all(|r| matches!(r, WriteResult::Observed))
        );
    }
    assert_eq!(azure.calls("put") + azure.calls("delete"), writes_before);
}

#[tokio::test]
async fn the_first_manage_pass_sends_exactly_the_writes_observe_listed() {
    use crate::api::{Management, PlannedAction};
    let azure = observe_workload().await;
    let observed = run_pass(
        azure.azure(),
        &observe_source(Management::Observe),
        &config(),
        now(),
    )
    .await;
    let before = azure.calls.lock().unwrap().len();
    let managed = run_pass(
        azure.azure(),
        &observe_source(Management::Manage),
        &config(),
        now(),
    )
    .await;
    assert!(managed.planned_writes.is_empty());
    let sent: Vec<String> = azure.calls.lock().unwrap()[before..]
        .iter()
        .filter(|c| c.starts_with("put") || c.starts_with("delete"))
        .cloned()
        .collect();
    let listed: Vec<String> = observed
        .planned_writes
        .iter()
        .map(|w| match w.action {
            PlannedAction::Create | PlannedAction::Release => format!("put {}", w.principal_id),
            PlannedAction::Delete => format!(
                "delete {SCOPE}/providers/Microsoft.Authorization/roleAssignments/{}",
                w.assignment_name
            ),
        })
        .collect();
    assert_eq!(sent, listed);
    assert_eq!(row(&managed, 5).reason.as_deref(), Some(reasons::ADOPTED));
}

#[tokio::test]
async fn observe_on_the_command_line_overrides_an_account_that_says_manage() {
    use crate::api::Management;
    let azure = observe_workload().await;
    let writes_before = azure.calls("put") + azure.calls("delete");
    let config = EngineConfig {
        observe: true,
        ..config()
    };
    let outcome = run_pass(
        azure.azure(),
        &observe_source(Management::Manage),
        &config,
        now(),
    )
    .await;
    assert_eq!(outcome.management, Management::Observe);
    assert_eq!(outcome.planned_writes.len(), 2);
    assert_eq!(azure.calls("put") + azure.calls("delete"), writes_before);
}

#[tokio::test]
async fn an_object_deleted_under_observe_is_released_at_once_without_a_delete() {
    use crate::api::Management;
    let azure = granted(1).await;
    let mut leaving = access("team-a", "chat", vec![object(1)]);
    leaving.being_deleted = true;
    let mut source = source(vec![leaving]);
    source.account.management = Management::Observe;
    let outcome = run_pass(azure.azure(), &source, &config(), now()).await;
    assert!(outcome.accesses[0].cleanup_complete);
    assert_eq!(azure.calls("delete"), 0);
    assert_eq!(
        outcome.planned_writes.len(),
        1,
        "the delete Manage would make is listed"
    );
    // The account too: its finalizer goes without a DELETE.
    source.account_being_deleted = true;
    let outcome = run_pass(azure.azure(), &source, &config(), now()).await;
    assert!(outcome.account_cleanup_complete);
    assert_eq!(azure.calls("delete"), 0);
}

#[tokio::test]
async fn under_observe_a_mass_revocation_is_reported_held_as_under_manage_and_still_held_after_the_switch()
 {
    use crate::api::Management;
    let azure = granted(10).await;
    let brake = std::sync::Arc::new(brake::Brake::new(brake::BrakeConfig {
        budget: 50,
        window: Duration::from_secs(600),
        mass_share: 0.2,
        mass_minimum: 5,
        prune_grace: Duration::ZERO,
    }));
    let config = EngineConfig {
        brake: Some(brake),
        ..config()
    };
    let mut emptied = source(vec![access("team-a", "chat", vec![object(1)])]);
    emptied.account.management = Management::Observe;
    let observed = run_pass(azure.azure(), &emptied, &config, now()).await;
    let (hold, count) = observed.held.expect("held under Observe too");
    assert_eq!((hold.reason(), count), ("RevocationsBlocked", 9));
    assert!(
        observed.planned_writes.is_empty(),
        "held writes are not writes Manage would send"
    );
    // Switching to Manage: the brake decides the first Manage pass like any other.
    emptied.account.management = Management::Manage;
    let managed = run_pass(azure.azure(), &emptied, &config, now()).await;
    assert!(managed.held.is_some());
    assert_eq!(azure.calls("delete"), 0);
}

#[tokio::test]
async fn a_failed_create_is_reported_on_the_object_whose_role_it_was() {
    let azure = FakeAzure::default();
    azure
        .fail_creates_for
        .lock()
        .unwrap()
        .push(format!("{} OpenAIContributor", oid(1)));
    let mut contributor = access("team-b", "tuning", vec![object(1)]);
    std::sync::Arc::make_mut(&mut contributor.spec).role = RoleName::OpenAIContributor;
    let mut scope = source(vec![access("team-a", "chat", vec![object(1)]), contributor]);
    scope.account.allowed_roles = vec![RoleName::OpenAIUser, RoleName::OpenAIContributor];
    let outcome = run_pass(azure.azure(), &scope, &config(), now()).await;
    assert_eq!(
        outcome.accesses[0].status.principals[0].state,
        Some(GrantState::Granted)
    );
    assert_eq!(
        outcome.accesses[1].status.principals[0].state,
        Some(GrantState::Failed),
        "the same principal's grant of the other role failed"
    );
}

#[tokio::test]
async fn an_app_registration_is_a_workload_identity_only_with_its_own_federated_credential() {
    // No managed identity has the ServiceAccount's client id: it is an app registration's. Without
    // a federated credential on the application for this ServiceAccount it is a plain service
    // principal, which an account requiring federation refuses (the app-registration escape).
    let sa = Principal {
        service_account: Some("chat".into()),
        ..Default::default()
    };
    let azure = FakeAzure {
        applications: vec![("client-chat".into(), vec![])],
        ..Default::default()
    };
    let outcome = run_pass(
        azure.azure(),
        &source(vec![access("team-a", "chat", vec![sa.clone()])]),
        &config(),
        now(),
    )
    .await;
    let status = &outcome.accesses[0].status.principals[0];
    assert_eq!(
        (status.state, status.reason.as_deref()),
        (Some(GrantState::Denied), Some(reasons::FEDERATION_MISSING))
    );
    assert_eq!(azure.calls("put"), 0);
    assert_eq!(azure.calls("application credentials client-chat"), 1);

    // With the application's credential for exactly this ServiceAccount, issuer and audience.
    let azure = FakeAzure {
        applications: vec![(
            "client-chat".into(),
            vec![FederatedCredential {
                name: "chat".into(),
                issuer: "https://oidc.example".into(),
                subject: "system:serviceaccount:team-a:chat".into(),
                audiences: vec!["api://AzureADTokenExchange".into()],
            }],
        )],
        ..Default::default()
    };
    let outcome = run_pass(
        azure.azure(),
        &source(vec![access("team-a", "chat", vec![sa])]),
        &config(),
        now(),
    )
    .await;
    let status = &outcome.accesses[0].status.principals[0];
    assert_eq!(status.state, Some(GrantState::Granted));
    assert_eq!(status.object_id.as_deref(), Some(oid(7).as_str()));
    assert_eq!(azure.calls("service principal client-chat"), 1);
}

#[tokio::test]
async fn a_denied_namespace_costs_no_lookup() {
    let azure = FakeAzure::default();
    let user = Principal {
        user: Some("alice@contoso.com".into()),
        ..Default::default()
    };
    let outcome = run_pass(
        azure.azure(),
        &source(vec![access("team-z", "probe", vec![user])]),
        &config(),
        now(),
    )
    .await;
    assert_eq!(azure.calls("user"), 0, "no directory oracle");
    let status = &outcome.accesses[0].status.principals[0];
    assert_eq!(
        status.reason.as_deref(),
        Some(reasons::NAMESPACE_NOT_ALLOWED)
    );
    assert_eq!(status.object_id, None);
}

// Grants for objects 1..=n made by a first pass; returns the fake with them in place.
async fn granted(n: u8) -> FakeAzure {
    let azure = FakeAzure::default();
    let principals = (1..=n).map(object).collect();
    run_pass(
        azure.azure(),
        &source(vec![access("team-a", "chat", principals)]),
        &config(),
        now(),
    )
    .await;
    assert_eq!(azure.calls("put"), usize::from(n));
    azure
}

#[tokio::test]
async fn an_incomplete_view_creates_but_revokes_nothing_and_says_why() {
    let azure = granted(1).await;
    // The object is gone from the view, and a new one appears: the view is not whole.
    let mut incomplete = source(vec![access("team-b", "new", vec![object(2)])]);
    incomplete.view = ViewCompleteness::Incomplete {
        reason: "the Namespace watch answers 403".into(),
    };
    let outcome = run_pass(azure.azure(), &incomplete, &config(), now()).await;
    assert_eq!(azure.calls("delete"), 0);
    assert_eq!(azure.calls("put"), 2, "the new grant is made");
    let (hold, count) = outcome.held.expect("a hold is reported");
    assert_eq!((hold.reason(), count), ("ViewIncomplete", 1));
    assert!(hold.message("prod").contains("403"));
    // Once whole, the undeclared grant goes.
    run_pass(
        azure.azure(),
        &source(vec![access("team-b", "new", vec![object(2)])]),
        &config(),
        now(),
    )
    .await;
    assert_eq!(azure.calls("delete"), 1);
}

#[tokio::test]
async fn a_malformed_object_keeps_the_grants_its_status_names() {
    let azure = granted(2).await;
    let mut view = source(vec![]);
    view.malformed = vec![MalformedObject {
        key: ObjectKey {
            namespace: "team-b".into(),
            name: "broken".into(),
        },
        account_ref: Some("prod".into()),
        recorded_object_ids: vec![oid(1).to_ascii_uppercase()],
        error: "status.principals[0].grantedAt: out of range".into(),
    }];
    run_pass(azure.azure(), &view, &config(), now()).await;
    let deleted: Vec<String> = azure
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.starts_with("delete"))
        .cloned()
        .collect();
    assert_eq!(
        deleted.len(),
        1,
        "only the grant it does not name: {deleted:?}"
    );
    assert!(
        azure
            .assignments
            .lock()
            .unwrap()
            .iter()
            .any(|a| a.principal_id == oid(1)),
        "the named grant stays"
    );
}

#[tokio::test]
async fn a_malformed_object_whose_status_names_nothing_keeps_the_grants_it_declared() {
    let azure = granted(2).await;
    let mut view = source(vec![]);
    view.malformed = vec![MalformedObject {
        key: ObjectKey {
            namespace: "team-a".into(),
            name: "chat".into(),
        },
        account_ref: None,
        recorded_object_ids: vec![],
        error: "spec.role: unknown variant".into(),
    }];
    let outcome = run_pass(azure.azure(), &view, &config(), now()).await;
    assert_eq!(
        azure.calls("delete"),
        0,
        "both markers say declared-by=team-a/chat"
    );
    assert_eq!(
        outcome.held.map(|(h, n)| (h.reason(), n)),
        Some(("ViewIncomplete", 2))
    );
}

#[tokio::test]
async fn a_paused_account_writes_nothing() {
    let azure = granted(1).await;
    let mut paused = source(vec![access("team-b", "new", vec![object(2)])]);
    paused.paused = true;
    let outcome = run_pass(azure.azure(), &paused, &config(), now()).await;
    assert_eq!((azure.calls("put"), azure.calls("delete")), (1, 0));
    assert_eq!(
        outcome.held.map(|(h, n)| (h.reason(), n)),
        Some(("Paused", 2))
    );
}

#[derive(Debug)]
struct LeaseEnds(Mutex<usize>);

impl Fence for LeaseEnds {
    // Allows this many writes, then refuses.
    fn may_write(&self) -> Result<(), String> {
        let mut left = self.0.lock().unwrap();
        if *left == 0 {
            return Err("lease ends in 1s, an attempt may take 5s".into());
        }
        *left -= 1;
        Ok(())
    }
}

#[tokio::test]
async fn a_fenced_pass_stops_before_the_next_arm_write() {
    let azure = FakeAzure::default();
    let mut config = config();
    config.fence = Some(std::sync::Arc::new(LeaseEnds(Mutex::new(1))));
    let outcome = run_pass(
        azure.azure(),
        &source(vec![access(
            "team-a",
            "chat",
            vec![object(1), object(2), object(3)],
        )]),
        &config,
        now(),
    )
    .await;
    assert_eq!(azure.calls("put"), 1, "one write, then the fence closed");
    assert!(
        outcome
            .fenced
            .as_deref()
            .is_some_and(|w| w.contains("lease"))
    );
    assert_eq!(
        outcome
            .results
            .iter()
            .filter(|r| matches!(r, WriteResult::NotAttempted))
            .count(),
        2
    );
}

#[tokio::test]
async fn a_write_the_clients_fence_refuses_stops_the_pass_like_the_engines_fence() {
    // The engine's check passed, then pacing in the client outlived the lease: the client sent
    // nothing and said Fenced. The pass stops there, and no failure is reported for the grant.
    let azure = FakeAzure {
        client_fence_after: Mutex::new(Some(1)),
        ..FakeAzure::default()
    };
    let outcome = run_pass(
        azure.azure(),
        &source(vec![access(
            "team-a",
            "chat",
            vec![object(1), object(2), object(3)],
        )]),
        &config(),
        now(),
    )
    .await;
    assert_eq!(
        azure.calls("put"),
        1,
        "one write, then the client's fence closed"
    );
    assert!(
        outcome
            .fenced
            .as_deref()
            .is_some_and(|w| w.contains("lease has 200ms left")),
        "{:?}",
        outcome.fenced
    );
    assert_eq!(
        outcome
            .results
            .iter()
            .filter(|r| matches!(r, WriteResult::NotAttempted))
            .count(),
        2
    );
    assert!(
        !outcome
            .events
            .iter()
            .any(|e| e.reason == "RoleAssignmentFailed"),
        "a write never sent is not a failed grant"
    );
}

#[tokio::test]
async fn the_brake_holds_a_mass_revocation_until_confirmed() {
    let azure = granted(12).await;
    let mut config = config();
    config.brake = Some(std::sync::Arc::new(brake::Brake::new(brake::BrakeConfig {
        budget: 100,
        window: Duration::from_secs(600),
        mass_share: 0.2,
        mass_minimum: 10,
        prune_grace: Duration::ZERO,
    })));
    // The object still names one principal: 11 of 12 owned grants would go.
    let mut shrunk = access("team-a", "chat", vec![object(1)]);
    shrunk.previous = None;
    let held = run_pass(azure.azure(), &source(vec![shrunk.clone()]), &config, now()).await;
    assert_eq!(azure.calls("delete"), 0);
    assert_eq!(
        held.held.map(|(h, n)| (h.reason(), n)),
        Some(("RevocationsBlocked", 11))
    );
    let mut confirmed = source(vec![shrunk]);
    confirmed.confirmed_revocations = Some(11);
    run_pass(azure.azure(), &confirmed, &config, now()).await;
    assert_eq!(azure.calls("delete"), 11);
}

// ---- Caches hold facts, never decisions ----

mod warm_and_cold {
    use super::*;
    use crate::engine::resolve::ResolutionCache;
    use proptest::prelude::*;

    const NAMESPACES: [&str; 3] = ["team-a", "team-b", "team-c"];
    const SERVICE_ACCOUNTS: [&str; 2] = ["chat", "batch"];
    // What a ServiceAccount's client id annotation may name: two managed identities, two app
    // registrations, an id nothing knows, or no annotation.
    const CLIENT_IDS: [Option<&str>; 6] = [
        Some("mi-1"),
        Some("mi-2"),
        Some("app-1"),
        Some("app-2"),
        Some("nobody"),
        None,
    ];
    const ISSUERS: [&str; 2] = ["https://oidc.example/", "https://oidc.other.example/"];

    #[derive(Clone, Debug)]
    struct Directory {
        // (namespace, ServiceAccount) -> index into CLIENT_IDS
        annotations: Vec<usize>,
        // Per identity (mi-1, mi-2, app-1, app-2): credentials as (namespace, sa, issuer, audience ok).
        credentials: Vec<Vec<(usize, usize, usize, bool)>>,
        // Whether app-1 / app-2 have their application object in this tenant.
        apps_here: Vec<bool>,
    }

    #[derive(Clone, Debug)]
    struct Policy {
        require_federation: bool,
        kinds: Vec<PrincipalKind>,
    }

    // An object: namespace, principals (0..2 = a ServiceAccount, 2 = alice, 3 = an objectId).
    type Object = (usize, Vec<usize>);

    fn directory() -> impl Strategy<Value = Directory> {
        (
            // Dense on purpose: ServiceAccounts of one name in several namespaces sharing an
            // identity, credentials mostly for this cluster's issuer, so that what one object's
            // lookup cached is what another object (or another account) would look up.
            prop::collection::vec(
                prop::sample::select(vec![0usize, 0, 0, 0, 2, 2, 2, 1, 3, 4, 5]),
                NAMESPACES.len() * SERVICE_ACCOUNTS.len(),
            ),
            prop::collection::vec(
                prop::collection::vec(
                    (
                        0..3usize,
                        0..2usize,
                        prop::sample::select(vec![0usize, 0, 0, 1]),
                        prop::sample::select(vec![true, true, true, false]),
                    ),
                    0..4,
                ),
                4,
            ),
            prop::collection::vec(any::<bool>(), 2),
        )
            .prop_map(|(annotations, credentials, apps_here)| Directory {
                annotations,
                credentials,
                apps_here,
            })
    }

    fn policy() -> impl Strategy<Value = Policy> {
        (
            any::<bool>(),
            prop::sample::subsequence(PrincipalKind::ALL.to_vec(), 1..=5),
        )
            .prop_map(|(require_federation, kinds)| Policy {
                require_federation,
                kinds,
            })
    }

    fn objects() -> impl Strategy<Value = Vec<Object>> {
        // Mostly ServiceAccounts, mostly in the two allowed namespaces.
        prop::collection::vec(
            (
                prop::sample::select(vec![0usize, 0, 1, 1, 2]),
                prop::collection::vec(prop::sample::select(vec![0usize, 0, 1, 1, 2, 3]), 1..4),
            ),
            1..5,
        )
    }

    fn fake(directory: &Directory, observed: &[ObservedAssignment]) -> FakeAzure {
        let credential =
            |(ns, sa, issuer, audience): &(usize, usize, usize, bool)| FederatedCredential {
                name: format!("{ns}-{sa}-{issuer}"),
                issuer: ISSUERS[*issuer].into(),
                subject: format!(
                    "system:serviceaccount:{}:{}",
                    NAMESPACES[*ns], SERVICE_ACCOUNTS[*sa]
                ),
                audiences: vec![if *audience {
                    "api://AzureADTokenExchange".into()
                } else {
                    "api://other".into()
                }],
            };
        let identities = (0..2)
            .map(|i| {
                (
                    ManagedIdentity {
                        resource_id: format!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mi-{}", i + 1),
                        principal_id: oid(20 + i as u8),
                        client_id: format!("mi-{}", i + 1),
                        tenant_id: "t".into(),
                    },
                    directory.credentials[i].iter().map(credential).collect(),
                )
            })
            .collect();
        let applications = (0..2)
            .filter(|i| directory.apps_here[*i])
            .map(|i| {
                (
                    format!("app-{}", i + 1),
                    directory.credentials[2 + i]
                        .iter()
                        .map(credential)
                        .collect(),
                )
            })
            .collect();
        FakeAzure {
            assignments: Mutex::new(observed.to_vec()),
            identities,
            applications,
            service_principals: vec![("app-1".into(), oid(30)), ("app-2".into(), oid(31))],
            ..Default::default()
        }
    }

    fn scope_source(directory: &Directory, policy: &Policy, objects: &[Object]) -> ScopeSource {
        let principal = |p: usize| match p {
            0 | 1 => Principal {
                service_account: Some(SERVICE_ACCOUNTS[p].into()),
                ..Default::default()
            },
            2 => Principal {
                user: Some("alice@contoso.com".into()),
                ..Default::default()
            },
            _ => object(5),
        };
        let mut source = source(
            objects
                .iter()
                .enumerate()
                .map(|(i, (ns, principals))| {
                    access(
                        NAMESPACES[*ns],
                        &format!("obj-{i}"),
                        principals.iter().map(|p| principal(*p)).collect(),
                    )
                })
                .collect(),
        );
        source.account.require_federation = policy.require_federation;
        source.account.allowed_principal_kinds = policy.kinds.clone();
        source.service_accounts = NAMESPACES
            .iter()
            .enumerate()
            .flat_map(|(n, ns)| {
                SERVICE_ACCOUNTS.iter().enumerate().map(move |(s, sa)| {
                    (
                        ObjectKey {
                            namespace: ns.to_string(),
                            name: sa.to_string(),
                        },
                        (n, s),
                    )
                })
            })
            .map(|(key, (n, s))| {
                let client = CLIENT_IDS[directory.annotations[n * SERVICE_ACCOUNTS.len() + s]];
                (
                    key,
                    ServiceAccountInfo {
                        client_id: client.map(str::to_string),
                    },
                )
            })
            .collect();
        source
    }

    // What a plan-only pass decides: its writes and every object's status.
    fn decided(
        azure: &FakeAzure,
        source: &ScopeSource,
        cache: Option<std::sync::Arc<ResolutionCache>>,
    ) -> (Vec<crate::plan::Write>, Vec<OpenAIAccessStatus>) {
        let config = EngineConfig {
            dry_run: true,
            resolution_cache: cache,
            ..config()
        };
        let outcome = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(run_pass(azure.azure(), source, &config, now()));
        (
            outcome.plan.map(|p| p.writes).unwrap_or_default(),
            outcome.accesses.into_iter().map(|a| a.status).collect(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        /// A pass after other passes warmed the caches (other objects, other account policies:
        /// federation optional, other kinds) plans exactly what a pass with cold caches plans.
        #[test]
        fn a_warm_and_a_cold_cache_plan_the_same_writes_and_status(
            directory in directory(),
            target in (policy(), objects()),
            warmups in prop::collection::vec((policy(), objects()), 1..3),
            owned in prop::collection::vec(prop::sample::select(vec![1u8, 5, 20, 21, 30, 31]), 0..3),
        ) {
            let observed: Vec<ObservedAssignment> = owned
                .iter()
                .map(|n| ObservedAssignment {
                    id: format!("{SCOPE}/providers/Microsoft.Authorization/roleAssignments/00000000-0000-4000-8000-0000000000{n:02x}"),
                    name: format!("00000000-0000-4000-8000-0000000000{n:02x}"),
                    scope: SCOPE.into(),
                    principal_id: oid(*n),
                    principal_type: Some("ServicePrincipal".into()),
                    role_definition_id: RoleName::OpenAIUser.definition_id("x"),
                    description: Some(crate::plan::ownership::ownership_marker(
                        &config().instance,
                        "team-a/earlier",
                    )),
                    condition: None,
                    created_on: Some("2026-11-01T00:00:00Z".parse().unwrap()),
                })
                .collect();
            let azure = fake(&directory, &observed);
            let cache = std::sync::Arc::new(ResolutionCache::new(Duration::from_secs(3600)));
            for (policy, objects) in &warmups {
                decided(&azure, &scope_source(&directory, policy, objects), Some(cache.clone()));
            }
            let (policy, objects) = &target;
            let source = scope_source(&directory, policy, objects);
            let warm = decided(&azure, &source, Some(cache));
            let cold = decided(&fake(&directory, &observed), &source, None);
            prop_assert_eq!(&warm.0, &cold.0, "writes");
            prop_assert_eq!(&warm.1, &cold.1, "status");
        }
    }
}

// Enforcement Exclusive through the engine: portal-6 is made outside keyless and declared by
// nobody.
async fn exclusive_workload() -> FakeAzure {
    let azure = observe_workload().await;
    azure.assignments.lock().unwrap().push(ObservedAssignment {
        id: format!("{SCOPE}/providers/Microsoft.Authorization/roleAssignments/portal-6"),
        name: "portal-6".into(),
        scope: SCOPE.into(),
        principal_id: oid(6),
        principal_type: Some("User".into()),
        role_definition_id: RoleName::OpenAIUser
            .definition_id("3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f"),
        description: None,
        condition: None,
        created_on: Some("2026-11-01T00:00:00Z".parse().unwrap()),
    });
    azure
}

fn exclusive_source(management: crate::api::Management) -> ScopeSource {
    let mut source = observe_source(management);
    source.account.enforcement = crate::api::Enforcement::Exclusive;
    source
}

fn exclusive_config() -> EngineConfig {
    EngineConfig {
        exclusive_grace: Duration::from_secs(3600),
        ..config()
    }
}

#[tokio::test]
async fn under_observe_exclusive_plans_its_revocation_as_a_delete_and_sends_nothing() {
    use crate::api::{Management, PlannedAction};
    let azure = exclusive_workload().await;
    let outcome = run_pass(
        azure.azure(),
        &exclusive_source(Management::Observe),
        &exclusive_config(),
        now(),
    )
    .await;
    let planned: Vec<(PlannedAction, String, Option<String>)> = outcome
        .planned_writes
        .iter()
        .filter(|w| w.principal_id == oid(6))
        .map(|w| (w.action, w.assignment_name.clone(), w.because.clone()))
        .collect();
    assert_eq!(
        planned,
        vec![(
            PlannedAction::Delete,
            "portal-6".to_string(),
            Some(reasons::NOT_DECLARED.to_string())
        )]
    );
    assert_eq!(azure.calls("delete"), 0);
}

#[tokio::test]
async fn under_manage_exclusive_first_lists_and_revokes_on_a_pass_after_the_grace() {
    use crate::api::Management;
    let azure = exclusive_workload().await;
    let first = run_pass(
        azure.azure(),
        &exclusive_source(Management::Manage),
        &exclusive_config(),
        now(),
    )
    .await;
    let listed = first.plan.as_ref().unwrap().exclusive.listed.clone();
    assert_eq!(
        listed
            .iter()
            .map(|r| r.assignment_name.as_str())
            .collect::<Vec<_>>(),
        vec!["portal-6"]
    );
    let deletes_before = azure.calls("delete");
    assert!(
        !first
            .events
            .iter()
            .any(|e| e.reason == "ExclusiveRevocation"),
        "the first pass only lists"
    );
    assert!(
        first
            .requeue_at
            .is_some_and(|at| at <= now() + jiff::SignedDuration::from_hours(1))
    );

    let mut source = exclusive_source(Management::Manage);
    source.exclusive_reported = listed;
    let later = now() + jiff::SignedDuration::from_hours(2);
    let second = run_pass(azure.azure(), &source, &exclusive_config(), later).await;
    assert_eq!(azure.calls("delete"), deletes_before + 1);
    assert!(
        !azure
            .assignments
            .lock()
            .unwrap()
            .iter()
            .any(|a| a.name == "portal-6")
    );
    let event = second
        .events
        .iter()
        .find(|e| e.reason == "ExclusiveRevocation")
        .unwrap();
    assert!(
        event.note.contains("portal-6") && event.note.contains("created by"),
        "{}",
        event.note
    );
}
