//! The planner's rules, one table row or test each, and its invariants as properties.

use super::ownership::{assignment_name, grant_name, ownership_marker};
use super::planner::*;
use super::policy::NamespaceLabels;
use super::*;
use crate::api::common::Time;
use crate::api::{
    AccountRef, AllowedNamespaces, DeletionPolicy, GrantState, OpenAIAccessSpec,
    OpenAIAccessStatus, OpenAIAccountSpec, Principal, PrincipalKind, RoleName, reasons,
};
use jiff::Timestamp;
use proptest::prelude::*;
use std::time::Duration;

const SCOPE: &str = "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-ai-prod/providers/Microsoft.CognitiveServices/accounts/oai-prod";

fn scope() -> AccountScope {
    AccountScope::parse(SCOPE).unwrap()
}

fn us() -> InstanceId {
    InstanceId::new("cluster-a").unwrap()
}

fn them() -> InstanceId {
    InstanceId::new("cluster-b").unwrap()
}

// Another cluster installed with our id: same id, another fingerprint.
fn twin() -> InstanceId {
    InstanceId::new("cluster-a")
        .unwrap()
        .with_fingerprint("7c9e6679-7425-40de-944b-e07fc1f90ae7")
        .unwrap()
}

fn us_fingerprinted() -> InstanceId {
    us().with_fingerprint("0f8fad5b-d9cb-469f-a165-70867728950e")
        .unwrap()
}

fn now() -> Timestamp {
    "2026-11-28T12:00:00Z".parse().unwrap()
}

fn oid(n: u8) -> String {
    format!("00000000-0000-0000-0000-0000000000{n:02x}")
}

fn mk_account(namespaces: &[&str]) -> AccountInput {
    AccountInput {
        name: "prod".into(),
        spec: OpenAIAccountSpec {
            resource_id: SCOPE.into(),
            allowed_namespaces: Some(AllowedNamespaces {
                names: namespaces.iter().map(|s| s.to_string()).collect(),
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
        being_deleted: false,
    }
}

fn mk_principal(n: u8) -> Principal {
    Principal {
        object_id: Some(oid(n)),
        principal_type: Some(PrincipalType::User),
        ..Default::default()
    }
}

fn mk_access(namespace: &str, name: &str, principals: &[u8]) -> AccessInput {
    AccessInput {
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
            principals: principals.iter().map(|n| mk_principal(*n)).collect(),
            expires_at: None,
            deletion_policy: DeletionPolicy::Delete,
            export_to: None,
        }),
        being_deleted: false,
        previous: None,
        resolutions: principals.iter().map(|n| resolved(*n)).collect(),
    }
}

fn resolved(n: u8) -> Resolution {
    Resolution::Resolved {
        object_id: oid(n),
        principal_type: PrincipalType::User,
        federation: None,
    }
}

/// A temporary failure (or a replicating principal).
fn unresolved(replicating: bool) -> Resolution {
    Resolution::Unresolved {
        reason: reasons::RESOLUTION_FAILED.into(),
        message: "not found".into(),
        failure: if replicating {
            Failure::Replicating
        } else {
            Failure::Temporary
        },
    }
}

fn lasting() -> Resolution {
    Resolution::Unresolved {
        reason: "ServiceAccountNotFound".into(),
        message: "gone".into(),
        failure: Failure::Lasting,
    }
}

fn key(namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn grant(n: u8) -> GrantKey {
    GrantKey::new(&oid(n), RoleName::OpenAIUser)
}

fn ours_by(n: u8, declared_by: &str) -> ObservedAssignment {
    let name = assignment_name(&scope(), &oid(n), RoleName::OpenAIUser).to_string();
    mk_observed(n, &name, Some(ownership_marker(&us(), declared_by)))
}

fn recorded(access: &mut AccessInput, ids: &[u8]) {
    access.previous = Some(std::sync::Arc::new(OpenAIAccessStatus {
        principals: ids
            .iter()
            .map(|n| crate::api::PrincipalStatus {
                principal: mk_principal(*n).reference().unwrap().to_string(),
                object_id: Some(oid(*n)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }));
}

fn mk_observed(n: u8, name: &str, description: Option<String>) -> ObservedAssignment {
    ObservedAssignment {
        id: format!("{SCOPE}/providers/Microsoft.Authorization/roleAssignments/{name}"),
        name: name.into(),
        scope: SCOPE.into(),
        principal_id: oid(n),
        principal_type: Some("User".into()),
        role_definition_id: format!(
            "/providers/Microsoft.Authorization/roleDefinitions/{}",
            RoleName::OpenAIUser.definition_guid()
        ),
        description,
        condition: None,
        created_on: Some("2026-11-01T00:00:00Z".parse().unwrap()),
    }
}

fn ours(n: u8) -> ObservedAssignment {
    ours_by(n, "team-a/earlier")
}

fn theirs(n: u8) -> ObservedAssignment {
    let name = assignment_name(&scope(), &oid(n), RoleName::OpenAIUser).to_string();
    mk_observed(n, &name, Some(ownership_marker(&them(), "team-a/chat")))
}

fn twins(n: u8) -> ObservedAssignment {
    let name = grant_name(&twin(), &scope(), &oid(n), RoleName::OpenAIUser).to_string();
    mk_observed(n, &name, Some(ownership_marker(&twin(), "team-a/chat")))
}

fn bicep(n: u8) -> ObservedAssignment {
    mk_observed(n, "9d3e5b1a-7c2f-4e8d-b6a0-1f2e3d4c5b6a", None)
}

struct World {
    account: AccountInput,
    accesses: Vec<AccessInput>,
    observation: Observation,
    max_deletes: usize,
    namespaces: NamespaceLabels,
    view: ViewCompleteness,
    malformed: Vec<MalformedObject>,
    instance: InstanceId,
    exclusive: super::exclusive::ExclusiveContext,
}

impl World {
    fn new(accesses: Vec<AccessInput>, observed: Vec<ObservedAssignment>) -> World {
        World {
            account: mk_account(&["team-a", "team-b"]),
            accesses,
            observation: Observation::Complete(observed),
            max_deletes: 100,
            namespaces: NamespaceLabels::new(),
            view: ViewCompleteness::Complete,
            malformed: Vec::new(),
            instance: us(),
            exclusive: Default::default(),
        }
    }

    fn plan(&self) -> Plan {
        let scope = scope();
        let instance = self.instance.clone();
        plan(&PlanInput {
            scope: &scope,
            account: &self.account,
            accesses: &self.accesses,
            namespaces: &self.namespaces,
            observation: &self.observation,
            instance: &instance,
            now: now(),
            max_deletes: self.max_deletes,
            replication_deadline: Duration::from_secs(600),
            propagation_grace: Duration::from_secs(300),
            view: &self.view,
            malformed: &self.malformed,
            exclusive: &self.exclusive,
        })
    }
}

fn creates(plan: &Plan) -> Vec<&NewAssignment> {
    plan.writes
        .iter()
        .filter_map(|w| match w {
            Write::Create { assignment, .. } => Some(assignment),
            _ => None,
        })
        .collect()
}

fn deletes(plan: &Plan) -> Vec<&ObservedAssignment> {
    plan.writes
        .iter()
        .filter_map(|w| match w {
            Write::Delete { assignment, .. } => Some(assignment),
            _ => None,
        })
        .collect()
}

fn releases(plan: &Plan) -> Vec<&NewAssignment> {
    plan.writes
        .iter()
        .filter_map(|w| match w {
            Write::Release { assignment, .. } => Some(assignment),
            _ => None,
        })
        .collect()
}

fn state_of(plan: &Plan, object: usize, principal: usize) -> (Option<GrantState>, Option<String>) {
    let p = &plan.accesses[object].principals[principal];
    (p.state, p.reason.clone())
}

#[test]
fn a_grant_named_the_old_way_is_still_recognised_as_ours() {
    let legacy = ours(1);
    assert_eq!(
        legacy.name,
        assignment_name(&scope(), &oid(1), RoleName::OpenAIUser).to_string()
    );
    let kept = World::new(
        vec![mk_access("team-a", "chat", &[1])],
        vec![legacy.clone()],
    )
    .plan();
    assert!(
        kept.is_noop(),
        "declared: kept, not created again: {:?}",
        kept.writes
    );
    assert_eq!(
        state_of(&kept, 0, 0).0,
        Some(GrantState::Granted),
        "reported as this keyless's grant"
    );
    let gone = World::new(vec![], vec![legacy.clone()]).plan();
    assert_eq!(
        deletes(&gone),
        vec![&legacy],
        "undeclared: deleted like any of ours"
    );
}

#[test]
fn our_instance_id_with_another_fingerprint_stops_every_delete_on_the_account() {
    let mut world = World::new(
        vec![mk_access("team-a", "chat", &[3])],
        vec![ours(1), twins(2)],
    );
    world.instance = us_fingerprinted();
    let plan = world.plan();
    assert!(deletes(&plan).is_empty(), "{:?}", plan.writes);
    let collision = plan.instance_collision.as_deref().unwrap_or_default();
    assert!(
        collision.contains("instance id cluster-a")
            && collision.contains("7c9e6679-7425-40de-944b-e07fc1f90ae7"),
        "{collision}"
    );
    assert_eq!(plan.deletions_blocked.as_deref(), Some(collision));
    // Creating what is declared and missing still happens: it writes only our own names.
    assert_eq!(creates(&plan).len(), 1);
    // Without the twin, our undeclared grant goes.
    world.observation = Observation::Complete(vec![ours(1)]);
    let plan = world.plan();
    assert_eq!(deletes(&plan), vec![&ours(1)]);
    assert_eq!(plan.instance_collision, None);
}

#[test]
fn a_missing_grant_is_created_with_the_deterministic_name_and_our_marker() {
    let plan = World::new(vec![mk_access("team-a", "chat", &[1])], vec![]).plan();
    let created = creates(&plan);
    assert_eq!(created.len(), 1);
    assert_eq!(
        created[0].name,
        grant_name(&us(), &scope(), &oid(1), RoleName::OpenAIUser)
    );
    assert_ne!(
        created[0].name,
        assignment_name(&scope(), &oid(1), RoleName::OpenAIUser),
        "new grants are named with the instance"
    );
    assert_eq!(created[0].principal_type, PrincipalType::User);
    assert_eq!(
        created[0].description,
        ownership_marker(&us(), "team-a/chat")
    );
    assert_eq!(
        state_of(&plan, 0, 0),
        (Some(GrantState::Pending), Some(reasons::PENDING.into()))
    );
}

#[test]
fn an_owned_grant_in_place_is_kept_and_reported_with_arms_created_on() {
    let plan = World::new(vec![mk_access("team-a", "chat", &[1])], vec![ours(1)]).plan();
    assert!(plan.is_noop());
    let status = &plan.accesses[0].principals[0];
    assert_eq!(status.state, Some(GrantState::Granted));
    assert_eq!(
        status.granted_at,
        Some(Time("2026-11-01T00:00:00Z".parse().unwrap()))
    );
    assert_eq!(
        status.role_assignment_id.as_deref(),
        Some(ours(1).id.as_str())
    );
}

#[test]
fn an_equivalent_assignment_made_by_someone_else_is_adopted_never_rewritten() {
    let plan = World::new(vec![mk_access("team-a", "chat", &[1])], vec![bicep(1)]).plan();
    assert!(plan.is_noop());
    assert_eq!(
        state_of(&plan, 0, 0),
        (Some(GrantState::Granted), Some(reasons::ADOPTED.into()))
    );
    // And once nobody declares it, it is still not ours to delete.
    let plan = World::new(vec![], vec![bicep(1)]).plan();
    assert!(plan.is_noop());
}

#[test]
fn ids_match_whatever_case_and_role_definition_form_arm_returns() {
    let mut shouted = ours(1);
    shouted.principal_id = shouted.principal_id.to_uppercase();
    shouted.scope = SCOPE.to_uppercase();
    shouted.role_definition_id = RoleName::OpenAIUser
        .definition_id("3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f")
        .to_uppercase();
    let plan = World::new(vec![mk_access("team-a", "chat", &[1])], vec![shouted]).plan();
    assert!(plan.is_noop(), "{:?}", plan.writes);
}

#[test]
fn assignments_at_other_scopes_are_ignored() {
    let mut parent = ours(1);
    parent.scope =
        "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-ai-prod".into();
    let plan = World::new(vec![], vec![parent]).plan();
    assert!(plan.is_noop());
}

#[test]
fn an_owned_grant_nobody_declares_is_deleted() {
    let plan = World::new(
        vec![mk_access("team-a", "chat", &[1])],
        vec![ours(1), ours(2)],
    )
    .plan();
    assert_eq!(deletes(&plan), vec![&ours(2)]);
}

#[test]
fn another_instances_grant_is_never_touched() {
    let plan = World::new(vec![], vec![theirs(1)]).plan();
    assert!(plan.is_noop());
}

#[test]
fn a_shared_grant_stays_while_another_live_object_declares_it() {
    let mut leaving = mk_access("team-a", "chat", &[1]);
    leaving.being_deleted = true;
    let plan = World::new(
        vec![leaving, mk_access("team-b", "search", &[1])],
        vec![ours(1)],
    )
    .plan();
    assert!(plan.is_noop());
    assert_eq!(plan.accesses[0].cleanup, Cleanup::Complete);
    assert_eq!(
        state_of(&plan, 0, 0).1.as_deref(),
        Some(reasons::STILL_DECLARED)
    );
}

#[test]
fn deleting_the_last_declaring_object_deletes_its_grant_then_releases_the_finalizer() {
    let mut leaving = mk_access("team-a", "chat", &[1]);
    leaving.being_deleted = true;
    let plan = World::new(vec![leaving], vec![ours(1)]).plan();
    assert_eq!(deletes(&plan), vec![&ours(1)]);
    assert_eq!(
        plan.accesses[0].cleanup,
        Cleanup::AfterWrites(vec![grant(1)])
    );
}

#[test]
fn policy_denials_are_reported_and_revoke_what_keyless_made() {
    // (namespace, role, allowed kinds, expected reason)
    let cases: &[(&str, RoleName, &[PrincipalKind], &str)] = &[
        (
            "team-z",
            RoleName::OpenAIUser,
            &PrincipalKind::ALL,
            reasons::NAMESPACE_NOT_ALLOWED,
        ),
        (
            "team-a",
            RoleName::OpenAIContributor,
            &PrincipalKind::ALL,
            reasons::ROLE_NOT_ALLOWED,
        ),
        (
            "team-a",
            RoleName::OpenAIUser,
            &[PrincipalKind::WorkloadIdentity],
            reasons::PRINCIPAL_KIND_NOT_ALLOWED,
        ),
    ];
    for (namespace, role, kinds, reason) in cases {
        let mut access = mk_access(namespace, "chat", &[1]);
        std::sync::Arc::make_mut(&mut access.spec).role = *role;
        let mut world = World::new(vec![access], vec![]);
        world.account.spec.allowed_principal_kinds = kinds.to_vec();
        let plan = world.plan();
        assert!(plan.is_noop(), "{reason}: nothing is created");
        assert_eq!(
            state_of(&plan, 0, 0),
            (Some(GrantState::Denied), Some(reason.to_string())),
            "{reason}"
        );

        let mut owned = ours(1);
        owned.role_definition_id = format!(
            "/providers/Microsoft.Authorization/roleDefinitions/{}",
            role.definition_guid()
        );
        world.observation = Observation::Complete(vec![owned.clone()]);
        let plan = world.plan();
        assert_eq!(deletes(&plan), vec![&owned], "{reason}: revoked");
        assert!(matches!(&plan.writes[0], Write::Delete { reason: r, .. } if r == reason));
    }
}

#[test]
fn a_denied_namespace_cannot_keep_a_grant_through_another_object_in_it() {
    let world = World::new(
        vec![
            mk_access("team-z", "a", &[1]),
            mk_access("team-z", "b", &[1]),
        ],
        vec![ours(1)],
    );
    assert_eq!(deletes(&world.plan()), vec![&ours(1)]);
}

#[test]
fn a_principal_that_fails_to_resolve_protects_the_grant_it_had() {
    let mut access = mk_access("team-a", "chat", &[1]);
    access.resolutions = vec![unresolved(false)];
    access.previous = Some(std::sync::Arc::new(OpenAIAccessStatus {
        principals: vec![crate::api::PrincipalStatus {
            principal: mk_principal(1).reference().unwrap().to_string(),
            object_id: Some(oid(1)),
            ..Default::default()
        }],
        ..Default::default()
    }));
    let plan = World::new(vec![access], vec![ours(1), ours(2)]).plan();
    assert_eq!(
        deletes(&plan),
        vec![&ours(2)],
        "only the unrelated orphan goes"
    );
    assert_eq!(state_of(&plan, 0, 0).0, Some(GrantState::Failed));
}

#[test]
fn a_temporary_failure_protects_only_what_its_object_declared() {
    let mut access = mk_access("team-a", "chat", &[1]);
    access.resolutions = vec![unresolved(false)];
    let plan = World::new(
        vec![access],
        vec![ours_by(2, "team-a/chat"), ours_by(3, "team-b/other")],
    )
    .plan();
    assert_eq!(
        deletes(&plan),
        vec![&ours_by(3, "team-b/other")],
        "its own marker protects; nothing else is held"
    );
    assert_eq!(plan.deletions_blocked, None);
}

#[test]
fn a_lasting_failure_holds_nothing_and_does_not_block_deletion() {
    let mut leaving = mk_access("team-a", "chat", &[1, 2]);
    leaving.resolutions = vec![resolved(1), lasting()];
    recorded(&mut leaving, &[1, 2]);
    leaving.being_deleted = true;
    let plan = World::new(vec![leaving], vec![ours(1), ours(2)]).plan();
    assert_eq!(deletes(&plan).len(), 2);
    assert!(matches!(plan.accesses[0].cleanup, Cleanup::AfterWrites(_)));
    assert_eq!(plan.accesses[0].principals[1].object_id, None);
}

#[test]
fn a_denied_namespace_cannot_block_revocations() {
    // An object in a namespace the account does not allow, naming something that cannot resolve,
    // and recording (forged) object ids: it changes nothing for anybody.
    let mut intruder = mk_access("team-z", "freeze", &[1, 2]);
    intruder.resolutions = vec![unresolved(false), unresolved(false)];
    recorded(&mut intruder, &[1, 2]);
    intruder.being_deleted = true;
    let plan = World::new(vec![intruder], vec![ours(1), ours(2)]).plan();
    assert_eq!(deletes(&plan).len(), 2);
    assert_eq!(plan.deletions_blocked, None);
    assert!(
        plan.accesses[0]
            .principals
            .iter()
            .all(|p| p.object_id.is_none()),
        "a denied namespace learns no object id"
    );
}

#[test]
fn an_unknown_namespace_gets_no_create_and_no_delete_and_a_note() {
    let mut world = World::new(
        vec![mk_access("team-u", "chat", &[1])],
        vec![ours_by(2, "team-u/chat"), ours_by(3, "team-b/gone")],
    );
    world.account.spec.allowed_namespaces = Some(AllowedNamespaces {
        names: vec![],
        selector: Some(crate::api::common::LabelSelector {
            match_labels: Some([("tier".to_string(), "ai".to_string())].into()),
            match_expressions: None,
        }),
    });
    let plan = world.plan();
    assert!(creates(&plan).is_empty());
    assert_eq!(deletes(&plan), vec![&ours_by(3, "team-b/gone")]);
    assert_eq!(
        state_of(&plan, 0, 0),
        (
            Some(GrantState::Pending),
            Some(reasons::NAMESPACE_UNKNOWN.into())
        )
    );
}

#[test]
fn an_incomplete_view_may_create_but_deletes_nothing_and_says_why() {
    let mut world = World::new(vec![mk_access("team-a", "chat", &[1])], vec![ours(2)]);
    world.view = ViewCompleteness::Incomplete {
        reason: "the OpenAIAccess watch has not synced".into(),
    };
    let plan = world.plan();
    assert_eq!(creates(&plan).len(), 1);
    assert!(deletes(&plan).is_empty());
    assert!(
        plan.deletions_blocked
            .as_deref()
            .unwrap_or_default()
            .contains("has not synced")
    );
}

#[test]
fn a_malformed_object_protects_exactly_its_own_grants() {
    let mut world = World::new(vec![], vec![ours_by(1, "team-a/broken"), ours(2), ours(3)]);
    world.malformed = vec![MalformedObject {
        key: key("team-a", "broken"),
        account_ref: Some("prod".into()),
        recorded_object_ids: vec![oid(2).to_uppercase()],
        error: "spec.principals: invalid type".into(),
    }];
    let plan = world.plan();
    assert_eq!(deletes(&plan), vec![&ours(3)]);
}

#[test]
fn retain_is_honoured_only_where_the_account_allows_it() {
    let mut leaving = mk_access("team-a", "chat", &[1]);
    leaving.being_deleted = true;
    std::sync::Arc::make_mut(&mut leaving.spec).deletion_policy = DeletionPolicy::Retain;
    let plan = World::new(vec![leaving], vec![ours(1)]).plan();
    assert_eq!(deletes(&plan), vec![&ours(1)], "treated as Delete");
    assert!(releases(&plan).is_empty());
}

#[test]
fn an_incomplete_list_allows_creates_but_no_deletes() {
    let mut world = World::new(vec![mk_access("team-a", "chat", &[1])], vec![]);
    world.observation = Observation::Incomplete(vec![ours(2)]);
    let plan = world.plan();
    assert_eq!(creates(&plan).len(), 1);
    assert!(deletes(&plan).is_empty());
    assert!(plan.deletions_blocked.is_some());
}

#[test]
fn an_unreadable_account_changes_nothing() {
    let mut leaving = mk_access("team-a", "chat", &[1]);
    leaving.being_deleted = true;
    let mut world = World::new(vec![leaving, mk_access("team-a", "x", &[2])], vec![]);
    world.observation = Observation::Unavailable {
        message: "503".into(),
    };
    let plan = world.plan();
    assert!(plan.is_noop());
    assert!(matches!(plan.accesses[0].cleanup, Cleanup::Blocked(_)));
}

#[test]
fn a_gone_account_counts_as_cleaned_up() {
    let mut leaving = mk_access("team-a", "chat", &[1]);
    leaving.being_deleted = true;
    let mut world = World::new(vec![leaving, mk_access("team-a", "x", &[2])], vec![]);
    world.observation = Observation::AccountGone;
    let plan = world.plan();
    assert!(plan.is_noop());
    assert_eq!(plan.accesses[0].cleanup, Cleanup::Complete);
    assert_eq!(
        state_of(&plan, 1, 0).1.as_deref(),
        Some(reasons::AZURE_ACCOUNT_NOT_FOUND)
    );
}

#[test]
fn the_delete_limit_defers_the_rest_and_says_so() {
    let mut world = World::new(vec![], (1..=5).map(ours).collect());
    world.max_deletes = 2;
    let plan = world.plan();
    assert_eq!(deletes(&plan).len(), 2);
    assert_eq!(plan.deferred_deletes, 3);
}

#[test]
fn a_principal_change_keeps_the_old_grant_until_the_new_one_is_past_its_grace() {
    let mut access = mk_access("team-a", "chat", &[2]);
    recorded(&mut access, &[1]);
    // Same label, other object id: the principal entry was edited in place.
    std::sync::Arc::make_mut(&mut access.spec).principals = vec![mk_principal(1)];
    access.resolutions = vec![resolved(2)];
    let plan = World::new(vec![access.clone()], vec![ours(1)]).plan();
    assert!(
        matches!(&plan.writes[..], [Write::Create { assignment, .. }] if assignment.principal_id == oid(2)),
        "only the create: {:?}",
        plan.writes
    );

    let mut fresh = ours(2);
    fresh.created_on = Some("2026-11-28T11:58:00Z".parse().unwrap());
    let plan = World::new(vec![access.clone()], vec![ours(1), fresh]).plan();
    assert!(plan.is_noop(), "the replacement is still propagating");

    let mut settled = ours(2);
    settled.created_on = Some("2026-11-28T11:50:00Z".parse().unwrap());
    let plan = World::new(vec![access.clone()], vec![ours(1), settled.clone()]).plan();
    assert_eq!(deletes(&plan), vec![&ours(1)]);

    // The wait ends when the replacement is refused.
    let mut world = World::new(vec![access], vec![ours(1)]);
    world.account.spec.allowed_principal_kinds = vec![PrincipalKind::Group];
    assert_eq!(deletes(&world.plan()), vec![&ours(1)]);
}

fn with_role(mut assignment: ObservedAssignment, role: RoleName) -> ObservedAssignment {
    assignment.role_definition_id = format!(
        "/providers/Microsoft.Authorization/roleDefinitions/{}",
        role.definition_guid()
    );
    assignment
}

// The next pass's input: the status this plan would write becomes the object's previous status.
fn after(access: &AccessInput, plan: &Plan) -> AccessInput {
    let mut next = access.clone();
    next.previous = Some(std::sync::Arc::new(OpenAIAccessStatus {
        principals: plan.accesses[0].principals.clone(),
        ..Default::default()
    }));
    next
}

#[test]
fn a_role_change_is_a_replacement_made_before_the_old_grant_breaks() {
    let mut access = mk_access("team-a", "chat", &[1]);
    std::sync::Arc::make_mut(&mut access.spec).role = RoleName::OpenAIUser;
    let mut world = World::new(vec![access.clone()], vec![ours(1)]);
    world.account.spec.allowed_roles = vec![RoleName::OpenAIUser, RoleName::OpenAIContributor];
    let first = world.plan();
    assert!(first.is_noop());
    let status = &first.accesses[0].principals[0];
    assert_eq!(
        status.role,
        Some(RoleName::OpenAIUser),
        "status records the role"
    );
    assert_eq!(status.replaces, None);

    // The role changes: the new grant is created, the old one kept.
    let mut changed = after(&access, &first);
    std::sync::Arc::make_mut(&mut changed.spec).role = RoleName::OpenAIContributor;
    world.accesses = vec![changed.clone()];
    let create = world.plan();
    assert!(
        matches!(&create.writes[..], [Write::Create { assignment, .. }] if assignment.role == RoleName::OpenAIContributor && assignment.principal_id == oid(1)),
        "only the create of the new role: {:?}",
        create.writes
    );
    let replaced = ReplacedGrantView::of(&create);
    assert_eq!(replaced.role, Some(RoleName::OpenAIContributor));
    assert_eq!(
        replaced.replaces,
        Some((oid(1), RoleName::OpenAIUser)),
        "status carries the grant being replaced"
    );

    // Next pass (status as written): the new grant exists but is still propagating.
    let mut young = with_role(ours_by(1, "team-a/chat"), RoleName::OpenAIContributor);
    young.name = "11111111-1111-4111-8111-111111111111".into();
    young.created_on = Some("2026-11-28T11:58:00Z".parse().unwrap());
    world.accesses = vec![after(&changed, &create)];
    world.observation = Observation::Complete(vec![ours(1), young.clone()]);
    let waiting = world.plan();
    assert!(
        waiting.is_noop(),
        "the old role's grant waits for the propagation grace: {:?}",
        waiting.writes
    );
    assert_eq!(
        ReplacedGrantView::of(&waiting).replaces,
        Some((oid(1), RoleName::OpenAIUser)),
        "carried from pass to pass"
    );

    // Past the grace: the old role's grant goes, and status stops naming it.
    let mut settled = young;
    settled.created_on = Some("2026-11-28T11:50:00Z".parse().unwrap());
    world.accesses = vec![after(&changed, &waiting)];
    world.observation = Observation::Complete(vec![ours(1), settled]);
    let broken = world.plan();
    assert_eq!(deletes(&broken), vec![&ours(1)]);
    assert_eq!(ReplacedGrantView::of(&broken).replaces, None);

    // The wait ends when the replacement is refused: the new role is not allowed any more.
    world.account.spec.allowed_roles = vec![RoleName::OpenAIUser];
    world.accesses = vec![after(&changed, &create)];
    world.observation = Observation::Complete(vec![ours(1)]);
    assert_eq!(deletes(&world.plan()), vec![&ours(1)]);
}

struct ReplacedGrantView {
    role: Option<RoleName>,
    replaces: Option<(String, RoleName)>,
}

impl ReplacedGrantView {
    fn of(plan: &Plan) -> ReplacedGrantView {
        let status = &plan.accesses[0].principals[0];
        ReplacedGrantView {
            role: status.role,
            replaces: status
                .replaces
                .as_ref()
                .map(|r| (r.object_id.clone(), r.role)),
        }
    }
}

#[test]
fn a_principal_change_waits_across_passes_with_the_status_it_wrote() {
    let mut access = mk_access("team-a", "chat", &[2]);
    recorded(&mut access, &[1]);
    std::sync::Arc::make_mut(&mut access.spec).principals = vec![mk_principal(1)];
    access.resolutions = vec![resolved(2)];
    let mut world = World::new(vec![access.clone()], vec![ours(1)]);
    let create = world.plan();
    assert_eq!(creates(&create).len(), 1);
    // The status written names the new object id: the old grant is still known as replaced.
    let mut fresh = ours(2);
    fresh.created_on = Some("2026-11-28T11:58:00Z".parse().unwrap());
    world.accesses = vec![after(&access, &create)];
    world.observation = Observation::Complete(vec![ours(1), fresh]);
    let waiting = world.plan();
    assert!(waiting.is_noop(), "{:?}", waiting.writes);
    assert_eq!(
        ReplacedGrantView::of(&waiting).replaces,
        Some((oid(1), RoleName::OpenAIUser))
    );
}

#[test]
fn expiry_revokes_owned_grants_even_under_retain() {
    let mut access = mk_access("team-a", "chat", &[1]);
    std::sync::Arc::make_mut(&mut access.spec).expires_at =
        Some(Time("2026-11-28T11:00:00Z".parse().unwrap()));
    std::sync::Arc::make_mut(&mut access.spec).deletion_policy = DeletionPolicy::Retain;
    let plan = World::new(vec![access.clone()], vec![ours(1)]).plan();
    assert_eq!(deletes(&plan), vec![&ours(1)]);
    assert!(matches!(&plan.writes[0], Write::Delete { reason, .. } if *reason == reasons::EXPIRED));
    assert_eq!(
        state_of(&plan, 0, 0),
        (Some(GrantState::Revoked), Some(reasons::EXPIRED.into()))
    );

    // Not yet expired: kept.
    std::sync::Arc::make_mut(&mut access.spec).expires_at =
        Some(Time("2026-11-28T13:00:00Z".parse().unwrap()));
    assert!(World::new(vec![access], vec![ours(1)]).plan().is_noop());
}

#[test]
fn an_expired_grant_another_live_object_declares_stays_and_status_says_why() {
    let mut expired = mk_access("team-a", "chat", &[1]);
    std::sync::Arc::make_mut(&mut expired.spec).expires_at =
        Some(Time("2026-11-28T11:00:00Z".parse().unwrap()));
    let plan = World::new(
        vec![expired, mk_access("team-b", "search", &[1])],
        vec![ours(1)],
    )
    .plan();
    assert!(plan.is_noop());
    let status = &plan.accesses[0].principals[0];
    assert_eq!(status.reason.as_deref(), Some(reasons::STILL_DECLARED));
    assert!(
        status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("team-b/search")
    );
}

#[test]
fn retain_on_deletion_releases_the_grant_instead_of_deleting_it() {
    let mut leaving = mk_access("team-a", "chat", &[1]);
    leaving.being_deleted = true;
    std::sync::Arc::make_mut(&mut leaving.spec).deletion_policy = DeletionPolicy::Retain;
    let mut world = World::new(vec![leaving], vec![ours(1)]);
    world.account.spec.allow_retain = true;
    let plan = world.plan();
    assert!(deletes(&plan).is_empty());
    let released = releases(&plan);
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].name.to_string(), ours(1).name);
    assert!(!super::ownership::is_owned_by(
        Some(&released[0].description),
        &us()
    ));
    assert_eq!(
        plan.accesses[0].cleanup,
        Cleanup::AfterWrites(vec![grant(1)])
    );
}

#[test]
fn unregistering_an_account_follows_its_deletion_policy() {
    let mut world = World::new(
        vec![mk_access("team-a", "chat", &[1])],
        vec![ours(1), ours(2), bicep(3)],
    );
    world.account.being_deleted = true;
    let plan = world.plan();
    assert_eq!(
        deletes(&plan).len(),
        2,
        "every owned grant, declared or not"
    );
    assert!(creates(&plan).is_empty());
    assert_eq!(
        plan.account_cleanup,
        Cleanup::AfterWrites(vec![grant(1), grant(2)])
    );

    world.account.spec.deletion_policy = DeletionPolicy::Retain;
    let plan = world.plan();
    assert!(deletes(&plan).is_empty());
    assert_eq!(releases(&plan).len(), 2);
}

#[test]
fn a_replicating_principal_is_pending_until_the_deadline_then_failed() {
    let mut access = mk_access("team-a", "chat", &[1]);
    access.resolutions = vec![unresolved(true)];
    let plan = World::new(vec![access.clone()], vec![]).plan();
    let status = &plan.accesses[0].principals[0];
    assert_eq!(status.state, Some(GrantState::Pending));
    assert_eq!(status.pending_since, Some(Time(now())));

    let mut earlier = status.clone();
    earlier.pending_since = Some(Time("2026-11-28T11:00:00Z".parse().unwrap()));
    access.previous = Some(std::sync::Arc::new(OpenAIAccessStatus {
        principals: vec![earlier.clone()],
        ..Default::default()
    }));
    let plan = World::new(vec![access], vec![]).plan();
    let status = &plan.accesses[0].principals[0];
    assert_eq!(status.state, Some(GrantState::Failed));
    assert_eq!(
        status.pending_since, earlier.pending_since,
        "the clock is persisted, not restarted"
    );
}

#[test]
fn a_group_stays_pinned_per_principal_entry_until_its_text_changes() {
    let entry = |label: &str, n: u8| crate::api::PrincipalStatus {
        principal: label.into(),
        object_id: Some(oid(n)),
        principal_type: Some(PrincipalType::Group),
        resolved_generation: Some(3),
        ..Default::default()
    };
    let previous = OpenAIAccessStatus {
        principals: vec![
            entry("groupName:ML Platform Team", 7),
            entry("groupName:Search Team", 8),
        ],
        ..Default::default()
    };
    let group = |name: &str| crate::api::PrincipalRef::GroupName(name.into());
    // (entry as the spec now writes it, pinned object id)
    let cases: &[(&str, Option<u8>)] = &[
        // Unchanged entries keep their own pins, whatever else changed in the spec (the status
        // was written at generation 3; the spec is at any other generation now).
        ("ML Platform Team", Some(7)),
        ("Search Team", Some(8)),
        // The entry's text changed: resolved again.
        ("ML Platform Team (EU)", None),
        ("ml platform team", None),
    ];
    for (name, pinned) in cases {
        assert_eq!(
            pinned_object_id(Some(&previous), &group(name)),
            pinned
                .map(|n| (oid(n), PrincipalType::Group))
                .as_ref()
                .map(|(o, t)| (o.as_str(), *t)),
            "{name}"
        );
    }
    // An entry that never resolved pins nothing.
    let unresolved = OpenAIAccessStatus {
        principals: vec![crate::api::PrincipalStatus {
            principal: "groupName:New Team".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(
        pinned_object_id(Some(&unresolved), &group("New Team")),
        None
    );
}

// ---- Properties ----

#[derive(Clone, Debug)]
struct ArbAccess {
    namespace: usize,
    principals: Vec<(u8, u8)>, // (object id, resolution: 0-5 resolved, 6 unresolved, 7 replicating)
    being_deleted: bool,
    retain: bool,
    expired: bool,
    knows_previous: bool,
}

fn arb_access() -> impl Strategy<Value = ArbAccess> {
    (
        0..4usize,
        prop::collection::vec((0..6u8, 0..8u8), 1..4),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.15),
        any::<bool>(),
    )
        .prop_map(
            |(namespace, principals, being_deleted, retain, expired, knows_previous)| ArbAccess {
                namespace,
                principals,
                being_deleted,
                retain,
                expired,
                knows_previous,
            },
        )
}

fn arb_world() -> impl Strategy<Value = (Vec<ArbAccess>, Vec<(u8, u8)>, bool, usize)> {
    (
        prop::collection::vec(arb_access(), 0..5),
        prop::collection::vec((0..6u8, 0..4u8), 0..6), // (object id, owner: 0 us, 1 them, 2 nobody, 3 our id on another cluster)
        prop::bool::weighted(0.1),
        1..10usize,
    )
}

fn build(
    accesses: &[ArbAccess],
    observed: &[(u8, u8)],
    account_deleting: bool,
    max_deletes: usize,
) -> World {
    // team-a and team-b are allowed by name, team-z is denied (its labels are known and do not
    // match), team-u is unknown (no labels known, not listed).
    const NAMESPACES: [&str; 4] = ["team-a", "team-b", "team-z", "team-u"];
    let accesses = accesses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let ids: Vec<u8> = a.principals.iter().map(|(n, _)| *n).collect();
            let mut access = mk_access(NAMESPACES[a.namespace], &format!("obj-{i}"), &ids);
            access.being_deleted = a.being_deleted;
            if a.retain {
                std::sync::Arc::make_mut(&mut access.spec).deletion_policy = DeletionPolicy::Retain;
            }
            if a.expired {
                std::sync::Arc::make_mut(&mut access.spec).expires_at =
                    Some(Time("2026-11-01T00:00:00Z".parse().unwrap()));
            }
            // One resolution per distinct principal in a pass, as the resolver gives.
            access.resolutions = a
                .principals
                .iter()
                .map(|(n, _)| a.principals.iter().find(|(m, _)| m == n).unwrap())
                .map(|(n, r)| match r {
                    6 => unresolved(false),
                    7 => unresolved(true),
                    _ => resolved(*n),
                })
                .collect();
            if a.knows_previous {
                access.previous = Some(std::sync::Arc::new(OpenAIAccessStatus {
                    principals: ids
                        .iter()
                        .map(|n| crate::api::PrincipalStatus {
                            principal: mk_principal(*n).reference().unwrap().to_string(),
                            object_id: Some(oid(*n)),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }));
            }
            access
        })
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let observed = observed
        .iter()
        .filter(|(n, _)| seen.insert(*n)) // ARM keeps (scope, principal, role) unique
        .map(|(n, owner)| match owner {
            0 => ours(*n),
            1 => theirs(*n),
            3 => twins(*n),
            _ => bicep(*n),
        })
        .collect();
    let mut world = World::new(accesses, observed);
    world.instance = us_fingerprinted();
    world.account.spec.allowed_namespaces = Some(AllowedNamespaces {
        names: vec!["team-a".into(), "team-b".into()],
        selector: Some(crate::api::common::LabelSelector {
            match_labels: Some([("tier".to_string(), "ai".to_string())].into()),
            match_expressions: None,
        }),
    });
    world.namespaces = [("team-z".to_string(), Default::default())].into();
    world.account.being_deleted = account_deleting;
    world.max_deletes = max_deletes;
    world
}

fn live_declared(world: &World) -> std::collections::BTreeSet<String> {
    let mut declared = std::collections::BTreeSet::new();
    if world.account.being_deleted {
        return declared;
    }
    for access in &world.accesses {
        let expired = access
            .spec
            .expires_at
            .as_ref()
            .is_some_and(|t| t.0 <= now());
        if access.being_deleted || expired || !allowed(&access.key.namespace) {
            continue;
        }
        for r in &access.resolutions {
            if let Resolution::Resolved { object_id, .. } = r {
                declared.insert(object_id.clone());
            }
        }
    }
    declared
}

fn allowed(namespace: &str) -> bool {
    namespace == "team-a" || namespace == "team-b"
}

// Object ids a temporary failure protects: everything its object (allowed namespace, not
// expired) recorded in status.
fn protected_by_failures(world: &World) -> std::collections::BTreeSet<String> {
    world
        .accesses
        .iter()
        .filter(|a| allowed(&a.key.namespace))
        .filter(|a| a.spec.expires_at.as_ref().is_none_or(|t| t.0 > now()))
        .filter(|a| {
            a.resolutions
                .iter()
                .any(|r| matches!(r, Resolution::Unresolved { .. }))
        })
        .flat_map(|a| a.previous.iter().flat_map(|s| s.principals.iter()))
        .filter_map(|p| p.object_id.clone())
        .collect()
}

// Applies a plan's writes to the observed list, as ARM would.
fn apply(world: &World, plan: &Plan) -> Vec<ObservedAssignment> {
    let Observation::Complete(mut observed) = world.observation.clone() else {
        return vec![];
    };
    for write in &plan.writes {
        match write {
            Write::Create { assignment, .. } => {
                let mut a = mk_observed(
                    0,
                    &assignment.name.to_string(),
                    Some(assignment.description.clone()),
                );
                a.principal_id = assignment.principal_id.clone();
                observed.push(a);
            }
            Write::Delete { assignment, .. } => observed.retain(|a| a.id != assignment.id),
            Write::Release { id, assignment } => {
                for a in observed.iter_mut().filter(|a| &a.id == id) {
                    a.description = Some(assignment.description.clone());
                }
            }
        }
    }
    observed
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_plan_never_deletes_or_rewrites_what_is_not_ours((accesses, observed, deleting, limit) in arb_world()) {
        let world = build(&accesses, &observed, deleting, limit);
        let plan = world.plan();
        for write in &plan.writes {
            match write {
                Write::Delete { assignment, .. } => prop_assert!(super::ownership::is_owned_by(assignment.description.as_deref(), &world.instance)),
                Write::Release { id, .. } => {
                    let Observation::Complete(list) = &world.observation else { unreachable!() };
                    let target = list.iter().find(|a| &a.id == id).unwrap();
                    prop_assert!(super::ownership::is_owned_by(target.description.as_deref(), &world.instance));
                }
                Write::Create { assignment, .. } => {
                    let Observation::Complete(list) = &world.observation else { unreachable!() };
                    prop_assert!(!list.iter().any(|a| a.principal_id == assignment.principal_id), "a create never duplicates an existing grant");
                }
            }
        }
    }

    #[test]
    fn no_assignment_whose_marker_names_another_instance_is_ever_written_or_deleted((accesses, observed, deleting, limit) in arb_world()) {
        let world = build(&accesses, &observed, deleting, limit);
        let plan = world.plan();
        let Observation::Complete(list) = &world.observation else { unreachable!() };
        let foreign: Vec<&ObservedAssignment> = list
            .iter()
            .filter(|a| a.description.as_deref().is_some_and(|d| d.starts_with("keyless:v1")) && !super::ownership::is_owned_by(a.description.as_deref(), &world.instance))
            .collect();
        for write in &plan.writes {
            let touched = match write {
                Write::Delete { assignment, .. } => assignment.id.clone(),
                Write::Release { id, .. } => id.clone(),
                Write::Create { assignment, .. } => assignment.id(),
            };
            prop_assert!(!foreign.iter().any(|a| a.id.eq_ignore_ascii_case(&touched)), "{write:?} touches another instance's assignment");
        }
        // Our id with another fingerprint: nothing on the account is deleted or released.
        if list.iter().any(|a| super::ownership::marker_of(a.description.as_deref(), &world.instance) != super::ownership::Marker::Ours && a.description.as_deref().is_some_and(|d| d.starts_with("keyless:v1 instance=cluster-a "))) {
            prop_assert!(plan.instance_collision.is_some());
            prop_assert!(plan.writes.iter().all(|w| matches!(w, Write::Create { .. })), "{:?}", plan.writes);
        }
    }

    #[test]
    fn a_plan_never_deletes_a_grant_a_live_object_declares((accesses, observed, deleting, limit) in arb_world()) {
        let world = build(&accesses, &observed, deleting, limit);
        let declared = live_declared(&world);
        for deleted in deletes(&world.plan()) {
            prop_assert!(!declared.contains(&deleted.principal_id), "deleted {} which is declared", deleted.principal_id);
        }
    }

    #[test]
    fn a_temporary_failure_keeps_what_its_object_recorded((accesses, observed, deleting, limit) in arb_world()) {
        let world = build(&accesses, &observed, deleting, limit);
        let plan = world.plan();
        let protected = protected_by_failures(&world);
        prop_assume!(!world.account.being_deleted);
        for deleted in deletes(&plan) {
            prop_assert!(!protected.contains(&deleted.principal_id), "deleted protected {}", deleted.principal_id);
        }
    }

    #[test]
    fn after_applying_a_plan_no_namespace_keeps_a_grant_its_account_does_not_allow((accesses, observed, deleting, _limit) in arb_world()) {
        let world = build(&accesses, &observed, deleting, 1000);
        let plan = world.plan();
        prop_assume!(plan.deletions_blocked.is_none());
        let after = apply(&world, &plan);
        let declared = live_declared(&world);
        let protected = protected_by_failures(&world);
        for a in after.iter().filter(|a| super::ownership::is_owned_by(a.description.as_deref(), &world.instance)) {
            prop_assert!(declared.contains(&a.principal_id) || protected.contains(&a.principal_id), "{} is still held", a.principal_id);
        }
        // And nothing is created for a namespace that is not allowed.
        for created in creates(&plan) {
            prop_assert!(declared.contains(&created.principal_id), "{} created without an allowed declaration", created.principal_id);
        }
    }

    #[test]
    fn nothing_declared_in_a_denied_or_unknown_namespace_changes_any_write(
        (accesses, observed, deleting, limit) in arb_world(),
        intruders in prop::collection::vec(arb_access(), 1..4),
    ) {
        // What happens, not why: the reason label of a delete may name the intruder's denial.
        let effect = |plan: &Plan| -> Vec<(String, Option<GrantKey>, Vec<ObjectKey>)> {
            plan.writes.iter().map(|w| match w {
                Write::Create { declared_by, .. } => ("create".to_string(), w.grant(), declared_by.clone()),
                Write::Release { id, .. } => (format!("release {id}"), w.grant(), vec![]),
                Write::Delete { assignment, after_creates_of, .. } => (format!("delete {}", assignment.id), w.grant(), after_creates_of.clone()),
            }).collect()
        };
        let world = build(&accesses, &observed, deleting, limit);
        let baseline = effect(&world.plan());
        let mut all = accesses.clone();
        for mut intruder in intruders {
            intruder.namespace = 2 + intruder.namespace % 2; // team-z (denied) or team-u (unknown)
            intruder.knows_previous = true;
            all.push(intruder);
        }
        let invaded = build(&all, &observed, deleting, limit);
        prop_assert_eq!(effect(&invaded.plan()), baseline);
    }

    #[test]
    fn planning_again_after_applying_a_plan_changes_nothing((accesses, observed, deleting, _limit) in arb_world()) {
        let mut world = build(&accesses, &observed, deleting, 1000);
        let plan = world.plan();
        world.observation = Observation::Complete(apply(&world, &plan));
        for (access, outcome) in world.accesses.iter_mut().zip(&plan.accesses) {
            access.previous = Some(std::sync::Arc::new(OpenAIAccessStatus { principals: outcome.principals.clone(), ..Default::default() }));
        }
        let again = world.plan();
        prop_assert!(again.is_noop(), "second plan: {:?}", again.writes);
    }
}

// Enforcement Exclusive, one row per rule.
mod exclusive;
