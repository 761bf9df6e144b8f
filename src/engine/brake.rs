//! The delete brake: what stands between a planned revocation and ARM, over time rather than per
//! pass. A planner that is right about each grant can still be wrong about the world (a partial
//! view, a restore, a rolled-back CRD); revocations are the one write that causes an outage, so
//! they are rationed:
//!
//! - **paused** — `keyless.dev/paused: "true"` on the OpenAIAccount stops every write on it;
//! - **incomplete view** — a store that has not listed, or whose watch is failing: no deletes;
//! - **mass revocation** — one pass that would remove more than `mass_share` of the account's owned
//!   grants (and at least `mass_minimum`) holds *all* its deletes until a person confirms with
//!   `keyless.dev/confirm-revocations: "<count>"` on the OpenAIAccount (count ≥ the planned deletes);
//! - **prune grace** — a delete no present object explains (every granted object carries a
//!   finalizer, so that is abnormal) waits `prune_grace` after it was first planned; the clock lives
//!   in memory, so a restart only delays it;
//! - **budget** — at most `budget` deletes per account per `window`, counted from the deletes
//!   actually made.
//!
//! [`decide`] is pure; [`Brake`] keeps the clocks between passes.

use jiff::Timestamp;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// The annotation on an OpenAIAccount that stops every write on it.
pub const PAUSED_ANNOTATION: &str = "keyless.dev/paused";
/// The annotation on an OpenAIAccount that lets a held mass revocation of up to this many grants go.
pub const CONFIRM_ANNOTATION: &str = "keyless.dev/confirm-revocations";

/// The brake's settings (flags of `keyless run`).
#[derive(Clone, Debug, PartialEq)]
pub struct BrakeConfig {
    /// Deletes per account per window.
    pub budget: usize,
    pub window: Duration,
    /// A pass planning to remove more than this share of the owned grants is held...
    pub mass_share: f64,
    /// ...when it also removes at least this many.
    pub mass_minimum: usize,
    /// How long a delete no present object explains waits after it was first planned.
    pub prune_grace: Duration,
}

impl Default for BrakeConfig {
    fn default() -> Self {
        BrakeConfig {
            budget: 50,
            window: Duration::from_secs(600),
            mass_share: 0.2,
            mass_minimum: 10,
            prune_grace: Duration::from_secs(600),
        }
    }
}

/// One planned delete, as the brake sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The role assignment's ARM id: the key of its prune-grace clock.
    pub id: String,
    /// A present object explains it: a principal removed from it, the object terminating, denied
    /// by the account's policy, expired, or the account itself being unregistered.
    pub explained: bool,
}

/// Why a delete is not made this pass. Each has a bounded `reason()` for conditions and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    Paused,
    ViewIncomplete(String),
    MassRevocation {
        planned: usize,
        owned: usize,
        confirmed: Option<usize>,
    },
    PruneGrace {
        until: Timestamp,
    },
    Budget {
        budget: usize,
        window: Duration,
        next_at: Option<Timestamp>,
    },
}

impl Hold {
    /// The condition reason (and metric label) of this hold.
    pub fn reason(&self) -> &'static str {
        match self {
            Hold::Paused => "Paused",
            Hold::ViewIncomplete(_) => "ViewIncomplete",
            Hold::MassRevocation { .. } => "RevocationsBlocked",
            Hold::PruneGrace { .. } => "RevocationsDeferred",
            Hold::Budget { .. } => "DeleteBudgetExhausted",
        }
    }

    /// For a person: what holds the deletes and what would release them.
    pub fn message(&self, account: &str) -> String {
        match self {
            Hold::Paused => format!(
                "OpenAIAccount {account} carries {PAUSED_ANNOTATION}=\"true\": keyless writes nothing on it"
            ),
            Hold::ViewIncomplete(why) => {
                format!("the cluster view is incomplete ({why}): keyless revokes nothing")
            }
            Hold::MassRevocation {
                planned,
                owned,
                confirmed,
            } => {
                let confirmed = confirmed
                    .map(|c| format!(" (confirmed only up to {c})"))
                    .unwrap_or_default();
                format!(
                    "{planned} of {owned} owned grants would be revoked at once{confirmed}: all revocations on this account are held; if this is intended, annotate OpenAIAccount {account} with {CONFIRM_ANNOTATION}=\"{planned}\""
                )
            }
            Hold::PruneGrace { until } => format!(
                "a grant no present OpenAIAccess explains is revoked after the prune grace, at {until}"
            ),
            Hold::Budget { budget, window, .. } => format!(
                "the delete budget of {budget} per {}s on this account is spent; the rest follow",
                window.as_secs()
            ),
        }
    }

    /// When this hold may lift by itself.
    pub fn lifts_at(&self) -> Option<Timestamp> {
        match self {
            Hold::PruneGrace { until } => Some(*until),
            Hold::Budget { next_at, .. } => *next_at,
            _ => None,
        }
    }
}

/// What the brake knows when it decides one pass.
#[derive(Clone, Debug)]
pub struct BrakeInput<'a> {
    pub now: Timestamp,
    pub paused: bool,
    /// None: the view is complete; Some(why) otherwise.
    pub view_incomplete: Option<&'a str>,
    /// The confirmation annotation's count, if present and a number.
    pub confirmed: Option<usize>,
    /// Role assignments at the scope owned by this instance.
    pub owned: usize,
    /// Whether the account itself is being unregistered (a person's explicit act: no mass hold).
    pub account_deleting: bool,
    pub candidates: &'a [Candidate],
    /// When each delete without an explanation was first planned (carried between passes).
    pub first_planned: &'a HashMap<String, Timestamp>,
    /// When the deletes of the current window were made.
    pub recent_deletes: &'a [Timestamp],
}

/// What one pass tells the brake; [`Brake`] adds its clocks.
#[derive(Clone, Debug)]
pub struct PassFacts<'a> {
    pub now: Timestamp,
    pub paused: bool,
    pub view_incomplete: Option<&'a str>,
    pub confirmed: Option<usize>,
    pub owned: usize,
    pub account_deleting: bool,
    pub candidates: &'a [Candidate],
}

/// Per candidate, in order: None to delete now, or the hold.
pub fn decide(config: &BrakeConfig, input: &BrakeInput<'_>) -> Vec<Option<Hold>> {
    let all = |hold: Hold| vec![Some(hold); input.candidates.len()];
    if input.paused {
        return all(Hold::Paused);
    }
    if let Some(why) = input.view_incomplete {
        return all(Hold::ViewIncomplete(why.to_string()));
    }
    let planned = input.candidates.len();
    if !input.account_deleting && is_mass(config, planned, input.owned) {
        let confirmed = input.confirmed.filter(|c| *c >= planned);
        if confirmed.is_none() {
            return all(Hold::MassRevocation {
                planned,
                owned: input.owned,
                confirmed: input.confirmed,
            });
        }
    }
    let window_start = input.now - signed(config.window);
    let mut in_window: Vec<Timestamp> = input
        .recent_deletes
        .iter()
        .copied()
        .filter(|t| *t > window_start)
        .collect();
    in_window.sort();
    let mut left = config.budget.saturating_sub(in_window.len());
    // The budget frees up one delete when the oldest in the window leaves it.
    let next_at = in_window.first().map(|t| *t + signed(config.window));
    input
        .candidates
        .iter()
        .map(|candidate| {
            if !candidate.explained {
                let since = input
                    .first_planned
                    .get(&candidate.id)
                    .copied()
                    .unwrap_or(input.now);
                let until = since + signed(config.prune_grace);
                if until > input.now {
                    return Some(Hold::PruneGrace { until });
                }
            }
            if left == 0 {
                return Some(Hold::Budget {
                    budget: config.budget,
                    window: config.window,
                    next_at: next_at.or(Some(input.now + signed(config.window))),
                });
            }
            left -= 1;
            None
        })
        .collect()
}

fn is_mass(config: &BrakeConfig, planned: usize, owned: usize) -> bool {
    planned >= config.mass_minimum.max(1) && (planned as f64) > config.mass_share * owned as f64
}

fn signed(duration: Duration) -> jiff::SignedDuration {
    jiff::SignedDuration::try_from(duration).unwrap_or(jiff::SignedDuration::MAX)
}

#[derive(Default, Debug)]
struct AccountClocks {
    first_planned: HashMap<String, Timestamp>,
    recent_deletes: VecDeque<Timestamp>,
}

/// The brake's memory between passes, per account. Losing it on restart only delays deletes (the
/// prune grace starts again) or makes the budget forget deletes already made, never both at once
/// beyond one window.
#[derive(Debug, Default)]
pub struct Brake {
    pub config: BrakeConfig,
    accounts: Mutex<BTreeMap<String, AccountClocks>>,
}

impl Brake {
    pub fn new(config: BrakeConfig) -> Self {
        Brake {
            config,
            accounts: Mutex::new(BTreeMap::new()),
        }
    }

    /// Decides one pass and starts the prune-grace clock of every new unexplained candidate;
    /// clocks of deletes no longer planned are dropped.
    pub fn decide(&self, account: &str, facts: &PassFacts<'_>) -> Vec<Option<Hold>> {
        let now = facts.now;
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let clocks = accounts.entry(account.to_string()).or_default();
        clocks
            .first_planned
            .retain(|id, _| facts.candidates.iter().any(|c| !c.explained && &c.id == id));
        for candidate in facts.candidates.iter().filter(|c| !c.explained) {
            clocks
                .first_planned
                .entry(candidate.id.clone())
                .or_insert(now);
        }
        let window_start = now - signed(self.config.window);
        while clocks
            .recent_deletes
            .front()
            .is_some_and(|t| *t <= window_start)
        {
            clocks.recent_deletes.pop_front();
        }
        let recent: Vec<Timestamp> = clocks.recent_deletes.iter().copied().collect();
        decide(
            &self.config,
            &BrakeInput {
                now,
                paused: facts.paused,
                view_incomplete: facts.view_incomplete,
                confirmed: facts.confirmed,
                owned: facts.owned,
                account_deleting: facts.account_deleting,
                candidates: facts.candidates,
                first_planned: &clocks.first_planned,
                recent_deletes: &recent,
            },
        )
    }

    /// Records a delete ARM confirmed.
    pub fn deleted(&self, account: &str, id: &str, at: Timestamp) {
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let clocks = accounts.entry(account.to_string()).or_default();
        clocks.recent_deletes.push_back(at);
        clocks.first_planned.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn config() -> BrakeConfig {
        BrakeConfig {
            budget: 5,
            window: Duration::from_secs(600),
            mass_share: 0.2,
            mass_minimum: 10,
            prune_grace: Duration::from_secs(60),
        }
    }

    fn explained(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                id: format!("ra-{i}"),
                explained: true,
            })
            .collect()
    }

    struct Case {
        name: &'static str,
        paused: bool,
        view_incomplete: Option<&'static str>,
        confirmed: Option<usize>,
        owned: usize,
        account_deleting: bool,
        candidates: Vec<Candidate>,
        first_planned: Vec<(&'static str, i64)>,
        recent_deletes: Vec<i64>,
        expect_deleted: usize,
        expect_reason: Option<&'static str>,
    }

    fn base(name: &'static str, candidates: Vec<Candidate>) -> Case {
        Case {
            name,
            paused: false,
            view_incomplete: None,
            confirmed: None,
            owned: 100,
            account_deleting: false,
            candidates,
            first_planned: vec![],
            recent_deletes: vec![],
            expect_deleted: 0,
            expect_reason: None,
        }
    }

    #[test]
    fn the_brake_rules() {
        let unexplained = |id: &str| Candidate {
            id: id.into(),
            explained: false,
        };
        let cases = vec![
            Case {
                expect_deleted: 3,
                ..base(
                    "explained deletes within the budget go at once",
                    explained(3),
                )
            },
            Case {
                paused: true,
                expect_reason: Some("Paused"),
                ..base("a paused account deletes nothing", explained(1))
            },
            Case {
                view_incomplete: Some("the Namespace watch is failing"),
                expect_reason: Some("ViewIncomplete"),
                ..base("an incomplete view deletes nothing", explained(1))
            },
            Case {
                expect_reason: Some("RevocationsBlocked"),
                ..base(
                    "more than a fifth of the owned grants at once holds them all",
                    explained(21),
                )
            },
            Case {
                owned: 20,
                expect_deleted: 5,
                expect_reason: Some("DeleteBudgetExhausted"),
                ..base(
                    "below the minimum count a large share is not a mass revocation",
                    explained(9),
                )
            },
            Case {
                confirmed: Some(21),
                expect_deleted: 5,
                expect_reason: Some("DeleteBudgetExhausted"),
                ..base(
                    "a confirmation covering the count releases them within the budget",
                    explained(21),
                )
            },
            Case {
                confirmed: Some(20),
                expect_reason: Some("RevocationsBlocked"),
                ..base(
                    "a confirmation for fewer than planned does not",
                    explained(21),
                )
            },
            Case {
                account_deleting: true,
                owned: 3,
                expect_deleted: 3,
                ..base(
                    "unregistering the account is no mass revocation",
                    explained(3),
                )
            },
            Case {
                recent_deletes: vec![-500, -100, -10],
                expect_deleted: 2,
                expect_reason: Some("DeleteBudgetExhausted"),
                ..base(
                    "the budget counts deletes of the window, not of the pass",
                    explained(4),
                )
            },
            Case {
                recent_deletes: vec![-700, -650, -601, -10],
                expect_deleted: 4,
                expect_reason: Some("DeleteBudgetExhausted"),
                ..base(
                    "deletes older than the window no longer count",
                    explained(5),
                )
            },
            Case {
                expect_reason: Some("RevocationsDeferred"),
                ..base(
                    "a delete nothing explains waits for the prune grace",
                    vec![unexplained("ra-x")],
                )
            },
            Case {
                first_planned: vec![("ra-x", -61)],
                expect_deleted: 1,
                ..base(
                    "and goes once the grace has passed",
                    vec![unexplained("ra-x")],
                )
            },
        ];
        for case in cases {
            let first_planned: HashMap<String, Timestamp> = case
                .first_planned
                .iter()
                .map(|(id, s)| (id.to_string(), at(*s)))
                .collect();
            let recent: Vec<Timestamp> = case.recent_deletes.iter().map(|s| at(*s)).collect();
            let decisions = decide(
                &config(),
                &BrakeInput {
                    now: at(0),
                    paused: case.paused,
                    view_incomplete: case.view_incomplete,
                    confirmed: case.confirmed,
                    owned: case.owned,
                    account_deleting: case.account_deleting,
                    candidates: &case.candidates,
                    first_planned: &first_planned,
                    recent_deletes: &recent,
                },
            );
            assert_eq!(decisions.len(), case.candidates.len(), "{}", case.name);
            let deleted = decisions.iter().filter(|d| d.is_none()).count();
            assert_eq!(deleted, case.expect_deleted, "{}", case.name);
            let reason = decisions.iter().flatten().map(Hold::reason).next();
            assert_eq!(reason, case.expect_reason, "{}", case.name);
        }
    }

    #[test]
    fn a_held_mass_revocation_names_the_annotation_that_releases_it() {
        let hold = Hold::MassRevocation {
            planned: 60,
            owned: 100,
            confirmed: None,
        };
        let message = hold.message("prod");
        assert!(message.contains("60 of 100"), "{message}");
        assert!(
            message.contains("keyless.dev/confirm-revocations=\"60\""),
            "{message}"
        );
    }

    fn facts(now: Timestamp, candidates: &[Candidate]) -> PassFacts<'_> {
        PassFacts {
            now,
            paused: false,
            view_incomplete: None,
            confirmed: None,
            owned: 100,
            account_deleting: false,
            candidates,
        }
    }

    #[test]
    fn the_prune_grace_clock_survives_passes_and_resets_when_the_delete_is_no_longer_planned() {
        let brake = Brake::new(config());
        let candidates = vec![Candidate {
            id: "ra-1".into(),
            explained: false,
        }];
        let run = |now: Timestamp, candidates: &[Candidate]| {
            brake.decide("prod", &facts(now, candidates))
        };
        assert_eq!(
            run(at(0), &candidates)[0].as_ref().map(Hold::reason),
            Some("RevocationsDeferred")
        );
        assert_eq!(
            run(at(30), &candidates)[0].as_ref().map(Hold::reason),
            Some("RevocationsDeferred")
        );
        assert_eq!(run(at(61), &candidates)[0], None, "the grace has passed");
        // Not planned for one pass (the object came back): the clock starts again.
        assert!(run(at(62), &[]).is_empty());
        assert_eq!(
            run(at(63), &candidates)[0].as_ref().map(Hold::reason),
            Some("RevocationsDeferred")
        );
    }

    #[test]
    fn deletes_made_spend_the_budget_of_later_passes() {
        let brake = Brake::new(config());
        for i in 0..5 {
            brake.deleted("prod", &format!("ra-{i}"), at(i));
        }
        let candidates = explained(1);
        let decisions = brake.decide("prod", &facts(at(10), &candidates));
        assert_eq!(
            decisions[0].as_ref().and_then(Hold::lifts_at),
            Some(at(600)),
            "the budget frees up when the oldest delete leaves the window"
        );
        // Another account's budget is its own.
        let other = brake.decide("staging", &facts(at(10), &candidates));
        assert_eq!(other[0], None);
    }
}
