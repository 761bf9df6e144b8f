//! Kubernetes Events with a bounded memory of what was published.
//!
//! kube's `Recorder` folds a repeat of an event (same type, reason, action and object within six
//! minutes) into a series, which is what we want, but keeps every event it ever published, whole,
//! until the next publish after six minutes, and scans them all on every publish. The controller
//! publishes one `RoleAssignmentCreated` per grant, so at 10,000 grants that is 10,000 `Event`
//! objects held for nothing (measured: 3.3 KB each, 33 MB; see issue 18). Here the same folding is
//! kept with a small record per recent event (its name, namespace, count and when it was last
//! seen), at most `capacity` of them: past that the oldest is forgotten, and its next repeat is
//! published as a new Event instead of a series (more Events, never lost ones).

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// What makes an event a repeat of an earlier one: the same news about the same object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventKey {
    pub warning: bool,
    pub reason: String,
    pub action: String,
    /// The regarding object: its uid when it has one, else kind, namespace and name.
    pub regarding: String,
}

impl EventKey {
    pub fn of(event: &Event, regarding: &ObjectReference) -> EventKey {
        let object = match &regarding.uid {
            Some(uid) => uid.clone(),
            None => format!(
                "{}/{}/{}",
                regarding.kind.as_deref().unwrap_or_default(),
                regarding.namespace.as_deref().unwrap_or_default(),
                regarding.name.as_deref().unwrap_or_default()
            ),
        };
        EventKey {
            warning: event.type_ == EventType::Warning,
            reason: event.reason.clone(),
            action: event.action.clone(),
            regarding: object,
        }
    }
}

/// A published event, as much as a repeat needs.
#[derive(Clone, Debug, PartialEq)]
struct Published {
    name: String,
    namespace: String,
    count: i32,
    last_seen: Timestamp,
}

/// What to send for an event.
#[derive(Clone, Debug, PartialEq)]
pub enum Publish {
    /// A new Event object.
    Create,
    /// A repeat: the series of the Event already published goes to `count`.
    Repeat {
        name: String,
        namespace: String,
        count: i32,
    },
}

/// The events published in the last `ttl`, at most `capacity` of them (the pure part of the
/// recorder).
#[derive(Debug)]
pub struct RecentEvents {
    ttl: SignedDuration,
    capacity: usize,
    published: HashMap<EventKey, Published>,
}

impl RecentEvents {
    pub fn new(ttl: Duration, capacity: usize) -> RecentEvents {
        RecentEvents {
            ttl: SignedDuration::try_from(ttl).unwrap_or(SignedDuration::MAX),
            capacity,
            published: HashMap::new(),
        }
    }

    /// How many events are remembered.
    pub fn len(&self) -> usize {
        self.published.len()
    }

    pub fn is_empty(&self) -> bool {
        self.published.is_empty()
    }

    // Whether a repeat at `now` still folds into `published`'s series.
    fn fresh(ttl: SignedDuration, published: &Published, now: Timestamp) -> bool {
        published
            .last_seen
            .checked_add(ttl)
            .is_ok_and(|until| until > now)
    }

    /// What to send for `key` now; a repeat is counted at once.
    pub fn next(&mut self, key: &EventKey, now: Timestamp) -> Publish {
        let ttl = self.ttl;
        match self.published.get_mut(key) {
            Some(published) if Self::fresh(ttl, published, now) => {
                published.count = published.count.saturating_add(1);
                published.last_seen = now;
                Publish::Repeat {
                    name: published.name.clone(),
                    namespace: published.namespace.clone(),
                    count: published.count,
                }
            }
            _ => Publish::Create,
        }
    }

    /// Remembers an Event just created. When full, the expired go first, then the oldest.
    pub fn created(&mut self, key: EventKey, name: String, namespace: String, now: Timestamp) {
        if self.capacity == 0 {
            return;
        }
        if !self.published.contains_key(&key) && self.published.len() >= self.capacity {
            let ttl = self.ttl;
            self.published.retain(|_, p| Self::fresh(ttl, p, now));
            if self.published.len() >= self.capacity
                && let Some(oldest) = self
                    .published
                    .iter()
                    .min_by_key(|(_, p)| p.last_seen)
                    .map(|(k, _)| k.clone())
            {
                self.published.remove(&oldest);
            }
        }
        self.published.insert(
            key,
            Published {
                name,
                namespace,
                count: 1,
                last_seen: now,
            },
        );
    }

    /// Forgets an event whose repeat could not be written (e.g. the API server expired it): the
    /// next one is created anew.
    pub fn forget(&mut self, key: &EventKey) {
        self.published.remove(key);
    }

    /// Whether `key` is remembered as fresh at `now` (tests and diagnostics).
    pub fn remembers(&self, key: &EventKey, now: Timestamp) -> bool {
        self.published
            .get(key)
            .is_some_and(|p| Self::fresh(self.ttl, p, now))
    }
}

/// Publishes Events in `events.k8s.io/v1` as kube's `Recorder` does, remembering only
/// [`RecentEvents`].
pub struct EventRecorder {
    client: kube::Client,
    controller: String,
    instance: String,
    recent: Mutex<RecentEvents>,
}

impl EventRecorder {
    /// `ttl`: how long a repeat is folded into the earlier Event's series (kube's is six minutes);
    /// `capacity`: how many recent events are remembered for that.
    pub fn new(
        client: kube::Client,
        controller: &str,
        instance: Option<String>,
        ttl: Duration,
        capacity: usize,
    ) -> EventRecorder {
        EventRecorder {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            recent: Mutex::new(RecentEvents::new(ttl, capacity)),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentEvents> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many events are remembered.
    pub fn remembered(&self) -> usize {
        self.recent().len()
    }

    /// Publishes `event` about `regarding` (in its namespace; a cluster-scoped object's in
    /// `default`, as kube does).
    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = EventKey::of(event, regarding);
        let next = self.recent().next(&key, now);
        if let Publish::Repeat {
            name,
            namespace,
            count,
        } = next
        {
            let series = serde_json::json!({
                "series": EventSeries { count, last_observed_time: MicroTime(now) }
            });
            let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
            match events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => return Ok(()),
                // Gone (the API server keeps Events for an hour): publish it anew.
                Err(kube::Error::Api(status)) if status.code == 404 => self.recent().forget(&key),
                Err(error) => {
                    self.recent().forget(&key);
                    return Err(error);
                }
            }
        }
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(&self.controller),
            now.as_nanosecond()
        );
        let created = K8sEvent {
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            note: event.note.clone(),
            metadata: ObjectMeta {
                namespace: Some(namespace.clone()),
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_string(),
            ),
            ..K8sEvent::default()
        };
        Api::<K8sEvent>::namespaced(self.client.clone(), &namespace)
            .create(&PostParams::default(), &created)
            .await?;
        self.recent().created(key, name, namespace, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(reason: &str, object: &str) -> EventKey {
        EventKey {
            warning: false,
            reason: reason.into(),
            action: "Apply".into(),
            regarding: object.into(),
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn remember(recent: &mut RecentEvents, key: &EventKey, now: Timestamp) {
        assert_eq!(recent.next(key, now), Publish::Create);
        recent.created(
            key.clone(),
            format!("{}.1", key.regarding),
            "ns".into(),
            now,
        );
    }

    #[test]
    fn a_repeat_within_the_ttl_counts_up_the_series_of_the_first_event() {
        let mut recent = RecentEvents::new(Duration::from_secs(360), 10);
        let created = key("RoleAssignmentCreated", "uid-1");
        remember(&mut recent, &created, at(0));
        for (seconds, count) in [(10, 2), (300, 3), (600, 4)] {
            assert_eq!(
                recent.next(&created, at(seconds)),
                Publish::Repeat {
                    name: "uid-1.1".into(),
                    namespace: "ns".into(),
                    count
                },
                "at {seconds} s (each repeat restarts the ttl)"
            );
        }
    }

    #[test]
    fn a_repeat_after_the_ttl_is_a_new_event() {
        let mut recent = RecentEvents::new(Duration::from_secs(360), 10);
        let created = key("RoleAssignmentCreated", "uid-1");
        remember(&mut recent, &created, at(0));
        assert_eq!(recent.next(&created, at(360)), Publish::Create);
        assert!(!recent.remembers(&created, at(360)));
    }

    #[test]
    fn other_reasons_and_other_objects_are_other_events() {
        let mut recent = RecentEvents::new(Duration::from_secs(360), 10);
        remember(&mut recent, &key("RoleAssignmentCreated", "uid-1"), at(0));
        assert_eq!(
            recent.next(&key("RoleAssignmentFailed", "uid-1"), at(1)),
            Publish::Create
        );
        assert_eq!(
            recent.next(&key("RoleAssignmentCreated", "uid-2"), at(1)),
            Publish::Create
        );
        let mut warning = key("RoleAssignmentCreated", "uid-1");
        warning.warning = true;
        assert_eq!(recent.next(&warning, at(1)), Publish::Create);
    }

    #[test]
    fn memory_is_bounded_by_the_capacity_forgetting_the_expired_then_the_oldest() {
        let mut recent = RecentEvents::new(Duration::from_secs(360), 3);
        remember(&mut recent, &key("A", "expired"), at(0));
        remember(&mut recent, &key("A", "old"), at(100));
        remember(&mut recent, &key("A", "new"), at(200));
        // Full: the expired one goes.
        remember(&mut recent, &key("A", "fourth"), at(400));
        assert_eq!(recent.len(), 3);
        assert!(!recent.remembers(&key("A", "expired"), at(400)));
        // Full, nothing expired: the oldest goes, the rest stay.
        remember(&mut recent, &key("A", "fifth"), at(401));
        assert_eq!(recent.len(), 3);
        assert!(!recent.remembers(&key("A", "old"), at(401)));
        for kept in ["new", "fourth", "fifth"] {
            assert!(recent.remembers(&key("A", kept), at(401)), "{kept}");
        }
        // Thousands of grants' events never hold more than the capacity.
        for i in 0..10_000 {
            remember(&mut recent, &key("A", &format!("uid-{i}")), at(500));
        }
        assert_eq!(recent.len(), 3);
    }

    #[test]
    fn a_forgotten_event_is_created_anew() {
        let mut recent = RecentEvents::new(Duration::from_secs(360), 10);
        let created = key("RoleAssignmentCreated", "uid-1");
        remember(&mut recent, &created, at(0));
        recent.forget(&created);
        assert_eq!(recent.next(&created, at(1)), Publish::Create);
    }

    #[test]
    fn without_capacity_nothing_is_remembered() {
        let mut recent = RecentEvents::new(Duration::from_secs(360), 0);
        remember(&mut recent, &key("A", "uid-1"), at(0));
        assert!(recent.is_empty());
        assert_eq!(recent.next(&key("A", "uid-1"), at(1)), Publish::Create);
    }

    #[test]
    fn the_key_names_the_object_by_uid_or_else_by_kind_namespace_and_name() {
        let event = Event {
            type_: EventType::Warning,
            reason: "AccessDenied".into(),
            note: None,
            action: "Plan".into(),
            secondary: None,
        };
        let with_uid = ObjectReference {
            uid: Some("u-1".into()),
            name: Some("chat".into()),
            ..ObjectReference::default()
        };
        let without = ObjectReference {
            kind: Some("OpenAIAccess".into()),
            namespace: Some("team-a".into()),
            name: Some("chat".into()),
            ..ObjectReference::default()
        };
        assert_eq!(EventKey::of(&event, &with_uid).regarding, "u-1");
        assert_eq!(
            EventKey::of(&event, &without).regarding,
            "OpenAIAccess/team-a/chat"
        );
        assert!(EventKey::of(&event, &with_uid).warning);
    }
}
