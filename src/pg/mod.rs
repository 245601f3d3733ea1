//! pg
//! PostgreSQL wire protocol: connection parameters, sans-IO framing and startup/auth, and the
//! blocking client used by worker threads.

pub mod blocking;
pub mod dberror;
pub mod frame;
pub mod params;
pub mod startup;
