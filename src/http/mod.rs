//! http
pub mod multipart;
