//! The reads a deploy of a database starts with, sent ahead in one round trip on its next deploy.
//!
//! An unchanged redeploy spends most of its time waiting on one small catalog or tracking-table read
//! after another, each its own round trip. The reads the engine made right after taking the
//! database's lock, up to the first statement that was not one of them (work the next deploy skips and
//! that leaves nothing behind, the tables step's scratch run, is stepped over), are remembered per database
//! (keyed by its OID); the next deploy sends the same statements with the same parameters behind the
//! lock, as one pipeline inside a savepoint. Each answer is handed out only when the engine asks for
//! exactly that statement next and nothing else was sent on the session since the pipeline (the
//! client's round-trip count says so): then it is the answer the engine would have got by asking.
//! The first request that differs ends the read-ahead; the rest is dropped unread. Only an
//! optimisation: a miss costs the round trips it would have cost anyway.

use std::collections::VecDeque;

use super::memo::DbMemo;

/// A statement and its text parameters.
pub(crate) type Read = (String, Vec<Option<String>>);

/// A read's answer: rows of text values, `None` for SQL NULL.
pub(crate) type Rows = Vec<Vec<Option<String>>>;

/// Statements one database's read-ahead may hold, and the parameter bytes: what a deploy reads
/// before its first write is a handful; a bound keeps a strange archive from making it large.
const MAX_READS: usize = 64;
const MAX_PARAM_BYTES: usize = 256 * 1024;

/// (server, database, database OID) → the reads its last deploy started with.
static PROLOGUES: DbMemo<String, Vec<Read>> = DbMemo::new();

/// The reads remembered for `database` with OID `oid`.
pub(crate) fn remembered(server: &str, database: &str, oid: &str) -> Option<Vec<Read>> {
    PROLOGUES.get(server, database, &oid.to_string())
}

/// Forgets what `database` on `server` started with (a failed deploy).
pub(crate) fn forget(server: &str, database: &str) {
    PROLOGUES.forget(server, database);
}

/// Answers fetched ahead, and the reads being recorded for next time.
#[derive(Default)]
pub(crate) struct ReadAhead {
    /// Answers in the order the engine is expected to ask.
    ahead: VecDeque<(Read, Rows)>,
    /// The client's round-trip count right after the pipeline: an answer is only handed out while
    /// it is unchanged.
    ahead_at: u64,
    /// Reads made so far, while every request since recording started was one.
    recording: Option<Vec<Read>>,
    /// The client's round-trip count after the last recorded read.
    recorded_at: u64,
    param_bytes: usize,
}

impl ReadAhead {
    /// Answers of a pipeline sent when the client's count was `rt` after it.
    pub fn fill(&mut self, reads: Vec<Read>, answers: Vec<Rows>, rt: u64) {
        self.ahead = reads.into_iter().zip(answers).collect();
        self.ahead_at = rt;
    }

    /// Starts recording the reads that follow; `rt` is the client's count now.
    pub fn record_from(&mut self, rt: u64) {
        self.recording = Some(Vec::new());
        self.recorded_at = rt;
        self.param_bytes = 0;
    }

    /// The answer fetched ahead for `sql` with `params`, when it is the next one and the session
    /// sent nothing else since (client count `rt`). Anything else ends the read-ahead.
    pub fn take(&mut self, sql: &str, params: &[Option<&str>], rt: u64) -> Option<Rows> {
        if self.ahead.is_empty() {
            return None;
        }
        let next = self.ahead.front().filter(|_| rt == self.ahead_at).is_some_and(|((s, p), _)| {
            s == sql && p.len() == params.len() && p.iter().zip(params).all(|(a, b)| a.as_deref() == *b)
        });
        if !next {
            self.ahead.clear();
            return None;
        }
        self.ahead.pop_front().map(|(_, rows)| rows)
    }

    /// Notes a read the engine made; `before` and `after` are the client's counts around it (equal
    /// when it was answered from the read-ahead). A request between two reads ends the recording.
    pub fn note(&mut self, sql: &str, params: &[Option<&str>], before: u64, after: u64) {
        let Some(list) = self.recording.as_mut() else { return };
        let bytes: usize = params.iter().map(|p| p.map_or(0, str::len)).sum();
        if before != self.recorded_at
            || !sql
                .trim_start()
                .get(..6)
                .is_some_and(|k| k.eq_ignore_ascii_case("SELECT") || k.eq_ignore_ascii_case("EXPLAI"))
            || list.len() >= MAX_READS
            || self.param_bytes + bytes > MAX_PARAM_BYTES
        {
            self.stop();
            return;
        }
        self.param_bytes += bytes;
        list.push((sql.to_string(), params.iter().map(|p| p.map(str::to_string)).collect()));
        self.recorded_at = after;
    }

    /// Leaves what runs until [`ReadAhead::resume`] out of the recording without ending it: work that
    /// leaves nothing behind and that the next deploy skips (the tables step's scratch run makes and
    /// drops its schema in this transaction, and is remembered), so the reads after it are the ones
    /// that deploy makes at this point. Returns whether the recording was going.
    pub fn pause(&mut self) -> bool {
        let going = self.recording.is_some() && self.recorded_at != u64::MAX;
        self.recorded_at = u64::MAX;
        going
    }

    /// Goes on recording after a [`ReadAhead::pause`] that returned `going`; `rt` is the client's
    /// count now.
    pub fn resume(&mut self, going: bool, rt: u64) {
        if going {
            self.recorded_at = rt;
        }
    }

    /// Ends the recording where it is (a write, a savepoint, platform SQL).
    pub fn stop(&mut self) {
        if let Some(list) = self.recording.take() {
            self.recording = Some(list);
            self.recorded_at = u64::MAX;
        }
    }

    /// Remembers what was recorded for the next deploy of `database` (after this one committed).
    pub fn keep(&mut self, server: &str, database: &str, oid: &str) {
        match self.recording.take() {
            Some(list) if !list.is_empty() && !oid.is_empty() => {
                PROLOGUES.put(server, database, oid.to_string(), list, true)
            }
            _ => PROLOGUES.forget(server, database),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(s: &str, p: &[&str]) -> Read {
        (s.to_string(), p.iter().map(|x| Some(x.to_string())).collect())
    }

    #[test]
    fn answers_only_the_next_read_while_nothing_else_was_sent() {
        let mut r = ReadAhead::default();
        r.fill(vec![read("SELECT 1", &[]), read("SELECT $1", &["a"])], vec![vec![vec![Some("1".into())]], vec![]], 7);
        assert_eq!(r.take("SELECT 1", &[], 7), Some(vec![vec![Some("1".to_string())]]));
        assert_eq!(r.take("SELECT $1", &[Some("b")], 7), None, "other parameters");
        assert_eq!(r.take("SELECT $1", &[Some("a")], 7), None, "the read-ahead ended");

        r.fill(vec![read("SELECT 1", &[])], vec![vec![]], 7);
        assert_eq!(r.take("SELECT 1", &[], 8), None, "something else was sent meanwhile");
    }

    #[test]
    fn records_consecutive_reads_until_anything_else() {
        let mut r = ReadAhead::default();
        r.record_from(3);
        r.note("SELECT a", &[], 3, 4);
        r.note("SELECT b", &[Some("x")], 4, 4);
        r.note("SELECT c", &[], 6, 7);
        r.note("SELECT d", &[], 7, 8);
        assert_eq!(r.recording.as_ref().map(Vec::len), Some(2), "a request between reads ends it");
        let mut w = ReadAhead::default();
        w.record_from(0);
        w.note("INSERT INTO t VALUES (1)", &[], 0, 1);
        w.note("SELECT a", &[], 1, 2);
        assert_eq!(w.recording.as_ref().map(Vec::len), Some(0), "only reads are recorded");
    }

    #[test]
    fn a_pause_leaves_out_what_runs_in_it_and_only_resumes_a_going_recording() {
        let mut r = ReadAhead::default();
        r.record_from(0);
        r.note("SELECT a", &[], 0, 1);
        let going = r.pause();
        assert!(going);
        r.note("SELECT scratch", &[], 3, 4);
        r.resume(going, 9);
        r.note("SELECT b", &[], 9, 10);
        let names: Vec<&str> = r.recording.as_ref().unwrap().iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(names, ["SELECT a", "SELECT b"]);

        let mut stopped = ReadAhead::default();
        stopped.record_from(0);
        stopped.note("SELECT a", &[], 0, 1);
        stopped.note("SELECT b", &[], 2, 3);
        let going = stopped.pause();
        assert!(!going);
        stopped.resume(going, 5);
        stopped.note("SELECT c", &[], 5, 6);
        assert_eq!(stopped.recording.as_ref().map(Vec::len), Some(1), "a stopped recording stays stopped");
    }

    fn recorded(r: &ReadAhead) -> usize {
        r.recording.as_ref().map_or(0, Vec::len)
    }

    #[test]
    fn the_recording_stops_at_its_bounds_and_not_before() {
        let mut r = ReadAhead::default();
        r.record_from(0);
        for i in 0..=MAX_READS as u64 {
            r.note("SELECT 1", &[], i, i + 1);
        }
        assert_eq!(recorded(&r), MAX_READS, "reads past MAX_READS are not recorded");

        // Parameter bytes: exactly the bound in one read is kept; more, alone or summed, is not.
        let at_bound = "x".repeat(MAX_PARAM_BYTES);
        let mut r = ReadAhead::default();
        r.record_from(0);
        r.note("SELECT $1", &[Some(&at_bound)], 0, 1);
        assert_eq!(recorded(&r), 1);
        r.note("SELECT 2", &[Some("y")], 1, 2);
        assert_eq!(recorded(&r), 1, "one byte past the bound");

        let over = "x".repeat(MAX_PARAM_BYTES + 10);
        let mut r = ReadAhead::default();
        r.record_from(0);
        r.note("SELECT $1", &[Some(&over)], 0, 1);
        assert_eq!(recorded(&r), 0, "one read over the bound");

        let most = "x".repeat(MAX_PARAM_BYTES * 3 / 5);
        let mut r = ReadAhead::default();
        r.record_from(0);
        r.note("SELECT $1", &[Some(&most)], 0, 1);
        r.note("SELECT $1", &[Some(&most)], 1, 2);
        assert_eq!(recorded(&r), 1, "two reads over the bound together");
    }

    #[test]
    fn kept_reads_are_remembered_per_oid_until_forgotten() {
        let (server, db) = ("readahead-test-server", "readahead_test_db");
        let mut r = ReadAhead::default();
        r.record_from(0);
        r.note("SELECT a", &[], 0, 1);
        r.keep(server, db, "101");
        assert_eq!(remembered(server, db, "101"), Some(vec![read("SELECT a", &[])]));
        assert_eq!(remembered(server, db, "102"), None, "another OID is another database");
        forget(server, db);
        assert_eq!(remembered(server, db, "101"), None);

        // Nothing recorded, or no OID known: what was remembered goes instead of staying stale.
        for (reads, oid) in [(0, "101"), (1, "")] {
            let mut r = ReadAhead::default();
            r.record_from(0);
            r.note("SELECT a", &[], 0, 1);
            r.keep(server, db, "101");
            assert!(remembered(server, db, "101").is_some());
            let mut r = ReadAhead::default();
            r.record_from(0);
            if reads > 0 {
                r.note("SELECT b", &[], 0, 1);
            }
            r.keep(server, db, oid);
            assert_eq!(remembered(server, db, "101"), None, "reads {reads}, oid {oid:?}");
        }
    }
}
