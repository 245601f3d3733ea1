//! Schema deployment: reading uploaded schema archives, the SQL text they carry, and applying them
//! to a database (the engine and its steps).

pub mod archive;
pub mod engine;
pub mod functions;
pub mod gzip;
pub mod seeders;
pub mod sql;
pub mod tables;
pub mod tracking;
pub mod types;
