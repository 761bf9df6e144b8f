//! Stage 6, enforcement Exclusive: which assignments made outside keyless are revoked, and when.

use super::*;
use crate::api::{Enforcement, ExclusiveRevocation};
use crate::plan::exclusive::{ExclusiveContext, ExclusiveVerdict};

const GRACE: Duration = Duration::from_secs(600);
const PORTAL_USER: &str = "11111111-2222-4333-8444-555555555555";
const PIM: &str = "66666666-7777-4888-9999-000000000000";

fn portal(n: u8, name: &str) -> ObservedAssignment {
    mk_observed(n, name, None)
}

fn listed_at(a: &ObservedAssignment, at: Timestamp) -> ExclusiveRevocation {
    ExclusiveRevocation {
        assignment_name: a.name.clone(),
        principal_id: a.principal_id.clone(),
        role_definition_id: RoleName::OpenAIUser.definition_guid().into(),
        created_by: None,
        reported_at: Time(at),
    }
}

fn long_ago() -> Timestamp {
    now() - jiff::SignedDuration::from_hours(1)
}

// A world under Exclusive where everything observed was listed an hour ago (past the grace).
fn exclusive_world(accesses: Vec<AccessInput>, observed: Vec<ObservedAssignment>) -> World {
    let mut world = World::new(accesses, observed.clone());
    world.account.spec.enforcement = Enforcement::Exclusive;
    world.exclusive = ExclusiveContext {
        created_by: observed
            .iter()
            .map(|a| (a.id.to_ascii_lowercase(), PORTAL_USER.to_string()))
            .collect(),
        reported: observed.iter().map(|a| listed_at(a, long_ago())).collect(),
        grace: GRACE,
        observing: false,
    };
    world
}

fn deleted_names(plan: &Plan) -> Vec<String> {
    deletes(plan).iter().map(|a| a.name.clone()).collect()
}

const A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const B: &str = "bbbbbbbb-0000-4000-8000-000000000002";

#[test]
fn exclusive_rules() {
    struct Row {
        rule: &'static str,
        setup: fn(&mut World),
        revoked: &'static [&'static str],
    }
    let rows = [
        Row {
            rule: "an undeclared foreign assignment at the account's scope is revoked after the grace",
            setup: |_| {},
            revoked: &[A],
        },
        Row {
            rule: "enforcement Additive revokes nothing made outside keyless",
            setup: |w| w.account.spec.enforcement = Enforcement::Additive,
            revoked: &[],
        },
        Row {
            rule: "the scope is compared case-insensitively",
            setup: |w| {
                if let Observation::Complete(list) = &mut w.observation {
                    list[0].scope = SCOPE.to_ascii_uppercase();
                }
            },
            revoked: &[A],
        },
        Row {
            rule: "an assignment inherited from the resource group is never revoked",
            setup: |w| {
                if let Observation::Complete(list) = &mut w.observation {
                    list[0].scope = SCOPE
                        .split("/providers/")
                        .next()
                        .unwrap_or_default()
                        .to_string();
                }
            },
            revoked: &[],
        },
        Row {
            rule: "a role outside keyless's role table is never revoked",
            setup: |w| {
                if let Observation::Complete(list) = &mut w.observation {
                    list[0].role_definition_id = "/providers/Microsoft.Authorization/roleDefinitions/b24988ac-6180-42a0-ab88-20f7382dd24c".into();
                }
            },
            revoked: &[],
        },
        Row {
            rule: "an assignment an eligible OpenAIAccess declares stays (adopted)",
            setup: |w| w.accesses.push(mk_access("team-a", "chat", &[1])),
            revoked: &[],
        },
        Row {
            rule: "a declaration in a denied namespace does not keep it",
            setup: |w| w.accesses.push(mk_access("team-z", "chat", &[1])),
            revoked: &[A],
        },
        Row {
            rule: "an exempt principal (break-glass) is never revoked",
            setup: |w| w.account.spec.exclusive_exemptions = vec![oid(1).to_ascii_uppercase()],
            revoked: &[],
        },
        Row {
            rule: "an assignment made by an exempt creator (PIM) is never revoked",
            setup: |w| {
                w.account.spec.exclusive_exempt_creators = vec![PIM.into()];
                for by in w.exclusive.created_by.values_mut() {
                    *by = PIM.into();
                }
            },
            revoked: &[],
        },
        Row {
            rule: "an assignment with an ABAC condition is never revoked",
            setup: |w| {
                if let Observation::Complete(list) = &mut w.observation {
                    list[0].condition = Some("@Resource[x] == 'y'".into());
                }
            },
            revoked: &[],
        },
        Row {
            rule: "an assignment keyless released (Retain) is never revoked",
            setup: |w| {
                if let Observation::Complete(list) = &mut w.observation {
                    list[0].description =
                        Some(crate::plan::ownership::released_marker("team-a/old"));
                }
            },
            revoked: &[],
        },
        Row {
            rule: "nothing is revoked while a declaration is unresolved",
            setup: |w| {
                let mut access = mk_access("team-b", "later", &[7]);
                access.resolutions = vec![unresolved(false)];
                w.accesses.push(access);
            },
            revoked: &[],
        },
        Row {
            rule: "nothing is revoked while a declaration lastingly fails to resolve",
            setup: |w| {
                let mut access = mk_access("team-b", "later", &[7]);
                access.resolutions = vec![lasting()];
                w.accesses.push(access);
            },
            revoked: &[],
        },
        Row {
            rule: "an unresolved declaration in a denied namespace does not hold it",
            setup: |w| {
                let mut access = mk_access("team-z", "later", &[7]);
                access.resolutions = vec![unresolved(false)];
                w.accesses.push(access);
            },
            revoked: &[A],
        },
        Row {
            rule: "nothing is revoked from an incomplete view",
            setup: |w| {
                w.view = ViewCompleteness::Incomplete {
                    reason: "the OpenAIAccess watch has not synced".into(),
                }
            },
            revoked: &[],
        },
        Row {
            rule: "nothing is revoked while an object is malformed",
            setup: |w| {
                w.malformed = vec![MalformedObject {
                    key: key("team-b", "broken"),
                    account_ref: None,
                    recorded_object_ids: Vec::new(),
                    error: "bad".into(),
                }]
            },
            revoked: &[],
        },
        Row {
            rule: "nothing is revoked from an incomplete LIST",
            setup: |w| {
                if let Observation::Complete(list) = &w.observation {
                    w.observation = Observation::Incomplete(list.clone());
                }
            },
            revoked: &[],
        },
        Row {
            rule: "another instance's marker on the account refuses Exclusive",
            setup: |w| {
                if let Observation::Complete(list) = &mut w.observation {
                    list.push(theirs(9));
                }
            },
            revoked: &[],
        },
        Row {
            rule: "an assignment never listed before is only listed, not revoked",
            setup: |w| w.exclusive.reported.clear(),
            revoked: &[],
        },
        Row {
            rule: "an assignment listed less than the grace ago is not revoked yet",
            setup: |w| {
                for r in &mut w.exclusive.reported {
                    r.reported_at = Time(now() - jiff::SignedDuration::from_mins(5));
                }
            },
            revoked: &[],
        },
        Row {
            rule: "under Observe a listed assignment is planned as a delete at once",
            setup: |w| {
                w.exclusive.reported.clear();
                w.exclusive.observing = true;
            },
            revoked: &[A],
        },
        Row {
            rule: "nothing is revoked while the account is being unregistered",
            setup: |w| w.account.being_deleted = true,
            revoked: &[],
        },
    ];
    for row in rows {
        let mut world = exclusive_world(Vec::new(), vec![portal(1, A)]);
        (row.setup)(&mut world);
        let plan = world.plan();
        assert_eq!(deleted_names(&plan), row.revoked, "{}", row.rule);
        for write in &plan.writes {
            if let Write::Delete { reason, .. } = write {
                assert_eq!(*reason, reasons::NOT_DECLARED, "{}", row.rule);
            }
        }
    }
}

#[test]
fn a_first_sighting_is_listed_with_now_and_pending_until_the_grace() {
    let mut world = exclusive_world(Vec::new(), vec![portal(1, A), portal(2, B)]);
    world.exclusive.reported = vec![listed_at(&portal(2, B), long_ago())];
    let plan = world.plan();
    assert_eq!(
        deleted_names(&plan),
        vec![B.to_string()],
        "only the old one goes"
    );
    let listed: Vec<(&str, Timestamp)> = plan
        .exclusive
        .listed
        .iter()
        .map(|r| (r.assignment_name.as_str(), r.reported_at.0))
        .collect();
    assert_eq!(listed, vec![(B, long_ago()), (A, now())]);
    assert_eq!(
        plan.exclusive.listed[1].created_by.as_deref(),
        Some(PORTAL_USER)
    );

    world.exclusive.reported.clear();
    let first = world.plan();
    assert!(first.writes.is_empty(), "the first pass only reports");
    assert_eq!(
        first.exclusive.verdict,
        ExclusiveVerdict::Pending {
            next: now() + jiff::SignedDuration::from_secs(600)
        }
    );
    assert_eq!(first.exclusive.listed.len(), 2);
}

#[test]
fn a_held_pass_keeps_the_clocks_and_a_refused_one_lists_nothing() {
    let mut world = exclusive_world(Vec::new(), vec![portal(1, A)]);
    world.view = ViewCompleteness::Incomplete {
        reason: "relist".into(),
    };
    let held = world.plan();
    assert!(matches!(held.exclusive.verdict, ExclusiveVerdict::Held(_)));
    assert_eq!(held.exclusive.listed, world.exclusive.reported);

    world.view = ViewCompleteness::Complete;
    if let Observation::Complete(list) = &mut world.observation {
        list.push(theirs(9));
    }
    let refused = world.plan();
    match &refused.exclusive.verdict {
        ExclusiveVerdict::Refused(why) => assert!(why.contains("cluster-b"), "{why}"),
        other => panic!("expected refused, got {other:?}"),
    }
    assert!(refused.exclusive.listed.is_empty());
}

// Found by the soak: `keyless run` fingerprints its instance with the cluster's UID, and its own
// markers (with or without a fingerprint) were read as another instance's, so Exclusive refused on
// every account it had granted on.
#[test]
fn this_instances_own_grants_do_not_make_exclusive_refuse_whatever_their_fingerprint() {
    let fingerprinted = |n: u8| {
        let name = assignment_name(&scope(), &oid(n), RoleName::OpenAIUser).to_string();
        mk_observed(
            n,
            &name,
            Some(ownership_marker(&us_fingerprinted(), "team-a/earlier")),
        )
    };
    let mut world = exclusive_world(
        vec![mk_access("team-a", "chat", &[1, 2])],
        vec![fingerprinted(1), ours(2), portal(3, A)],
    );
    world.instance = us_fingerprinted();
    let plan = world.plan();
    assert_eq!(
        plan.exclusive.verdict,
        ExclusiveVerdict::Revoking { count: 1 },
        "{:?}",
        plan.exclusive.verdict
    );
    assert_eq!(deleted_names(&plan), vec![A.to_string()]);
}

#[test]
fn exclusive_revocations_share_the_per_pass_delete_limit() {
    let mut world = exclusive_world(Vec::new(), vec![portal(1, A), portal(2, B)]);
    world.max_deletes = 1;
    let plan = world.plan();
    assert_eq!(deletes(&plan).len(), 1);
    assert_eq!(plan.deferred_deletes, 1);
}

#[test]
fn this_instances_own_undeclared_grant_is_the_diffs_not_exclusives() {
    let world = exclusive_world(Vec::new(), vec![ours(1)]);
    let plan = world.plan();
    assert_eq!(deletes(&plan).len(), 1);
    assert!(
        plan.exclusive.listed.is_empty(),
        "listed: {:?}",
        plan.exclusive.listed
    );
    assert_ne!(
        plan.writes.iter().find_map(|w| match w {
            Write::Delete { reason, .. } => Some(*reason),
            _ => None,
        }),
        Some(reasons::NOT_DECLARED)
    );
}
