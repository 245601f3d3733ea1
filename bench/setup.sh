#!/usr/bin/env bash
# Create (or re-create) the benchmark database `bench_main`.
#
#   DB_HOST=/path/to/socketdir DB_PORT=5432 DB_USER=postgres bash bench/setup.sh
#
# DB_HOST may be a host name or a Unix-socket directory (as for psql -h);
# DB_PASSWORD, if set, is passed as PGPASSWORD.  PSQL overrides the psql binary.
#
# Contents:
#   table bench_items: 10,000 rows, primary key id, 5 columns
#       (int, text, numeric(12,2), timestamptz, boolean)
#   bench_get_item(p_id int)     -> 1 row by primary key (RETURNS TABLE, 5 columns)
#   bench_list_items(p_from int) -> 1,000 rows, ids p_from .. p_from+999 (RETURNS SETOF bench_items)
set -euo pipefail

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
CREATE DATABASE bench_main;
SQL

psql_ -d bench_main <<'SQL'
CREATE TABLE public.bench_items (
    id         integer PRIMARY KEY,
    name       text NOT NULL,
    price      numeric(12, 2) NOT NULL,
    created_at timestamptz NOT NULL,
    active     boolean NOT NULL
);

INSERT INTO public.bench_items (id, name, price, created_at, active)
SELECT g,
       'item-' || lpad(g::text, 5, '0') || ' ' || md5(g::text),
       round((g * 7.31)::numeric % 10000, 2),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '37 minutes',
       g % 3 <> 0
FROM generate_series(1, 10000) AS g;

-- 1-row lookup by primary key.
CREATE FUNCTION public.bench_get_item(p_id integer)
RETURNS TABLE (id integer, name text, price numeric, created_at timestamptz, active boolean)
LANGUAGE sql STABLE AS $$
    SELECT i.id, i.name, i.price, i.created_at, i.active
    FROM public.bench_items AS i
    WHERE i.id = p_id
$$;

-- 1,000-row listing (index range scan).
CREATE FUNCTION public.bench_list_items(p_from integer)
RETURNS SETOF public.bench_items
LANGUAGE sql STABLE AS $$
    SELECT *
    FROM public.bench_items AS i
    WHERE i.id >= p_from AND i.id < p_from + 1000
    ORDER BY i.id
$$;

VACUUM ANALYZE public.bench_items;
SQL

rows="$(psql_ -d bench_main -Atc 'SELECT count(*) FROM public.bench_items')"
list="$(psql_ -d bench_main -Atc 'SELECT count(*) FROM public.bench_list_items(9001)')"
printf '[setup.sh] bench_main ready: %s rows in bench_items, bench_list_items(9001) returns %s rows\n' "${rows}" "${list}" >&2
