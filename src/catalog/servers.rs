//! The catalog's record of PostgreSQL servers (table `servers`) and which server holds each database
//! (`databases.server`). The `default` server's connection settings always come from the
//! configuration; its row keeps only what an operator set (state, weight).

use super::{Catalog, pg_api};
use crate::error::{ApiError, Kind};
use crate::servers::{DEFAULT_SERVER, Endpoint, ServerDef, ServerState};

fn def_from_row(row: &[Option<String>]) -> ServerDef {
    let text = |i: usize| row.get(i).cloned().flatten();
    ServerDef {
        name: text(0).unwrap_or_default(),
        endpoint: Endpoint {
            host: text(1).unwrap_or_default(),
            port: text(2).and_then(|v| v.parse().ok()).unwrap_or(5432),
        },
        user: text(3),
        password: text(4),
        weight: text(5).and_then(|v| v.parse().ok()).unwrap_or(1),
        state: ServerState::parse(text(6).as_deref().unwrap_or("active")),
        replicas: text(7)
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .filter_map(|s| Endpoint::parse(s).ok())
            .collect(),
    }
}

impl Catalog {
    /// Every recorded server (the default one's row is made on first use).
    pub fn servers(&mut self) -> Result<Vec<ServerDef>, ApiError> {
        self.client
            .query(
                "INSERT INTO servers (name, host, port) VALUES ($1, '', 0) ON CONFLICT (name) DO NOTHING",
                &[Some(DEFAULT_SERVER)],
            )
            .map_err(|e| pg_api(e, "cannot record the default server"))?;
        let r = self
            .client
            .query(
                "SELECT name, host, port::text, db_user, db_password, weight::text, state, replicas FROM servers \
                 ORDER BY name <> 'default', name",
                &[],
            )
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(r.rows.iter().map(|row| def_from_row(row)).collect())
    }

    /// Records a new server; 409 `server_already_exists` when the name is taken.
    pub fn add_server(&mut self, d: &ServerDef) -> Result<(), ApiError> {
        let port = d.endpoint.port.to_string();
        let weight = d.weight.to_string();
        let replicas = d.replicas.iter().map(Endpoint::label).collect::<Vec<_>>().join(",");
        let r = self
            .client
            .query(
                "INSERT INTO servers (name, host, port, db_user, db_password, weight, state, replicas) \
                 VALUES ($1, $2, $3::int, $4, $5, $6::int, $7, $8) ON CONFLICT (name) DO NOTHING",
                &[
                    Some(&d.name),
                    Some(&d.endpoint.host),
                    Some(&port),
                    d.user.as_deref(),
                    d.password.as_deref(),
                    Some(&weight),
                    Some(d.state.as_str()),
                    Some(&replicas),
                ],
            )
            .map_err(|e| pg_api(e, "cannot record the server"))?;
        if r.rows_affected == 0 {
            return Err(ApiError::new(Kind::ServerAlreadyExists, format!("server '{}' is already recorded", d.name)));
        }
        Ok(())
    }

    /// Sets a server's state; 404 `server_not_found` when there is no such server.
    pub fn set_server_state(&mut self, name: &str, state: ServerState) -> Result<(), ApiError> {
        let r = self
            .client
            .query("UPDATE servers SET state = $2 WHERE name = $1", &[Some(name), Some(state.as_str())])
            .map_err(|e| pg_api(e, "cannot update the server"))?;
        if r.rows_affected == 0 {
            return Err(not_found(name));
        }
        Ok(())
    }

    /// Forgets a server that holds no databases: 409 `server_in_use` otherwise (the check and the
    /// delete are one statement, so a database placed meanwhile keeps its server).
    pub fn delete_server(&mut self, name: &str) -> Result<(), ApiError> {
        if name == DEFAULT_SERVER {
            return Err(ApiError::new(
                Kind::ServerInUse,
                "the default server holds the catalog and cannot be removed (it comes from DB_HOST/DATABASE_URL)",
            ));
        }
        let held = self.server_database_count(name)?;
        let r = self
            .client
            .query(
                "DELETE FROM servers WHERE name = $1 AND NOT EXISTS (SELECT 1 FROM databases WHERE server = $1)",
                &[Some(name)],
            )
            .map_err(|e| pg_api(e, "cannot remove the server"))?;
        if r.rows_affected == 1 {
            return Ok(());
        }
        let exists = self.servers()?.iter().any(|d| d.name == name);
        if !exists {
            return Err(not_found(name));
        }
        Err(ApiError::new(
            Kind::ServerInUse,
            format!("server '{name}' still holds {} databases; it can be removed once it holds none", held.max(1)),
        ))
    }

    /// Databases recorded on each server.
    pub fn databases_per_server(&mut self) -> Result<Vec<(String, u64)>, ApiError> {
        let r = self
            .client
            .query("SELECT server, count(*)::text FROM databases GROUP BY server", &[])
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(r.rows
            .into_iter()
            .map(|row| {
                (row[0].clone().unwrap_or_default(), row[1].as_deref().and_then(|v| v.parse().ok()).unwrap_or(0))
            })
            .collect())
    }

    fn server_database_count(&mut self, name: &str) -> Result<u64, ApiError> {
        let r = self
            .client
            .query("SELECT count(*)::text FROM databases WHERE server = $1", &[Some(name)])
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(r.rows.first().and_then(|row| row[0].as_deref()).and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// The server a recorded database lives on (`None`: not recorded).
    pub fn server_of(&mut self, database: &str) -> Result<Option<String>, ApiError> {
        let r = self
            .client
            .query("SELECT server FROM databases WHERE name = $1", &[Some(database)])
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(r.rows.into_iter().next().and_then(|row| row[0].clone()))
    }

    /// Records which server holds `database` (before it is created there).
    pub fn set_server_of(&mut self, database: &str, server: &str) -> Result<(), ApiError> {
        self.client
            .query("UPDATE databases SET server = $2 WHERE name = $1", &[Some(database), Some(server)])
            .map(|_| ())
            .map_err(|e| pg_api(e, "cannot update the catalog"))
    }

    /// The server a platform's new databases go to by default, if it has one.
    pub fn platform_default_server(&mut self, platform: &str) -> Result<Option<String>, ApiError> {
        let r = self
            .client
            .query("SELECT default_server FROM platforms WHERE name = $1", &[Some(platform)])
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(r.rows.into_iter().next().and_then(|row| row[0].clone()))
    }

    pub fn set_platform_default_server(&mut self, platform: &str, server: Option<&str>) -> Result<(), ApiError> {
        self.client
            .query("UPDATE platforms SET default_server = $2 WHERE name = $1", &[Some(platform), server])
            .map(|_| ())
            .map_err(|e| pg_api(e, "cannot update the platform"))
    }
}

pub fn not_found(name: &str) -> ApiError {
    ApiError::new(Kind::ServerNotFound, format!("no server '{name}' is recorded (see GET /admin/servers)"))
}
