//! How other threads reach an event loop: a message on its channel, then a wake-up through its
//! `mio::Waker`. [`Loops`] addresses every loop, for what all of them must learn.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::Sender;

use mio::Waker;

use crate::call::session::{Caller, Waiter};
use crate::catalog::CallOwner;
use crate::catalog::lookup::Resolved;
use crate::http::response::Response;
use crate::security::keys::StoredKey;

/// A message to one loop.
pub enum Message {
    /// A finished request: deliver `response` to client `client` if it still waits with `generation`.
    Complete { client: usize, generation: u64, response: Response },
    /// A chunk of a streamed response; `last` ends the stream.
    Chunk { client: usize, generation: u64, data: Vec<u8>, last: bool },
    /// A call handed over by the loop of its client (see `CallEngine::submit_forwarded`).
    Call { waiter: Box<Waiter>, role: Arc<str> },
    /// The answer to a call this loop handed over.
    Answer { client: usize, generation: u64, response: Response },
    /// The client of a call this loop took over left.
    CallGone(Caller),
    /// A client connection the accepting loop hands to this one.
    Adopt(mio::net::TcpStream, SocketAddr),
    /// Who owns which database and as which role its calls run, for `/call`.
    Owners(Arc<Vec<CallOwner>>),
    /// Stored platform keys: of the platforms listed, or (`complete`) of every platform.
    Keys { keys: Arc<Vec<(String, Vec<StoredKey>)>>, complete: bool },
    /// The catalog's answer about a database some loop's calls were waiting on.
    Resolved(Arc<Resolved>),
    /// Loop `from` needs room under the total cap (or `server`'s): close an idle connection (of any
    /// pool, or of one on that server) if there is one.
    RoomWanted { from: usize, server: Option<std::sync::Arc<str>> },
    /// A slot this loop asked for is free.
    RoomFreed(crate::call::budget::TotalSlot),
    /// Begin graceful shutdown.
    Shutdown,
}

/// A way for other threads to talk to one loop.
#[derive(Clone)]
pub struct Notifier {
    tx: Sender<Message>,
    waker: Arc<Waker>,
}

impl Notifier {
    pub fn new(tx: Sender<Message>, waker: Arc<Waker>) -> Notifier {
        Notifier { tx, waker }
    }

    /// False once the loop has exited (then there is nobody to tell).
    pub fn send(&self, m: Message) -> bool {
        if self.tx.send(m).is_err() {
            return false;
        }
        let _ = self.waker.wake();
        true
    }
}

/// Every loop, by index.
#[derive(Clone)]
pub struct Loops(Arc<Vec<Notifier>>);

impl Loops {
    pub fn new(list: Vec<Notifier>) -> Loops {
        Loops(Arc::new(list))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&Notifier> {
        self.0.get(i)
    }

    /// Sends `make()` to every loop; false when none is left.
    pub fn send_all(&self, make: impl Fn() -> Message) -> bool {
        let mut any = false;
        for n in self.0.iter() {
            any |= n.send(make());
        }
        any
    }

    /// Sends `make()` to every loop but `except`.
    pub fn send_others(&self, except: usize, make: impl Fn() -> Message) {
        for (i, n) in self.0.iter().enumerate() {
            if i != except {
                n.send(make());
            }
        }
    }
}
