//! Upgrading keyless without upgrading its CRDs (Helm never upgrades `crds/`): `keyless run` on a
//! real kube-apiserver holding the CRDs from before the Foundry User rename refuses to start, names
//! what the CRDs lack and how to upgrade them; once they are upgraded it starts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use support::cluster::{RunningController, TestEnv};
use support::kube_faults::{KubeFaults, Verb};
use support::operator::{azure_clients, controller_config, emulator};

/// How long a controller that passed its start-up checks must keep running to count as started.
const KEEPS_RUNNING_FOR: Duration = Duration::from_secs(3);
/// How long `run` may take to return its start-up error.
const REFUSES_WITHIN: Duration = Duration::from_secs(30);

/// Replaces each installed CRD with `crds` (a PUT, so fields only the old one lacks are gone).
async fn replace_crds(env: &TestEnv, crds: Vec<CustomResourceDefinition>) {
    let api: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    for mut crd in crds {
        let name = crd.metadata.name.clone().unwrap();
        let installed = api.get(&name).await.unwrap();
        crd.metadata.resource_version = installed.metadata.resource_version;
        api.replace(&name, &PostParams::default(), &crd)
            .await
            .unwrap();
    }
}

fn previous_crds() -> Vec<CustomResourceDefinition> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crds-before-foundry-user");
    [
        "openaiaccounts.keyless.dev.yaml",
        "openaiaccesses.keyless.dev.yaml",
    ]
    .into_iter()
    .flat_map(|file| {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        serde_saphyr::from_multiple::<CustomResourceDefinition>(&text).unwrap()
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_to_start_on_the_previous_crds_and_starts_once_they_are_upgraded() {
    let Some(env) = TestEnv::start().await else {
        return;
    };
    let emulator = emulator().await;
    replace_crds(&env, previous_crds()).await;

    let faults = KubeFaults::new();
    let mut controller = RunningController::spawn(
        env.controller_client(&faults),
        azure_clients(&emulator),
        controller_config("cluster-1"),
    );
    let error = controller
        .finished_within(REFUSES_WITHIN)
        .await
        .expect("run returns at start-up")
        .expect_err("run refuses to start");
    let message = error.to_string();
    for expected in [
        "the installed keyless CRDs are older than this keyless",
        "openaiaccounts.keyless.dev lacks spec.allowRetain, spec.allowedRoles[]: value FoundryUser",
        "openaiaccesses.keyless.dev lacks spec.role: value FoundryUser, status.principals[].replaces, status.principals[].role, status.roleDisplayName",
        "keyless crd | kubectl apply -f -",
        "Helm",
    ] {
        assert!(message.contains(expected), "{expected:?} not in: {message}");
    }
    // It refused having read the two CRDs, before watching or writing anything.
    let counts = faults.counts();
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        vec![&(Verb::Get, "customresourcedefinitions".to_string())],
        "{counts:?}"
    );
    assert_eq!(counts.values().sum::<u64>(), 2);
    drop(controller);

    // The upgrade the message asks for: this binary's CRDs (what `keyless crd` prints).
    replace_crds(&env, keyless::api::crds()).await;
    let mut controller = RunningController::spawn(
        env.controller_client(&faults),
        azure_clients(&emulator),
        controller_config("cluster-1"),
    );
    if let Some(result) = controller.finished_within(KEEPS_RUNNING_FOR).await {
        panic!("run stopped on upgraded CRDs: {result:?}");
    }
    controller.stop().await.unwrap();
}
