//! A topic's name, checked once where it enters (the library's calls, an
//! HTTP request, a CLI flag, a directory found at open): a [`Topic`] is
//! 1–64 characters of `[A-Za-z0-9_.-]`, neither `.` nor `..`, so joining it
//! to a path stays inside `bodies/`, and it holds no `0x00` (sled keys use
//! `<topic> 0x00` as a unique prefix). Every path of a body file is built
//! from a `Topic` (`log/bodies.rs`), never from a plain string.

use crate::error::QueueError;
use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::locking::lock;

/// Longest topic name.
pub const MAX_TOPIC_LEN: usize = 64;

/// A checked topic name. Cheap to clone.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Checks `name`: 1–64 characters of `[A-Za-z0-9_.-]`, not `.` or `..`.
    ///
    /// # Errors
    ///
    /// `QueueError::InvalidTopic` naming what is wrong.
    pub fn new(name: &str) -> Result<Topic, QueueError> {
        check(name)?;
        Ok(Topic(Arc::from(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as the key of the queue's per-topic maps.
    pub(crate) fn arc(&self) -> &Arc<str> {
        &self.0
    }
}

fn check(topic: &str) -> Result<(), QueueError> {
    let bad = |reason| {
        Err(QueueError::InvalidTopic {
            topic: topic.chars().take(80).collect(),
            reason,
        })
    };
    if topic.is_empty() {
        return bad("must not be empty");
    }
    if topic.len() > MAX_TOPIC_LEN {
        return bad("longer than 64 characters");
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return bad("only letters, digits, '_', '-' and '.' are allowed");
    }
    if topic == "." || topic == ".." {
        return bad("'.' and '..' are not topic names");
    }
    Ok(())
}

impl std::ops::Deref for Topic {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl TryFrom<&str> for Topic {
    type Error = QueueError;
    fn try_from(name: &str) -> Result<Topic, QueueError> {
        Topic::new(name)
    }
}

impl std::str::FromStr for Topic {
    type Err = QueueError;
    fn from_str(name: &str) -> Result<Topic, QueueError> {
        Topic::new(name)
    }
}

/// One mutex per topic, made on first use: serializes the dead-letter
/// replays and purges of a topic (and the reaper's carrying of its traces).
#[derive(Default)]
pub(crate) struct TopicLocks {
    locks: Mutex<HashMap<Arc<str>, Arc<Mutex<()>>>>,
}

impl TopicLocks {
    /// `topic`'s lock.
    pub(crate) fn get(&self, topic: &str) -> Arc<Mutex<()>> {
        let mut locks = lock(&self.locks);
        if let Some(l) = locks.get(topic) {
            return l.clone();
        }
        let l: Arc<Mutex<()>> = Arc::default();
        locks.insert(Arc::from(topic), l.clone());
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_is_safe_to_join_to_a_path() {
        for bad in ["", ".", "..", "a/b", "../x", "a\0b", "é", &"x".repeat(65)] {
            assert!(Topic::new(bad).is_err(), "{bad:?}");
        }
        for good in ["t", "a.b", "..a", "A-z_09", &"x".repeat(64)] {
            assert_eq!(Topic::new(good).unwrap().as_str(), good);
        }
        let e = Topic::new("a/b").unwrap_err().to_string();
        assert!(e.contains("\"a/b\"") && e.contains("only letters"), "{e}");
    }
}
