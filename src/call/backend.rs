//! One backend connection as `/call` uses it: the connection (socket, buffers, startup), the session
//! (statements, the call it answers, the calls pipelined behind), its pool, and the slot it holds
//! under the shared limits. [`set_state`] is the one place a connection changes state, and it moves
//! the connection between its pool's lists in the same step.

use super::budget::Permit;
use super::pool::Pool;
use super::session::Session;
use crate::pg::conn::{BackendConn, ConnState};

pub struct Backend {
    pub conn: BackendConn,
    pub session: Session,
    /// Key of its pool in the engine's pool slab.
    pub pool: usize,
    /// Its slot under `MAX_TOTAL_CONNECTIONS` / `MAX_CONNECTIONS_PER_POOL`, given back when the
    /// backend is dropped.
    permit: Option<Permit>,
    /// In the engine's list of connections to flush at the end of the loop turn.
    pub flush_queued: bool,
    /// Retired so that another loop could connect: that loop is told once this slot is free.
    pub room_for: Option<usize>,
}

impl Backend {
    pub fn new(conn: BackendConn, pool: usize, permit: Permit) -> Backend {
        Backend { conn, session: Session::new(None), pool, permit: Some(permit), flush_queued: false, room_for: None }
    }

    /// The connection's slot, taken out to be handed to another loop (see [`Backend::room_for`]).
    pub fn take_permit(&mut self) -> Option<Permit> {
        self.permit.take()
    }
}

/// Changes the state of backend `key` and its place in `pool` together, so that state and pool
/// membership can never disagree.
pub fn set_state<W>(pool: Option<&mut Pool<W>>, key: usize, b: &mut Backend, state: ConnState) {
    if let Some(p) = pool {
        p.place(key, &state);
    }
    b.conn.state = state;
}
