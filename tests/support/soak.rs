//! The soak's invariant, checked against the emulator's final role assignments and its journal of
//! writes (`keyless_emulator::journal`). Pure: no cluster, no emulator; `tests/soak.rs` feeds it.
//!
//! After every run, for the account scopes under test:
//! 1. every declared, eligible grant (scope, principal, role) exists exactly once — none missing,
//!    no duplicate triple;
//! 2. no assignment marked by this instance remains that nothing declares (a leak); on an account
//!    under enforcement Exclusive also (by Exclusive's own rule, [`ExclusiveRule`]) no assignment
//!    made outside keyless at the account's scope, of a role keyless manages, that nothing
//!    declares — unless its principal is exempt, it carries an ABAC condition, or it is released
//!    or marked by another instance;
//! 3. nothing protected — adopted (a declared grant someone else made), released, foreign, or
//!    marked by another instance — was written or deleted, and each is still there unchanged;
//! 4. no grant was deleted and then created again (a DELETE→PUT pair of the same triple): a
//!    re-created grant can take ten minutes to work again, so a restart that revokes and re-grants
//!    is a violation even though the final state looks right.
//!
//! The oracle deliberately does not use keyless's own ownership code: it reads the marker words
//! itself, so a bug there cannot hide here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use keyless_emulator::RoleAssignment;
use keyless_emulator::journal::{AssignmentWrite, RequestRecord, WriteKind};

/// A grant, normalised: scope without a trailing slash and lower case, ids lower case.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    pub scope: String,
    pub principal: String,
    pub role: String,
}

impl Grant {
    pub fn new(scope: &str, principal: &str, role: &str) -> Grant {
        Grant {
            scope: scope.trim_end_matches('/').to_lowercase(),
            principal: principal.to_lowercase(),
            role: role.to_lowercase(),
        }
    }
}

/// One assignment as the checker sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub name: String,
    pub grant: Grant,
    pub description: Option<String>,
    /// It carries an ABAC condition (Exclusive never revokes those).
    pub conditioned: bool,
}

impl From<&RoleAssignment> for Held {
    fn from(a: &RoleAssignment) -> Held {
        Held {
            name: a.name.to_lowercase(),
            grant: Grant::new(&a.scope, &a.principal_id, &a.role_definition_guid),
            description: a.description.clone(),
            conditioned: a.condition.is_some(),
        }
    }
}

impl From<&AssignmentWrite> for Held {
    fn from(w: &AssignmentWrite) -> Held {
        Held {
            name: w.name.to_lowercase(),
            grant: Grant::new(&w.scope, &w.principal_id, &w.role_definition_guid),
            description: w.description.clone(),
            conditioned: false,
        }
    }
}

/// What must hold at the end of a run.
#[derive(Clone, Debug, Default)]
pub struct Expectation {
    /// This installation's `--instance-id`.
    pub instance: String,
    /// The account scopes under test (normalised as in [`Grant`]); assignments elsewhere (the
    /// operator's own grant) are not looked at.
    pub scopes: BTreeSet<String>,
    /// Every grant a live OpenAIAccess declares and the account's policy allows.
    pub declared: BTreeSet<Grant>,
    /// Assignments keyless must never write or delete, as they were before the run.
    pub protected: Vec<Held>,
    /// The accounts' enforcement Exclusive, when they are under it.
    pub exclusive: Option<ExclusiveRule>,
}

/// Enforcement Exclusive's rule, as the oracle reads it: at the account scopes, an assignment of
/// one of `roles` that nothing declares must be gone at the end, unless this instance made it
/// (then it is a leak, check 2), it is released or marked by another keyless instance, it carries
/// an ABAC condition, or its principal is in `exempt`.
#[derive(Clone, Debug, Default)]
pub struct ExclusiveRule {
    /// Role definition GUIDs keyless manages (lower case).
    pub roles: BTreeSet<String>,
    /// `exclusiveExemptions`: principal object ids (lower case).
    pub exempt: BTreeSet<String>,
}

impl ExclusiveRule {
    /// True when Exclusive must have revoked `held` (it is in scope and undeclared).
    fn must_revoke(&self, held: &Held, instance: &str) -> bool {
        let description = held.description.as_deref();
        self.roles.contains(&held.grant.role)
            && !self.exempt.contains(&held.grant.principal)
            && !held.conditioned
            && !marked_by(description, instance)
            && !keyless_marked(description)
    }
}

/// True when the description is any keyless marker: another instance's, or a released grant's.
fn keyless_marked(description: Option<&str>) -> bool {
    matches!(
        description.unwrap_or_default().split(' ').next(),
        Some("keyless:v1" | "keyless:released")
    )
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A declared, eligible grant has no assignment.
    Missing(Grant),
    /// A grant is held by more than one assignment.
    Duplicate { grant: Grant, count: usize },
    /// An assignment of this instance remains that nothing declares.
    Leaked { name: String, grant: Grant },
    /// Under enforcement Exclusive, an assignment made outside keyless remains that nothing
    /// declares and nothing exempts.
    NotRevoked { name: String, grant: Grant },
    /// A protected assignment is gone, or its description changed.
    ProtectedChanged { name: String },
    /// keyless wrote or deleted a protected assignment.
    ProtectedWritten { name: String, kind: WriteKind },
    /// A grant was deleted, then created again.
    DeletedThenCreated { grant: Grant, pairs: usize },
    /// A client sent a failed request again sooner than its backoff (or the answer's
    /// `Retry-After`) allows.
    RetriedTooSoon {
        target: String,
        status: u16,
        after: Duration,
        floor: Duration,
    },
}

impl Violation {
    /// A bounded name for the table.
    pub fn kind(&self) -> &'static str {
        match self {
            Violation::Missing(_) => "missing",
            Violation::Duplicate { .. } => "duplicate",
            Violation::Leaked { .. } => "leaked",
            Violation::NotRevoked { .. } => "exclusive-not-revoked",
            Violation::ProtectedChanged { .. } => "protected-changed",
            Violation::ProtectedWritten { .. } => "protected-written",
            Violation::DeletedThenCreated { .. } => "delete-then-create",
            Violation::RetriedTooSoon { .. } => "retried-too-soon",
        }
    }
}

/// True when the description is the marker of `instance` (`keyless:v1 instance=<id> ...`).
pub fn marked_by(description: Option<&str>, instance: &str) -> bool {
    let mut words = description.unwrap_or_default().split(' ');
    words.next() == Some("keyless:v1") && words.next() == Some(&*format!("instance={instance}"))
}

/// Checks 1–3 against the final assignments (what convergence is polled with).
pub fn check_state(expect: &Expectation, assignments: &[Held]) -> Vec<Violation> {
    let in_scope: Vec<&Held> = assignments
        .iter()
        .filter(|a| expect.scopes.contains(&a.grant.scope))
        .collect();
    let mut holders: BTreeMap<&Grant, usize> = BTreeMap::new();
    for held in &in_scope {
        *holders.entry(&held.grant).or_default() += 1;
    }
    let mut violations = Vec::new();
    for grant in &expect.declared {
        match holders.get(grant).copied().unwrap_or(0) {
            0 => violations.push(Violation::Missing(grant.clone())),
            1 => {}
            count => violations.push(Violation::Duplicate {
                grant: grant.clone(),
                count,
            }),
        }
    }
    for (grant, count) in &holders {
        if *count > 1 && !expect.declared.contains(*grant) {
            violations.push(Violation::Duplicate {
                grant: (*grant).clone(),
                count: *count,
            });
        }
    }
    for held in &in_scope {
        if expect.declared.contains(&held.grant) {
            continue;
        }
        if marked_by(held.description.as_deref(), &expect.instance) {
            violations.push(Violation::Leaked {
                name: held.name.clone(),
                grant: held.grant.clone(),
            });
        } else if let Some(rule) = &expect.exclusive
            && rule.must_revoke(held, &expect.instance)
        {
            violations.push(Violation::NotRevoked {
                name: held.name.clone(),
                grant: held.grant.clone(),
            });
        }
    }
    let by_name: BTreeMap<&str, &Held> = assignments.iter().map(|a| (a.name.as_str(), a)).collect();
    for protected in &expect.protected {
        let unchanged = by_name.get(protected.name.as_str()).is_some_and(|now| {
            now.grant == protected.grant && now.description == protected.description
        });
        if !unchanged {
            violations.push(Violation::ProtectedChanged {
                name: protected.name.clone(),
            });
        }
    }
    violations
}

/// Checks 3 and 4 against the journal of writes.
pub fn check_journal(expect: &Expectation, writes: &[AssignmentWrite]) -> Vec<Violation> {
    let protected: BTreeSet<&str> = expect.protected.iter().map(|p| p.name.as_str()).collect();
    let mut violations = Vec::new();
    let mut deleted: BTreeSet<Grant> = BTreeSet::new();
    let mut pairs: BTreeMap<Grant, usize> = BTreeMap::new();
    let mut ordered: Vec<&AssignmentWrite> = writes.iter().collect();
    ordered.sort_by_key(|w| w.sequence);
    for write in ordered {
        let held = Held::from(write);
        if protected.contains(held.name.as_str()) {
            violations.push(Violation::ProtectedWritten {
                name: held.name.clone(),
                kind: write.kind,
            });
        }
        match write.kind {
            WriteKind::Deleted => {
                deleted.insert(held.grant);
            }
            WriteKind::Created => {
                if deleted.remove(&held.grant) {
                    *pairs.entry(held.grant).or_default() += 1;
                }
            }
            WriteKind::Updated => {}
        }
    }
    violations.extend(
        pairs
            .into_iter()
            .map(|(grant, pairs)| Violation::DeletedThenCreated { grant, pairs }),
    );
    violations
}

/// The whole invariant.
pub fn check(
    expect: &Expectation,
    assignments: &[Held],
    writes: &[AssignmentWrite],
) -> Vec<Violation> {
    let mut violations = check_state(expect, assignments);
    violations.extend(check_journal(expect, writes));
    violations
}

/// Violations counted by kind, for the table: `missing=3 leaked=1`, or `0`.
/// How soon clients came back after failures: for each failed request (a dropped connection,
/// 408, 429 or 5xx), the next request with the same method, path and query must arrive no sooner
/// than `floor` after the failure was answered, nor sooner than the `Retry-After` it carried
/// (the client waits it out, or gives the attempt up and the controller requeues after it). The
/// token endpoint is left out (azure_identity owns its retries). Also returns the shortest gap.
pub fn check_retries(
    requests: &[RequestRecord],
    floor: Duration,
) -> (Vec<Violation>, Option<Duration>) {
    let mut failed_at: HashMap<&str, &RequestRecord> = HashMap::new();
    let mut arrivals: Vec<&RequestRecord> =
        requests.iter().filter(|r| r.operation != "Token").collect();
    arrivals.sort_by_key(|r| r.arrived);
    // Answers in order of answer, arrivals in order of arrival: walk both by time.
    let mut answers = arrivals.clone();
    answers.sort_by_key(|r| r.answered);
    let mut answers = answers.into_iter().peekable();
    let mut violations = Vec::new();
    let mut fastest: Option<Duration> = None;
    for request in arrivals {
        while let Some(answer) = answers.next_if(|a| a.answered <= request.arrived) {
            if answer.failed() {
                failed_at.insert(answer.target.as_str(), answer);
            } else {
                failed_at.remove(answer.target.as_str());
            }
        }
        let Some(failure) = failed_at.remove(request.target.as_str()) else {
            continue;
        };
        let after = request.arrived.duration_since(failure.answered);
        fastest = Some(fastest.map_or(after, |f| f.min(after)));
        let allowed = failure
            .retry_after_seconds
            .map_or(floor, |r| Duration::from_secs(r).max(floor));
        if after < allowed {
            violations.push(Violation::RetriedTooSoon {
                target: failure.target.clone(),
                status: failure.status,
                after,
                floor: allowed,
            });
        }
    }
    (violations, fastest)
}

pub fn summary(violations: &[Violation]) -> String {
    if violations.is_empty() {
        return "0".into();
    }
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for v in violations {
        *by_kind.entry(v.kind()).or_default() += 1;
    }
    by_kind
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One run's figures.
#[derive(Clone, Debug, Default)]
pub struct RunFigures {
    pub violations: Vec<Violation>,
    /// Grants declared at the end of the run.
    pub grants: usize,
    /// ARM requests from the end of the fault until converged.
    pub arm_requests_after_fault: u64,
    /// From the end of the fault until the state check first passed.
    pub converge_after_fault: std::time::Duration,
    /// False when the run never converged within its deadline.
    pub converged: bool,
    /// The soonest any failed request was sent again (see [`check_retries`]).
    pub fastest_retry: Option<std::time::Duration>,
}

impl RunFigures {
    pub fn requests_per_grant(&self) -> f64 {
        if self.grants == 0 {
            return 0.0;
        }
        self.arm_requests_after_fault as f64 / self.grants as f64
    }
}

/// A scenario's row: runs, violations (summed), worst requests per grant and convergence time.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub scenario: String,
    pub seed: u64,
    pub runs: Vec<RunFigures>,
    /// The scenario's wall time, all runs with their setup and clearing.
    pub elapsed: Duration,
}

impl Row {
    pub fn violations(&self) -> Vec<Violation> {
        self.runs
            .iter()
            .flat_map(|r| r.violations.clone())
            .collect()
    }

    pub fn header() -> String {
        format!(
            "{:<34} {:>4} {:>6} {:<28} {:>10} {:>10} {:>10} {:>10} {:>8} {:>20}",
            "scenario",
            "runs",
            "grants",
            "violations",
            "req/grant",
            "converge",
            "converge",
            "retry",
            "time",
            "seed"
        ) + &format!(
            "\n{:<34} {:>4} {:>6} {:<28} {:>10} {:>10} {:>10} {:>10} {:>8} {:>20}",
            "", "", "", "", "(max)", "(median)", "(max)", "(soonest)", "(all)", ""
        )
    }

    pub fn line(&self) -> String {
        let mut times: Vec<_> = self.runs.iter().map(|r| r.converge_after_fault).collect();
        times.sort();
        let median = times.get(times.len() / 2).copied().unwrap_or_default();
        let max = times.last().copied().unwrap_or_default();
        let per_grant = self
            .runs
            .iter()
            .map(RunFigures::requests_per_grant)
            .fold(0.0_f64, f64::max);
        let unconverged = self.runs.iter().filter(|r| !r.converged).count();
        let mut violations = summary(&self.violations());
        if unconverged > 0 {
            violations.push_str(&format!(" (unconverged={unconverged})"));
        }
        let soonest_retry = self
            .runs
            .iter()
            .filter_map(|r| r.fastest_retry)
            .min()
            .map_or("-".to_string(), |d| format!("{}ms", d.as_millis()));
        format!(
            "{:<34} {:>4} {:>6} {:<28} {:>10.2} {:>9.1}s {:>9.1}s {:>10} {:>7.0}s {:>20}",
            self.scenario,
            self.runs.len(),
            self.runs.first().map_or(0, |r| r.grants),
            violations,
            per_grant,
            median.as_secs_f64(),
            max.as_secs_f64(),
            soonest_retry,
            self.elapsed.as_secs_f64(),
            self.seed
        )
    }
}
