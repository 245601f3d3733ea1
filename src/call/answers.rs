//! Bounds on what a `/call` answer may take in memory before it is sent: the size of one backend
//! message (a DataRow declared longer than `MAX_RESPONSE_BYTES` is refused from its header, before
//! its body is read).

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
