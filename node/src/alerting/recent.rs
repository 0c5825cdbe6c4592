//! Bounded memory of the alert ids a sink has accepted, oldest forgotten first.

use std::collections::{HashSet, VecDeque};

/// The last `capacity` distinct alert ids a sink accepted.
#[derive(Debug)]
pub(crate) struct RecentIds {
    capacity: usize,
    order: VecDeque<String>,
    members: HashSet<String>,
}

impl RecentIds {
    /// An empty set remembering at most `capacity` (≥ 1) ids.
    pub(crate) fn new(capacity: usize) -> Self {
        RecentIds {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            members: HashSet::new(),
        }
    }

    /// Whether `id` was accepted recently.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.members.contains(id)
    }

    /// Remembers `id`, forgetting the oldest id when full.
    pub(crate) fn insert(&mut self, id: &str) {
        if self.members.contains(id) {
            return;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.members.remove(&oldest);
            }
        }
        self.order.push_back(id.to_owned());
        self.members.insert(id.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_up_to_capacity_and_forgets_the_oldest() {
        let mut recent = RecentIds::new(2);
        recent.insert("a");
        recent.insert("b");
        recent.insert("a");
        assert!(recent.contains("a") && recent.contains("b"));
        recent.insert("c");
        assert!(!recent.contains("a"));
        assert!(recent.contains("b") && recent.contains("c"));
        assert_eq!(recent.order.len(), 2);
        assert_eq!(recent.members.len(), 2);
    }
}
