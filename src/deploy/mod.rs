//! Schema deployment: reading uploaded schema archives and the SQL text they carry.

pub mod archive;
pub mod gzip;
pub mod sql;
pub mod workers;
pub mod form;
