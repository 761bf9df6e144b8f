use super::*;
use crate::plan::ownership::ownership_marker;
use crate::plan::ownership::released_marker;

const SUB: &str = "3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f";
const ACCOUNT: &str = "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-ai/providers/Microsoft.CognitiveServices/accounts/oai";
const OPENAI_USER: &str = "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd";
const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const CUSTOM: &str = "11111111-0000-0000-0000-00000000c001";
const EXCLUDING: &str = "11111111-0000-0000-0000-00000000c002";

fn role(
    guid: &str,
    name: &str,
    actions: &[&str],
    not_actions: &[&str],
    data: &[&str],
    not_data: &[&str],
) -> RoleDefinition {
    let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    RoleDefinition {
        guid: guid.into(),
        role_name: name.into(),
        custom: guid.starts_with("11111111"),
        permissions: vec![Permission {
            actions: owned(actions),
            not_actions: owned(not_actions),
            data_actions: owned(data),
            not_data_actions: owned(not_data),
        }],
    }
}

fn roles() -> BTreeMap<String, RoleDefinition> {
    [
        role(
            OPENAI_USER,
            "Cognitive Services OpenAI User",
            &["Microsoft.CognitiveServices/*/read"],
            &[],
            &[
                "Microsoft.CognitiveServices/accounts/OpenAI/*/read",
                "Microsoft.CognitiveServices/accounts/OpenAI/deployments/chat/completions/action",
            ],
            &["Microsoft.CognitiveServices/accounts/OpenAI/stored-completions/read"],
        ),
        role(
            CONTRIBUTOR,
            "Contributor",
            &["*"],
            &[
                "Microsoft.Authorization/*/Delete",
                "Microsoft.Authorization/*/Write",
            ],
            &[],
            &[],
        ),
        role(READER, "Reader", &["*/read"], &[], &[], &[]),
        role(
            CUSTOM,
            "chat-only",
            &[],
            &[],
            &["Microsoft.CognitiveServices/accounts/OpenAI/deployments/chat/completions/action"],
            &[],
        ),
        role(
            EXCLUDING,
            "everything but AI",
            &[],
            &[],
            &["*"],
            &["Microsoft.CognitiveServices/*"],
        ),
    ]
    .into_iter()
    .map(|r| (r.guid.clone(), r))
    .collect()
}

fn assignment(
    name: &str,
    scope: &str,
    principal: &str,
    role: &str,
    description: Option<&str>,
) -> ObservedAssignment {
    ObservedAssignment {
        id: format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"),
        name: name.into(),
        scope: scope.into(),
        principal_id: principal.into(),
        principal_type: Some("ServicePrincipal".into()),
        role_definition_id: format!(
            "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{role}"
        ),
        description: description.map(str::to_string),
        condition: None,
        created_on: None,
    }
}

fn classify_all(
    assignments: &[ObservedAssignment],
    declarations: &Declarations,
) -> Vec<ClassifiedGrant> {
    let scope = AccountScope::parse(ACCOUNT).unwrap();
    let instance = InstanceId::new("cluster-a").unwrap();
    let roles = roles();
    classify(&ClassifyInput {
        scope: &scope,
        instance: &instance,
        assignments,
        roles: &roles,
        declarations,
        created_by: &BTreeMap::new(),
    })
}

#[test]
fn each_origin_is_recognised_from_marker_scope_and_status() {
    let this = ownership_marker(&InstanceId::new("cluster-a").unwrap(), "team/chat");
    let other = ownership_marker(&InstanceId::new("cluster-b").unwrap(), "team/chat");
    let released = released_marker("team/old");
    let rg = format!("/subscriptions/{SUB}/resourceGroups/rg-ai");
    let sub = format!("/subscriptions/{SUB}");
    let list = vec![
        assignment("a1", ACCOUNT, "p-managed", OPENAI_USER, Some(&this)),
        assignment("a2", ACCOUNT, "p-other", OPENAI_USER, Some(&other)),
        assignment("a3", ACCOUNT, "p-released", OPENAI_USER, Some(&released)),
        assignment("a4", ACCOUNT, "p-adopted", OPENAI_USER, None),
        assignment("a5", ACCOUNT, "p-portal", OPENAI_USER, None),
        assignment(
            "a6",
            ACCOUNT,
            "p-bicep",
            OPENAI_USER,
            Some("created by bicep guid()"),
        ),
        assignment("a7", &rg, "p-rg", OPENAI_USER, Some(&this)),
        assignment("a8", &sub, "p-sub", CONTRIBUTOR, None),
    ];
    let mut declarations = Declarations::default();
    declarations.add(&list[3].id.to_uppercase(), "team/chat", true);
    declarations.add(&list[0].id, "team/chat", false);
    let all = classify_all(&list, &declarations);
    let got: Vec<(&str, Origin, Option<&str>)> = all
        .iter()
        .map(|g| (g.principal_id.as_str(), g.origin, g.inherited_from))
        .collect();
    assert_eq!(
        got,
        vec![
            ("p-managed", Origin::Managed, None),
            ("p-other", Origin::OtherInstance, None),
            ("p-released", Origin::Released, None),
            ("p-adopted", Origin::Adopted, None),
            ("p-portal", Origin::Foreign, None),
            ("p-bicep", Origin::Foreign, None),
            // A marker above the account does not make it ours to manage: keyless only ever writes
            // at the account, so a marked grant above it was copied or moved there by someone else.
            ("p-rg", Origin::Inherited, Some("resourceGroup")),
            ("p-sub", Origin::Inherited, Some("subscription")),
        ]
    );
    assert_eq!(all[1].other_instance.as_deref(), Some("cluster-b"));
    assert_eq!(all[0].declared_by, vec!["team/chat".to_string()]);
    assert!(all[4].declared_by.is_empty());
}

#[test]
fn a_marker_naming_an_instance_with_this_id_as_a_prefix_is_another_instance() {
    let marker = ownership_marker(&InstanceId::new("cluster-a2").unwrap(), "team/chat");
    let got = classify_all(
        &[assignment("a1", ACCOUNT, "p", OPENAI_USER, Some(&marker))],
        &Declarations::default(),
    );
    assert_eq!(got[0].origin, Origin::OtherInstance);
    assert_eq!(got[0].other_instance.as_deref(), Some("cluster-a2"));
}

#[test]
fn roles_without_data_actions_or_list_keys_are_left_out_and_unknown_roles_are_kept() {
    let unknown = "99999999-9999-9999-9999-999999999999";
    let list = vec![
        assignment("a1", ACCOUNT, "reader", READER, None),
        assignment("a2", ACCOUNT, "excluded", EXCLUDING, None),
        assignment("a3", ACCOUNT, "custom", CUSTOM, None),
        assignment("a4", ACCOUNT, "contributor", CONTRIBUTOR, None),
        assignment("a5", ACCOUNT, "unknown", unknown, None),
    ];
    let got: Vec<(String, Option<bool>, Option<bool>)> =
        classify_all(&list, &Declarations::default())
            .into_iter()
            .map(|g| (g.principal_id, g.data_plane, g.can_read_keys))
            .collect();
    assert_eq!(
        got,
        vec![
            ("custom".into(), Some(true), Some(false)),
            ("contributor".into(), Some(false), Some(true)),
            ("unknown".into(), None, None),
        ]
    );
}

#[test]
fn data_plane_access_follows_wildcards_minus_not_data_actions() {
    let r = |data: &[&str], not_data: &[&str]| {
        role("g", "r", &[], &[], data, not_data).grants_data_plane()
    };
    let cases: &[(&[&str], &[&str], bool)] = &[
        (&["Microsoft.CognitiveServices/*"], &[], true),
        (&["*"], &[], true),
        (&["Microsoft.*"], &[], true),
        (
            &["microsoft.cognitiveservices/accounts/openai/*/read"],
            &[],
            true,
        ),
        (
            &["Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"],
            &[],
            false,
        ),
        (&["*"], &["Microsoft.CognitiveServices/*"], false),
        (
            &["Microsoft.CognitiveServices/*"],
            &["Microsoft.CognitiveServices/*"],
            false,
        ),
        (
            &["Microsoft.CognitiveServices/accounts/OpenAI/*"],
            &["Microsoft.CognitiveServices/accounts/*"],
            false,
        ),
        // Taking back one action leaves the others.
        (
            &["Microsoft.CognitiveServices/accounts/OpenAI/*"],
            &["Microsoft.CognitiveServices/accounts/OpenAI/stored-completions/read"],
            true,
        ),
        // A notDataActions pattern of another shape is not assumed to cover: the grant stays visible.
        (&["Microsoft.CognitiveServices/*"], &["*/read"], true),
        (&[], &[], false),
    ];
    for (data, not_data, expected) in cases {
        assert_eq!(r(data, not_data), *expected, "{data:?} minus {not_data:?}");
    }
}

#[test]
fn key_reading_follows_actions_minus_not_actions() {
    let r = |actions: &[&str], not_actions: &[&str]| {
        role("g", "r", actions, not_actions, &[], &[]).can_read_keys()
    };
    assert!(r(&["*"], &[]));
    assert!(r(&["Microsoft.CognitiveServices/*"], &[]));
    assert!(r(
        &["Microsoft.CognitiveServices/accounts/listkeys/action"],
        &[]
    ));
    assert!(!r(
        &["*"],
        &["Microsoft.CognitiveServices/accounts/listKeys/action"]
    ));
    assert!(!r(&["*/read"], &[]));
    assert!(!r(&[], &[]));
}

#[test]
fn action_patterns_match_case_insensitively_with_stars_anywhere() {
    assert!(action_matches("*", "a/b"));
    assert!(action_matches(
        "Microsoft.CognitiveServices/*/read",
        "microsoft.cognitiveservices/accounts/read"
    ));
    assert!(!action_matches(
        "Microsoft.CognitiveServices/*/read",
        "microsoft.cognitiveservices/accounts/write"
    ));
    assert!(action_matches("a*c*e", "abcde"));
    assert!(!action_matches("abc", "abcd"));
    assert!(!action_matches("a*", "b"));
    assert!(action_matches("a**", "a"));
    assert!(action_matches("*/listKeys/action", "x/y/listkeys/action"));
    // Many stars against a long text that does not match: answered at once, not exponentially.
    assert!(!action_matches(&"a*".repeat(40), &"a".repeat(30)));
}

#[test]
fn inherited_scopes_are_named_by_kind() {
    assert_eq!(scope_kind(&format!("/subscriptions/{SUB}")), "subscription");
    assert_eq!(
        scope_kind(&format!("/subscriptions/{SUB}/resourcegroups/rg")),
        "resourceGroup"
    );
    assert_eq!(
        scope_kind("/providers/Microsoft.Management/managementGroups/root-mg"),
        "managementGroup"
    );
    assert_eq!(scope_kind("/"), "root");
}

#[test]
fn status_lists_are_unique_sorted_and_capped_with_a_count_of_the_rest() {
    let mut list = Vec::new();
    for i in 0..5 {
        list.push(assignment(
            &format!("f{i}"),
            ACCOUNT,
            &format!("p{i}"),
            OPENAI_USER,
            None,
        ));
        // The same principal twice counts once in the list, twice in the counts.
        list.push(assignment(
            &format!("g{i}"),
            ACCOUNT,
            &format!("p{i}"),
            CONTRIBUTOR,
            None,
        ));
    }
    list.push(assignment(
        "s",
        &format!("/subscriptions/{SUB}"),
        "q",
        CONTRIBUTOR,
        None,
    ));
    let summary = summarize(&classify_all(&list, &Declarations::default()), 3);
    assert_eq!(summary.counts.get(&Origin::Foreign), Some(&10));
    assert_eq!(summary.counts.get(&Origin::Inherited), Some(&1));
    assert_eq!(summary.foreign, vec!["p0", "p1", "p2"]);
    assert_eq!(summary.foreign_omitted, 2);
    assert_eq!(summary.inherited, vec!["q"]);
    assert_eq!(summary.inherited_omitted, 0);
    assert_eq!(summary.key_readers, 6);
}
