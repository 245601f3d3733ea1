//! Bounds on what a `/call` answer may take in memory before it is sent: the size of one backend
//! message (a DataRow declared longer than `MAX_RESPONSE_BYTES` is refused from its header, before
//! its body is read), and the bytes of all answers being built at once (`MAX_ANSWERS_IN_FLIGHT_BYTES`,
//! 503 `answers_busy` for the call that finds no room).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Config;
use crate::error::{ApiError, Kind};

/// Messages up to this size are always taken, whatever `MAX_RESPONSE_BYTES` says: row descriptions
/// and errors of ordinary calls must not be refused under a small answer limit.
const MESSAGE_FLOOR: usize = 1 << 20;

/// The largest backend message a call connection reads.
pub fn max_message(cfg: &Config) -> usize {
    cfg.limits.max_response_bytes.max(MESSAGE_FLOOR)
}

/// The answer to a call whose result had a message of `len` bytes.
pub fn refused(len: usize, cfg: &Config) -> ApiError {
    ApiError::new(
        Kind::ResponseTooLarge,
        format!(
            "a row of the result is {len} bytes, more than MAX_RESPONSE_BYTES ({} bytes) allows; it was refused \
             before it was read (return less per row, or paginate)",
            cfg.limits.max_response_bytes
        ),
    )
}

/// Answer bytes being built over every loop of the process (`MAX_ANSWERS_IN_FLIGHT_BYTES`).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Reservations are taken in steps of this, so a call of ordinary size touches the shared counter
/// once or twice, not once per row.
const STEP: usize = 256 * 1024;

/// One answer's share of `MAX_ANSWERS_IN_FLIGHT_BYTES`, given back when dropped.
#[derive(Debug, Default)]
pub struct Share {
    held: usize,
}

impl Share {
    /// Makes the share cover `bytes`; `false` when the process-wide budget `max` has no room.
    pub fn cover(&mut self, bytes: usize, max: usize) -> bool {
        if bytes <= self.held {
            return true;
        }
        let want = (bytes - self.held).div_ceil(STEP) * STEP;
        let took =
            IN_FLIGHT.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_add(want).filter(|n| *n <= max));
        if took.is_ok() {
            self.held += want;
        }
        took.is_ok()
    }

    /// Gives the share back now (the answer was dropped or sent).
    pub fn release(&mut self) {
        if self.held > 0 {
            IN_FLIGHT.fetch_sub(self.held, Ordering::AcqRel);
            self.held = 0;
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.release();
    }
}

/// Answer bytes reserved now, over the process.
pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Acquire)
}

/// The answer to a call whose answer found no room.
pub fn busy(cfg: &Config) -> ApiError {
    ApiError::new(
        Kind::AnswersBusy,
        format!(
            "too many large answers are being built at once (MAX_ANSWERS_IN_FLIGHT_BYTES, {} bytes); retry shortly",
            cfg.limits.max_answers_in_flight_bytes
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_take_steps_refuse_past_the_budget_and_give_back_on_drop() {
        // Other tests of the process may hold shares: measure relative to what is there.
        let base = in_flight();
        let max = base + 4 * STEP;
        let mut a = Share::default();
        assert!(a.cover(1, max));
        assert_eq!(in_flight() - base, STEP);
        assert!(a.cover(STEP, max), "within what it holds");
        assert!(a.cover(3 * STEP, max));
        let mut b = Share::default();
        assert!(b.cover(STEP, max));
        assert!(!b.cover(STEP + 1, max), "past the budget");
        drop(a);
        assert!(b.cover(2 * STEP, max));
        drop(b);
        assert_eq!(in_flight(), base);
    }
}
