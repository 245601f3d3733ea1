//! The `/call` hot path: request validation, the engine that runs calls on pooled backend
//! connections, the type registry, parameter encoding and row rendering.

pub mod encode;
pub mod engine;
pub mod literal;
pub mod render;
pub mod request;
pub mod types;
