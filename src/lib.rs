//! StoneScriptDB Gateway: an HTTP appliance beside PostgreSQL that deploys platform schemas and serves
//! their stored-function calls.
//!
//! Module map (see the README for the architecture):
//! - [`cli`]: the `deploy` and `migrate` subcommands (pack, upload, progress).
//! - [`config`]: raw settings (env, `.env`, flags) → validated [`config::Config`]; every input limit.
//! - [`error`]: the one table of error kinds → HTTP status, stable code, retryable flag.
//! - [`server`]: the mio event loop; the only module that owns sockets.
//! - [`http`]: HTTP/1.1 request parsing, multipart/form-data, responses, routing. No I/O.
//! - [`json`]: our strict JSON reader and writer.
//! - [`pg`]: PostgreSQL wire protocol: startup/auth, connection state machine, pool, blocking client.
//! - [`call`]: the `/call` hot path: statements, parameter encoding, row rendering.
//! - [`deploy`]: archive reading and the schema deployment pipeline (runs on worker threads).
//! - [`catalog`]: the gateway's own records in PostgreSQL.
//! - [`security`]: IP allowlist, admin token, naming rules.
//! - [`servers`]: the PostgreSQL servers and replicas databases live on, placement, replica health.
//! - [`log`]: request and lifecycle logging.
//! - [`metrics`]: counters and histograms for `/metrics` and the status page, the Prometheus text format.
#![forbid(unsafe_code)]

pub mod call;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod error;
pub mod http;
pub mod json;
pub mod log;
pub mod metrics;
pub mod pg;
pub mod security;
pub mod server;
pub mod servers;
pub mod slab;

/// The version reported by `--version` and `/health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
