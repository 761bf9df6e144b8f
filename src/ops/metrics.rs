//! Prometheus metrics for `/metrics` (text format 0.0.4), with bounded labels only.
//!
//! Every label value is either a `&'static str` chosen in code (result, service, operation, status
//! class, rate-limit kind, grant state) or an Azure subscription id, which configuration bounds. Never
//! an account, object, principal or namespace name: those grow with the cluster, and a label per
//! object turns one scrape into thousands of series. Grants are therefore kept per account *inside*
//! [`Metrics`] and exported only as a sum per state.
//!
//! The controller and the Azure clients each hold a clone of one [`Metrics`]; cloning is an `Arc`
//! bump, and recording is a few atomic operations (a lock only for the grant sums).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// ARM's limit of role assignments per subscription. Past it, every new grant in the subscription
/// fails with `RoleAssignmentLimitExceeded`, so it is worth a warning well before.
pub const ARM_ROLE_ASSIGNMENT_LIMIT: u64 = 4000;

/// The share of [`ARM_ROLE_ASSIGNMENT_LIMIT`], in percent, at which [`near_limit`] warns.
pub const NEAR_LIMIT_PERCENT: u64 = 80;

/// Whether a subscription with `count` role assignments is at or past 80 % of ARM's limit.
pub fn near_limit(count: u64) -> bool {
    // Integer arithmetic, so 3,200 is exactly the threshold and there is no float rounding.
    count.saturating_mul(100) >= ARM_ROLE_ASSIGNMENT_LIMIT * NEAR_LIMIT_PERCENT
}

/// The status class label for an HTTP status code: `2xx`, `3xx`, `4xx` or `5xx` (anything else is
/// `error`, as is a request that got no response at all).
pub fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "error",
    }
}

// Reconcile durations range from a cache hit (milliseconds) to a pass that waits on ARM throttling
// (tens of seconds).
const RECONCILE_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

// The label value used when a caller passes something that is not a subscription id, so that a
// mistake (an account name where a subscription id belongs) cannot create unbounded series.
const INVALID_SUBSCRIPTION: &str = "invalid";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AzureRequestLabels {
    service: &'static str,
    operation: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitLabels {
    kind: &'static str,
    subscription: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabels {
    origin: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabels {
    subscription: String,
}

type U64Gauge = Gauge<u64, AtomicU64>;

/// The operator's metrics. Clone it freely: clones share one registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_duration: Family<ResultLabels, Histogram>,
    azure_requests: Family<AzureRequestLabels, Counter>,
    ratelimit_remaining: Family<RateLimitLabels, U64Gauge>,
    grants: Family<StateLabels, U64Gauge>,
    grants_by_account: Mutex<GrantCounts>,
    access_grants: Family<OriginLabels, U64Gauge>,
    access_by_account: Mutex<GrantCounts>,
    planned_writes: Family<ActionLabels, U64Gauge>,
    planned_by_account: Mutex<GrantCounts>,
    role_assignments: Family<SubscriptionLabels, U64Gauge>,
    leader: U64Gauge,
    heap_allocated: U64Gauge,
    heap_resident: U64Gauge,
    held: Family<ReasonLabels, U64Gauge>,
    held_by_account: Mutex<BTreeMap<String, &'static str>>,
    held_reasons_seen: Mutex<BTreeSet<&'static str>>,
    object_write_failures: Family<KindLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Default)]
struct GrantCounts {
    by_account: BTreeMap<String, BTreeMap<&'static str, u64>>,
    // Every state ever reported, so that a state whose last grant went away is exported as 0
    // rather than keeping its old sum.
    states_seen: BTreeSet<&'static str>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every keyless metric registered under the `keyless_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("keyless");

        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles finished, by result",
            reconciles.clone(),
        );
        let reconcile_duration = Family::<ResultLabels, Histogram>::new_with_constructor(
            reconcile_histogram as fn() -> _,
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, by result",
            reconcile_duration.clone(),
        );
        let azure_requests = Family::<AzureRequestLabels, Counter>::default();
        registry.register(
            "azure_requests",
            "Requests to Azure Resource Manager (arm) and Microsoft Graph (graph), by operation and status class",
            azure_requests.clone(),
        );
        let ratelimit_remaining = Family::<RateLimitLabels, U64Gauge>::default();
        registry.register(
            "azure_ratelimit_remaining",
            "Requests left in ARM's current rate-limit window, by kind (reads, writes, deletes) and subscription",
            ratelimit_remaining.clone(),
        );
        let grants = Family::<StateLabels, U64Gauge>::default();
        registry.register(
            "grants",
            "Grants by state, summed over all accounts",
            grants.clone(),
        );
        // Summed over accounts like `grants`: an account's name is not a label (unbounded, and
        // its status has the per-account figures); alert on `origin="foreign"` above zero.
        let access_grants = Family::<OriginLabels, U64Gauge>::default();
        registry.register(
            "access_grants",
            "Role assignments that let a principal call an account or read its keys, by origin (managed, adopted, released, otherInstance, foreign, inherited), summed over all accounts",
            access_grants.clone(),
        );
        let planned_writes = Family::<ActionLabels, U64Gauge>::default();
        registry.register(
            "planned_writes",
            "Role assignment writes held back by management Observe, by action (Create, Delete, Release), summed over all accounts: what Manage would send now",
            planned_writes.clone(),
        );
        let role_assignments = Family::<SubscriptionLabels, U64Gauge>::default();
        registry.register(
            "role_assignments",
            "Role assignments in each subscription, last counted (ARM allows 4000)",
            role_assignments.clone(),
        );
        let limit = U64Gauge::default();
        limit.set(ARM_ROLE_ASSIGNMENT_LIMIT);
        registry.register(
            "role_assignments_limit",
            "ARM's limit of role assignments per subscription, for alert rules",
            limit,
        );
        let leader = U64Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease, else 0",
            leader.clone(),
        );

        let heap_allocated = U64Gauge::default();
        registry.register(
            "heap_allocated_bytes",
            "Heap bytes allocated and not freed (live data), read from the allocator at each scrape",
            heap_allocated.clone(),
        );
        let heap_resident = U64Gauge::default();
        registry.register(
            "heap_resident_bytes",
            "Heap bytes resident in memory (live data, allocator metadata, freed pages not yet returned)",
            heap_resident.clone(),
        );

        let held = Family::<ReasonLabels, U64Gauge>::default();
        registry.register(
            "accounts_with_revocations_held",
            "Accounts whose revocations are held, deferred or paused, by reason (RevocationsBlocked, RevocationsDeferred, DeleteBudgetExhausted, ViewIncomplete, Paused)",
            held.clone(),
        );
        let object_write_failures = Family::<KindLabels, Counter>::default();
        registry.register(
            "object_write_failures",
            "Writes to one object that failed (finalizer or status); the pass went on for the others",
            object_write_failures.clone(),
        );

        registry.register(
            "kube_requests",
            "Requests to the Kubernetes API server, by verb (get, list, watch, create, update, patch, delete) and resource",
            super::kube_requests::counter(),
        );

        Self {
            inner: Arc::new(Inner {
                registry,
                reconciles,
                reconcile_duration,
                azure_requests,
                ratelimit_remaining,
                grants,
                grants_by_account: Mutex::new(GrantCounts::default()),
                access_grants,
                access_by_account: Mutex::new(GrantCounts::default()),
                planned_writes,
                planned_by_account: Mutex::new(GrantCounts::default()),
                role_assignments,
                leader,
                heap_allocated,
                heap_resident,
                held,
                held_by_account: Mutex::new(BTreeMap::new()),
                held_reasons_seen: Mutex::new(BTreeSet::new()),
                object_write_failures,
            }),
        }
    }

    /// Records one finished reconcile: `result` is a fixed word such as `ok`, `error`, `throttled`
    /// or `invalid` (an error's `category()`), never an error message.
    pub fn reconcile_finished(&self, result: &'static str, duration: Duration) {
        let labels = ResultLabels { result };
        self.inner.reconciles.get_or_create(&labels).inc();
        self.inner
            .reconcile_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
    }

    /// Records one request to Azure: `service` is `arm` or `graph`, `operation` a fixed verb such as
    /// `list_role_assignments`, `status_class` from [`status_class`] or `error` when no response came.
    pub fn azure_request(
        &self,
        service: &'static str,
        operation: &'static str,
        status_class: &'static str,
    ) {
        self.inner
            .azure_requests
            .get_or_create(&AzureRequestLabels {
                service,
                operation,
                status_class,
            })
            .inc();
    }

    /// Sets the remaining requests ARM reported (`x-ms-ratelimit-remaining-subscription-*`) for
    /// `kind` (`reads`, `writes`, `deletes`) in a subscription.
    pub fn ratelimit_remaining(&self, kind: &'static str, subscription: &str, value: u64) {
        self.inner
            .ratelimit_remaining
            .get_or_create(&RateLimitLabels {
                kind,
                subscription: subscription_label(subscription),
            })
            .set(value);
    }

    /// Replaces one account's grant counts by state and re-exports the sums over all accounts. The
    /// account name stays inside this process; an empty map forgets the account (use it when the
    /// account's object is deleted).
    pub fn set_grants(&self, account: &str, counts: &BTreeMap<&'static str, u64>) {
        let mut grants = lock_counts(&self.inner.grants_by_account);
        set_counts(&mut grants, account, counts, |state, sum| {
            self.inner
                .grants
                .get_or_create(&StateLabels { state })
                .set(sum);
        });
    }

    /// Replaces one account's access-report counts by origin and re-exports the sums over all
    /// accounts; an empty map forgets the account.
    pub fn set_access_origins(&self, account: &str, counts: &BTreeMap<&'static str, u64>) {
        let mut origins = lock_counts(&self.inner.access_by_account);
        set_counts(&mut origins, account, counts, |origin, sum| {
            self.inner
                .access_grants
                .get_or_create(&OriginLabels { origin })
                .set(sum);
        });
    }

    /// Replaces one account's writes held back by management Observe, by action, and re-exports
    /// the sums over all accounts; an empty map forgets the account (or says it is managed).
    pub fn set_planned_writes(&self, account: &str, counts: &BTreeMap<&'static str, u64>) {
        let mut planned = lock_counts(&self.inner.planned_by_account);
        set_counts(&mut planned, account, counts, |action, sum| {
            self.inner
                .planned_writes
                .get_or_create(&ActionLabels { action })
                .set(sum);
        });
    }

    /// Forgets an account's grants (its object was deleted), so the sums no longer include them.
    pub fn forget_account(&self, account: &str) {
        self.set_grants(account, &BTreeMap::new());
        self.set_access_origins(account, &BTreeMap::new());
        self.set_planned_writes(account, &BTreeMap::new());
        self.set_revocations_held(account, None);
    }

    /// Forgets every account not in `live`: after a relist, an account deleted while the watch was
    /// down is gone without a deletion event, and its series must go with it.
    pub fn forget_accounts_except(&self, live: &BTreeSet<String>) {
        let mut known: BTreeSet<String> = BTreeSet::new();
        for counts in [
            &self.inner.grants_by_account,
            &self.inner.access_by_account,
            &self.inner.planned_by_account,
        ] {
            known.extend(lock_counts(counts).by_account.keys().cloned());
        }
        known.extend(
            self.inner
                .held_by_account
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned(),
        );
        for account in known.difference(live) {
            self.forget_account(account);
        }
    }

    /// Sets the number of role assignments last counted in a subscription.
    pub fn role_assignments_per_subscription(&self, subscription: &str, count: u64) {
        self.inner
            .role_assignments
            .get_or_create(&SubscriptionLabels {
                subscription: subscription_label(subscription),
            })
            .set(count);
    }

    /// Sets why an account's revocations are held (None: they are not) and re-exports the number
    /// of accounts per reason. The account name stays inside this process.
    pub fn set_revocations_held(&self, account: &str, reason: Option<&'static str>) {
        let mut by_account = self
            .inner
            .held_by_account
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut seen = self
            .inner
            .held_reasons_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match reason {
            Some(reason) => {
                seen.insert(reason);
                by_account.insert(account.to_owned(), reason);
            }
            None => {
                by_account.remove(account);
            }
        }
        for reason in seen.iter() {
            let count = by_account.values().filter(|r| *r == reason).count() as u64;
            self.inner
                .held
                .get_or_create(&ReasonLabels { reason })
                .set(count);
        }
    }

    /// Counts a failed write to one object: `kind` is `finalizer` or `status`.
    pub fn object_write_failed(&self, kind: &'static str) {
        self.inner
            .object_write_failures
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// Sets whether this replica leads.
    pub fn leader(&self, is_leader: bool) {
        self.inner.leader.set(u64::from(is_leader));
    }

    /// All metrics in the Prometheus text format (version 0.0.4; see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        if let Some(heap) = super::memory::HeapStats::read() {
            self.inner.heap_allocated.set(heap.allocated);
            self.inner.heap_resident.set(heap.resident);
        }
        let mut text = String::new();
        // Writing to a String cannot fail, so an error here would be a bug in the encoder; a partial
        // scrape is more useful to an operator than none, so log it and return what was written.
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.inner.registry)
        {
            tracing::error!(%error, "encoding metrics failed");
        }
        text
    }
}

fn lock_counts(counts: &Mutex<GrantCounts>) -> MutexGuard<'_, GrantCounts> {
    // A panic while holding the lock cannot leave the counts half-written in a way that matters
    // (the next update recomputes every sum), so a poisoned lock is still usable.
    counts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

// Replaces one account's counts and exports every key's sum over all accounts; a key whose last
// count went away is exported as 0 rather than keeping its old sum.
fn set_counts(
    counts: &mut GrantCounts,
    account: &str,
    new: &BTreeMap<&'static str, u64>,
    mut export: impl FnMut(&'static str, u64),
) {
    counts.states_seen.extend(new.keys().copied());
    if new.values().all(|count| *count == 0) {
        counts.by_account.remove(account);
    } else {
        counts.by_account.insert(account.to_owned(), new.clone());
    }
    for key in &counts.states_seen {
        let sum = counts
            .by_account
            .values()
            .filter_map(|by_key| by_key.get(key))
            .fold(0u64, |sum, count| sum.saturating_add(*count));
        export(key, sum);
    }
}

fn reconcile_histogram() -> Histogram {
    Histogram::new(RECONCILE_BUCKETS)
}

// Subscription ids are GUIDs. Anything else is a caller's mistake (an account or resource name in
// the wrong argument), which must not become a label value.
fn subscription_label(subscription: &str) -> String {
    match uuid::Uuid::try_parse(subscription) {
        Ok(id) => id.hyphenated().to_string(),
        Err(_) => {
            tracing::warn!("metrics: ignoring a subscription label that is not a subscription id");
            INVALID_SUBSCRIPTION.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SUBSCRIPTION: &str = "00000000-0000-0000-0000-0000000000aa";

    /// One sample line of the text format: name, labels and value.
    #[derive(Debug, Clone, PartialEq)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    /// A strict reader of the Prometheus text format 0.0.4, enough to reject what a scraper would:
    /// malformed names, labels or values, samples without a TYPE, a family whose TYPE comes twice,
    /// and histograms whose buckets are not cumulative or do not end with `+Inf` = `_count`.
    fn parse(text: &str) -> Result<Vec<Sample>, String> {
        let name_re =
            regex::Regex::new(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$").map_err(|e| e.to_string())?;
        let label_re =
            regex::Regex::new(r#"^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\["\\n])*)"$"#)
                .map_err(|e| e.to_string())?;
        let mut types: HashMap<String, String> = HashMap::new();
        let mut samples = Vec::new();
        if !text.ends_with('\n') {
            return Err("output must end with a newline".into());
        }
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix("# ") {
                let mut parts = comment.splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        if !name_re.is_match(name) {
                            return Err(format!("bad metric name in TYPE: {line}"));
                        }
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                        {
                            return Err(format!("unknown type: {line}"));
                        }
                        if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                            return Err(format!("TYPE given twice: {line}"));
                        }
                    }
                    (Some("HELP"), Some(name), _) if name_re.is_match(name) => {}
                    _ => return Err(format!("bad comment line: {line}")),
                }
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .ok_or_else(|| format!("no value: {line}"))?;
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                other => other.parse().map_err(|_| format!("bad value: {line}"))?,
            };
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest
                        .strip_suffix('}')
                        .ok_or_else(|| format!("unclosed labels: {line}"))?;
                    let mut labels = BTreeMap::new();
                    // Label values in our output hold no commas, so a split is exact here.
                    for pair in body.split(',').filter(|pair| !pair.is_empty()) {
                        let captures = label_re
                            .captures(pair)
                            .ok_or_else(|| format!("bad label {pair:?}: {line}"))?;
                        if labels
                            .insert(captures[1].to_owned(), captures[2].to_owned())
                            .is_some()
                        {
                            return Err(format!("label given twice: {line}"));
                        }
                    }
                    (name, labels)
                }
            };
            if !name_re.is_match(name) {
                return Err(format!("bad metric name: {line}"));
            }
            let family = ["_bucket", "_sum", "_count", "_total"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| types.contains_key(*base))
                .unwrap_or(name);
            let declared = types.get(family).or_else(|| types.get(name));
            if declared.is_none() {
                return Err(format!("sample before its TYPE: {line}"));
            }
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        check_histograms(&types, &samples)?;
        Ok(samples)
    }

    type LabelsWithoutLe = Vec<(String, String)>;

    fn check_histograms(types: &HashMap<String, String>, samples: &[Sample]) -> Result<(), String> {
        for (family, _) in types.iter().filter(|(_, kind)| *kind == "histogram") {
            let bucket_name = format!("{family}_bucket");
            let count_name = format!("{family}_count");
            // Group buckets by their labels without `le`.
            let mut series: BTreeMap<LabelsWithoutLe, Vec<(f64, f64)>> = BTreeMap::new();
            for sample in samples.iter().filter(|s| s.name == bucket_name) {
                let le = sample
                    .labels
                    .get("le")
                    .ok_or("bucket without le")?
                    .parse::<f64>()
                    .or_else(|_| match sample.labels.get("le").map(String::as_str) {
                        Some("+Inf") => Ok(f64::INFINITY),
                        _ => Err("bad le".to_owned()),
                    })?;
                let key = sample
                    .labels
                    .iter()
                    .filter(|(k, _)| *k != "le")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                series.entry(key).or_default().push((le, sample.value));
            }
            for (key, buckets) in series {
                if !buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
                {
                    return Err(format!("{family}: buckets not cumulative"));
                }
                let last = buckets.last().ok_or("no buckets")?;
                if !last.0.is_infinite() {
                    return Err(format!("{family}: no +Inf bucket"));
                }
                let labels: BTreeMap<String, String> = key.into_iter().collect();
                let count = samples
                    .iter()
                    .find(|s| s.name == count_name && s.labels == labels)
                    .ok_or(format!("{family}: no _count"))?;
                if count.value != last.1 {
                    return Err(format!("{family}: +Inf bucket differs from _count"));
                }
            }
        }
        Ok(())
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    fn counts(pairs: &[(&'static str, u64)]) -> BTreeMap<&'static str, u64> {
        pairs.iter().copied().collect()
    }

    fn metrics_with_everything_recorded() -> Metrics {
        let metrics = Metrics::new();
        metrics.reconcile_finished("ok", Duration::from_millis(30));
        metrics.reconcile_finished("ok", Duration::from_secs(2));
        metrics.reconcile_finished("throttled", Duration::from_secs(40));
        metrics.azure_request("arm", "list_role_assignments", "2xx");
        metrics.azure_request("graph", "resolve_user", status_class(404));
        metrics.ratelimit_remaining("writes", SUBSCRIPTION, 1190);
        metrics.set_grants("team-a/chat", &counts(&[("Granted", 3), ("Denied", 1)]));
        metrics.set_access_origins("oai-prod", &counts(&[("foreign", 2)]));
        metrics.role_assignments_per_subscription(SUBSCRIPTION, 3300);
        metrics.leader(true);
        metrics
    }

    #[test]
    fn the_scrape_parses_as_prometheus_text() {
        let text = metrics_with_everything_recorded().encode();
        let samples = parse(&text).unwrap_or_else(|error| panic!("{error}\n{text}"));
        assert!(!samples.is_empty());
    }

    #[test]
    fn an_untouched_registry_still_parses_and_states_the_limit() {
        let samples = parse(&Metrics::new().encode()).unwrap();
        assert_eq!(
            value(&samples, "keyless_role_assignments_limit", &[]),
            Some(4000.0)
        );
        assert_eq!(value(&samples, "keyless_leader", &[]), Some(0.0));
    }

    #[test]
    fn the_checker_rejects_malformed_text() {
        // The parser is the test's oracle, so it must fail on what a scraper would reject.
        assert!(parse("keyless_x 1\n").is_err(), "sample without TYPE");
        assert!(parse("# TYPE keyless_x gauge\nkeyless_x{a=b} 1\n").is_err());
        assert!(parse("# TYPE keyless_x gauge\nkeyless_x one\n").is_err());
        assert!(parse("# TYPE keyless_x gauge\nkeyless_x 1").is_err());
        assert!(
            parse(
                "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"
            )
            .is_err(),
            "non-cumulative buckets"
        );
        assert!(parse("# TYPE keyless_x gauge\nkeyless_x{a=\"b\"} 1\n").is_ok());
    }

    #[test]
    fn reconciles_are_counted_by_result_with_a_duration_histogram() {
        let samples = parse(&metrics_with_everything_recorded().encode()).unwrap();
        assert_eq!(
            value(&samples, "keyless_reconciles_total", &[("result", "ok")]),
            Some(2.0)
        );
        assert_eq!(
            value(
                &samples,
                "keyless_reconciles_total",
                &[("result", "throttled")]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &samples,
                "keyless_reconcile_duration_seconds_count",
                &[("result", "ok")]
            ),
            Some(2.0)
        );
        assert_eq!(
            value(
                &samples,
                "keyless_reconcile_duration_seconds_bucket",
                &[("result", "ok"), ("le", "0.05")]
            ),
            Some(1.0)
        );
        let sum = value(
            &samples,
            "keyless_reconcile_duration_seconds_sum",
            &[("result", "ok")],
        )
        .unwrap();
        assert!((sum - 2.03).abs() < 1e-9, "sum was {sum}");
    }

    #[test]
    fn azure_requests_are_counted_by_service_operation_and_status_class() {
        let metrics = metrics_with_everything_recorded();
        metrics.azure_request("arm", "list_role_assignments", "2xx");
        let samples = parse(&metrics.encode()).unwrap();
        let arm = [
            ("service", "arm"),
            ("operation", "list_role_assignments"),
            ("status_class", "2xx"),
        ];
        assert_eq!(
            value(&samples, "keyless_azure_requests_total", &arm),
            Some(2.0)
        );
        let graph = [
            ("service", "graph"),
            ("operation", "resolve_user"),
            ("status_class", "4xx"),
        ];
        assert_eq!(
            value(&samples, "keyless_azure_requests_total", &graph),
            Some(1.0)
        );
    }

    #[test]
    fn status_codes_fall_into_their_class() {
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(429), "4xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(0), "error");
    }

    #[test]
    fn rate_limit_remaining_is_a_gauge_per_kind_and_subscription() {
        let metrics = metrics_with_everything_recorded();
        metrics.ratelimit_remaining("writes", SUBSCRIPTION, 1100);
        let samples = parse(&metrics.encode()).unwrap();
        assert_eq!(
            value(
                &samples,
                "keyless_azure_ratelimit_remaining",
                &[("kind", "writes"), ("subscription", SUBSCRIPTION)]
            ),
            Some(1100.0)
        );
    }

    #[test]
    fn planned_writes_are_summed_over_accounts_and_forgotten_with_the_account() {
        let metrics = Metrics::new();
        metrics.set_planned_writes("prod", &counts(&[("Create", 2), ("Delete", 1)]));
        metrics.set_planned_writes("dev", &counts(&[("Create", 1)]));
        let samples = parse(&metrics.encode()).unwrap();
        assert_eq!(
            value(&samples, "keyless_planned_writes", &[("action", "Create")]),
            Some(3.0)
        );
        metrics.forget_account("prod");
        let samples = parse(&metrics.encode()).unwrap();
        assert_eq!(
            value(&samples, "keyless_planned_writes", &[("action", "Create")]),
            Some(1.0)
        );
        assert_eq!(
            value(&samples, "keyless_planned_writes", &[("action", "Delete")]),
            Some(0.0)
        );
    }

    #[test]
    fn accounts_gone_from_the_cluster_are_forgotten_in_every_series() {
        let metrics = Metrics::new();
        for account in ["kept", "gone"] {
            metrics.set_grants(account, &counts(&[("Granted", 2)]));
            metrics.set_access_origins(account, &counts(&[("managed", 2)]));
            metrics.set_planned_writes(account, &counts(&[("create", 1)]));
            metrics.set_revocations_held(account, Some("ViewIncomplete"));
        }
        metrics.forget_accounts_except(&BTreeSet::from(["kept".to_string()]));
        let samples = parse(&metrics.encode()).unwrap();
        let cases = [
            ("keyless_grants", ("state", "Granted"), 2.0),
            ("keyless_access_grants", ("origin", "managed"), 2.0),
            ("keyless_planned_writes", ("action", "create"), 1.0),
            (
                "keyless_accounts_with_revocations_held",
                ("reason", "ViewIncomplete"),
                1.0,
            ),
        ];
        for (name, label, want) in cases {
            assert_eq!(value(&samples, name, &[label]), Some(want), "{name}");
        }
    }

    #[test]
    fn grants_are_summed_over_accounts_and_replaced_per_account() {
        let metrics = Metrics::new();
        metrics.set_grants("team-a/chat", &counts(&[("Granted", 3), ("Denied", 1)]));
        metrics.set_grants("team-b/embed", &counts(&[("Granted", 2)]));
        let samples = parse(&metrics.encode()).unwrap();
        assert_eq!(
            value(&samples, "keyless_grants", &[("state", "Granted")]),
            Some(5.0)
        );
        assert_eq!(
            value(&samples, "keyless_grants", &[("state", "Denied")]),
            Some(1.0)
        );

        // A new report for an account replaces its old counts instead of adding to them.
        metrics.set_grants("team-a/chat", &counts(&[("Granted", 1)]));
        let samples = parse(&metrics.encode()).unwrap();
        assert_eq!(
            value(&samples, "keyless_grants", &[("state", "Granted")]),
            Some(3.0)
        );
        assert_eq!(
            value(&samples, "keyless_grants", &[("state", "Denied")]),
            Some(0.0),
            "a state with no grants left reads 0, not its old sum"
        );

        metrics.forget_account("team-b/embed");
        let samples = parse(&metrics.encode()).unwrap();
        assert_eq!(
            value(&samples, "keyless_grants", &[("state", "Granted")]),
            Some(1.0)
        );
    }

    #[test]
    fn access_grants_by_origin_are_summed_over_accounts_and_forgotten_with_the_account() {
        let metrics = Metrics::new();
        metrics.set_access_origins("oai-a", &counts(&[("foreign", 2), ("managed", 3)]));
        metrics.set_access_origins("oai-b", &counts(&[("foreign", 1)]));
        let samples = parse(&metrics.encode()).unwrap();
        assert_eq!(
            value(&samples, "keyless_access_grants", &[("origin", "foreign")]),
            Some(3.0)
        );
        metrics.forget_account("oai-a");
        let samples = parse(&metrics.encode()).unwrap();
        assert_eq!(
            value(&samples, "keyless_access_grants", &[("origin", "foreign")]),
            Some(1.0)
        );
        assert_eq!(
            value(&samples, "keyless_access_grants", &[("origin", "managed")]),
            Some(0.0)
        );
    }

    #[test]
    fn labels_never_carry_account_or_object_names() {
        let metrics = metrics_with_everything_recorded();
        for i in 0..50 {
            metrics.set_grants(
                &format!("tenant-{i}/secret-account-{i}"),
                &counts(&[("Granted", 1)]),
            );
        }
        // A caller that passes a name where a subscription id belongs must not create a series.
        metrics.role_assignments_per_subscription("secret-account-7", 10);
        metrics.ratelimit_remaining("reads", "tenant-3", 5);
        let text = metrics.encode();
        assert!(!text.contains("secret-account"), "{text}");
        assert!(!text.contains("tenant-"), "{text}");
        assert!(!text.contains("team-a"), "{text}");

        let samples = parse(&text).unwrap();
        let allowed_keys = [
            "result",
            "le",
            "service",
            "operation",
            "status_class",
            "kind",
            "subscription",
            "state",
            "origin",
        ];
        for sample in &samples {
            for (key, label_value) in &sample.labels {
                assert!(allowed_keys.contains(&key.as_str()), "label {key}");
                if key == "subscription" {
                    assert!(
                        label_value == INVALID_SUBSCRIPTION
                            || uuid::Uuid::try_parse(label_value).is_ok(),
                        "subscription label {label_value}"
                    );
                }
            }
        }
        // Fifty accounts, one state: one grants series.
        let grant_series = samples
            .iter()
            .filter(|s| s.name == "keyless_grants")
            .count();
        assert_eq!(grant_series, 2, "Granted and Denied only");
        assert_eq!(
            value(&samples, "keyless_grants", &[("state", "Granted")]),
            Some(53.0)
        );
    }

    #[test]
    fn role_assignments_are_reported_per_subscription() {
        let samples = parse(&metrics_with_everything_recorded().encode()).unwrap();
        assert_eq!(
            value(
                &samples,
                "keyless_role_assignments",
                &[("subscription", SUBSCRIPTION)]
            ),
            Some(3300.0)
        );
    }

    #[test]
    fn near_limit_starts_at_eighty_percent_of_four_thousand() {
        assert!(!near_limit(0));
        assert!(!near_limit(3199));
        assert!(near_limit(3200));
        assert!(near_limit(4000));
        assert!(near_limit(u64::MAX), "no overflow at the top");
    }

    #[test]
    fn leader_gauge_follows_the_lease() {
        let metrics = Metrics::new();
        metrics.leader(true);
        assert_eq!(
            value(&parse(&metrics.encode()).unwrap(), "keyless_leader", &[]),
            Some(1.0)
        );
        metrics.leader(false);
        assert_eq!(
            value(&parse(&metrics.encode()).unwrap(), "keyless_leader", &[]),
            Some(0.0)
        );
    }

    #[test]
    fn clones_share_one_registry() {
        let metrics = Metrics::new();
        let clone = metrics.clone();
        clone.reconcile_finished("error", Duration::from_millis(5));
        let samples = parse(&metrics.encode()).unwrap();
        assert_eq!(
            value(&samples, "keyless_reconciles_total", &[("result", "error")]),
            Some(1.0)
        );
    }

    #[test]
    fn accounts_with_held_revocations_are_counted_by_reason_without_their_names() {
        let metrics = Metrics::new();
        metrics.set_revocations_held("prod", Some("RevocationsBlocked"));
        metrics.set_revocations_held("staging", Some("RevocationsBlocked"));
        metrics.set_revocations_held("staging", None);
        let text = metrics.encode();
        assert!(
            text.contains(
                "keyless_accounts_with_revocations_held{reason=\"RevocationsBlocked\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("prod"), "no account names in labels");
    }
}
