//! PostgreSQL wire protocol: connection parameters, sans-IO framing and startup/auth, the
//! non-blocking connection and pools used by the event loop, and the blocking client used by
//! worker threads.

pub mod blocking;
pub mod conn;
pub mod dberror;
pub mod frame;
pub mod params;
pub mod scram;
pub mod startup;
pub mod terminate;
