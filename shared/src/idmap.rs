//! Id mapping tables: the bridge's own ids for messages it sends on, and what each one
//! stands for.
//!
//! When the gateway forwards a client's request to a backend it gives the request a fresh
//! numeric id from that backend's [`IdMap`], remembering the client session and the
//! client's original id; the backend's response is matched back with [`IdMap::take`].
//! The same table type maps server-to-client requests (a backend's id ↔ the id the
//! client sees). Ids are never reused while an entry is live, and the table is bounded.

use std::collections::HashMap;

use crate::jsonrpc::Id;

/// The table is full: too many entries are live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full {
    /// The table's capacity.
    pub limit: usize,
}

/// A bounded table from freshly allocated numeric ids to `T`.
#[derive(Debug)]
pub struct IdMap<T> {
    next: u64,
    entries: HashMap<u64, T>,
    limit: usize,
}

impl<T> IdMap<T> {
    /// An empty table holding at most `limit` live entries.
    pub fn new(limit: usize) -> Self {
        IdMap {
            next: 1,
            entries: HashMap::new(),
            limit,
        }
    }

    /// `Ok` when an [`IdMap::insert`] now would succeed: for callers with work to do
    /// (and undo) only for an entry that will be taken.
    pub fn has_room(&self) -> Result<(), Full> {
        if self.entries.len() >= self.limit {
            return Err(Full { limit: self.limit });
        }
        Ok(())
    }

    /// Allocates a new id for `value`.
    pub fn insert(&mut self, value: T) -> Result<u64, Full> {
        self.has_room()?;
        let id = self.next;
        self.next += 1;
        self.entries.insert(id, value);
        Ok(id)
    }

    /// Whether an id received from the peer is one of ours and still live.
    pub fn is_live(&self, id: &Id) -> bool {
        id.as_u64().is_some_and(|n| self.entries.contains_key(&n))
    }

    /// Whether an id received from the peer is one this map ever gave out (live or not):
    /// an id it never gave is the peer's mistake, not a late answer.
    pub fn was_issued(&self, id: &Id) -> bool {
        id.as_u64().is_some_and(|n| n >= 1 && n < self.next)
    }

    /// Removes and returns the entry for an id received from the peer, if it is one of
    /// ours and still live.
    pub fn take(&mut self, id: &Id) -> Option<T> {
        self.entries.remove(&id.as_u64()?)
    }

    /// Looks at a live entry without removing it.
    pub fn get(&self, id: u64) -> Option<&T> {
        self.entries.get(&id)
    }

    /// Changes a live entry in place.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        self.entries.get_mut(&id)
    }

    /// Removes an entry by our own id.
    pub fn remove(&mut self, id: u64) -> Option<T> {
        self.entries.remove(&id)
    }

    /// Finds the first live entry matching `pred` and returns its id.
    pub fn find(&self, mut pred: impl FnMut(&T) -> bool) -> Option<u64> {
        self.entries.iter().find_map(|(k, v)| pred(v).then_some(*k))
    }

    /// Removes every entry matching `pred`, returning them.
    pub fn remove_where(&mut self, mut pred: impl FnMut(&T) -> bool) -> Vec<(u64, T)> {
        let ids: Vec<u64> = self
            .entries
            .iter()
            .filter_map(|(k, v)| pred(v).then_some(*k))
            .collect();
        ids.into_iter()
            .filter_map(|k| self.entries.remove(&k).map(|v| (k, v)))
            .collect()
    }

    /// Removes and returns every entry (for failing all pending requests at once).
    pub fn drain(&mut self) -> Vec<(u64, T)> {
        self.entries.drain().collect()
    }

    /// Every live entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.entries.iter().map(|(k, v)| (*k, v))
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entry is live.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_unique_ids_and_matches_them_back() {
        let mut m = IdMap::new(8);
        let a = m.insert(("s1", Id::String("x".into()))).unwrap();
        let b = m.insert(("s2", Id::from(1))).unwrap();
        assert_ne!(a, b);
        assert_eq!(m.len(), 2);
        assert_eq!(m.take(&Id::from(b)), Some(("s2", Id::from(1))));
        assert_eq!(m.take(&Id::from(b)), None, "an id is answered once");
        assert_eq!(
            m.take(&Id::String(a.to_string())),
            None,
            "our ids are numbers"
        );
        assert_eq!(m.take(&Id::from(a)).unwrap().1, Id::String("x".into()));
        assert!(m.is_empty());
        // Answered ids were issued; ids never given out, or of another type, were not.
        assert!(m.was_issued(&Id::from(a)) && m.was_issued(&Id::from(b)));
        assert!(!m.was_issued(&Id::from(b + 1)));
        assert!(!m.was_issued(&Id::from(0)));
        assert!(!m.was_issued(&Id::String(a.to_string())));
    }

    #[test]
    fn is_bounded_and_frees_slots() {
        let mut m = IdMap::new(2);
        let a = m.insert(1).unwrap();
        m.insert(2).unwrap();
        assert_eq!(m.has_room(), Err(Full { limit: 2 }));
        assert_eq!(m.insert(3), Err(Full { limit: 2 }));
        m.remove(a);
        assert_eq!(m.has_room(), Ok(()));
        let c = m.insert(3).unwrap();
        assert!(c > a, "ids are not reused");
    }

    #[test]
    fn drains_and_filters_by_owner() {
        let mut m = IdMap::new(10);
        for s in ["a", "b", "a"] {
            m.insert(s).unwrap();
        }
        let gone = m.remove_where(|s| *s == "a");
        assert_eq!(gone.len(), 2);
        assert!(m.find(|s| *s == "b").is_some());
        assert_eq!(m.drain().len(), 1);
        assert!(m.is_empty());
    }
}
