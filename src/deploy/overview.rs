//! The catalog half of the status page's data (`GET /status/data`): platforms and their databases
//! with size, last deploy and its outcome, and the latest runs. The live half (health, pools,
//! traffic) is gathered on the event loop and handed in already encoded.

use super::service::{DeployCtx, Outcome};
use crate::catalog::pg_api;
use crate::error::ApiError;
use crate::http::response::Response;
use crate::json::ObjectWriter;

/// Runs listed (most recent first).
const RUNS_SHOWN: &str = "20";

/// `{"live": …, "catalog_error": …, "platforms": [{"name", "databases": [...]}], "runs": [...]}`.
/// A catalog that cannot be read leaves `platforms` and `runs` empty and says why; the live half is
/// always there, so the page still shows what is wrong.
pub fn status_data(ctx: &DeployCtx, live: &[u8]) -> Outcome {
    let mut b = Vec::with_capacity(4096);
    let mut o = ObjectWriter::new(&mut b);
    o.raw("live", &String::from_utf8_lossy(live));
    match read_catalog(ctx) {
        Ok((platforms, runs)) => {
            o.null("catalog_error");
            o.raw("platforms", &platforms);
            o.raw("runs", &runs);
        }
        Err(e) => {
            o.str("catalog_error", &e.message);
            o.raw("platforms", "[]");
            o.raw("runs", "[]");
        }
    }
    o.finish();
    (Response::json(200, b), Vec::new())
}

fn read_catalog(ctx: &DeployCtx) -> Result<(String, String), ApiError> {
    let mut cat = ctx.catalog()?;
    // One statement each, built as JSON by PostgreSQL: sizes come from pg_database (a shared catalog,
    // readable from the catalog database), the last deploy from the catalog's own records.
    let platforms = cat
        .client
        .query(
            "SELECT coalesce(json_agg(p ORDER BY p.name), '[]')::text FROM ( \
               SELECT n.name, coalesce(( \
                 SELECT json_agg(json_build_object( \
                   'name', d.name, 'kind', d.kind, 'schema_name', d.schema_name, \
                   'tenant_id', coalesce(d.tenant_id, d.database_id), \
                   'size_bytes', (SELECT pg_database_size(g.oid) FROM pg_database g WHERE g.datname = d.name), \
                   'last_deploy', to_char(d.last_deploy_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                   'last_status', d.last_status) ORDER BY d.kind <> 'main', d.name) \
                 FROM databases d WHERE d.platform = n.name), '[]') AS databases \
               FROM (SELECT name FROM platforms UNION SELECT platform FROM databases) n) p",
            &[],
        )
        .map_err(|e| pg_api(e, "cannot read the catalog"))?;
    let runs = cat
        .client
        .query(
            &format!(
                "SELECT coalesce(json_agg(r ORDER BY r.started_at DESC), '[]')::text FROM ( \
                   SELECT id AS run_id, kind, platform, schema_name, status, total, \
                          (SELECT count(*) FROM run_results x WHERE x.run_id = runs.id) AS done, \
                          (SELECT count(*) FROM run_results x WHERE x.run_id = runs.id AND x.status = 'failed') AS failed, \
                          to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS started_at, \
                          to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS finished_at \
                   FROM runs ORDER BY runs.started_at DESC LIMIT {RUNS_SHOWN}) r"
            ),
            &[],
        )
        .map_err(|e| pg_api(e, "cannot read the catalog"))?;
    cat.client.close();
    let first = |r: &crate::pg::blocking::QueryResult| {
        r.rows.first().and_then(|row| row.first().cloned().flatten()).unwrap_or_else(|| "[]".into())
    };
    Ok((first(&platforms), first(&runs)))
}
