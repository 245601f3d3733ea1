//! The `/call` hot path: the type registry, parameter encoding and row rendering.

pub mod encode;
pub mod render;
pub mod types;
