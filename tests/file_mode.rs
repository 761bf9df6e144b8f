//! File mode (`keyless plan -f` / `apply -f`) against the Azure emulator over real HTTPS, with the
//! real workload identity credential. Most tests run the command in-process through the same clap
//! parser as the binary; the crash test runs the built binary and kills it part-way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyless::cli::{Cli, Command};
use keyless::files::{Action, FilesError, Mode, Report};
use keyless_emulator::{
    AdminRoleAssignment, Emulator, EmulatorConfig, EmulatorHandle, RoleAssignment, Seed,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[path = "support/secrets.rs"]
mod secrets;
// The emulator's banner as its own tests read it (keyless depends on the emulator, not the reverse).
#[path = "../emulator/tests/support/banner.rs"]
mod banner;
use banner::Banner;

const SUB: &str = "3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f";
const OPENAI_USER: &str = "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd";
const ALICE: &str = "82f6c951-ea04-4434-a839-f80b32aa6337";
const GROUP: &str = "d81d0366-c3d7-4b8d-92f3-1be6d6479d9a";
const BOB_BICEP: &str = "486f9612-51c0-5f11-a5cd-84378ffd1469";

fn account_id(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/rg-ai-prod/providers/Microsoft.CognitiveServices/accounts/{name}"
    )
}

async fn emulator(tweak: impl FnOnce(&mut EmulatorConfig)) -> EmulatorHandle {
    // Every test's log lines, at TRACE, for the secrets scan.
    secrets::LogCapture::global();
    let mut config = EmulatorConfig::new(Seed::example().unwrap());
    tweak(&mut config);
    Emulator::start(config).await.unwrap()
}

/// The flags that point keyless at `handle`, as a user would pass them.
fn azure_flags(handle: &EmulatorHandle) -> Vec<String> {
    let endpoint = handle.endpoint().to_string();
    [
        "--arm-endpoint",
        &endpoint,
        "--graph-endpoint",
        &endpoint,
        "--authority-host",
        &endpoint,
        "--ca-file",
        handle.ca_file().to_str().unwrap(),
        "--credential",
        "workload-identity",
        "--tenant-id",
        &handle.tenant_id(),
        "--client-id",
        handle.operator_client_id().unwrap(),
        "--federated-token-file",
        handle.federated_token_file().unwrap().to_str().unwrap(),
        "--service-account-issuer",
        "https://oidc.keyless.example/cluster-1/",
    ]
    .into_iter()
    .map(str::to_string)
    .collect()
}

/// Runs `keyless {command} -f {dir} {extra} {azure flags}` in-process.
async fn keyless(
    handle: &EmulatorHandle,
    command: &str,
    dir: &Path,
    extra: &[&str],
) -> Result<Report, FilesError> {
    let mut argv: Vec<String> = vec![
        "keyless".into(),
        command.into(),
        "-f".into(),
        dir.display().to_string(),
        "--quiet".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv.extend(azure_flags(handle));
    let cli = Cli::try_parse_from(&argv).unwrap();
    match cli.command {
        Command::Plan(args) => keyless::files::run(&args, Mode::Plan).await,
        Command::Apply(args) => keyless::files::run(&args, Mode::Apply).await,
        _ => unreachable!(),
    }
}

use clap::Parser as _;

fn manifests(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn account_yaml(name: &str, namespaces: &str) -> String {
    format!(
        "apiVersion: keyless.dev/v1alpha1\nkind: OpenAIAccount\nmetadata:\n  name: {name}\nspec:\n  resourceId: {}\n  allowedNamespaces:\n    names: [{namespaces}]\n",
        account_id(name)
    )
}

fn access_yaml(namespace: &str, name: &str, account: &str, principals: &[String]) -> String {
    let principals: String = principals.iter().map(|p| format!("    - {p}\n")).collect();
    format!(
        "apiVersion: keyless.dev/v1alpha1\nkind: OpenAIAccess\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  accountRef:\n    name: {account}\n  principals:\n{principals}---\n"
    )
}

fn object_id(id: &str, kind: &str) -> String {
    format!("{{objectId: {id}, principalType: {kind}}}")
}

/// Assignments at exactly this account's scope.
fn at(handle: &EmulatorHandle, account: &str) -> Vec<RoleAssignment> {
    let scope = account_id(account).to_ascii_lowercase();
    handle
        .role_assignments()
        .into_iter()
        .filter(|a| a.scope.to_ascii_lowercase() == scope)
        .collect()
}

fn holds(handle: &EmulatorHandle, account: &str, principal: &str) -> usize {
    at(handle, account)
        .iter()
        .filter(|a| {
            a.principal_id.eq_ignore_ascii_case(principal) && a.role_definition_guid == OPENAI_USER
        })
        .count()
}

fn actions(report: &Report) -> BTreeMap<String, Action> {
    report
        .accounts
        .iter()
        .flat_map(|a| &a.grants)
        .map(|g| (g.principal.clone(), g.action))
        .collect()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/manifests")
}

#[tokio::test]
async fn the_example_manifests_are_created_by_the_first_apply_and_the_second_is_a_no_op() {
    let handle = emulator(|_| {}).await;
    let examples = examples();
    let instance = ["--instance-id", "ci-pipeline", "--detailed-exitcode"];

    let plan = keyless(&handle, "plan", &examples, &instance)
        .await
        .unwrap();
    assert_eq!(plan.summary.create, 5, "{plan:#?}");
    assert_eq!(plan.exit_code(true), 2);
    assert_eq!(at(&handle, "oai-prod").len(), 1, "plan must write nothing");

    let first = keyless(&handle, "apply", &examples, &instance)
        .await
        .unwrap();
    assert_eq!(first.summary.create, 5, "{first:#?}");
    assert_eq!(first.exit_code(true), 2);
    assert_eq!(first.exit_code(false), 0);
    // A user, a group, an app, a managed identity and a workload identity, each granted once.
    for principal in [
        ALICE,
        GROUP,
        "6bdcdd12-8bfa-47e7-9b5b-bdef4d370b97",
        "95ce509f-d768-4c1d-b9ae-4595afb90593",
        "119b5110-65ac-46fc-92d3-7aea0a858ce8",
    ] {
        assert_eq!(holds(&handle, "oai-prod", principal), 1, "{principal}");
    }
    assert!(
        at(&handle, "oai-prod")
            .iter()
            .filter(|a| a.name != BOB_BICEP)
            .all(|a| a
                .description
                .as_deref()
                .unwrap_or("")
                .contains("instance=ci-pipeline"))
    );

    let second = keyless(&handle, "apply", &examples, &instance)
        .await
        .unwrap();
    assert_eq!(second.changes(), 0, "{second:#?}");
    assert_eq!(second.exit_code(true), 0);
    assert!(actions(&second).values().all(|a| *a == Action::NoChange));
}

#[tokio::test]
async fn the_emulator_flag_runs_the_whole_quickstart_and_replans_to_no_changes() {
    let examples = examples();
    let argv = [
        "keyless",
        "apply",
        "-f",
        examples.to_str().unwrap(),
        "--emulator",
        "--quiet",
    ];
    let Command::Apply(args) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    let report = keyless::files::run(&args, Mode::Apply).await.unwrap();
    assert_eq!(report.instance_id.as_deref(), Some("keyless-quickstart"));
    assert_eq!(report.summary.create, 5);
    let follow_up = report.follow_up.as_ref().expect("a plan after the apply");
    assert_eq!(follow_up.mode, Mode::Plan);
    assert_eq!(follow_up.changes(), 0);
    assert_eq!(follow_up.summary.unchanged, 5);
    assert_eq!(report.exit_code(true), 2);
}

#[tokio::test]
async fn drift_is_reported_by_plan_and_repaired_by_apply() {
    let handle = emulator(|_| {}).await;
    let dir = manifests(&[(
        "m.yaml",
        &format!(
            "{}---\n{}",
            account_yaml("oai-prod", "team-a"),
            access_yaml(
                "team-a",
                "people",
                "oai-prod",
                &["{user: alice@contoso.com}".into()]
            )
        ),
    )]);
    let flags = ["--instance-id", "ci"];
    keyless(&handle, "apply", dir.path(), &flags).await.unwrap();
    let granted = at(&handle, "oai-prod")
        .into_iter()
        .find(|a| a.principal_id == ALICE)
        .unwrap();

    // Someone removes the grant in the portal.
    handle.delete_role_assignment(&granted.name).unwrap();
    let plan = keyless(&handle, "plan", dir.path(), &flags).await.unwrap();
    assert_eq!(actions(&plan)["user:alice@contoso.com"], Action::Create);
    assert_eq!(plan.exit_code(true), 2);

    let repair = keyless(&handle, "apply", dir.path(), &flags).await.unwrap();
    assert_eq!(actions(&repair)["user:alice@contoso.com"], Action::Created);
    assert_eq!(holds(&handle, "oai-prod", ALICE), 1);
    // Same deterministic name as before: the grant is the same grant.
    assert!(
        at(&handle, "oai-prod")
            .iter()
            .any(|a| a.name == granted.name)
    );
}

#[tokio::test]
async fn prune_removes_only_this_instances_orphans_on_the_accounts_in_the_files() {
    let handle = emulator(|_| {}).await;
    let other_principal = "0f0f0f0f-1111-4222-8333-444455556666";
    let foreign = handle
        .put_role_assignment(AdminRoleAssignment {
            name: None,
            scope: account_id("oai-prod"),
            role_definition_id: OPENAI_USER.into(),
            principal_id: other_principal.into(),
            principal_type: Some("User".into()),
            description: Some("keyless:v1 instance=cluster-b declared-by=x/y".into()),
            condition: None,
            created_by: None,
        })
        .unwrap();
    // This instance's grant on an account the files do not name: never touched.
    let elsewhere = handle
        .put_role_assignment(AdminRoleAssignment {
            name: None,
            scope: account_id("oai-legacy"),
            role_definition_id: OPENAI_USER.into(),
            principal_id: ALICE.into(),
            principal_type: Some("User".into()),
            description: Some("keyless:v1 instance=ci declared-by=old/object".into()),
            condition: None,
            created_by: None,
        })
        .unwrap();
    let account = account_yaml("oai-prod", "team-a");
    let both = manifests(&[(
        "m.yaml",
        &format!(
            "{account}---\n{}{}",
            access_yaml(
                "team-a",
                "people",
                "oai-prod",
                &["{user: alice@contoso.com}".into()]
            ),
            access_yaml(
                "team-a",
                "group",
                "oai-prod",
                &["{groupName: ML Platform Team}".into()]
            )
        ),
    )]);
    let flags = ["--instance-id", "ci", "--detailed-exitcode"];
    keyless(&handle, "apply", both.path(), &flags)
        .await
        .unwrap();
    assert_eq!(holds(&handle, "oai-prod", ALICE), 1);

    // The people object leaves the files: without --prune its grant stays, and the run says so.
    let group_only = manifests(&[(
        "m.yaml",
        &format!(
            "{account}---\n{}",
            access_yaml(
                "team-a",
                "group",
                "oai-prod",
                &["{groupName: ML Platform Team}".into()]
            )
        ),
    )]);
    let kept = keyless(&handle, "apply", group_only.path(), &flags)
        .await
        .unwrap();
    assert_eq!(holds(&handle, "oai-prod", ALICE), 1);
    assert_eq!(kept.summary.kept_without_prune, 1, "{kept:#?}");
    assert_eq!(kept.exit_code(true), 0);

    let plan = keyless(
        &handle,
        "plan",
        group_only.path(),
        &["--instance-id", "ci", "--prune"],
    )
    .await
    .unwrap();
    assert_eq!(plan.summary.delete, 1);
    assert_eq!(holds(&handle, "oai-prod", ALICE), 1);

    let pruned = keyless(
        &handle,
        "apply",
        group_only.path(),
        &["--instance-id", "ci", "--prune"],
    )
    .await
    .unwrap();
    assert_eq!(pruned.summary.delete, 1, "{pruned:#?}");
    assert_eq!(holds(&handle, "oai-prod", ALICE), 0);
    assert_eq!(holds(&handle, "oai-prod", GROUP), 1);
    let names: Vec<String> = handle
        .role_assignments()
        .into_iter()
        .map(|a| a.name)
        .collect();
    for survivor in [&foreign.name, &elsewhere.name, &BOB_BICEP.to_string()] {
        assert!(names.contains(survivor), "{survivor} was deleted");
    }
}

#[tokio::test]
async fn a_grant_the_files_still_name_but_no_longer_allow_is_revoked_without_prune() {
    let handle = emulator(|_| {}).await;
    let access = access_yaml(
        "team-a",
        "people",
        "oai-prod",
        &["{user: alice@contoso.com}".into()],
    );
    let allowed = manifests(&[(
        "m.yaml",
        &format!("{}---\n{access}", account_yaml("oai-prod", "team-a")),
    )]);
    keyless(&handle, "apply", allowed.path(), &["--instance-id", "ci"])
        .await
        .unwrap();
    assert_eq!(holds(&handle, "oai-prod", ALICE), 1);

    // The account's owners take team-a off the list: the request is denied and its grant revoked.
    let revoked = manifests(&[(
        "m.yaml",
        &format!("{}---\n{access}", account_yaml("oai-prod", "team-b")),
    )]);
    let report = keyless(&handle, "apply", revoked.path(), &["--instance-id", "ci"])
        .await
        .unwrap();
    // The denied principal is not looked up (no directory oracle), so its row says Denied and the
    // revocation is its own row, found through the marker's declared-by.
    assert_eq!(
        actions(&report)["user:alice@contoso.com"],
        Action::Denied,
        "{report:#?}"
    );
    assert!(
        report
            .accounts
            .iter()
            .flat_map(|a| &a.grants)
            .any(|g| g.action == Action::Deleted),
        "{report:#?}"
    );
    assert_eq!(holds(&handle, "oai-prod", ALICE), 0);
    assert_eq!(report.exit_code(true), 1, "a denied request fails the run");
}

#[tokio::test]
async fn a_denied_namespace_is_reported_and_nothing_is_created() {
    let handle = emulator(|_| {}).await;
    let dir = manifests(&[(
        "m.yaml",
        &format!(
            "{}---\n{}",
            account_yaml("oai-prod", "team-a"),
            access_yaml(
                "intruders",
                "grab",
                "oai-prod",
                &["{user: alice@contoso.com}".into()]
            )
        ),
    )]);
    let before = handle.role_assignments().len();
    let report = keyless(&handle, "apply", dir.path(), &["--instance-id", "ci"])
        .await
        .unwrap();
    let row = &report.accounts[0].grants[0];
    assert_eq!(row.action, Action::Denied);
    assert_eq!(row.reason, "NamespaceNotAllowed");
    assert!(row.message.contains("intruders"), "{}", row.message);
    assert_eq!(handle.role_assignments().len(), before);
    assert_eq!(handle.requests_of("RoleAssignments_Create"), 0);
    assert_eq!(report.exit_code(false), 1);
}

#[tokio::test]
async fn a_bad_file_is_an_error_naming_the_file_the_object_and_the_field() {
    let handle = emulator(|_| {}).await;
    let dir = manifests(&[
        ("a-account.yaml", &account_yaml("oai-prod", "team-a")),
        (
            "b-access.yaml",
            &access_yaml("team-a", "typo", "oai-prod", &["{user: not-an-upn}".into()]),
        ),
    ]);
    let error = keyless(&handle, "apply", dir.path(), &["--instance-id", "ci"])
        .await
        .unwrap_err();
    let text = format!("{:#}", anyhow::Error::from(error));
    assert!(text.contains("b-access.yaml"), "{text}");
    assert!(text.contains("OpenAIAccess team-a/typo"), "{text}");
    assert!(text.contains("spec.principals[0].user"), "{text}");
    assert_eq!(handle.requests_of("RoleAssignments_Create"), 0);
}

#[tokio::test]
async fn apply_against_azure_needs_an_instance_id() {
    let dir = manifests(&[("a.yaml", &account_yaml("oai-prod", "team-a"))]);
    let argv = ["keyless", "apply", "-f", dir.path().to_str().unwrap()];
    let Command::Apply(args) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    let error = keyless::files::run(&args, Mode::Apply).await.unwrap_err();
    assert!(matches!(error, FilesError::InstanceIdRequired), "{error}");
}

#[tokio::test]
async fn g_missing_grants_on_s_accounts_cost_g_puts_and_s_list_pages_and_a_second_apply_only_the_lists()
 {
    let page_size = 10;
    let handle = emulator(|c| c.page_size = page_size).await;
    let accounts = ["oai-prod", "ais-dev"];
    let grants = 25;
    let mut text = String::new();
    for (a, account) in accounts.iter().enumerate() {
        text.push_str(&account_yaml(account, "team-a"));
        text.push_str("---\n");
        let principals: Vec<String> = (0..grants)
            .map(|g| object_id(&format!("00000000-0000-4000-8000-{a:06}{g:06}"), "User"))
            .collect();
        text.push_str(&access_yaml(
            "team-a",
            &format!("many-{account}"),
            account,
            &principals,
        ));
    }
    let dir = manifests(&[("m.yaml", &text)]);
    let flags = ["--instance-id", "ci"];

    handle.reset_request_counts();
    let first = keyless(&handle, "apply", dir.path(), &flags).await.unwrap();
    let g = (accounts.len() * grants) as u64;
    let s = accounts.len() as u64;
    assert_eq!(first.summary.create as u64, g);
    assert_eq!(handle.request_count("RoleAssignments_Create", 201), g);
    assert_eq!(
        handle.requests_of("RoleAssignments_Create"),
        g,
        "no repeats"
    );
    // Before the writes, each scope holds at most 2 assignments (keyless's own grant at the
    // subscription, Bob's Bicep grant on oai-prod): one page each.
    assert_eq!(handle.requests_of("RoleAssignments_ListForScope"), s);
    // Without --instance-fingerprint a grant's name is the instance id's alone, which another
    // installation given the same id shares: each name is read (404) before it is PUT, so a PUT
    // never overwrites an existing assignment's marker.
    assert_eq!(handle.request_count("RoleAssignments_Get", 404), g);
    assert_eq!(handle.requests_of("RoleAssignments_Get"), g);
    assert_eq!(handle.requests_of("RoleAssignments_Delete"), 0);

    handle.reset_request_counts();
    let second = keyless(&handle, "apply", dir.path(), &flags).await.unwrap();
    assert_eq!(second.changes(), 0);
    assert_eq!(handle.requests_of("RoleAssignments_Create"), 0);
    assert_eq!(handle.requests_of("RoleAssignments_Get"), 0);
    assert_eq!(handle.requests_of("RoleAssignments_Delete"), 0);
    // oai-prod: 25 + the operator's + Bob's = 27 → 3 pages; ais-dev: 26 → 3 pages.
    let pages: u64 = [grants + 2, grants + 1]
        .iter()
        .map(|n| n.div_ceil(page_size) as u64)
        .sum();
    assert_eq!(handle.requests_of("RoleAssignments_ListForScope"), pages);
}

#[tokio::test]
async fn doctor_passes_on_the_example_tenant_and_names_the_fix_for_what_is_wrong() {
    use keyless::files::doctor::{Diagnosis, Status, check};
    let handle = emulator(|_| {}).await;
    let config = keyless::files::emulated::config_for(&handle, Default::default());
    let manifests = keyless::files::load::load(&[examples()], false).unwrap();
    let mut good = Diagnosis::default();
    check(
        &mut good,
        &config,
        &keyless::files::emulated::no_env,
        Some(&manifests),
    )
    .await;
    let failures: Vec<_> = good
        .checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    let token = &good.checks[1].what;
    assert!(
        token.contains("37d99a9d-85be-4a09-9afa-73e46bc24f11"),
        "the operator's oid: {token}"
    );
    assert!(
        good.checks
            .iter()
            .any(|c| c.what.starts_with("permissions on oai-prod") && c.what.contains("ABAC"))
    );
    assert!(
        good.checks
            .iter()
            .any(|c| c.what.starts_with("Graph answers"))
    );

    // oai-legacy has no custom subdomain.
    let legacy = keyless::files::load::from_documents(vec![(
        keyless::files::load::Origin {
            file: "x.yaml".into(),
            document: 1,
        },
        serde_json::json!({
            "apiVersion": "keyless.dev/v1alpha1", "kind": "OpenAIAccount",
            "metadata": {"name": "legacy"},
            "spec": {"resourceId": account_id("oai-legacy")}
        }),
    )])
    .unwrap();
    let mut bad = Diagnosis::default();
    check(
        &mut bad,
        &config,
        &keyless::files::emulated::no_env,
        Some(&legacy),
    )
    .await;
    let subdomain = bad
        .checks
        .iter()
        .find(|c| c.what.contains("custom subdomain"))
        .unwrap();
    assert_eq!(subdomain.status, Status::Fail);
    assert!(
        subdomain
            .fix
            .as_deref()
            .unwrap()
            .contains("--custom-domain")
    );
    assert!(bad.failed());

    // keyless's identity loses its delegated grant: it may neither read nor assign.
    handle
        .delete_role_assignment("a0e6f540-95b7-43ba-bf40-1fe5030effd0")
        .unwrap();
    let mut unauthorized = Diagnosis::default();
    check(
        &mut unauthorized,
        &config,
        &keyless::files::emulated::no_env,
        Some(&legacy),
    )
    .await;
    let permissions = unauthorized
        .checks
        .iter()
        .find(|c| c.what.starts_with("permissions on legacy"))
        .unwrap();
    assert_eq!(permissions.status, Status::Fail, "{permissions:?}");
    assert!(
        permissions
            .fix
            .as_deref()
            .unwrap()
            .contains("Role Based Access Control Administrator")
    );
}

/// kill -9 part-way through a large apply, run it again: every declared grant exactly once, nothing
/// leaked, nothing of another instance touched.
#[tokio::test]
async fn an_apply_killed_part_way_and_run_again_leaves_every_grant_exactly_once() {
    let handle = emulator(|c| {
        // The run's size, not ARM's buckets, is what this test is about.
        c.throttling.enabled = false;
        c.faults.latency = Duration::from_millis(3);
    })
    .await;
    let foreign = handle
        .put_role_assignment(AdminRoleAssignment {
            name: None,
            scope: account_id("oai-prod"),
            role_definition_id: OPENAI_USER.into(),
            principal_id: "0f0f0f0f-1111-4222-8333-444455556666".into(),
            principal_type: Some("User".into()),
            description: Some("keyless:v1 instance=cluster-b declared-by=x/y".into()),
            condition: None,
            created_by: None,
        })
        .unwrap();
    let before: Vec<RoleAssignment> = handle.role_assignments();
    let accounts = ["oai-prod", "ais-dev", "oai-legacy"];
    let per_account = 200;
    let mut text = String::new();
    let mut declared = Vec::new();
    for (a, account) in accounts.iter().enumerate() {
        text.push_str(&account_yaml(account, "team-a"));
        text.push_str("---\n");
        for chunk in 0..per_account / 100 {
            let principals: Vec<String> = (0..100)
                .map(|g| {
                    let id = format!("00000000-0000-4000-8000-{a:04}{chunk:04}{g:04}");
                    declared.push((account.to_string(), id.clone()));
                    object_id(&id, "ServicePrincipal")
                })
                .collect();
            text.push_str(&access_yaml(
                "team-a",
                &format!("{account}-{chunk}"),
                account,
                &principals,
            ));
        }
    }
    let dir = manifests(&[("m.yaml", &text)]);
    let mut argv: Vec<String> = [
        "apply",
        "-f",
        dir.path().to_str().unwrap(),
        "--instance-id",
        "ci",
        "--quiet",
        // keyless's own pacing would make the run minutes long; the emulator does not throttle.
        "--arm-pacing-writes",
        "100000:100000",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    argv.extend(azure_flags(&handle));

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyless"))
        .args(&argv)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let total = declared.len() as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let created = handle.request_count("RoleAssignments_Create", 201);
        if created >= total / 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the apply never got going ({created})"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the apply ended before it could be killed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.start_kill().unwrap(); // SIGKILL: no cleanup, no flush.
    child.wait().await.unwrap();
    let partial = handle.role_assignments().len() - before.len();
    assert!(
        partial > 0 && (partial as u64) < total,
        "killed part-way: {partial} of {total}"
    );

    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyless"))
        .args(&argv)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success(), "the second apply: {status}");

    let after = handle.role_assignments();
    for (account, principal) in &declared {
        assert_eq!(
            holds(&handle, account, principal),
            1,
            "{account} {principal}"
        );
    }
    assert_eq!(after.len(), before.len() + declared.len(), "nothing leaked");
    for original in &before {
        let now = after
            .iter()
            .find(|a| a.name == original.name)
            .expect("kept");
        assert_eq!(now.description, original.description);
        assert_eq!(now.principal_id, original.principal_id);
    }
    assert!(after.iter().any(|a| a.name == foreign.name));
}

/// Runs the built binary with `args` and the flags for `handle`, at the most verbose log level.
async fn keyless_binary(handle: &EmulatorHandle, args: &[&str]) -> std::process::Output {
    let mut argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    argv.extend(["--log-level".to_string(), "trace".to_string()]);
    let flags = azure_flags(handle);
    // doctor has no --service-account-issuer (the last flag and its value).
    let flags = if args.first() == Some(&"doctor") {
        &flags[..flags.len() - 2]
    } else {
        &flags[..]
    };
    argv.extend(flags.iter().cloned());
    tokio::process::Command::new(env!("CARGO_BIN_EXE_keyless"))
        .args(&argv)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn no_token_or_assertion_appears_in_any_output_at_any_verbosity() {
    let handle = emulator(|_| {}).await;
    let examples = examples();
    let dir = examples.to_str().unwrap();
    let mut outputs = secrets::Outputs::new();

    // In-process: the report as JSON and table, and the doctor's diagnosis.
    let report = keyless(
        &handle,
        "apply",
        &examples,
        &["--instance-id", "secrets-scan"],
    )
    .await
    .unwrap();
    let mut rendered = Vec::new();
    keyless::files::render::json(&report, &mut rendered).unwrap();
    keyless::files::render::table(&report, &mut rendered).unwrap();
    outputs.add("apply report", String::from_utf8(rendered).unwrap());
    let config = keyless::files::emulated::config_for(&handle, Default::default());
    let manifests = keyless::files::load::load(std::slice::from_ref(&examples), false).unwrap();
    let mut diagnosis = keyless::files::doctor::Diagnosis::default();
    keyless::files::doctor::check(
        &mut diagnosis,
        &config,
        &keyless::files::emulated::no_env,
        Some(&manifests),
    )
    .await;
    let mut printed = Vec::new();
    diagnosis.print(&mut printed).unwrap();
    outputs.add("doctor", String::from_utf8(printed).unwrap());

    // The binary at TRACE: plan, apply (JSON), doctor, and a run whose token request fails.
    for args in [
        vec!["plan", "-f", dir, "--instance-id", "secrets-scan"],
        vec![
            "apply",
            "-f",
            dir,
            "--instance-id",
            "secrets-scan",
            "-o",
            "json",
        ],
        vec!["doctor", "-f", dir],
    ] {
        let output = keyless_binary(&handle, &args).await;
        assert!(output.status.success(), "{args:?}: {output:?}");
        outputs.add(
            format!("{args:?} stdout"),
            String::from_utf8_lossy(&output.stdout),
        );
        outputs.add(
            format!("{args:?} stderr"),
            String::from_utf8_lossy(&output.stderr),
        );
    }
    // A federated token for a subject no credential trusts: Entra refuses it, keyless says why.
    let stranger = handle.federated_assertion(
        "https://oidc.keyless.example/cluster-1/",
        "system:serviceaccount:nobody:nobody",
        "api://AzureADTokenExchange",
    );
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, &stranger).unwrap();
    let mut argv: Vec<String> = ["plan", "-f", dir, "--log-level", "trace"]
        .into_iter()
        .map(str::to_string)
        .collect();
    let mut flags = azure_flags(&handle);
    let at = flags
        .iter()
        .position(|f| f == "--federated-token-file")
        .unwrap();
    flags[at + 1] = token_file.display().to_string();
    argv.extend(flags);
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyless"))
        .args(&argv)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(
        !refused.status.success() || stderr.contains("AADSTS") || stderr.contains("federat"),
        "the refused token should show as a failure: {stderr}"
    );
    outputs.add("refused stdout", String::from_utf8_lossy(&refused.stdout));
    outputs.add("refused stderr", stderr);

    outputs.add("logs", secrets::LogCapture::global().text());
    let seen = handle.secrets();
    // Not vacuous: the runs above were issued tokens, and sent the stranger's assertion.
    assert!(seen.len() >= 4, "the emulator saw {} secrets", seen.len());
    assert!(seen.contains(&stranger));
    assert!(outputs.len() > 10_000, "too little output to scan");
    outputs.assert_no_secret(&seen);
}

#[tokio::test]
async fn apply_refuses_an_account_under_observe_unless_told_to_override_and_plan_shows_it() {
    let handle = emulator(|_| {}).await;
    let account = format!(
        "{}  management: Observe\n---\n",
        account_yaml("oai-prod", "team-chat")
    );
    let dir = manifests(&[
        ("account.yaml", &account),
        (
            "access.yaml",
            &access_yaml("team-chat", "chat", "oai-prod", &[object_id(ALICE, "User")]),
        ),
    ]);
    let instance = ["--instance-id", "ci-observe"];

    let refused = keyless(&handle, "apply", dir.path(), &instance)
        .await
        .unwrap_err();
    let message = refused.to_string();
    assert!(
        matches!(refused, FilesError::ObserveRefused { .. }),
        "{refused:?}"
    );
    assert!(message.contains("OpenAIAccount oai-prod"), "{message}");
    assert!(message.contains("account.yaml"), "{message}");
    assert!(message.contains("--override-management"), "{message}");
    assert_eq!(holds(&handle, "oai-prod", ALICE), 0);
    assert!(
        handle.assignment_writes().is_empty(),
        "refused before any write"
    );

    // plan already observes: it shows the create.
    let plan = keyless(&handle, "plan", dir.path(), &instance)
        .await
        .unwrap();
    assert_eq!(plan.summary.create, 1, "{plan:#?}");
    assert_eq!(holds(&handle, "oai-prod", ALICE), 0);

    let applied = keyless(
        &handle,
        "apply",
        dir.path(),
        &["--instance-id", "ci-observe", "--override-management"],
    )
    .await
    .unwrap();
    assert_eq!(applied.summary.create, 1, "{applied:#?}");
    assert_eq!(holds(&handle, "oai-prod", ALICE), 1);
}

#[tokio::test]
async fn an_exclusive_account_needs_prune_and_with_it_apply_revokes_what_no_file_declares() {
    let handle = emulator(|_| {}).await;
    let account = format!(
        "{}  enforcement: Exclusive\n---\n",
        account_yaml("oai-prod", "team-chat")
    );
    let dir = manifests(&[
        ("account.yaml", &account),
        (
            "access.yaml",
            &access_yaml("team-chat", "chat", "oai-prod", &[object_id(ALICE, "User")]),
        ),
    ]);
    let present = |name: &str| {
        at(&handle, "oai-prod")
            .iter()
            .any(|a| a.name.eq_ignore_ascii_case(name))
    };
    assert!(present(BOB_BICEP), "the seed's Bicep grant for Bob");

    let refused = keyless(&handle, "apply", dir.path(), &["--instance-id", "ci-x"])
        .await
        .unwrap_err();
    assert!(
        matches!(refused, FilesError::ExclusiveNeedsPrune { .. }),
        "{refused:?}"
    );
    let message = refused.to_string();
    assert!(
        message.contains("OpenAIAccount oai-prod") && message.contains("--prune"),
        "{message}"
    );
    assert!(
        handle.assignment_writes().is_empty(),
        "refused before any write"
    );

    let applied = keyless(
        &handle,
        "apply",
        dir.path(),
        &["--instance-id", "ci-x", "--prune"],
    )
    .await
    .unwrap();
    assert_eq!(applied.summary.create, 1, "{applied:#?}");
    assert_eq!(holds(&handle, "oai-prod", ALICE), 1);
    assert!(
        !present(BOB_BICEP),
        "Bob's grant, declared by no file, is revoked"
    );
}

/// `keyless emulator` (the default build's subcommand; the emulator's own tests cover its
/// `keyless-emulator` binary in depth) starts the emulator and prints where it is.
#[tokio::test]
async fn keyless_emulator_subcommand_serves_the_emulator_it_prints() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyless"))
        .arg("emulator")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let banner = Banner::read(&mut child, Duration::from_secs(60)).await;
    let endpoint = banner.value_after("listening on ");
    assert!(
        endpoint.starts_with("https://127.0.0.1:"),
        "{}",
        banner.text()
    );
    let ca = std::fs::read(banner.value_after("--ca-file ")).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
    let info = http
        .get(format!("{endpoint}/_emulator/info"))
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), 200);
    let info: serde_json::Value = info.json().await.unwrap();
    assert_eq!(
        info["tenantId"],
        banner.value_after("AZURE_TENANT_ID="),
        "{info}"
    );
    child.start_kill().unwrap();
}
