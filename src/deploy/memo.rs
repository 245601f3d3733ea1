//! What this process remembers about a database between its deploys (a scratch run's reading, seed
//! counts, a complete tracking layout): one bounded map per kind, keyed by server, database and a
//! kind's own key (which holds the database's OID, so a database dropped and made again is new).
//! Only an optimisation: a miss costs a few round trips, never a wrong deploy.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// Entries one kind keeps: one a database is what a process needs; a long-lived process with very
/// many databases starts over rather than grow.
pub const MAX_ENTRIES: usize = 10_000;

/// (server, database, the kind's own key) → what is remembered.
type Entries<K, V> = HashMap<(String, String, K), V>;

/// One kind of memory, safe to share between deploy workers.
pub struct DbMemo<K, V> {
    map: Mutex<Option<Entries<K, V>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> DbMemo<K, V> {
    pub const fn new() -> Self {
        DbMemo { map: Mutex::new(None) }
    }

    /// What was remembered of `database` on `server` under `key`.
    pub fn get(&self, server: &str, database: &str, key: &K) -> Option<V> {
        let g = self.map.lock().ok()?;
        g.as_ref()?.get(&(server.to_string(), database.to_string(), key.clone())).cloned()
    }

    /// Remembers `value`; with `only`, whatever else was kept of the database goes (one entry each).
    pub fn put(&self, server: &str, database: &str, key: K, value: V, only: bool) {
        let Ok(mut g) = self.map.lock() else { return };
        let m = g.get_or_insert_with(HashMap::new);
        if m.len() >= MAX_ENTRIES {
            m.clear();
        }
        if only {
            m.retain(|k, _| !(k.0 == server && k.1 == database));
        }
        m.insert((server.to_string(), database.to_string(), key), value);
    }

    /// Forgets everything kept of `database` on `server` (a migration ran there, or a deploy failed).
    pub fn forget(&self, server: &str, database: &str) {
        if let Ok(mut g) = self.map.lock()
            && let Some(m) = g.as_mut()
        {
            m.retain(|k, _| !(k.0 == server && k.1 == database));
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Default for DbMemo<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_per_server_and_database_and_forgotten_together() {
        let m: DbMemo<String, u32> = DbMemo::new();
        m.put("s1", "a", "k1".into(), 1, false);
        m.put("s1", "a", "k2".into(), 2, false);
        m.put("s2", "a", "k1".into(), 3, false);
        assert_eq!(m.get("s1", "a", &"k1".into()), Some(1));
        assert_eq!(m.get("s2", "a", &"k1".into()), Some(3));
        m.forget("s1", "a");
        assert_eq!(m.get("s1", "a", &"k1".into()), None);
        assert_eq!(m.get("s1", "a", &"k2".into()), None);
        assert_eq!(m.get("s2", "a", &"k1".into()), Some(3));
        m.put("s1", "a", "k1".into(), 4, false);
        m.put("s2", "b", "k1".into(), 5, false);
        m.put("s2", "a", "k9".into(), 9, true);
        assert_eq!(m.get("s2", "a", &"k1".into()), None, "only keeps one entry of the database");
        assert_eq!(m.get("s2", "a", &"k9".into()), Some(9));
        assert_eq!(m.get("s1", "a", &"k1".into()), Some(4), "the same database on another server stays");
        assert_eq!(m.get("s2", "b", &"k1".into()), Some(5), "another database on the server stays");
    }

    #[test]
    fn a_full_memory_starts_over() {
        let m: DbMemo<usize, ()> = DbMemo::new();
        for i in 0..MAX_ENTRIES {
            m.put("s", "d", i, (), false);
        }
        assert_eq!(m.get("s", "d", &0), Some(()));
        m.put("s", "d", MAX_ENTRIES, (), false);
        assert_eq!(m.get("s", "d", &0), None);
        assert_eq!(m.get("s", "d", &MAX_ENTRIES), Some(()));
    }
}
