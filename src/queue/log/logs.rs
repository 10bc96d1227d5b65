//! The logs part of a store: the body files ([`Bodies`]: where they go, the
//! descriptor budget, the seq counter), every topic's [`TopicLog`], which
//! logs have entries for the committer to index (`dirty`) or bytes a failed
//! transient sync left unsynced (`unsynced`), and the syncer that
//! `fdatasync`s logs for durable producers.

use super::syncer::{Marks, Syncer};
use super::{Bodies, TopicLog};
use crate::queue::topic::Topic;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// The logs part; see the module docs.
pub(crate) struct Logs {
    /// Where body files go, the descriptor budget and the seq counter.
    bodies: Bodies,
    /// Every topic's log, created on a topic's first write.
    map: RwLock<HashMap<Arc<str>, Arc<TopicLog>>>,
    /// Which logs have entries to index, or bytes to sync again (shared
    /// with the syncer thread).
    marks: Arc<Marks>,
    /// Fsyncs logs for durable producers awaiting power-loss safety.
    syncer: Syncer,
}

impl Logs {
    pub(crate) fn new(
        bodies: Bodies,
        map: HashMap<Arc<str>, Arc<TopicLog>>,
        dirty: BTreeSet<Arc<str>>,
    ) -> Logs {
        Logs {
            bodies,
            map: RwLock::new(map),
            marks: Arc::new(Marks::new(dirty)),
            syncer: Syncer::default(),
        }
    }

    /// The body files.
    pub(crate) fn bodies(&self) -> &Bodies {
        &self.bodies
    }

    /// The syncer.
    pub(crate) fn syncer(&self) -> &Syncer {
        &self.syncer
    }

    /// The topic's log, created on first use.
    pub(crate) fn log(&self, topic: &Topic) -> Arc<TopicLog> {
        if let Some(l) = self.existing(topic) {
            return l;
        }
        let mut logs = self.map.write().unwrap_or_else(|e| e.into_inner());
        logs.entry(topic.arc().clone())
            .or_insert_with(|| Arc::new(TopicLog::new(topic.clone(), BTreeSet::new(), 1)))
            .clone()
    }

    /// The topic's log if it has one.
    pub(crate) fn existing(&self, topic: &str) -> Option<Arc<TopicLog>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .cloned()
    }

    /// Every topic log, sorted by topic (the order several are locked in).
    pub(crate) fn all(&self) -> Vec<Arc<TopicLog>> {
        let mut logs: Vec<Arc<TopicLog>> = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        logs.sort_by(|a, b| a.topic.cmp(&b.topic));
        logs
    }

    /// Cuts the zeros written ahead of every log's current generation
    /// (`close`, G6 in `log/mod.rs`).
    pub(crate) fn finish(&self) {
        for log in self.all() {
            log.finish(&self.bodies);
        }
    }

    /// Which logs have entries to index, or bytes to sync again.
    pub(crate) fn marks(&self) -> &Arc<Marks> {
        &self.marks
    }

    /// Marks a topic's log as holding entries for the committer.
    pub(crate) fn mark_dirty(&self, topic: &Arc<str>) {
        self.marks.mark_dirty(topic);
    }

    /// Takes the topics marked dirty.
    pub(crate) fn take_dirty(&self) -> BTreeSet<Arc<str>> {
        self.marks.take_dirty()
    }

    /// Marks a topic's log as holding bytes a sync must cover again.
    pub(crate) fn mark_unsynced(&self, topic: &Arc<str>) {
        self.marks.mark_unsynced(topic);
    }

    /// Takes the topics marked unsynced.
    pub(crate) fn take_unsynced(&self) -> BTreeSet<Arc<str>> {
        self.marks.take_unsynced()
    }
}
