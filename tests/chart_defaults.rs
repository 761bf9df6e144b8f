//! The chart passes the controller's timing and brake flags with the binary's own defaults, and
//! what it renders passes the fence's start-up rule (the Azure attempt timeout shorter than the
//! lease duration minus the renew interval). Renders charts/keyless with helm (`KEYLESS_HELM`, or
//! `.ci/bin/helm`); without helm the test skips with a notice (a failure under
//! `KEYLESS_REQUIRE_SHARED=1`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use keyless::cli::{Cli, Command as Subcommand};
use keyless::controller::args::RunArgs;

fn helm() -> Option<PathBuf> {
    let candidate = std::env::var_os("KEYLESS_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/bin/helm"));
    if candidate.is_file() {
        return Some(candidate);
    }
    assert!(
        std::env::var("KEYLESS_REQUIRE_SHARED").as_deref() != Ok("1"),
        "KEYLESS_REQUIRE_SHARED=1 but helm is missing (run .ci/install-tools.sh, export KEYLESS_HELM)"
    );
    eprintln!(
        "notice: helm is missing (KEYLESS_HELM, .ci/bin/helm): skipping the chart defaults test"
    );
    None
}

/// The container args of the chart's Deployment, rendered with these `--set` values.
fn rendered_args(helm: &Path, set: &[&str]) -> Vec<String> {
    let mut command = Command::new(helm);
    command
        .arg("template")
        .arg("keyless")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/keyless"))
        .args([
            "--namespace",
            "keyless-system",
            "--set",
            "controller.instanceId=cluster-1",
        ]);
    for value in set {
        command.args(["--set", value]);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    let deployment = documents
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the chart renders a Deployment");
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn parse(args: &[String]) -> RunArgs {
    let argv = std::iter::once("keyless".to_string()).chain(args.iter().cloned());
    match Cli::try_parse_from(argv).unwrap().command {
        Subcommand::Run(args) => *args,
        other => panic!("the chart runs `keyless run`, not {other:?}"),
    }
}

#[test]
fn the_charts_defaults_are_the_binarys_and_pass_the_fences_start_up_rule() {
    let Some(helm) = helm() else {
        return;
    };
    let rendered = rendered_args(&helm, &[]);
    for flag in [
        "--delete-budget=",
        "--delete-budget-window=",
        "--mass-revocation-percent=",
        "--mass-revocation-minimum=",
        "--watch-failure-threshold=",
        "--watch-failure-ttl=",
        "--view-poll-interval=",
        "--propagation-check-interval=",
        "--azure-timeout=",
        "--lease-duration=",
        "--lease-renew-interval=",
        "--lease-retry-interval=",
    ] {
        assert!(
            rendered.iter().any(|a| a.starts_with(flag)),
            "the chart passes {flag}: {rendered:?}"
        );
    }
    let chart = parse(&rendered);
    // The binary with nothing but what the chart must say (the instance, leader election).
    let binary = parse(&[
        "run".into(),
        "--instance-id=cluster-1".into(),
        "--leader-election".into(),
    ]);
    assert_eq!(chart.delete_budget, binary.delete_budget);
    assert_eq!(chart.delete_budget_window, binary.delete_budget_window);
    assert_eq!(
        chart.mass_revocation_percent,
        binary.mass_revocation_percent
    );
    assert_eq!(
        chart.mass_revocation_minimum,
        binary.mass_revocation_minimum
    );
    assert_eq!(
        chart.prune_grace, binary.prune_grace,
        "empty: twice the resync"
    );
    assert_eq!(
        chart.watch_failure_threshold,
        binary.watch_failure_threshold
    );
    assert_eq!(chart.watch_failure_ttl, binary.watch_failure_ttl);
    assert_eq!(chart.view_poll_interval, binary.view_poll_interval);
    assert_eq!(
        chart.propagation_check_interval,
        binary.propagation_check_interval
    );
    assert_eq!(chart.azure.azure_timeout, binary.azure.azure_timeout);
    assert_eq!(chart.lease_duration, binary.lease_duration);
    assert_eq!(chart.lease_renew_interval, binary.lease_renew_interval);
    assert_eq!(chart.lease_retry_interval, binary.lease_retry_interval);

    let config = chart.controller_config(None);
    let lease = config.leader.clone().expect("the chart elects a leader");
    lease
        .validate_fencing(config.arm_attempt_timeout)
        .expect("the chart's defaults start");

    // The control: a chart whose timeout the lease cannot cover renders a controller that refuses
    // to start, so the check above does look at the chart's values.
    let tight = parse(&rendered_args(&helm, &["azure.timeout=12s"]));
    let config = tight.controller_config(None);
    assert!(
        config
            .leader
            .unwrap()
            .validate_fencing(config.arm_attempt_timeout)
            .is_err()
    );
    let with_grace = parse(&rendered_args(
        &helm,
        &["controller.deleteBrake.pruneGrace=7m"],
    ));
    assert_eq!(
        with_grace.prune_grace,
        Some(std::time::Duration::from_secs(420))
    );
}
