-- The gateway's own PostgreSQL login with the least rights that work (PostgreSQL 15 to 18).
-- Run once as a superuser; safe to run again:
--   psql -U postgres -d postgres -v ON_ERROR_STOP=1 -f scripts/gateway-login.sql
-- then give it a password (psql: \password stonescriptdb_gateway) unless pg_hba.conf trusts it.
--
-- CREATEDB:   it creates the platforms' databases (and its catalog).
-- CREATEROLE: it creates one login role per platform. On PostgreSQL 15 CREATEROLE could be turned into
--             any non-superuser right, so no platform SQL ever runs in a session of this login:
--             deploys and calls log in as the platform's own role, which has none of these rights.
-- No SUPERUSER, REPLICATION or BYPASSRLS, and membership in no predefined role.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'stonescriptdb_gateway') THEN
        CREATE ROLE stonescriptdb_gateway LOGIN CREATEDB CREATEROLE NOSUPERUSER NOREPLICATION NOBYPASSRLS;
    ELSE
        ALTER ROLE stonescriptdb_gateway LOGIN CREATEDB CREATEROLE NOSUPERUSER NOREPLICATION NOBYPASSRLS;
    END IF;
END
$$;
