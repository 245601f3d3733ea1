//! Answers "which platform owns database X, and what are its keys?" for `/call`, off the event loop: a
//! loop that meets a database it does not know yet asks here instead of guessing. One thread, one
//! catalog connection, reopened when it breaks.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use super::{CallOwner, Catalog, StoredKey};
use crate::error::ApiError;
use crate::pg::params::ConnectParams;

/// The catalog's answer about one database.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub database: String,
    /// `Ok(None)`: the catalog does not record it. `Err`: the catalog could not be asked.
    pub owner: Result<Option<(CallOwner, Vec<StoredKey>)>, ApiError>,
}

/// Handle to the lookup thread; dropping it ends the thread.
pub struct Lookups {
    tx: Sender<String>,
}

impl Lookups {
    /// Starts the thread; each answer goes to `deliver`.
    /// `servers` learns from here of a server another gateway added, before a call needs it.
    pub fn start(
        admin: ConnectParams,
        catalog_db: String,
        servers: std::sync::Arc<crate::servers::Servers>,
        deliver: Box<dyn Fn(Resolved) + Send>,
    ) -> std::io::Result<Lookups> {
        let (tx, rx) = channel::<String>();
        std::thread::Builder::new()
            .name("catalog-lookup".into())
            .spawn(move || serve(rx, &admin, &catalog_db, &servers, &*deliver))?;
        Ok(Lookups { tx })
    }

    /// Asks about `database`; the answer comes through `deliver`.
    pub fn ask(&self, database: &str) -> bool {
        self.tx.send(database.to_string()).is_ok()
    }
}

fn resolve(
    cat: &mut Catalog,
    servers: &crate::servers::Servers,
    database: &str,
) -> Result<Option<(CallOwner, Vec<StoredKey>)>, ApiError> {
    let Some(o) = cat.call_owners(Some(&[database.to_string()]))?.into_iter().next() else { return Ok(None) };
    if servers.get(&o.server).is_none() {
        // A server another gateway added: known here before the call that needs it runs.
        servers.replace(cat.servers()?);
    }
    let keys = cat.platform_keys(Some(&o.platform))?.into_iter().map(|(_, k)| k).collect();
    Ok(Some((o, keys)))
}

fn serve(
    rx: Receiver<String>,
    admin: &ConnectParams,
    catalog_db: &str,
    servers: &crate::servers::Servers,
    deliver: &dyn Fn(Resolved),
) {
    let mut cat: Option<Catalog> = None;
    while let Ok(database) = rx.recv() {
        let mut owner = Err(crate::error::ApiError::new(crate::error::Kind::Internal, "not asked"));
        // One retry on a fresh connection: the kept one may have been closed by a PostgreSQL restart.
        for _ in 0..2 {
            if cat.as_ref().is_none_or(|c| c.client.is_broken()) {
                cat = match Catalog::open(admin, catalog_db) {
                    Ok(mut c) => {
                        let _ = c.client.set_read_timeout(Some(Duration::from_secs(5)));
                        Some(c)
                    }
                    Err(e) => {
                        owner = Err(e);
                        continue;
                    }
                };
            }
            let Some(c) = cat.as_mut() else { continue };
            owner = resolve(c, servers, &database);
            if owner.is_ok() || !c.client.is_broken() {
                break;
            }
        }
        deliver(Resolved { database, owner });
    }
}
