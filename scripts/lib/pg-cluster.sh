# shellcheck shell=bash
# Shared helpers for running private PostgreSQL clusters (no Debian
# pg_ctlcluster, no system service).  Source this file from bash scripts
# that already use `set -euo pipefail`.
#
# Cluster layout for a cluster directory DIR:
#   DIR/pgdata                 data directory (initdb)
#   DIR/pgdata/ssdb-port.conf  "port = N", rewritten by pg_cluster_start
#   DIR/socket                 unix_socket_directories
#   DIR/log/postgresql.log     server log (pg_ctl -l)
#
# As root, every server-side command (initdb, pg_ctl, postgres) runs as the
# OS user `postgres` because initdb refuses to run as root.

# Guard against double sourcing.
if [[ -n "${PG_CLUSTER_LIB_LOADED:-}" ]]; then
    return 0
fi
PG_CLUSTER_LIB_LOADED=1

PG_BINDIR="${PG_BINDIR:-}"
PG_SHAREDIR="${PG_SHAREDIR:-}"

pg_log() { printf '[pg-cluster] %s\n' "$*" >&2; }
pg_die() { printf '[pg-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

pg_is_root() { [[ "$(id -u)" -eq 0 ]]; }

# OS user that owns and runs our clusters: "postgres" for root, else "".
pg_ctl_user() {
    if pg_is_root; then printf 'postgres\n'; else printf '\n'; fi
}

# Run a command as the cluster owner.  From / so that the postgres user never
# trips over an unreadable current directory.
pg_as_owner() {
    if pg_is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# --- finding / installing binaries -----------------------------------------

# Sets PG_BINDIR to a directory containing initdb, pg_ctl, postgres.
# Returns 1 if none is found.
pg_find_bindir() {
    local dir candidate
    if [[ -n "${PG_BINDIR}" && -x "${PG_BINDIR}/initdb" ]]; then
        return 0
    fi
    PG_BINDIR=""
    if command -v pg_config >/dev/null 2>&1; then
        dir="$(pg_config --bindir 2>/dev/null || true)"
        if [[ -n "${dir}" && -x "${dir}/initdb" ]]; then
            PG_BINDIR="${dir}"
            return 0
        fi
    fi
    # Newest /usr/lib/postgresql/<version>/bin (version sort: 9.6 < 15 < 16).
    while IFS= read -r candidate; do
        if [[ -x "${candidate}/initdb" ]]; then
            PG_BINDIR="${candidate}"
        fi
    done < <(compgen -G '/usr/lib/postgresql/*/bin' | sort -V || true)
    [[ -n "${PG_BINDIR}" ]]
}

# Sets PG_SHAREDIR to the share dir of the same installation as PG_BINDIR.
pg_find_sharedir() {
    local major
    PG_SHAREDIR=""
    if [[ -x "${PG_BINDIR}/pg_config" ]]; then
        PG_SHAREDIR="$("${PG_BINDIR}/pg_config" --sharedir 2>/dev/null || true)"
    elif command -v pg_config >/dev/null 2>&1 \
        && [[ "$(pg_config --bindir 2>/dev/null || true)" == "${PG_BINDIR}" ]]; then
        PG_SHAREDIR="$(pg_config --sharedir 2>/dev/null || true)"
    fi
    if [[ -z "${PG_SHAREDIR}" ]]; then
        major="$(pg_server_major)"
        PG_SHAREDIR="/usr/share/postgresql/${major}"
    fi
}

# Major version of the server binaries in PG_BINDIR, e.g. "15".
pg_server_major() {
    local v
    v="$("${PG_BINDIR}/postgres" --version)"   # "postgres (PostgreSQL) 15.8 (Debian ...)"
    v="${v#*) }"
    printf '%s\n' "${v%%.*}"
}

# apt-get install as root, retrying once after `apt-get update`.
pg_apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    pg_log "installing: $* (apt-get)"
    if ! apt-get install -y --no-install-recommends "$@"; then
        pg_log "install failed; running apt-get update and retrying"
        apt-get update
        apt-get install -y --no-install-recommends "$@"
    fi
}

# Make sure server binaries and contrib extensions exist; install them as
# root, or print the command and fail as a normal user.
pg_ensure_installed() {
    if ! pg_find_bindir; then
        if pg_is_root; then
            pg_apt_install postgresql
            pg_find_bindir || pg_die "postgresql installed but no initdb found under /usr/lib/postgresql/*/bin"
        else
            pg_log "PostgreSQL server binaries (initdb) not found. Install them with:"
            pg_log "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql"
            return 1
        fi
    fi
    pg_find_sharedir
    if [[ ! -f "${PG_SHAREDIR}/extension/pgcrypto.control" ]]; then
        if pg_is_root; then
            pg_apt_install postgresql-contrib
            pg_find_sharedir
            [[ -f "${PG_SHAREDIR}/extension/pgcrypto.control" ]] \
                || pg_die "contrib extensions still missing in ${PG_SHAREDIR}/extension"
        else
            pg_log "PostgreSQL contrib extensions (pgcrypto, uuid-ossp, pg_trgm) missing in ${PG_SHAREDIR}. Install them with:"
            pg_log "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql-contrib"
            return 1
        fi
    fi
    if pg_is_root; then
        pg_ensure_os_user
        command -v runuser >/dev/null 2>&1 || pg_die "runuser (util-linux) is required to run PostgreSQL as the postgres user"
    fi
    pg_log "using PostgreSQL $(pg_server_major) binaries in ${PG_BINDIR}"
}

pg_ensure_os_user() {
    if ! id postgres >/dev/null 2>&1; then
        pg_log "creating OS user postgres"
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
}

# --- paths -------------------------------------------------------------------

pg_datadir() { printf '%s/pgdata\n' "$1"; }
pg_socketdir() { printf '%s/socket\n' "$1"; }
pg_logfile() { printf '%s/log/postgresql.log\n' "$1"; }

# True if the cluster owner can reach (traverse) DIR.
pg_owner_can_reach() {
    pg_as_owner test -x "$1"
}

# Unix socket paths are limited to 107 bytes; check DIR/socket/.s.PGSQL.NNNNN.
pg_socket_path_ok() {
    local path
    path="$(pg_socketdir "$1")/.s.PGSQL.65535"
    (( ${#path} <= 103 ))
}

# Create DIR (and its socket/log subdirs) owned by the cluster owner.
pg_prepare_dir() {
    local dir="$1"
    mkdir -p "${dir}"
    mkdir -p "$(pg_socketdir "${dir}")" "$(dirname "$(pg_logfile "${dir}")")"
    chmod 0700 "${dir}"
    if pg_is_root; then
        chown -R postgres: "${dir}"
    fi
    pg_owner_can_reach "$(pg_socketdir "${dir}")" \
        || pg_die "the postgres OS user cannot reach ${dir} (a parent directory is not traversable)"
}

# --- cluster lifecycle ---------------------------------------------------------

# pg_cluster_init DIR [test|private]
#   test:    TCP on loopback + socket, password roles per pg_hba below,
#            durability switched off (throwaway clusters only).
#   private: socket only, trust, durable (the run script's dev cluster).
pg_cluster_init() {
    local dir="$1" mode="${2:-test}"
    local datadir socketdir conf hba listen
    datadir="$(pg_datadir "${dir}")"
    socketdir="$(pg_socketdir "${dir}")"
    [[ "${mode}" == test || "${mode}" == private ]] || pg_die "pg_cluster_init: unknown mode ${mode}"
    [[ -n "${PG_BINDIR}" ]] || pg_die "pg_cluster_init: call pg_ensure_installed first"

    pg_prepare_dir "${dir}"
    pg_log "initdb ${datadir} (${mode})"
    local -a initdb_args=(-D "${datadir}" -U postgres -A trust --encoding=UTF8)
    local locales
    locales="$(locale -a 2>/dev/null || true)"
    if grep -qixE 'c\.utf-?8' <<<"${locales}"; then
        initdb_args+=(--locale=C.UTF-8)
    else
        initdb_args+=(--no-locale)
    fi
    if ! pg_as_owner "${PG_BINDIR}/initdb" "${initdb_args[@]}" >"${dir}/log/initdb.log" 2>&1; then
        tail -n 30 "${dir}/log/initdb.log" >&2 || true
        pg_die "initdb failed (full output in ${dir}/log/initdb.log)"
    fi

    conf="${datadir}/postgresql.conf"
    hba="${datadir}/pg_hba.conf"
    if [[ "${mode}" == test ]]; then
        listen="127.0.0.1"
        if pg_have_ipv6_loopback; then
            listen="127.0.0.1,::1"
        fi
    else
        listen=""
    fi

    {
        printf '\n# ---- stonescriptdb-gateway overrides (scripts/lib/pg-cluster.sh) ----\n'
        printf "listen_addresses = '%s'\n" "${listen}"
        printf "unix_socket_directories = '%s'\n" "${socketdir}"
        printf 'max_connections = 300\n'
        printf 'shared_buffers = 128MB\n'
        printf 'logging_collector = off\n'
        printf "log_line_prefix = '%%m [%%p] %%u@%%d '\n"
        if [[ "${mode}" == test ]]; then
            printf 'fsync = off\n'
            printf 'synchronous_commit = off\n'
            printf 'full_page_writes = off\n'
        else
            printf 'unix_socket_permissions = 0700\n'
        fi
        # The port lives in its own file so pg_cluster_start can change it.
        printf "include_if_exists = 'ssdb-port.conf'\n"
    } >>"${conf}"

    if [[ "${mode}" == test ]]; then
        {
            printf 'local all ssdb_md5   md5\n'
            printf 'local all ssdb_scram scram-sha-256\n'
            printf 'local all ssdb_scram_uni scram-sha-256\n'
            printf 'local all ssdb_scram_ctl scram-sha-256\n'
            printf 'local all ssdb_clear password\n'
            printf 'local all all        trust\n'
            printf 'host  all ssdb_md5   127.0.0.1/32 md5\n'
            printf 'host  all ssdb_scram 127.0.0.1/32 scram-sha-256\n'
            printf 'host  all ssdb_scram_uni 127.0.0.1/32 scram-sha-256\n'
            printf 'host  all ssdb_scram_ctl 127.0.0.1/32 scram-sha-256\n'
            printf 'host  all ssdb_clear 127.0.0.1/32 password\n'
            printf 'host  all all        127.0.0.1/32 trust\n'
            printf 'host  all ssdb_md5   ::1/128 md5\n'
            printf 'host  all ssdb_scram ::1/128 scram-sha-256\n'
            printf 'host  all ssdb_scram_uni ::1/128 scram-sha-256\n'
            printf 'host  all ssdb_scram_ctl ::1/128 scram-sha-256\n'
            printf 'host  all ssdb_clear ::1/128 password\n'
            printf 'host  all all        ::1/128 trust\n'
        } >"${hba}"
    else
        printf 'local all all trust\n' >"${hba}"
    fi
    if pg_is_root; then
        chown postgres: "${conf}" "${hba}"
    fi
}

pg_have_ipv6_loopback() {
    [[ -r /proc/net/if_inet6 ]] && grep -q '^00000000000000000000000000000001 ' /proc/net/if_inet6
}

# pg_cluster_start DIR PORT — start (pg_ctl -w) on PORT; on failure prints the
# log tail and returns 1.
pg_cluster_start() {
    local dir="$1" port="$2" datadir logfile
    datadir="$(pg_datadir "${dir}")"
    logfile="$(pg_logfile "${dir}")"
    printf 'port = %s\n' "${port}" >"${datadir}/ssdb-port.conf"
    if pg_is_root; then
        chown postgres: "${datadir}/ssdb-port.conf"
    fi
    pg_log "starting cluster ${datadir} on port ${port}"
    if ! pg_as_owner "${PG_BINDIR}/pg_ctl" start -w -t 60 -D "${datadir}" -l "${logfile}" >/dev/null; then
        pg_log "cluster failed to start; last lines of ${logfile}:"
        tail -n 40 "${logfile}" >&2 || true
        return 1
    fi
    if ! pg_cluster_wait "${dir}" "${port}" 30; then
        pg_log "cluster does not accept connections; last lines of ${logfile}:"
        tail -n 40 "${logfile}" >&2 || true
        return 1
    fi
    # A test cluster also listens on 127.0.0.1; PostgreSQL starts even when that bind failed.
    if grep -q "^listen_addresses = '127.0.0.1" "${datadir}/postgresql.conf" \
        && ! "${PG_BINDIR}/pg_isready" -q -h 127.0.0.1 -p "${port}" -U postgres -d postgres; then
        pg_log "cluster does not accept TCP connections on 127.0.0.1:${port}; stopping it"
        pg_as_owner "${PG_BINDIR}/pg_ctl" stop -m fast -w -D "${datadir}" >/dev/null 2>&1 || true
        return 1
    fi
}

# pg_cluster_start_free DIR — starts DIR on a free port, trying three ports (one can be taken between
# the check and the bind); prints the port.
pg_cluster_start_free() {
    local dir="$1" port attempt
    for attempt in 1 2 3; do
        port="$(pg_free_port)"
        if pg_cluster_start "${dir}" "${port}" >&2; then
            printf '%s\n' "${port}"
            return 0
        fi
    done
    return 1
}

# pg_replica_init PRIMARY_DIR PRIMARY_PORT DIR — DIR becomes a streaming replica of the running
# cluster in PRIMARY_DIR (pg_basebackup -R with a fast checkpoint: a spread one can wait minutes),
# with its own socket directory; start it with pg_cluster_start_free. Lets the primary accept
# replication connections over its socket first.
pg_replica_init() {
    local primary="$1" pport="$2" dir="$3" hba
    hba="$(pg_datadir "${primary}")/pg_hba.conf"
    if ! grep -q '^local replication' "${hba}"; then
        printf 'local replication all trust\n' | pg_as_owner tee -a "${hba}" >/dev/null
        pg_as_owner "${PG_BINDIR}/pg_ctl" reload -D "$(pg_datadir "${primary}")" >/dev/null
    fi
    mkdir -p "${dir}/log" "$(pg_socketdir "${dir}")"
    chmod 0755 "${dir}"
    if pg_is_root; then
        chown -R postgres: "${dir}"
    fi
    pg_log "basebackup of ${primary} into ${dir}"
    if ! pg_as_owner "${PG_BINDIR}/pg_basebackup" -h "$(pg_socketdir "${primary}")" -p "${pport}" -U postgres \
        -D "$(pg_datadir "${dir}")" -R -X stream -c fast >"${dir}/log/basebackup.log" 2>&1; then
        tail -n 20 "${dir}/log/basebackup.log" >&2 || true
        return 1
    fi
    printf "unix_socket_directories = '%s'\n" "$(pg_socketdir "${dir}")" \
        | pg_as_owner tee -a "$(pg_datadir "${dir}")/postgresql.conf" >/dev/null
}

# pg_cluster_wait DIR PORT [TIMEOUT_SECONDS] — pg_isready loop over the socket.
pg_cluster_wait() {
    local dir="$1" port="$2" timeout="${3:-30}" socketdir i
    socketdir="$(pg_socketdir "${dir}")"
    for ((i = 0; i < timeout * 5; i++)); do
        if "${PG_BINDIR}/pg_isready" -q -h "${socketdir}" -p "${port}" -U postgres -d postgres; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# True if a postmaster is running for DIR.
pg_cluster_running() {
    local datadir
    datadir="$(pg_datadir "$1")"
    [[ -f "${datadir}/postmaster.pid" ]] || return 1
    pg_as_owner "${PG_BINDIR}/pg_ctl" status -D "${datadir}" >/dev/null 2>&1
}

# Port of the running postmaster of DIR (line 4 of postmaster.pid).
pg_cluster_port() {
    sed -n '4p' "$(pg_datadir "$1")/postmaster.pid"
}

# pg_cluster_stop DIR — fast shutdown, then immediate, then SIGKILL of the
# postmaster pid recorded in postmaster.pid.
pg_cluster_stop() {
    local dir="$1" datadir pid
    datadir="$(pg_datadir "${dir}")"
    [[ -f "${datadir}/postmaster.pid" ]] || return 0
    pg_log "stopping cluster ${datadir}"
    if pg_as_owner "${PG_BINDIR}/pg_ctl" stop -D "${datadir}" -m fast -w -t 30 >/dev/null 2>&1; then
        return 0
    fi
    pg_log "fast shutdown failed; trying immediate"
    if pg_as_owner "${PG_BINDIR}/pg_ctl" stop -D "${datadir}" -m immediate -w -t 15 >/dev/null 2>&1; then
        return 0
    fi
    pid="$(sed -n '1p' "${datadir}/postmaster.pid" 2>/dev/null || true)"
    if [[ "${pid}" =~ ^[0-9]+$ ]] && kill -0 "${pid}" 2>/dev/null; then
        pg_log "immediate shutdown failed; killing postmaster ${pid}"
        kill -KILL "${pid}" 2>/dev/null || true
    fi
    return 0
}

# --- ports -------------------------------------------------------------------

# True if something listens on 127.0.0.1/::1 TCP PORT.
pg_port_in_use() {
    local port="$1"
    if command -v ss >/dev/null 2>&1; then
        if ss -Htln "sport = :${port}" 2>/dev/null | grep -q .; then
            return 0
        fi
    fi
    # Fallback / double check: can we connect?
    if (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
        return 0
    fi
    return 1
}

# Print a free TCP port from 20000 up to the start of the local (ephemeral) port range.
pg_free_port() {
    local port i low=32768 span
    # Below the kernel's range for outgoing connections' local ports: a port in it can be taken by
    # any client socket between this check and the bind, and a PostgreSQL that then fails to bind
    # 127.0.0.1 still starts on ::1 and the socket, refusing TCP connections to 127.0.0.1.
    if [[ -r /proc/sys/net/ipv4/ip_local_port_range ]]; then
        read -r low _ </proc/sys/net/ipv4/ip_local_port_range || low=32768
    fi
    span=$((low > 21024 ? low - 20000 : 1024))
    for ((i = 0; i < 200; i++)); do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % span))
        if ! pg_port_in_use "${port}"; then
            printf '%s\n' "${port}"
            return 0
        fi
    done
    pg_die "no free TCP port found from 20000 up to ${low}"
}

# --- test roles ----------------------------------------------------------------

# pg_test_roles DIR PORT — roles with one auth method each, plus ssdb_test.
pg_test_roles() {
    local dir="$1" port="$2" socketdir
    socketdir="$(pg_socketdir "${dir}")"
    local -a psql=("${PG_BINDIR}/psql" -X -q -v ON_ERROR_STOP=1 -h "${socketdir}" -p "${port}" -U postgres)
    "${psql[@]}" -d postgres <<'SQL'
SET client_encoding = 'UTF8';
SET password_encryption = 'md5';
CREATE ROLE ssdb_md5 LOGIN PASSWORD 'md5_secret';
SET password_encryption = 'scram-sha-256';
CREATE ROLE ssdb_scram LOGIN PASSWORD 'scram_secret';
-- SCRAM passwords that SASLprep changes (NFKC: U+2168 is IX) and that it refuses (a tab).
CREATE ROLE ssdb_scram_uni LOGIN PASSWORD 'pässwörd Ⅸ';
CREATE ROLE ssdb_scram_ctl LOGIN PASSWORD E'ctl\tpw';
CREATE ROLE ssdb_clear LOGIN PASSWORD 'clear_secret';
CREATE ROLE ssdb_trust LOGIN CREATEDB;
CREATE DATABASE ssdb_test OWNER ssdb_trust;
GRANT ALL ON DATABASE ssdb_test TO ssdb_md5, ssdb_scram, ssdb_clear, ssdb_scram_uni, ssdb_scram_ctl;
SQL
    # PostgreSQL 15 no longer lets everyone create in schema public.
    "${psql[@]}" -d ssdb_test <<'SQL'
GRANT ALL ON SCHEMA public TO ssdb_trust, ssdb_md5, ssdb_scram, ssdb_clear;
SQL
    pg_log "created roles ssdb_trust, ssdb_md5, ssdb_scram, ssdb_scram_uni, ssdb_scram_ctl, ssdb_clear and database ssdb_test"
}
