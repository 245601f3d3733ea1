//! Blocking PostgreSQL client for worker threads.
