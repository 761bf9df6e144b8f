//! The pure part of `keyless bench --controller`: what each phase's counts mean against their
//! floors, which ratios are checked (requests only, never time or memory: those depend on the
//! machine), the table and the JSON, and reading the controller's `/metrics`.

use super::{Counts, graph_requests, throttled, total};
use std::collections::BTreeMap;

/// The most converge may cost over its floor and still pass (issue 18: ≤ 1.02 × the floor).
pub const CONVERGE_RATIO_LIMIT: f64 = 1.02;

/// One figure of one phase. `ok` is `Some` only for the request ratios the benchmark checks.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Row {
    pub phase: &'static str,
    pub figure: String,
    pub value: f64,
    pub unit: &'static str,
    /// What the figure is measured against (a floor, a bound, a target), in words.
    pub target: String,
    pub ok: Option<bool>,
}

fn info(phase: &'static str, figure: &str, value: f64, unit: &'static str, target: &str) -> Row {
    Row {
        phase,
        figure: figure.into(),
        value,
        unit,
        target: target.into(),
        ok: None,
    }
}

fn check(
    phase: &'static str,
    figure: &str,
    value: f64,
    unit: &'static str,
    target: &str,
    ok: bool,
) -> Row {
    Row {
        ok: Some(ok),
        ..info(phase, figure, value, unit, target)
    }
}

/// The floor of converging from nothing: one PUT per missing grant and one LIST page per account
/// (each scope holds only the operator's inherited grant at its first LIST).
pub fn converge_floor(missing_grants: u64, accounts: u64) -> u64 {
    missing_grants + accounts
}

/// Converge: every grant missing at the start, the controller started once.
#[derive(Debug, Clone, Default)]
pub struct Converge {
    pub accounts: u64,
    pub grants: u64,
    pub wall_seconds: f64,
    pub bucket_bound_seconds: f64,
    /// ARM and Graph requests by (operation, status).
    pub azure: Counts,
    /// LIST pages at account scopes (the pass's) and at subscription scopes (the hourly count).
    pub account_list_pages: u64,
    pub subscription_list_pages: u64,
    /// Kubernetes requests by verb (all resources).
    pub kube_by_verb: BTreeMap<String, u64>,
    pub reconciles: u64,
}

pub fn converge_rows(c: &Converge) -> Vec<Row> {
    const P: &str = "converge";
    let puts = total(&c.azure, "RoleAssignments_Create");
    let floor = converge_floor(c.grants, c.accounts);
    let spent = puts + c.account_list_pages;
    let ratio = spent as f64 / floor.max(1) as f64;
    let mut rows = vec![
        info(
            P,
            "grants created",
            puts as f64,
            "PUT",
            &format!("{} missing", c.grants),
        ),
        info(
            P,
            "LIST pages (account scopes)",
            c.account_list_pages as f64,
            "pages",
            &format!("{} accounts", c.accounts),
        ),
        check(
            P,
            "ARM requests / floor (PUTs + LIST pages)",
            ratio,
            "×",
            &format!("≤ {CONVERGE_RATIO_LIMIT} (floor {floor})"),
            ratio <= CONVERGE_RATIO_LIMIT && puts >= c.grants,
        ),
        check(
            P,
            "429s provoked",
            throttled(&c.azure) as f64,
            "",
            "0",
            throttled(&c.azure) == 0,
        ),
        info(
            P,
            "wall time",
            c.wall_seconds,
            "s",
            &format!(
                "bucket bound {:.1} s; ≤ 1.1 × bound",
                c.bucket_bound_seconds
            ),
        ),
        info(
            P,
            "wall time / bucket bound",
            if c.bucket_bound_seconds > 0.0 {
                c.wall_seconds / c.bucket_bound_seconds
            } else {
                0.0
            },
            "×",
            "≤ 1.1 (not checked: time)",
        ),
        info(
            P,
            "account GETs",
            total(&c.azure, "Accounts_Get") as f64,
            "",
            "listed apart from the floor",
        ),
        info(
            P,
            "role-definition reads",
            total(&c.azure, "RoleDefinitions_Get") as f64,
            "",
            "listed apart from the floor",
        ),
        info(
            P,
            "hourly count LIST pages (subscription scopes)",
            c.subscription_list_pages as f64,
            "pages",
            "listed apart from the floor",
        ),
        info(
            P,
            "Graph requests",
            graph_requests(&c.azure) as f64,
            "",
            "principals by objectId",
        ),
        info(P, "reconciles", c.reconciles as f64, "", ""),
    ];
    for (verb, n) in &c.kube_by_verb {
        rows.push(info(
            P,
            &format!("Kubernetes {verb} requests"),
            *n as f64,
            "",
            "",
        ));
    }
    rows
}

/// From the restart to the end of the converged grants' propagation grace: the passes that turn
/// them Ready, a batch per --propagation-check-interval.
#[derive(Debug, Clone, Default)]
pub struct Grace {
    pub accounts: u64,
    pub objects: u64,
    pub seconds: f64,
    pub check_interval_seconds: f64,
    pub reconciles: u64,
    pub account_list_pages: u64,
    pub status_patches: u64,
}

pub fn grace_rows(g: &Grace) -> Vec<Row> {
    const P: &str = "grace";
    let at_most = g.seconds / g.check_interval_seconds.max(f64::EPSILON) + 2.0;
    vec![
        info(
            P,
            "LIST pages per account until every grant is Ready",
            g.account_list_pages as f64 / g.accounts.max(1) as f64,
            "",
            &format!("≤ {at_most:.0} (one per check interval, plus the restart's)"),
        ),
        info(P, "reconciles", g.reconciles as f64, "", ""),
        info(
            P,
            "status PATCHes",
            g.status_patches as f64,
            "",
            &format!("≈ {} (each object turns Ready once)", g.objects),
        ),
    ]
}

/// Steady state: `resyncs` resyncs of every account with nothing to change.
#[derive(Debug, Clone, Default)]
pub struct Steady {
    pub accounts: u64,
    pub resyncs: u64,
    pub reconciles: u64,
    pub account_list_pages: u64,
    pub writes: u64,
    pub status_patches: u64,
    pub graph: u64,
    pub other_azure: u64,
}

pub fn steady_rows(s: &Steady) -> Vec<Row> {
    const P: &str = "steady";
    let expected_passes = s.accounts * s.resyncs;
    let per_pass = s.account_list_pages as f64 / s.reconciles.max(1) as f64;
    vec![
        check(
            P,
            "reconciles (one per account per resync)",
            s.reconciles as f64,
            "",
            &format!("= {expected_passes}"),
            s.reconciles == expected_passes,
        ),
        check(
            P,
            "LIST pages per account per resync",
            per_pass,
            "",
            "= 1",
            s.reconciles > 0 && s.account_list_pages == s.reconciles,
        ),
        check(P, "ARM writes", s.writes as f64, "", "0", s.writes == 0),
        check(
            P,
            "status PATCHes",
            s.status_patches as f64,
            "",
            "0",
            s.status_patches == 0,
        ),
        check(
            P,
            "Graph requests",
            s.graph as f64,
            "",
            "0 (until the cache TTL)",
            s.graph == 0,
        ),
        info(
            P,
            "other Azure requests",
            s.other_azure as f64,
            "",
            "token refreshes, reads",
        ),
    ]
}

/// Unrelated churn: label changes of namespaces without objects and updates of ServiceAccounts
/// no object names.
#[derive(Debug, Clone, Default)]
pub struct Churn {
    pub namespace_changes: u64,
    pub service_account_changes: u64,
    /// Accounts with objects in a namespace whose ServiceAccounts changed.
    pub affected_accounts: u64,
    pub arm_requests: u64,
    pub arm_list_pages: u64,
    pub reconciles: u64,
}

pub fn churn_rows(c: &Churn) -> Vec<Row> {
    const P: &str = "churn";
    vec![
        info(
            P,
            "namespace label changes",
            c.namespace_changes as f64,
            "",
            "namespaces without objects",
        ),
        info(
            P,
            "ServiceAccount updates",
            c.service_account_changes as f64,
            "",
            "no object names them",
        ),
        // The bound is the issue's: at most one pass per affected account, and nothing sent to
        // ARM but such a pass's LIST (tests/controller.rs churn test has the same bound).
        check(
            P,
            "ARM requests caused",
            c.arm_requests as f64,
            "",
            "0 (at most one pass's LIST per affected account)",
            c.arm_requests == c.arm_list_pages && c.arm_list_pages <= c.affected_accounts,
        ),
        check(
            P,
            "reconciles triggered",
            c.reconciles as f64,
            "",
            &format!("≤ {} (one per affected account)", c.affected_accounts),
            c.reconciles <= c.affected_accounts,
        ),
    ]
}

/// Drift: assignments deleted behind keyless's back, repaired by the next resync.
#[derive(Debug, Clone, Default)]
pub struct Drift {
    pub deleted: u64,
    pub repair_seconds: f64,
    pub resync_interval_seconds: f64,
    pub creates: u64,
    pub list_pages: u64,
}

pub fn drift_rows(d: &Drift) -> Vec<Row> {
    const P: &str = "drift";
    vec![
        info(
            P,
            "assignments deleted outside keyless",
            d.deleted as f64,
            "",
            "1 % of the grants",
        ),
        info(
            P,
            "time to repair",
            d.repair_seconds,
            "s",
            &format!("≤ one resync ({:.0} s)", d.resync_interval_seconds),
        ),
        info(
            P,
            "PUTs to repair",
            d.creates as f64,
            "",
            &format!("= {} deleted", d.deleted),
        ),
        info(
            P,
            "LIST pages meanwhile",
            d.list_pages as f64,
            "",
            "one per account per resync",
        ),
    ]
}

/// Memory of the controller process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    pub converge_peak_kib: u64,
    pub objects: u64,
    pub service_accounts: u64,
    pub namespaces: u64,
    pub population_seconds: f64,
    pub peak_kib: u64,
    pub steady_kib: u64,
    /// The steady RSS split: private memory (heap, stacks) and mapped file pages (the executable).
    pub steady_anon_kib: u64,
    pub steady_file_kib: u64,
    /// The highest RSS over the same resync interval: the controller while a resync's passes run.
    pub during_passes_kib: u64,
    /// The allocator's account at the same moment (`keyless_heap_*_bytes`): live data, and the
    /// heap's resident pages.
    pub heap_allocated_bytes: u64,
    pub heap_resident_bytes: u64,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn memory_rows(m: &Memory) -> Vec<Row> {
    const P: &str = "memory";
    let population = format!(
        "{} OpenAIAccess, {} ServiceAccounts, {} Namespaces",
        m.objects, m.service_accounts, m.namespaces
    );
    vec![
        info(
            P,
            "peak RSS while converging (VmHWM)",
            mib(m.converge_peak_kib),
            "MiB",
            "the converge population",
        ),
        info(
            P,
            "population created in",
            m.population_seconds,
            "s",
            &population,
        ),
        info(P, "peak RSS (VmHWM)", mib(m.peak_kib), "MiB", &population),
        info(
            P,
            "steady RSS between passes (lowest VmRSS over a resync)",
            mib(m.steady_kib),
            "MiB",
            "< 64 MiB (not checked: memory)",
        ),
        info(
            P,
            "RSS while a resync's passes run (highest)",
            mib(m.during_passes_kib),
            "MiB",
            "sampled every 250 ms over one resync interval",
        ),
        info(
            P,
            "steady RSS: private (RssAnon)",
            mib(m.steady_anon_kib),
            "MiB",
            "heap, stacks",
        ),
        info(
            P,
            "steady RSS: file pages (RssFile)",
            mib(m.steady_file_kib),
            "MiB",
            "the executable's mapped pages",
        ),
        info(
            P,
            "steady heap: allocated (live data)",
            mib(m.heap_allocated_bytes / 1024),
            "MiB",
            "keyless_heap_allocated_bytes",
        ),
        info(
            P,
            "steady heap: resident",
            mib(m.heap_resident_bytes / 1024),
            "MiB",
            "keyless_heap_resident_bytes",
        ),
    ]
}

/// Start-up of a fresh process on a converged cluster.
#[derive(Debug, Clone, Default)]
pub struct Startup {
    pub to_ready_seconds: f64,
    pub to_first_reconcile_seconds: f64,
}

pub fn startup_rows(s: &Startup) -> Vec<Row> {
    const P: &str = "start-up";
    vec![
        info(
            P,
            "process start → stores ready (/readyz)",
            s.to_ready_seconds,
            "s",
            "",
        ),
        info(
            P,
            "process start → first reconcile (its LIST)",
            s.to_first_reconcile_seconds,
            "s",
            "",
        ),
        info(
            P,
            "stores ready → first reconcile",
            s.to_first_reconcile_seconds - s.to_ready_seconds,
            "s",
            "< 2 s (negative: before /readyz said so)",
        ),
    ]
}

/// Takeover: two replicas, the leader SIGKILLed.
#[derive(Debug, Clone, Default)]
pub struct Takeover {
    pub lease_duration_seconds: f64,
    pub to_first_write_seconds: f64,
}

pub fn takeover_rows(t: &Takeover) -> Vec<Row> {
    vec![info(
        "takeover",
        "leader SIGKILL → first ARM write by the new leader",
        t.to_first_write_seconds,
        "s",
        &format!(
            "lease duration {:.0} s + one pass",
            t.lease_duration_seconds
        ),
    )]
}

/// The checks that failed, as `phase: figure`.
pub fn failures(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .filter(|r| r.ok == Some(false))
        .map(|r| format!("{}: {} = {}", r.phase, r.figure, format_value(r.value)))
        .collect()
}

fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

/// The rows as an aligned text table.
pub fn table(rows: &[Row]) -> String {
    let header = ["phase", "figure", "value", "target", "check"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.phase.to_string(),
                r.figure.clone(),
                if r.unit.is_empty() {
                    format_value(r.value)
                } else {
                    format!("{} {}", format_value(r.value), r.unit)
                },
                r.target.clone(),
                match r.ok {
                    Some(true) => "ok".into(),
                    Some(false) => "FAIL".into(),
                    None => String::new(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = w - cell.chars().count();
            // Values right-aligned, words left-aligned.
            if i == 2 {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.map(String::from));
    for row in &cells {
        out.push_str(&line(row));
    }
    out
}

/// The report as JSON: the settings the run used, every row, and the failed checks.
pub fn json(settings: serde_json::Value, rows: &[Row]) -> serde_json::Value {
    serde_json::json!({
        "settings": settings,
        "rows": rows,
        "failed": failures(rows),
    })
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a `/metrics` page (label values without escapes, as keyless writes them; lines
/// that do not parse are skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}')?;
                    let labels = body
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .filter_map(|pair| {
                            let (k, v) = pair.split_once('=')?;
                            Some((k.to_string(), v.trim_matches('"').to_string()))
                        })
                        .collect();
                    (name.to_string(), labels)
                }
            };
            Some(Sample {
                name,
                labels,
                value,
            })
        })
        .collect()
}

/// The sum of a metric's samples whose labels include `filter`.
pub fn metric_sum(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> u64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            filter
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum::<f64>() as u64
}

/// `keyless_kube_requests_total` summed by verb.
pub fn kube_requests_by_verb(samples: &[Sample]) -> BTreeMap<String, u64> {
    let mut by_verb = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.name == "keyless_kube_requests_total")
    {
        if let Some(verb) = s.labels.get("verb") {
            *by_verb.entry(verb.clone()).or_default() += s.value as u64;
        }
    }
    by_verb
}

/// `after - before`, verb by verb.
pub fn delta(
    after: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(entries: &[(&str, u16, u64)]) -> Counts {
        entries
            .iter()
            .map(|(op, status, n)| ((op.to_string(), *status), *n))
            .collect()
    }

    fn verdict(rows: &[Row], figure: &str) -> Option<bool> {
        rows.iter()
            .find(|r| r.figure.starts_with(figure))
            .and_then(|r| r.ok)
    }

    #[test]
    fn the_converge_floor_is_one_put_per_missing_grant_and_one_list_page_per_account() {
        assert_eq!(converge_floor(10_000, 20), 10_020);
        assert_eq!(converge_floor(0, 3), 3);
    }

    #[test]
    fn converge_passes_at_the_floor_and_fails_past_two_percent_or_with_a_429() {
        let at_floor = Converge {
            accounts: 4,
            grants: 80,
            azure: counts(&[
                ("RoleAssignments_Create", 201, 80),
                ("RoleAssignments_ListForScope", 200, 4),
            ]),
            account_list_pages: 4,
            ..Converge::default()
        };
        let rows = converge_rows(&at_floor);
        assert_eq!(verdict(&rows, "ARM requests / floor"), Some(true));
        assert_eq!(verdict(&rows, "429s"), Some(true));
        assert!(failures(&rows).is_empty());

        // 84 × 1.02 = 85.68: one more LIST page passes, two fail.
        let mut over = at_floor.clone();
        over.account_list_pages = 5;
        assert_eq!(
            verdict(&converge_rows(&over), "ARM requests / floor"),
            Some(true)
        );
        over.account_list_pages = 6;
        assert_eq!(
            verdict(&converge_rows(&over), "ARM requests / floor"),
            Some(false)
        );

        // A run that did not create every grant does not pass for being cheap.
        let mut short = at_floor.clone();
        short.azure = counts(&[("RoleAssignments_Create", 201, 79)]);
        assert_eq!(
            verdict(&converge_rows(&short), "ARM requests / floor"),
            Some(false)
        );

        let mut throttled = at_floor;
        throttled.azure = counts(&[
            ("RoleAssignments_Create", 201, 80),
            ("RoleAssignments_Create", 429, 1),
        ]);
        let rows = converge_rows(&throttled);
        assert_eq!(verdict(&rows, "429s"), Some(false));
        assert_eq!(
            failures(&rows),
            vec!["converge: 429s provoked = 1".to_string()]
        );
    }

    #[test]
    fn time_and_memory_are_shown_and_never_checked() {
        let slow = Converge {
            accounts: 1,
            grants: 1,
            wall_seconds: 1000.0,
            bucket_bound_seconds: 1.0,
            azure: counts(&[("RoleAssignments_Create", 201, 1)]),
            account_list_pages: 1,
            ..Converge::default()
        };
        assert!(failures(&converge_rows(&slow)).is_empty());
        let fat = Memory {
            peak_kib: 10 << 20,
            steady_kib: 10 << 20,
            ..Memory::default()
        };
        assert!(memory_rows(&fat).iter().all(|r| r.ok.is_none()));
        assert!(
            startup_rows(&Startup {
                to_ready_seconds: 1.0,
                to_first_reconcile_seconds: 99.0
            })
            .iter()
            .all(|r| r.ok.is_none())
        );
    }

    #[test]
    fn steady_state_wants_exactly_one_list_page_per_account_per_resync_and_no_write() {
        let quiet = Steady {
            accounts: 4,
            resyncs: 2,
            reconciles: 8,
            account_list_pages: 8,
            ..Steady::default()
        };
        assert!(failures(&steady_rows(&quiet)).is_empty());
        for (broken, figure) in [
            (
                Steady {
                    account_list_pages: 9,
                    ..quiet.clone()
                },
                "LIST pages per account",
            ),
            (
                Steady {
                    reconciles: 9,
                    account_list_pages: 9,
                    ..quiet.clone()
                },
                "reconciles",
            ),
            (
                Steady {
                    writes: 1,
                    ..quiet.clone()
                },
                "ARM writes",
            ),
            (
                Steady {
                    status_patches: 1,
                    ..quiet.clone()
                },
                "status PATCHes",
            ),
            (
                Steady {
                    graph: 1,
                    ..quiet.clone()
                },
                "Graph requests",
            ),
            (
                Steady {
                    reconciles: 0,
                    account_list_pages: 0,
                    resyncs: 0,
                    ..quiet.clone()
                },
                "LIST pages per account",
            ),
        ] {
            assert_eq!(
                verdict(&steady_rows(&broken), figure),
                Some(false),
                "{broken:?}"
            );
        }
    }

    #[test]
    fn churn_allows_at_most_one_pass_per_affected_account_and_nothing_else_sent_to_arm() {
        let none = Churn {
            namespace_changes: 1000,
            service_account_changes: 1000,
            affected_accounts: 2,
            ..Churn::default()
        };
        assert!(failures(&churn_rows(&none)).is_empty());
        let one_pass = Churn {
            arm_requests: 1,
            arm_list_pages: 1,
            reconciles: 1,
            ..none.clone()
        };
        assert!(failures(&churn_rows(&one_pass)).is_empty());
        let a_write = Churn {
            arm_requests: 2,
            arm_list_pages: 1,
            reconciles: 1,
            ..none.clone()
        };
        assert_eq!(verdict(&churn_rows(&a_write), "ARM requests"), Some(false));
        let too_many = Churn {
            arm_requests: 3,
            arm_list_pages: 3,
            reconciles: 3,
            ..none
        };
        let rows = churn_rows(&too_many);
        assert_eq!(verdict(&rows, "ARM requests"), Some(false));
        assert_eq!(verdict(&rows, "reconciles"), Some(false));
    }

    #[test]
    fn the_table_aligns_columns_and_marks_failed_checks() {
        let rows = vec![
            check("steady", "ARM writes", 0.0, "", "0", true),
            check("steady", "status PATCHes", 3.0, "", "0", false),
            info("memory", "peak RSS (VmHWM)", 41.25, "MiB", ""),
        ];
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("phase   figure"));
        assert!(lines[2].ends_with("FAIL"), "{text}");
        assert!(lines[1].ends_with("ok"), "{text}");
        assert!(lines[3].contains("41.250 MiB"), "{text}");
        // Values are right-aligned under their header.
        let value_end = lines[0].find("value").unwrap() + "value".len();
        let last_of_value: Vec<u8> = lines[1..]
            .iter()
            .map(|l| l.as_bytes()[value_end - 1])
            .collect();
        assert_eq!(last_of_value, b"03B", "{text}");
    }

    #[test]
    fn the_json_holds_every_row_and_names_the_failed_checks() {
        let rows = vec![
            check("churn", "reconciles triggered", 5.0, "", "≤ 2", false),
            info("drift", "time to repair", 12.5, "s", ""),
        ];
        let value = json(serde_json::json!({"accounts": 2}), &rows);
        assert_eq!(value["settings"]["accounts"], 2);
        assert_eq!(value["rows"].as_array().map(Vec::len), Some(2));
        assert_eq!(value["rows"][1]["value"], 12.5);
        assert_eq!(value["rows"][1]["ok"], serde_json::Value::Null);
        assert_eq!(
            value["failed"],
            serde_json::json!(["churn: reconciles triggered = 5"])
        );
    }

    #[test]
    fn metrics_are_read_by_name_and_labels() {
        let text = "# HELP keyless_reconciles Reconciles\n# TYPE keyless_reconciles counter\nkeyless_reconciles_total{result=\"ok\"} 7\nkeyless_reconciles_total{result=\"error\"} 2\nkeyless_kube_requests_total{verb=\"patch\",resource=\"openaiaccesses/status\"} 3\nkeyless_kube_requests_total{verb=\"patch\",resource=\"namespaces\"} 1\nkeyless_kube_requests_total{verb=\"list\",resource=\"namespaces\"} 4\nkeyless_leader 1\n";
        let samples = parse_metrics(text);
        assert_eq!(metric_sum(&samples, "keyless_reconciles_total", &[]), 9);
        assert_eq!(
            metric_sum(&samples, "keyless_reconciles_total", &[("result", "ok")]),
            7
        );
        assert_eq!(
            metric_sum(
                &samples,
                "keyless_kube_requests_total",
                &[("verb", "patch"), ("resource", "openaiaccesses/status")]
            ),
            3
        );
        assert_eq!(metric_sum(&samples, "keyless_leader", &[]), 1);
        let by_verb = kube_requests_by_verb(&samples);
        assert_eq!(by_verb.get("patch"), Some(&4));
        assert_eq!(by_verb.get("list"), Some(&4));
        let before: BTreeMap<String, u64> = [("patch".to_string(), 4), ("list".to_string(), 1)]
            .into_iter()
            .collect();
        assert_eq!(
            delta(&by_verb, &before),
            [("list".to_string(), 3)].into_iter().collect()
        );
    }
}
