#!/usr/bin/env bash
# Run the whole test suite against a throwaway PostgreSQL cluster.
#
#   scripts/test.sh [--keep] [ARGS...]
#
# ARGS go to `cargo nextest run` (or `cargo test` when nextest is missing).
# --keep (or KEEP_CLUSTER=1) leaves the cluster running afterwards and prints
# how to reach and remove it.
#
# Time limits: nextest reads .config/nextest.toml, which gives every test its
# own limit. `cargo test` has no per-test limit: the fallback bounds the whole
# run instead (TEST_FALLBACK_TIMEOUT seconds, default 1800; 0 = none), so a hang
# still fails, but without the name of the test that hung.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/pg-cluster.sh
source "${ROOT}/scripts/lib/pg-cluster.sh"
# shellcheck source=scripts/lib/test-tools.sh
source "${ROOT}/scripts/lib/test-tools.sh"

log() { printf '[test.sh] %s\n' "$*" >&2; }

KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --keep) KEEP_CLUSTER=1; shift ;;
        -h | --help)
            sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) break ;;
    esac
done

# --- prerequisites ---------------------------------------------------------------

if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found. Install Rust with rustup:"
    log "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y"
    log "  . \"\$HOME/.cargo/env\""
    exit 1
fi
pg_ensure_installed
# /metrics is checked with promtool, the status page in headless Chromium.
tool_ensure promtool prometheus || true
tool_ensure chromium chromium || true

# --- throwaway cluster ------------------------------------------------------------

CLUSTER_DIR=""
# shellcheck disable=SC2317  # invoked via trap
cleanup() {
    local status=$?
    trap '' INT TERM
    if [[ -n "${CLUSTER_DIR}" ]]; then
        if [[ "${KEEP_CLUSTER}" == 1 ]]; then
            log "cluster kept running (KEEP_CLUSTER=1):"
            log "  socket: ${TEST_PG_HOST:-?}  port: ${TEST_PG_PORT:-?}  log: $(pg_logfile "${CLUSTER_DIR}")"
            log "  psql -h ${TEST_PG_HOST:-?} -p ${TEST_PG_PORT:-?} -U postgres ssdb_test"
            log "  remove: TEST_PG_BINDIR=${PG_BINDIR} TEST_PG_DATADIR=$(pg_datadir "${CLUSTER_DIR}") TEST_PG_CTL_USER=$(pg_ctl_user) bash ${ROOT}/scripts/lib/pg-ctl-as.sh stop && rm -rf ${CLUSTER_DIR}"
        else
            pg_cluster_stop "${CLUSTER_DIR}" || true
            rm -rf -- "${CLUSTER_DIR}"
        fi
    fi
    exit "${status}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# /tmp is traversable for the postgres user even when TMPDIR is not.
tmp_base="${TMPDIR:-/tmp}"
if pg_is_root; then
    tmp_base=/tmp
fi
CLUSTER_DIR="$(mktemp -d "${tmp_base}/ssdb-test-pg.XXXXXX")"
pg_cluster_init "${CLUSTER_DIR}" test

port=""
for attempt in 1 2 3; do
    port="$(pg_free_port)"
    if pg_cluster_start "${CLUSTER_DIR}" "${port}"; then
        # PostgreSQL starts even if only one of 127.0.0.1/::1 could be bound.
        if ! grep -q 'could not bind' "$(pg_logfile "${CLUSTER_DIR}")"; then
            break
        fi
        pg_cluster_stop "${CLUSTER_DIR}"
        if [[ "${attempt}" -lt 3 ]]; then
            log "port ${port} is partly taken; retrying with another port"
            continue
        fi
        log "could not bind a free port for the test cluster"
        exit 1
    fi
    if [[ "${attempt}" -lt 3 ]] && grep -q 'already in use' "$(pg_logfile "${CLUSTER_DIR}")"; then
        log "port ${port} was taken meanwhile; retrying with another port"
        continue
    fi
    log "could not start the test cluster"
    exit 1
done
pg_test_roles "${CLUSTER_DIR}" "${port}"

export TEST_PG_HOST
TEST_PG_HOST="$(pg_socketdir "${CLUSTER_DIR}")"
export TEST_PG_PORT="${port}"
export TEST_PG_SUPERUSER=postgres
export TEST_PG_DATABASE=ssdb_test
export TEST_PG_BINDIR="${PG_BINDIR}"
export TEST_PG_DATADIR
TEST_PG_DATADIR="$(pg_datadir "${CLUSTER_DIR}")"
export TEST_PG_LOGFILE
TEST_PG_LOGFILE="$(pg_logfile "${CLUSTER_DIR}")"
export TEST_PG_CTL_USER
TEST_PG_CTL_USER="$(pg_ctl_user)"
export TEST_PG_CTL_HELPER="${ROOT}/scripts/lib/pg-ctl-as.sh"

if [[ -z "${JSON_TEST_SUITE_DIR:-}" && -d "${ROOT}/../shared/conformance/json-test-suite/test_parsing" ]]; then
    JSON_TEST_SUITE_DIR="$(cd "${ROOT}/../shared/conformance/json-test-suite/test_parsing" && pwd)"
    export JSON_TEST_SUITE_DIR
fi

# The JSON conformance data lives beside our own checkouts, not in the repository. Without it those
# tests are skipped (and reported so); CI must have it.
skip_shared=()
if [[ -z "${JSON_TEST_SUITE_DIR:-}" ]]; then
    if [[ "${CI:-}" == true ]]; then
        log "ERROR: the JSON conformance suite is missing (../shared/conformance/json-test-suite beside the checkout, or JSON_TEST_SUITE_DIR); CI runs those tests"
        exit 1
    fi
    log "SKIP: the JSON conformance tests (json_conformance, codec_mutation json_mutations) need ../shared/conformance/json-test-suite beside this checkout; set JSON_TEST_SUITE_DIR to run them"
    if [[ $# -eq 0 ]]; then
        skip_shared=(-E 'not (binary(json_conformance) | (binary(codec_mutation) & test(json_mutations)))')
    fi
fi

log "TEST_PG_HOST=${TEST_PG_HOST} TEST_PG_PORT=${TEST_PG_PORT} TEST_PG_CTL_USER=${TEST_PG_CTL_USER:-<current user>}"
log "JSON_TEST_SUITE_DIR=${JSON_TEST_SUITE_DIR:-<unset>}"

# --- tests --------------------------------------------------------------------------

cd "${ROOT}"
locked=()
if git -C "${ROOT}" ls-files --error-unmatch Cargo.lock >/dev/null 2>&1; then
    locked=(--locked)
fi

status=0
if cargo nextest --version >/dev/null 2>&1; then
    # Not an error while the suite is still empty.
    export NEXTEST_NO_TESTS="${NEXTEST_NO_TESTS:-warn}"
    # Per-test time limits come from .config/nextest.toml (the default profile).
    log "running: cargo nextest run --workspace --no-fail-fast ${locked[*]} ${skip_shared[*]} $*"
    cargo nextest run --workspace --no-fail-fast "${locked[@]}" "${skip_shared[@]}" "$@" || status=$?
    # nextest does not run doctests; run them too unless a selection was given.
    if [[ $# -eq 0 ]]; then
        log "running: cargo test --workspace --doc ${locked[*]}"
        doc_status=0
        cargo test --workspace --doc --no-fail-fast "${locked[@]}" || doc_status=$?
        if [[ "${status}" -eq 0 ]]; then
            status="${doc_status}"
        fi
    fi
else
    # No per-test time limit without nextest; bound the whole run (see the header).
    limit=()
    fallback_timeout="${TEST_FALLBACK_TIMEOUT:-1800}"
    if [[ "${fallback_timeout}" != 0 ]] && command -v timeout >/dev/null 2>&1; then
        limit=(timeout --kill-after=30 "${fallback_timeout}")
    fi
    log "cargo-nextest not found: tests have no per-test time limit (install: cargo install cargo-nextest --locked)"
    log "running: ${limit[*]} cargo test --workspace --no-fail-fast ${locked[*]} $*"
    "${limit[@]}" cargo test --workspace --no-fail-fast "${locked[@]}" "$@" || status=$?
    if [[ "${status}" -eq 124 ]]; then
        log "the test run did not finish within ${fallback_timeout} s (TEST_FALLBACK_TIMEOUT)"
    fi
fi

if [[ "${status}" -eq 0 ]]; then
    log "all tests passed"
else
    log "tests FAILED (exit ${status})"
fi
exit "${status}"
