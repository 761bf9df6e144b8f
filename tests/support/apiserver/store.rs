//! Objects, the global `resourceVersion` counter (one for all resources, as etcd's revision), a
//! bounded event history for watches to resume from, and the open watches.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;

use super::selectors::Selector;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectKey {
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    fn wire(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

#[derive(Clone, Debug)]
pub struct HistoryEvent {
    pub rv: u64,
    pub resource: String,
    pub namespace: String,
    pub event: EventType,
    pub object: Value,
    /// The object before a modification, so selector watches can turn it into ADDED/DELETED.
    pub old: Option<Value>,
}

/// How a watch presents objects: as stored, or metadata-only (`as=PartialObjectMetadata`).
#[derive(Clone, Debug)]
pub struct Presentation {
    pub api_version: String,
    pub kind: String,
    pub metadata_only: bool,
}

impl Presentation {
    pub fn present(&self, object: &Value) -> Value {
        if self.metadata_only {
            return json!({
                "apiVersion": "meta.k8s.io/v1",
                "kind": "PartialObjectMetadata",
                "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
            });
        }
        let mut object = object.clone();
        object["apiVersion"] = json!(self.api_version);
        object
    }
}

pub struct Watcher {
    pub resource: String,
    pub namespace: Option<String>,
    pub selector: Selector,
    pub presentation: Presentation,
    pub bookmarks: bool,
    pub tx: UnboundedSender<Bytes>,
    /// Events left before the stand-in ends this watch (an injected drop).
    pub remaining: Option<usize>,
}

pub fn frame(event_type: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

impl Watcher {
    /// What this watch should see of `event`, if anything (selectors turn modifications that
    /// enter or leave the selection into ADDED / DELETED, as the apiserver does).
    pub fn translate(&self, event: &HistoryEvent) -> Option<(EventType, Value)> {
        if event.resource != self.resource {
            return None;
        }
        if self
            .namespace
            .as_ref()
            .is_some_and(|ns| *ns != event.namespace)
        {
            return None;
        }
        let now = self.selector.matches(&event.object);
        let before = event
            .old
            .as_ref()
            .is_some_and(|old| self.selector.matches(old));
        let kind = match event.event {
            EventType::Added if now => EventType::Added,
            EventType::Deleted if now => EventType::Deleted,
            EventType::Modified if now && before => EventType::Modified,
            EventType::Modified if now => EventType::Added,
            EventType::Modified if before => EventType::Deleted,
            _ => return None,
        };
        Some((kind, self.presentation.present(&event.object)))
    }

    /// Sends one frame; false when the watch is over (closed by the client or by a drop).
    pub fn send(&mut self, bytes: Bytes) -> bool {
        if self.remaining == Some(0) {
            return false;
        }
        if self.tx.send(bytes).is_err() {
            return false;
        }
        if let Some(n) = self.remaining.as_mut() {
            *n -= 1;
            if *n == 0 {
                return false;
            }
        }
        true
    }

    pub fn bookmark(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({
            "apiVersion": self.presentation.api_version,
            "kind": self.presentation.kind,
            "metadata": metadata,
        });
        frame("BOOKMARK", &object)
    }

    pub fn event_frame(event: EventType, object: &Value) -> Bytes {
        frame(event.wire(), object)
    }
}

pub struct Store {
    pub objects: BTreeMap<ObjectKey, Value>,
    pub rv: u64,
    pub history: VecDeque<HistoryEvent>,
    pub history_limit: usize,
    /// Events at or below this version are forgotten: watches from older versions get 410 Gone.
    pub compacted_rv: u64,
    pub watchers: Vec<Watcher>,
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        Self {
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            history_limit,
            compacted_rv: 1,
            watchers: Vec::new(),
        }
    }

    pub fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Remembers an event and delivers it to the open watches.
    pub fn record(&mut self, event: HistoryEvent) {
        self.watchers.retain_mut(|w| match w.translate(&event) {
            Some((kind, object)) => w.send(Watcher::event_frame(kind, &object)),
            None => !w.tx.is_closed(),
        });
        self.history.push_back(event);
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted_rv = dropped.rv;
            }
        }
    }

    /// Forgets all history: a watch from any version before the current one now gets 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted_rv = self.rv;
    }

    /// Ends every open watch (or those of one resource), as an apiserver restart or a load balancer
    /// timeout would. Clients re-watch from their last seen version.
    pub fn drop_watches(&mut self, resource: Option<&str>) {
        self.watchers
            .retain(|w| resource.is_some_and(|r| r != w.resource));
    }

    /// Sends a BOOKMARK with the current version to every watch that asked for bookmarks.
    pub fn send_bookmarks(&mut self) {
        let rv = self.rv;
        self.watchers.retain_mut(|w| {
            if !w.bookmarks {
                return !w.tx.is_closed();
            }
            let frame = w.bookmark(rv, false);
            w.send(frame)
        });
    }
}
