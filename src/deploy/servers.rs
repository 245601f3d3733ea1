//! The server admin routes (`/admin/servers…`): list the PostgreSQL servers with their health, add
//! one (checked by connecting), drain or re-activate one, remove an empty one. They run on deploy
//! workers like every route that talks to the catalog.

use super::service::{DeployCtx, Outcome};
use crate::error::{ApiError, Kind};
use crate::http::response::Response;
use crate::json::{ObjectWriter, Value};
use crate::pg::blocking::Client;
use crate::servers::{DEFAULT_SERVER, Endpoint, Server, ServerDef, ServerState, valid_name};

fn err(e: ApiError) -> Outcome {
    (Response::error(&e), Vec::new())
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(Kind::InvalidRequest, msg)
}

fn opt_text<'a>(body: &'a Value, key: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(invalid(format!("'{key}' must be a string, got {}", v.type_name()))),
    }
}

fn number(v: &Value, what: &str, max: u64) -> Result<u64, ApiError> {
    match v {
        Value::Number(n) => n.parse::<u64>().ok().filter(|x| *x <= max),
        _ => None,
    }
    .ok_or_else(|| invalid(format!("'{what}' must be a whole number from 0 to {max}")))
}

fn read_endpoint(v: &Value, what: &str) -> Result<Endpoint, ApiError> {
    let host = match v.get("host") {
        Some(Value::String(h)) if !h.trim().is_empty() && h.len() <= 255 => h.trim().to_string(),
        _ => return Err(invalid(format!("{what} needs 'host' (a host name, address or socket directory)"))),
    };
    let port = match v.get("port") {
        None | Some(Value::Null) => 5432,
        Some(p) => number(p, &format!("{what} port"), 65535)? as u16,
    };
    if port == 0 {
        return Err(invalid(format!("{what} port must be from 1 to 65535")));
    }
    Ok(Endpoint { host: host.trim_start_matches('[').trim_end_matches(']').to_string(), port })
}

/// Reads `POST /admin/servers`.
pub fn parse_server(body: &Value) -> Result<ServerDef, ApiError> {
    let name = opt_text(body, "name")?.ok_or_else(|| invalid("'name' is required"))?;
    if !valid_name(name) {
        return Err(invalid(format!(
            "server name '{}' must start with a lower-case letter and hold only a-z, 0-9, _ and - (at most 63)",
            name.chars().take(80).collect::<String>()
        )));
    }
    if name == DEFAULT_SERVER {
        return Err(ApiError::new(
            Kind::ServerAlreadyExists,
            "the default server is the one from DB_HOST/DATABASE_URL; give the new server another name",
        ));
    }
    let endpoint = read_endpoint(body, "the server")?;
    let weight = match body.get("weight") {
        None | Some(Value::Null) => 1,
        Some(w) => number(w, "weight", 1000)? as u32,
    };
    let replicas = match body.get("replicas") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) if list.len() <= 16 => {
            list.iter().enumerate().map(|(i, r)| read_endpoint(r, &format!("replica {i}"))).collect::<Result<_, _>>()?
        }
        Some(_) => return Err(invalid("'replicas' must be an array of at most 16 {\"host\", \"port\"} objects")),
    };
    let user = opt_text(body, "user")?.filter(|u| !u.is_empty()).map(str::to_string);
    let password = opt_text(body, "password")?.map(str::to_string);
    if password.is_some() && user.is_none() {
        return Err(invalid("'password' needs 'user' (without both the gateway's own login is used)"));
    }
    Ok(ServerDef { name: name.to_string(), endpoint, user, password, weight, state: ServerState::Active, replicas })
}

fn write_server(o: &mut ObjectWriter<'_>, s: &Server, databases: u64) {
    o.str("name", &s.def.name);
    o.str("host", &s.def.endpoint.host);
    o.u64("port", u64::from(s.def.endpoint.port));
    o.u64("weight", u64::from(s.def.weight));
    // What an operator set, or `down` while the gateway cannot reach it.
    o.str("state", if s.reachable() { s.def.state.as_str() } else { "down" });
    o.bool("reachable", s.reachable());
    o.bool("accepts_new_databases", s.def.state == ServerState::Active);
    o.bool("default", s.def.name == DEFAULT_SERVER);
    o.u64("databases", databases);
    let mut a = o.array("replicas");
    for r in &s.replicas {
        let mut e = a.object();
        e.str("host", &r.endpoint.host);
        e.u64("port", u64::from(r.endpoint.port));
        e.bool("usable", r.usable());
        match r.lag_ms() {
            Some(l) => e.u64("lag_ms", l),
            None => e.null("lag_ms"),
        };
        e.opt_str("reason", r.reason().as_deref());
    }
}

/// `GET /admin/servers`.
pub fn list(ctx: &DeployCtx) -> Outcome {
    let run = || -> Result<Outcome, ApiError> {
        let mut cat = ctx.catalog()?;
        ctx.servers.replace(cat.servers()?);
        let counts = cat.databases_per_server()?;
        let all = ctx.servers.all();
        let mut b = Vec::with_capacity(512);
        let mut o = ObjectWriter::new(&mut b);
        {
            let mut a = o.array("servers");
            for s in &all {
                let n = counts.iter().find(|(name, _)| *name == s.def.name).map_or(0, |(_, n)| *n);
                write_server(&mut a.object(), s, n);
            }
        }
        o.u64("count", all.len() as u64);
        o.bool("read_replicas", ctx.cfg.servers.read_replicas);
        o.finish();
        Ok((Response::json(200, b), Vec::new()))
    };
    run().unwrap_or_else(err)
}

/// Connects once as the login the gateway will use there and checks it may create databases and
/// roles (what placing a platform's database on it takes).
fn check_reachable(ctx: &DeployCtx, d: &ServerDef) -> Result<(), ApiError> {
    let mut p = d.endpoint.params(ctx.servers.base());
    if let Some(u) = &d.user {
        p.user = u.clone();
        p.password = d.password.clone();
    }
    let what = format!("server '{}' at {}", d.name, p.target());
    let mut c = Client::connect(&p).map_err(|e| {
        ApiError::new(Kind::ServerUnreachable, format!("cannot connect to {what} as '{}': {e}", p.user))
    })?;
    let r = c.query(
        "SELECT (rolsuper OR (rolcreatedb AND rolcreaterole))::text, pg_is_in_recovery()::text \
         FROM pg_roles WHERE rolname = current_user",
        &[],
    );
    c.close();
    let row = r
        .map_err(|e| ApiError::new(Kind::ServerUnreachable, format!("cannot check the login on {what}: {e}")))?
        .rows
        .into_iter()
        .next()
        .unwrap_or_default();
    if row.get(1).cloned().flatten().as_deref() == Some("true") {
        return Err(ApiError::new(
            Kind::ServerUnreachable,
            format!("{what} is a replica (in recovery); add it under 'replicas' of its primary instead"),
        ));
    }
    if row.first().cloned().flatten().as_deref() != Some("true") {
        return Err(ApiError::new(
            Kind::ServerUnreachable,
            format!("login '{}' on {what} needs CREATEDB and CREATEROLE to place platforms' databases there", p.user),
        ));
    }
    Ok(())
}

/// `POST /admin/servers`.
pub fn add(ctx: &DeployCtx, body: &Value) -> Outcome {
    let run = || -> Result<Outcome, ApiError> {
        let d = parse_server(body)?;
        let mut cat = ctx.catalog()?;
        if cat.servers()?.iter().any(|x| x.name == d.name) {
            return Err(ApiError::new(Kind::ServerAlreadyExists, format!("server '{}' is already recorded", d.name)));
        }
        check_reachable(ctx, &d)?;
        cat.add_server(&d)?;
        ctx.servers.replace(cat.servers()?);
        crate::log::info(
            "server added",
            &[("server", &d.name), ("address", &d.endpoint.label()), ("replicas", &d.replicas.len())],
        );
        let s = ctx.servers.get(&d.name).ok_or_else(|| crate::catalog::servers::not_found(&d.name))?;
        let mut b = Vec::with_capacity(256);
        let mut o = ObjectWriter::new(&mut b);
        o.str("status", "added");
        {
            let mut e = o.object("server");
            write_server(&mut e, &s, 0);
        }
        o.finish();
        Ok((Response::json(201, b), Vec::new()))
    };
    run().unwrap_or_else(err)
}

/// `POST /admin/servers/{name}/drain` and `…/activate`.
pub fn set_state(ctx: &DeployCtx, name: &str, state: ServerState) -> Outcome {
    let run = || -> Result<Outcome, ApiError> {
        let mut cat = ctx.catalog()?;
        // Makes sure the default server has its row, so that it can be drained too.
        cat.servers()?;
        cat.set_server_state(name, state)?;
        ctx.servers.replace(cat.servers()?);
        crate::log::info("server state changed", &[("server", &name), ("state", &state.as_str())]);
        let mut b = Vec::new();
        let mut o = ObjectWriter::new(&mut b);
        o.str("name", name);
        o.str("state", state.as_str());
        o.finish();
        Ok((Response::json(200, b), Vec::new()))
    };
    run().unwrap_or_else(err)
}

/// `DELETE /admin/servers/{name}`: 409 while it still holds databases.
pub fn remove(ctx: &DeployCtx, name: &str) -> Outcome {
    let run = || -> Result<Outcome, ApiError> {
        let mut cat = ctx.catalog()?;
        cat.delete_server(name)?;
        ctx.servers.replace(cat.servers()?);
        crate::log::info("server removed", &[("server", &name)]);
        let mut b = Vec::new();
        let mut o = ObjectWriter::new(&mut b);
        o.str("status", "removed");
        o.str("name", name);
        o.finish();
        Ok((Response::json(200, b), Vec::new()))
    };
    run().unwrap_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(s: &str) -> Value {
        crate::json::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn a_server_definition_is_read_and_checked() {
        let d = parse_server(&body(
            r#"{"name":"db2","host":"10.0.0.2","port":5433,"weight":2,"replicas":[{"host":"10.0.0.3"}]}"#,
        ))
        .unwrap();
        assert_eq!((d.name.as_str(), d.endpoint.port, d.weight), ("db2", 5433, 2));
        assert_eq!(d.replicas, vec![Endpoint { host: "10.0.0.3".into(), port: 5432 }]);
        assert_eq!(d.user, None);
        for (bad, code) in [
            (r#"{"host":"h"}"#, Kind::InvalidRequest),
            (r#"{"name":"Db2","host":"h"}"#, Kind::InvalidRequest),
            (r#"{"name":"default","host":"h"}"#, Kind::ServerAlreadyExists),
            (r#"{"name":"b"}"#, Kind::InvalidRequest),
            (r#"{"name":"b","host":"h","port":70000}"#, Kind::InvalidRequest),
            (r#"{"name":"b","host":"h","port":"5432"}"#, Kind::InvalidRequest),
            (r#"{"name":"b","host":"h","weight":-1}"#, Kind::InvalidRequest),
            (r#"{"name":"b","host":"h","replicas":{}}"#, Kind::InvalidRequest),
            (r#"{"name":"b","host":"h","replicas":[{"port":1}]}"#, Kind::InvalidRequest),
            (r#"{"name":"b","host":"h","password":"x"}"#, Kind::InvalidRequest),
        ] {
            assert_eq!(parse_server(&body(bad)).unwrap_err().kind, code, "{bad}");
        }
    }
}
