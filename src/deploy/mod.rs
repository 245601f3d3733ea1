//! Schema deployment: reading uploaded schema archives, the SQL text they carry, applying them to a
//! database (the engine and its steps), the deploy form, the worker threads, and the HTTP-facing
//! operations (`service`).

pub mod archive;
pub mod context;
pub mod engine;
pub mod form;
pub mod functions;
pub mod gzip;
pub mod isolate;
pub mod memo;
pub mod overview;
pub mod pack;
pub mod readahead;
pub mod seeders;
pub mod servers;
pub mod service;
pub mod sql;
pub mod startup;
pub mod tables;
pub mod tracking;
pub mod types;
pub mod upstream;
pub mod v2;
pub mod watchdog;
pub mod workers;
