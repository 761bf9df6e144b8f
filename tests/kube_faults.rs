//! The test bed itself, on the real API server: the fault layer delays and fails what it is told
//! to, counts exactly what a client sent, and scopes a client to its test's objects.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use support::cluster::TestEnv;
use support::kube_faults::{Fault, KubeFaults, Verb};

fn config_map(namespace: &str, name: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace}, "data": {"k": "v"}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowed_list_is_slow_and_other_requests_are_not_held_up() {
    let Some(env) = TestEnv::start().await else {
        return;
    };
    let namespace = env.namespace("slow").await;
    let faults = KubeFaults::new();
    let client = env.client_with(&faults);
    let delay = Duration::from_millis(1500);
    faults.inject(Fault::on(Verb::List).resource("configmaps").delay(delay));
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);

    let all = ListParams::default();
    let started = Instant::now();
    let (listed, created) = tokio::join!(api.list(&all), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let created = api
            .create(&PostParams::default(), &config_map(&namespace, "meanwhile"))
            .await;
        (created, started.elapsed())
    });
    let list_took = started.elapsed();
    listed.unwrap();
    let (created, create_done_at) = created;
    created.unwrap();
    assert!(list_took >= delay, "the LIST took {list_took:?}");
    assert!(
        create_done_at < delay,
        "a create sent during the slow LIST answered at {create_done_at:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_patch_fails_with_the_injected_code_and_never_reaches_the_server() {
    let Some(env) = TestEnv::start().await else {
        return;
    };
    let namespace = env.namespace("fail").await;
    let faults = KubeFaults::new();
    let api: Api<ConfigMap> = Api::namespaced(env.client_with(&faults), &namespace);
    api.create(&PostParams::default(), &config_map(&namespace, "target"))
        .await
        .unwrap();
    faults.inject(
        Fault::on(Verb::Patch)
            .resource("configmaps")
            .times(1)
            .respond(409),
    );
    let patch = Patch::Merge(json!({"data": {"k": "changed"}}));
    let error = api
        .patch("target", &PatchParams::default(), &patch)
        .await
        .unwrap_err();
    match error {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 409);
            assert_eq!(status.reason, "Conflict");
        }
        other => panic!("expected a 409 from the API, got {other:?}"),
    }
    let stored = api.get("target").await.unwrap();
    assert_eq!(
        stored.data.unwrap()["k"],
        "v",
        "the failed PATCH was not applied"
    );
    // `times(1)`: the next PATCH goes through.
    api.patch("target", &PatchParams::default(), &patch)
        .await
        .unwrap();
    assert_eq!(
        api.get("target").await.unwrap().data.unwrap()["k"],
        "changed"
    );
    assert_eq!(
        faults
            .answered_with(409)
            .get(&(Verb::Patch, "configmaps".into())),
        Some(&1)
    );

    // 422 and 403 on writes, by name.
    faults.inject(Fault::on(Verb::Update).name("target").respond(422));
    let current = api.get("target").await.unwrap();
    let error = api
        .replace("target", &PostParams::default(), &current)
        .await
        .unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 422),
        "{error:?}"
    );
    faults.inject(Fault::on(Verb::Create).resource("configmaps").respond(403));
    let error = api
        .create(&PostParams::default(), &config_map(&namespace, "other"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 403),
        "{error:?}"
    );
    assert_eq!(faults.answers_with(403), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_match_exactly_what_a_scripted_client_sent() {
    let Some(env) = TestEnv::start().await else {
        return;
    };
    let namespace = env.namespace("counts").await;
    let faults = KubeFaults::new();
    let api: Api<ConfigMap> = Api::namespaced(env.client_with(&faults), &namespace);
    for i in 0..3 {
        api.create(
            &PostParams::default(),
            &config_map(&namespace, &format!("cm-{i}")),
        )
        .await
        .unwrap();
    }
    api.get("cm-0").await.unwrap();
    api.list(&ListParams::default()).await.unwrap();
    api.patch(
        "cm-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "w"}})),
    )
    .await
    .unwrap();
    api.delete("cm-2", &Default::default()).await.unwrap();
    let expected = [
        ((Verb::Create, "configmaps".to_string()), 3),
        ((Verb::Get, "configmaps".to_string()), 1),
        ((Verb::List, "configmaps".to_string()), 1),
        ((Verb::Patch, "configmaps".to_string()), 1),
        ((Verb::Delete, "configmaps".to_string()), 1),
    ];
    assert_eq!(faults.counts(), expected.into_iter().collect());
    assert_eq!(faults.answers_with(200) + faults.answers_with(201), 7);

    faults.reset_counts();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client_with(&faults));
    namespaces.get(&namespace).await.unwrap();
    assert_eq!(faults.count(Verb::Get, "namespaces"), 1);
    assert_eq!(faults.count(Verb::Get, "configmaps"), 0, "reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_can_be_dropped_or_told_its_version_is_gone() {
    let Some(env) = TestEnv::start().await else {
        return;
    };
    let namespace = env.namespace("watch").await;
    let faults = KubeFaults::new();
    let api: Api<ConfigMap> = Api::namespaced(env.client_with(&faults), &namespace);
    let version = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    faults.inject(Fault::on(Verb::Watch).times(1).watch_error(410));
    use futures::StreamExt;
    let events: Vec<_> = api
        .watch(&WatchParams::default(), &version)
        .await
        .unwrap()
        .collect()
        .await;
    match events.as_slice() {
        [Ok(WatchEvent::Error(status))] => assert_eq!(status.code, 410),
        other => panic!("expected one 410 ERROR event, got {other:?}"),
    }

    // A dropped watch: the stream ends long before its server-side timeout.
    faults.inject(
        Fault::on(Verb::Watch)
            .times(1)
            .end_stream_after(Duration::from_millis(300)),
    );
    let started = Instant::now();
    let stream = api
        .watch(&WatchParams::default().timeout(60), &version)
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.collect::<Vec<_>>())
        .await
        .expect("the dropped watch ended");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(faults.count(Verb::Watch, "configmaps"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_client_lists_only_its_own_tests_objects() {
    let Some(env) = TestEnv::start().await else {
        return;
    };
    let Some(other) = TestEnv::start().await else {
        return;
    };
    let namespace = env.namespace("mine").await;
    other.namespace("theirs").await;
    env.create(&config_map(&namespace, "labelled")).await;
    // Created without the label: invisible to the scoped client.
    Api::<ConfigMap>::namespaced(env.client.clone(), &namespace)
        .create(
            &PostParams::default(),
            &config_map(&namespace, "unlabelled"),
        )
        .await
        .unwrap();
    let faults = KubeFaults::new();
    let scoped = env.controller_client(&faults);
    let namespaces: Vec<String> = Api::<k8s_openapi::api::core::v1::Namespace>::all(scoped.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert_eq!(namespaces, vec![namespace.clone()]);
    let maps: Vec<String> = Api::<ConfigMap>::all(scoped.clone())
        .list(&ListParams::default().labels("app!=x"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(
        maps,
        vec!["labelled".to_string()],
        "a selector of its own is kept and narrowed"
    );
    // A get by name is not scoped.
    Api::<ConfigMap>::namespaced(scoped, &namespace)
        .get("unlabelled")
        .await
        .unwrap();
}
