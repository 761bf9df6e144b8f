//! Whether the controller's view of the cluster is complete. Each store the account reconciler
//! reads (OpenAIAccess, ServiceAccount, Namespace) reports its watch events here; a pass runs only
//! once every store has completed its first list, and deletes nothing while any watch is failing
//! (a 403 at once, other errors after `failure_threshold` in a row). A watch that recovers without
//! an event to show for it (a quiet resource) is trusted again once its last error is older than
//! `failure_ttl`, which must exceed the watcher's longest backoff (kube's default: 30 s), so that a
//! watch still failing always has a fresh error.
//!
//! A relist does not make a store incomplete: kube-runtime 5's reflector buffers a relist
//! (`Init`, `InitApply`…) and swaps it in whole on `InitDone`, so readers see the old complete list
//! until the new complete one replaces it (`reflector_swaps_a_relist_in_whole` below checks this).

use crate::plan::ViewCompleteness;
use kube::runtime::watcher;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a watch event says about a store's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// The first (or a new) complete list is in the store.
    Listed,
    /// An object changed: the watch is working.
    Changed,
    /// The watch or list failed.
    Failed {
        forbidden: bool,
        message: String,
        at: Instant,
    },
}

impl Signal {
    /// The signal of one watcher event, if it says anything about health.
    pub fn of<K>(event: &Result<watcher::Event<K>, watcher::Error>) -> Option<Signal> {
        match event {
            Ok(watcher::Event::InitDone) => Some(Signal::Listed),
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Some(Signal::Changed),
            // A relist in progress changes nothing: the store keeps its last complete list.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
            Err(error) => Some(Signal::Failed {
                forbidden: is_forbidden(error),
                message: error.to_string(),
                at: Instant::now(),
            }),
        }
    }
}

fn is_forbidden(error: &watcher::Error) -> bool {
    let source = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(status) => return status.is_forbidden(),
        _ => return false,
    };
    matches!(source, kube::Error::Api(status) if status.is_forbidden())
}

/// One store's health; pure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreHealth {
    pub listed: bool,
    pub consecutive_failures: u32,
    pub forbidden: bool,
    pub last_error: Option<String>,
    pub last_failure: Option<Instant>,
}

impl StoreHealth {
    pub fn apply(&mut self, signal: Signal) {
        match signal {
            Signal::Listed => {
                self.listed = true;
                self.healthy();
            }
            Signal::Changed => self.healthy(),
            Signal::Failed {
                forbidden,
                message,
                at,
            } => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.forbidden = forbidden;
                self.last_error = Some(message);
                self.last_failure = Some(at);
            }
        }
    }

    fn healthy(&mut self) {
        self.consecutive_failures = 0;
        self.forbidden = false;
        self.last_error = None;
        self.last_failure = None;
    }

    /// Why this store makes the view incomplete, if it does.
    pub fn problem(&self, kind: &str, limits: &FailureLimits, now: Instant) -> Option<String> {
        if !self.listed {
            return Some(format!("the {kind} list has not completed"));
        }
        let failure_threshold = limits.threshold;
        if self
            .last_failure
            .is_none_or(|at| now.saturating_duration_since(at) >= limits.ttl)
        {
            return None;
        }
        let error = self.last_error.as_deref().unwrap_or("an error");
        if self.forbidden {
            return Some(format!("the {kind} watch is forbidden (403): {error}"));
        }
        if self.consecutive_failures >= failure_threshold.max(1) {
            return Some(format!(
                "the {kind} watch failed {} times in a row: {error}",
                self.consecutive_failures
            ));
        }
        None
    }
}

/// When a failing watch makes the view incomplete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureLimits {
    /// Consecutive errors (a 403 counts at once).
    pub threshold: u32,
    /// How long an error counts after it happened.
    pub ttl: Duration,
}

/// The health of every store, shared by the watch streams and the reconcilers.
#[derive(Clone, Debug)]
pub struct ViewHealth {
    stores: Arc<Mutex<BTreeMap<&'static str, StoreHealth>>>,
    limits: FailureLimits,
    // Flips to true once every store has its first list: a pass that came too early waits for
    // it instead of polling.
    all_listed: tokio::sync::watch::Sender<bool>,
}

impl ViewHealth {
    /// Tracks these store kinds; each is incomplete until its first list completes.
    pub fn new(kinds: &[&'static str], limits: FailureLimits) -> Self {
        ViewHealth {
            stores: Arc::new(Mutex::new(
                kinds.iter().map(|k| (*k, StoreHealth::default())).collect(),
            )),
            limits,
            all_listed: tokio::sync::watch::Sender::new(kinds.is_empty()),
        }
    }

    /// Records a watcher event of one store (call it after the reflector applied the event).
    pub fn observe<K>(
        &self,
        kind: &'static str,
        event: &Result<watcher::Event<K>, watcher::Error>,
    ) {
        let Some(signal) = Signal::of(event) else {
            return;
        };
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        let store = stores.entry(kind).or_default();
        let now = Instant::now();
        let was_problem = store.problem(kind, &self.limits, now);
        store.apply(signal);
        let is_problem = store.problem(kind, &self.limits, now);
        if was_problem.is_none()
            && let Some(problem) = &is_problem
        {
            tracing::warn!(store = kind, %problem, "view incomplete: revocations held");
        }
        if !*self.all_listed.borrow() && stores.values().all(|s| s.listed) {
            self.all_listed.send_replace(true);
        }
    }

    /// Waits up to `within` for every store's first list; whether they all have it.
    pub async fn wait_listed(&self, within: Duration) -> bool {
        let mut listed = self.all_listed.subscribe();
        tokio::time::timeout(within, listed.wait_for(|all| *all))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether every store has completed its first list.
    pub fn listed(&self) -> bool {
        let stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        stores.values().all(|s| s.listed)
    }

    /// The view's completeness, naming every store that makes it incomplete.
    pub fn completeness(&self) -> ViewCompleteness {
        let stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        let problems: Vec<String> = stores
            .iter()
            .filter_map(|(kind, store)| store.problem(kind, &self.limits, Instant::now()))
            .collect();
        if problems.is_empty() {
            ViewCompleteness::Complete
        } else {
            ViewCompleteness::Incomplete {
                reason: problems.join("; "),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Namespace;
    use kube::runtime::reflector;

    const LIMITS: FailureLimits = FailureLimits {
        threshold: 3,
        ttl: Duration::from_secs(60),
    };

    fn failed(forbidden: bool) -> Signal {
        failed_at(forbidden, Instant::now())
    }

    fn failed_at(forbidden: bool, at: Instant) -> Signal {
        Signal::Failed {
            forbidden,
            message: if forbidden {
                "namespaces is forbidden"
            } else {
                "connection reset"
            }
            .into(),
            at,
        }
    }

    #[test]
    fn a_store_is_complete_once_listed_and_while_its_watch_works() {
        struct Case {
            name: &'static str,
            signals: Vec<Signal>,
            incomplete: Option<&'static str>,
        }
        let cases = vec![
            Case {
                name: "not listed yet",
                signals: vec![],
                incomplete: Some("list has not completed"),
            },
            Case {
                name: "changes before the first list do not count as a list",
                signals: vec![Signal::Changed],
                incomplete: Some("list has not completed"),
            },
            Case {
                name: "listed",
                signals: vec![Signal::Listed],
                incomplete: None,
            },
            Case {
                name: "a 403 makes it incomplete at once",
                signals: vec![Signal::Listed, failed(true)],
                incomplete: Some("forbidden (403)"),
            },
            Case {
                name: "one transient error does not",
                signals: vec![Signal::Listed, failed(false), failed(false)],
                incomplete: None,
            },
            Case {
                name: "three in a row do",
                signals: vec![Signal::Listed, failed(false), failed(false), failed(false)],
                incomplete: Some("failed 3 times in a row"),
            },
            Case {
                name: "a working watch clears the failures",
                signals: vec![Signal::Listed, failed(true), failed(false), Signal::Changed],
                incomplete: None,
            },
            Case {
                name: "a 403 long past with no error since no longer counts",
                signals: vec![
                    Signal::Listed,
                    failed_at(true, Instant::now() - Duration::from_secs(61)),
                ],
                incomplete: None,
            },
            Case {
                name: "a failing first list stays incomplete",
                signals: vec![failed(true), Signal::Changed],
                incomplete: Some("list has not completed"),
            },
        ];
        for case in cases {
            let mut store = StoreHealth::default();
            for signal in case.signals {
                store.apply(signal);
            }
            let problem = store.problem("Namespace", &LIMITS, Instant::now());
            match case.incomplete {
                None => assert_eq!(problem, None, "{}", case.name),
                Some(expected) => assert!(
                    problem.as_deref().is_some_and(|p| p.contains(expected)),
                    "{}: {problem:?}",
                    case.name
                ),
            }
        }
    }

    #[test]
    fn a_403_from_the_api_is_recognised_as_forbidden() {
        let forbidden = watcher::Error::InitialListFailed(kube::Error::Api(
            kube::core::Status::failure("namespaces is forbidden", "Forbidden")
                .with_code(403)
                .boxed(),
        ));
        let event: Result<watcher::Event<Namespace>, _> = Err(forbidden);
        assert!(
            matches!(
                Signal::of(&event),
                Some(Signal::Failed {
                    forbidden: true,
                    ..
                })
            ),
            "{event:?}"
        );
    }

    #[test]
    fn the_view_names_every_store_that_makes_it_incomplete() {
        let view = ViewHealth::new(&["OpenAIAccess", "Namespace"], LIMITS);
        assert!(!view.listed());
        view.observe::<Namespace>("OpenAIAccess", &Ok(watcher::Event::InitDone));
        assert!(!view.listed(), "Namespace has not listed");
        view.observe::<Namespace>("Namespace", &Ok(watcher::Event::InitDone));
        assert!(view.listed());
        assert_eq!(view.completeness(), ViewCompleteness::Complete);
        // A relist in progress changes nothing.
        view.observe::<Namespace>("Namespace", &Ok(watcher::Event::Init));
        assert_eq!(view.completeness(), ViewCompleteness::Complete);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_waiting_for_the_first_lists_wakes_when_the_last_one_completes() {
        let view = ViewHealth::new(&["OpenAIAccess", "Namespace"], LIMITS);
        assert!(
            !view.wait_listed(Duration::from_secs(1)).await,
            "nothing listed: it gives up after the wait"
        );
        let waiting = tokio::spawn({
            let view = view.clone();
            async move { view.wait_listed(Duration::from_secs(3600)).await }
        });
        view.observe::<Namespace>("OpenAIAccess", &Ok(watcher::Event::InitDone));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one store still lists");
        view.observe::<Namespace>("Namespace", &Ok(watcher::Event::InitDone));
        assert!(waiting.await.unwrap());
        assert!(
            view.wait_listed(Duration::ZERO).await,
            "once listed, at once"
        );
    }

    fn namespace(name: &str) -> Namespace {
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.into());
        ns
    }

    // The completeness rule rests on this kube-runtime 5 behaviour: while a relist is under way the
    // store keeps serving its last complete list, and the new list replaces it in one swap.
    #[test]
    fn reflector_swaps_a_relist_in_whole() {
        let (store, mut writer) = reflector::store::<Namespace>();
        writer.apply_watcher_event(&watcher::Event::Init);
        for name in ["a", "b", "c"] {
            writer.apply_watcher_event(&watcher::Event::InitApply(namespace(name)));
        }
        assert!(
            store.state().is_empty(),
            "nothing is visible before the first InitDone"
        );
        writer.apply_watcher_event(&watcher::Event::InitDone);
        assert_eq!(store.state().len(), 3);

        // A relist: part-way through, the store still holds the whole previous list.
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(namespace("a")));
        assert_eq!(
            store.state().len(),
            3,
            "a relist in progress shows the old list"
        );
        writer.apply_watcher_event(&watcher::Event::InitApply(namespace("d")));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let mut names: Vec<String> = store
            .state()
            .iter()
            .filter_map(|ns| ns.metadata.name.clone())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "d"], "the new list replaced the old one whole");
    }
}
