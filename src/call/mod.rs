//! The `/call` hot path of one event loop: request validation and admission ([`owners`]), the engine
//! that runs calls on pooled backend connections ([`engine`], carrying out what the sans-IO
//! [`session`] decides), pools and the limits shared by all loops ([`pool`], [`budget`]),
//! cancellation ([`cancel`]), the type registry, parameter encoding and row rendering.

pub mod answers;
pub mod backend;
pub mod budget;
pub mod cancel;
pub mod encode;
pub mod engine;
pub mod hints;
pub mod literal;
pub mod owners;
pub mod pool;
pub mod render;
pub mod request;
pub mod session;
pub mod stmt;
pub mod terminate;
pub mod types;
