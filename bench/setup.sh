#!/usr/bin/env bash
# Create (or re-create) the benchmark database `bench_main`, registered through a running gateway
# (platform `bench`, schema in bench/schema/).
#
#   GATEWAY_URL=http://127.0.0.1:9000 DB_HOST=/path/to/socketdir DB_PORT=5432 DB_USER=postgres bash bench/setup.sh
#
# DB_HOST may be a host name or a Unix-socket directory (as for psql -h);
# DB_PASSWORD, if set, is passed as PGPASSWORD.  PSQL overrides the psql binary.
#
# Contents:
#   table bench_items: 10,000 rows, primary key id, 5 columns
#       (int, text, numeric(12,2), timestamptz, boolean)
#   bench_get_item(p_id int)     -> 1 row by primary key (RETURNS TABLE, 5 columns)
#   bench_list_items(p_from int) -> 1,000 rows, ids p_from .. p_from+999 (RETURNS SETOF bench_items)
# DB_USER must be able to drop bench_main (a superuser on a throwaway cluster).
set -euo pipefail

: "${GATEWAY_URL:?GATEWAY_URL is required (the gateway that registers the platform)}"
: "${DB_HOST:?DB_HOST is required (host or Unix-socket directory)}"
: "${DB_PORT:?DB_PORT is required}"
DB_USER="${DB_USER:-postgres}"
PSQL="${PSQL:-psql}"
if [[ -n "${DB_PASSWORD:-}" ]]; then
    export PGPASSWORD="${DB_PASSWORD}"
fi
psql_() { "${PSQL}" -X -q -v ON_ERROR_STOP=1 -h "${DB_HOST}" -p "${DB_PORT}" -U "${DB_USER}" "$@"; }

psql_ -d postgres <<'SQL'
DROP DATABASE IF EXISTS bench_main WITH (FORCE);
SQL
# Registered through the gateway like any platform: the gateway serves only databases it recorded, and
# the platform's role owns it. A database dropped above but still in a catalog is deployed afresh.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
archive="$(mktemp /tmp/ssdb-bench-schema.XXXXXX.tar.gz)"
trap 'rm -f "${archive}"' EXIT
tar -czf "${archive}" -C "${ROOT}/bench/schema" tables migrations functions
curl -fsS -o /dev/null -F platform=bench -F "schema=@${archive}" "${GATEWAY_URL}/register" \
    || { curl -sS -F platform=bench -F "schema=@${archive}" "${GATEWAY_URL}/register" >&2; exit 1; }
psql_ -d bench_main -c 'VACUUM ANALYZE public.bench_items'

rows="$(psql_ -d bench_main -Atc 'SELECT count(*) FROM public.bench_items')"
list="$(psql_ -d bench_main -Atc 'SELECT count(*) FROM public.bench_list_items(9001)')"
printf '[setup.sh] bench_main ready: %s rows in bench_items, bench_list_items(9001) returns %s rows\n' "${rows}" "${list}" >&2
