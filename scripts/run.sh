#!/usr/bin/env bash
# Build and start a working gateway.
#
#   scripts/run.sh [GATEWAY ARGS...]   build (release) and run the gateway
#   scripts/run.sh --stop-db           stop the private PostgreSQL cluster
#
# If neither DATABASE_URL nor DB_HOST is configured (environment or .env), a
# private cluster is created under data/postgres (kept between runs, socket
# only, trust auth) and started; it keeps running after the gateway exits.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/pg-cluster.sh
source "${ROOT}/scripts/lib/pg-cluster.sh"
# shellcheck source=scripts/lib/listen-addr.sh
source "${ROOT}/scripts/lib/listen-addr.sh"

log() { printf '[run.sh] %s\n' "$*" >&2; }
die() { printf '[run.sh] ERROR: %s\n' "$*" >&2; exit 1; }

# --- .env (read only to decide whether a database is configured) --------------

# dotenv_get KEY: print the last value of KEY in .env; return 1 if absent.
# Handles `KEY=value`, `export KEY=value`, comments and single/double quotes.
dotenv_get() {
    local key="$1" file="${ROOT}/.env" line k v found=0 value=""
    [[ -f "${file}" ]] || return 1
    while IFS= read -r line || [[ -n "${line}" ]]; do
        line="${line%$'\r'}"
        line="${line#"${line%%[![:space:]]*}"}"
        [[ -z "${line}" || "${line}" == \#* || "${line}" != *=* ]] && continue
        line="${line#export }"
        k="${line%%=*}"
        k="${k%"${k##*[![:space:]]}"}"
        [[ "${k}" == "${key}" ]] || continue
        v="${line#*=}"
        v="${v#"${v%%[![:space:]]*}"}"
        v="${v%"${v##*[![:space:]]}"}"
        if [[ "${v}" =~ ^\"(.*)\"$ || "${v}" =~ ^\'(.*)\'$ ]]; then
            v="${BASH_REMATCH[1]}"
        fi
        value="${v}"
        found=1
    done <"${file}"
    [[ "${found}" -eq 1 ]] || return 1
    printf '%s\n' "${value}"
}

# setting KEY: environment first, then .env; empty if unset.
setting() {
    local key="$1"
    if [[ -n "${!key:-}" ]]; then
        printf '%s\n' "${!key}"
    else
        dotenv_get "${key}" || true
    fi
}

# --- private cluster location -----------------------------------------------------

PREFERRED_DIR="${ROOT}/data/postgres"
FALLBACK_DIR="/var/tmp/stonescriptdb-gateway-$(printf '%s' "${ROOT}" | sha256sum | cut -c1-12)"

# Print the cluster directory to use: data/postgres in the checkout, unless
# the postgres OS user cannot reach it (root with a checkout under e.g. /root)
# or the socket path would be too long.
private_cluster_dir() {
    if [[ -f "$(pg_datadir "${PREFERRED_DIR}")/PG_VERSION" ]]; then
        printf '%s\n' "${PREFERRED_DIR}"
        return
    fi
    if [[ -f "$(pg_datadir "${FALLBACK_DIR}")/PG_VERSION" ]]; then
        log "using the existing private cluster in ${FALLBACK_DIR}"
        printf '%s\n' "${FALLBACK_DIR}"
        return
    fi
    if ! pg_socket_path_ok "${PREFERRED_DIR}"; then
        log "checkout path is too long for a unix socket; putting the private cluster in ${FALLBACK_DIR} instead"
        printf '%s\n' "${FALLBACK_DIR}"
        return
    fi
    mkdir -p "${ROOT}/data"
    if pg_is_root && ! pg_owner_can_reach "${ROOT}/data"; then
        log "the postgres OS user cannot traverse ${ROOT}; putting the private cluster in ${FALLBACK_DIR} instead"
        printf '%s\n' "${FALLBACK_DIR}"
        return
    fi
    printf '%s\n' "${PREFERRED_DIR}"
}

stop_db() {
    local dir stopped=0
    pg_find_bindir || die "PostgreSQL binaries not found"
    for dir in "${PREFERRED_DIR}" "${FALLBACK_DIR}"; do
        if [[ -f "$(pg_datadir "${dir}")/postmaster.pid" ]]; then
            pg_cluster_stop "${dir}"
            log "stopped the private cluster in ${dir}"
            stopped=1
        fi
    done
    if [[ "${stopped}" -eq 0 ]]; then
        log "the private cluster is not running"
    fi
}

start_private_db() {
    local dir datadir have want port
    pg_ensure_installed
    dir="$(private_cluster_dir)"
    datadir="$(pg_datadir "${dir}")"
    if [[ ! -f "${datadir}/PG_VERSION" ]]; then
        if [[ -e "${datadir}" ]]; then
            die "${datadir} exists but is not a PostgreSQL data directory; move it away"
        fi
        log "creating the private cluster in ${dir} (first run)"
        pg_cluster_init "${dir}" private
    fi
    have="$(<"${datadir}/PG_VERSION")"
    want="$(pg_server_major)"
    if [[ "${have}" != "${want}" ]]; then
        die "${datadir} was created by PostgreSQL ${have} but the binaries are ${want}; stop it and remove ${dir} to recreate it"
    fi

    if pg_cluster_running "${dir}"; then
        port="$(pg_cluster_port "${dir}")"
        log "private cluster already running (socket $(pg_socketdir "${dir}"), port ${port})"
    else
        port="${PRIVATE_PG_PORT:-54329}"
        [[ "${port}" =~ ^[0-9]+$ ]] || die "PRIVATE_PG_PORT must be a number"
        pg_cluster_start "${dir}" "${port}" || die "the private cluster did not start (log: $(pg_logfile "${dir}"))"
    fi

    export DB_HOST DB_PORT DB_USER
    DB_HOST="$(pg_socketdir "${dir}")"
    DB_PORT="${port}"
    # The gateway logs in with the least rights that work (no superuser), as documented in the README.
    # A catalog made by an older run belongs to postgres; that cluster keeps using postgres.
    local -a psql=("${PG_BINDIR}/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "${DB_HOST}" -p "${port}" -U postgres -d postgres)
    "${psql[@]}" -f "${ROOT}/scripts/gateway-login.sql" >/dev/null || die "could not create the gateway's login"
    local catalog_owner
    catalog_owner="$("${psql[@]}" -c "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'stonescriptdb_gateway'")"
    if [[ -z "${catalog_owner}" || "${catalog_owner}" == stonescriptdb_gateway ]]; then
        DB_USER=stonescriptdb_gateway
    else
        DB_USER=postgres
        log "this private cluster's catalog was made by postgres; the gateway keeps logging in as postgres"
    fi
    log "gateway will use the private cluster: DB_HOST=${DB_HOST} DB_PORT=${DB_PORT} DB_USER=${DB_USER}"
    log "it keeps running after the gateway exits; stop it with: scripts/run.sh --stop-db"
}

# --- main --------------------------------------------------------------------------

case "${1:-}" in
    --stop-db)
        stop_db
        exit 0
        ;;
    -h | --help)
        sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
esac

if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found. Install Rust with rustup:"
    log "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y"
    log "  . \"\$HOME/.cargo/env\""
    exit 1
fi

if [[ -n "$(setting DATABASE_URL)" || -n "$(setting DB_HOST)" ]]; then
    log "database configured via DATABASE_URL/DB_HOST; not starting a private cluster"
else
    start_private_db
fi

cd "${ROOT}"
locked=()
if git -C "${ROOT}" ls-files --error-unmatch Cargo.lock >/dev/null 2>&1; then
    locked=(--locked)
fi
log "building: cargo build --release ${locked[*]}"
cargo build --release "${locked[@]}"

# The address the gateway will really use: flags beat the environment, which beats .env.
url="$(listen_url "$(setting GATEWAY_HOST)" "$(setting GATEWAY_PORT)" "$@")"
if [[ "${url}" == *:0 ]]; then
    log "starting the gateway on a free port (${url%:0}:…): its 'listening addr=' line names it"
else
    log "starting the gateway on ${url}; try:"
    log "  curl -s ${url}/health"
    if [[ -n "$(setting ADMIN_TOKEN)" ]]; then
        log "  status page: ${url}/status (any user name, ADMIN_TOKEN as password)"
    else
        log "  status page: start with ADMIN_TOKEN set (ADMIN_TOKEN=\$(openssl rand -hex 16) scripts/run.sh), then open ${url}/status"
    fi
fi
exec "${CARGO_TARGET_DIR:-target}/release/stonescriptdb-gateway" "$@"
