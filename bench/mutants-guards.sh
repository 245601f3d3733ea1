#!/usr/bin/env bash
# Mutation testing of the guard code: cargo-mutants plants one small bug at a time (a comparison
# turned around, a check returning Ok(()), a `||` made `&&`) and runs the tests that cover it. A
# mutant no test catches is a guard that could be switched off unnoticed.
#
#   bash bench/mutants-guards.sh [GROUP...]      groups: security deploy archive call scram readahead pool engine (default: all)
#
# A habit, not a CI step: a run of every group takes about an hour on 2 cores. The survivors
# of each group, with the counts and the exact command, go to bench/results/mutants-guards.txt
# (rewritten by every run that covers all groups; a run of some groups writes
# bench/results/mutants-guards-partial.txt). Review them in bench/results/mutants-guards-review.md:
# a new test, or why the mutant is harmless.
#
# Environment (all optional):
#   TEST_PG_HOST, TEST_PG_PORT, ...   use this cluster (e.g. one left by `scripts/test.sh --keep`,
#                                     with the TEST_PG_* values it prints); otherwise a throwaway
#                                     cluster is started and removed, as scripts/test.sh does
#   MUTANTS_OUT    where cargo-mutants keeps its logs (default target/mutants-guards)
#   MUTANTS_ARGS   extra arguments for every `cargo mutants` run (e.g. "--list" to only list)
#
# Needs cargo-mutants (`cargo install cargo-mutants --locked`, a developer tool, see
# vendor-notes/cargo-mutants.md) and cargo-nextest. Tests see the cluster through the same TEST_PG_*
# variables as under scripts/test.sh, and the per-test limits of .config/nextest.toml apply, so a
# mutant that makes a test hang counts as caught once nextest ends it.
#
# Not covered here: the session reset behind every /call (CALL_RESET_SESSION) lives in
# src/call/engine.rs next to the call pipeline; see the review file.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/pg-cluster.sh
source "${ROOT}/scripts/lib/pg-cluster.sh"

log() { printf '[mutants-guards] %s\n' "$*" >&2; }
die() { printf '[mutants-guards] ERROR: %s\n' "$*" >&2; exit 1; }

command -v cargo-mutants >/dev/null 2>&1 ||
    die "cargo-mutants not found; install it with: cargo install cargo-mutants --locked"
cargo nextest --version >/dev/null 2>&1 ||
    die "cargo-nextest not found; install it with: cargo install cargo-nextest --locked"

GROUPS_ALL=(security deploy archive call scram readahead pool engine)
if [[ $# -eq 0 ]]; then
    set -- "${GROUPS_ALL[@]}"
fi
for g in "$@"; do
    case "${g}" in
        security | deploy | archive | call | scram | readahead | pool | engine) ;;
        *) die "unknown group '${g}' (security, deploy, archive, call, scram, readahead, pool, engine)" ;;
    esac
done

# --- what is mutated, and which tests judge it ----------------------------------------------------
#
# Each group: files (-f), a regex over the mutant names (--re, empty = every mutant of the files),
# the test binaries to build (cargo-style target selection) and the nextest filter.

group_files() {
    case "$1" in
        security) echo "src/security/mod.rs src/security/keys.rs src/security/cidr.rs src/security/names.rs src/security/roles.rs" ;;
        deploy) echo "src/deploy/engine.rs src/catalog/mod.rs src/deploy/service.rs" ;;
        archive) echo "src/deploy/archive.rs src/deploy/gzip.rs" ;;
        call) echo "src/call/owners.rs src/call/session.rs" ;;
        scram) echo "src/pg/scram.rs src/security/digest.rs src/security/base64.rs" ;;
        readahead) echo "src/deploy/readahead.rs src/deploy/memo.rs" ;;
        pool) echo "src/call/budget.rs src/call/pool.rs" ;;
        engine) echo "src/call/engine/limits.rs" ;;
    esac
}

group_re() {
    case "$1" in
        # roles.rs: only the pure checks (which rights make a role unfit, role names); the rest talks
        # to PostgreSQL and is covered by tests/isolation.rs.
        security) echo '^src/security/(mod|keys|cidr|names)\.rs:|^src/security/roles\.rs:.* (in )?(RoleFacts::unfit|role_name)( |$)' ;;
        # The deploy transaction (BEGIN/ROLLBACK/COMMIT, drift, migration checksums, the
        # no-transaction path) and the ownership checks of /register and /migrate. The regex also
        # picks the struct-field mutants of DeployCtx (the request's credential, the configured
        # archive limits), which are guards too.
        deploy) echo '(in |replace )(deploy|main_transaction|migrations|run_no_transaction|SchemaValidation::has_drift|migration_checksum|is_no_transaction|Catalog::check_owner|DeployCtx::check_reserved)( |$)' ;;
        # The limits: upload size, expanded size (the inflater's cap), entry count, path and file
        # sizes, and the entry checks of the tar reader.
        archive) echo '(in |replace )(read_archive|read_tar|inflate_into|too_large)( |$)' ;;
        # /call's ownership check and the session reset (and the cancel bookkeeping that retires a
        # connection a late cancel could hit), judged by their scripted-reply unit tests.
        call) echo '(in |replace )(Owners::admit|Session::write_execute|Session::finish_if_done|Session::mark_cancelled|Session::reusable)( |$)' ;;
        # The SCRAM login (the server's signature, nonce and bounds checks, the remembered keys)
        # and the HMAC/PBKDF2 and base64 under it: every mutant of the three files.
        scram) echo '' ;;
        # The deploy's read-ahead (an answer fetched early is only handed out while nothing else was
        # sent on the session) and the per-database memo under it (keyed by the database's OID):
        # a bug there hands a deploy a stale catalog read.
        readahead) echo '' ;;
        # The connection caps shared by the event loops (exact in sum over the loops, a slot given
        # back when its connection goes) and one loop's pool membership: a bug there lets a platform
        # past its cap or leaks a slot until the pool starves.
        pool) echo '' ;;
        # How a loop grows a pool under the shared caps: its quota of a pool's cap, short loops and
        # the connections handed back to them, room under the total and per-server caps, calls
        # handed to another loop. Judged by the multi-loop integration tests, the per-server cap test
        # and the restart tests (back-off), all against PostgreSQL.
        engine) echo '' ;;
    esac
}

group_targets() {
    case "$1" in
        security) echo "--lib" ;;
        deploy) echo "--test deploy_engine --test isolation --test deploy_http" ;;
        archive) echo "--lib --test archive_reader" ;;
        call) echo "--lib" ;;
        scram) echo "--lib --test pg_wire" ;;
        readahead) echo "--lib --test deploy_engine" ;;
        pool) echo "--lib" ;;
        engine) echo "--test loops --test call --test servers --test call_restart" ;;
    esac
}

group_filter() {
    case "$1" in
        security) echo 'kind(lib) & test(/^security::/)' ;;
        deploy) echo 'binary(deploy_engine) | (binary(isolation) & test(/catalog_and_databases|a_call_reaches|platform_keys_lock|keys_can_be_required/)) | (binary(deploy_http) & test(/conflict|failed_first_deploy|migration_failing|edited_applied|hostile/))' ;;
        archive) echo '(kind(lib) & test(/^deploy::(gzip|archive)::/)) | binary(archive_reader)' ;;
        call) echo 'kind(lib) & test(/^call::(owners|session)::/)' ;;
        scram) echo '(kind(lib) & test(/^(pg::scram|security::)/)) | (binary(pg_wire) & test(/scram/))' ;;
        readahead) echo '(kind(lib) & test(/^deploy::(readahead|memo)::/)) | binary(deploy_engine)' ;;
        pool) echo 'kind(lib) & test(/^call::/)' ;;
        engine) echo 'binary(loops) | (binary(call) & test(/limit|pool_wait|health_reports_pools/)) | (binary(servers) & test(/connections_to_one_server/)) | binary(call_restart)' ;;
    esac
}

# --- a cluster for the tests ---------------------------------------------------------------------

CLUSTER_DIR=""
# shellcheck disable=SC2317  # invoked via trap
cleanup() {
    local status=$?
    trap '' INT TERM
    if [[ -n "${CLUSTER_DIR}" ]]; then
        pg_cluster_stop "${CLUSTER_DIR}" || true
        rm -rf -- "${CLUSTER_DIR}"
    fi
    exit "${status}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -z "${TEST_PG_PORT:-}" ]]; then
    pg_ensure_installed
    tmp_base="${TMPDIR:-/tmp}"
    if pg_is_root; then
        tmp_base=/tmp
    fi
    CLUSTER_DIR="$(mktemp -d "${tmp_base}/ssdb-mutants-pg.XXXXXX")"
    pg_cluster_init "${CLUSTER_DIR}" test
    port=""
    for attempt in 1 2 3; do
        port="$(pg_free_port)"
        if pg_cluster_start "${CLUSTER_DIR}" "${port}"; then
            break
        fi
        [[ "${attempt}" -lt 3 ]] || die "could not start the test cluster"
    done
    pg_test_roles "${CLUSTER_DIR}" "${port}"
    TEST_PG_HOST="$(pg_socketdir "${CLUSTER_DIR}")"
    TEST_PG_PORT="${port}"
    TEST_PG_BINDIR="${PG_BINDIR}"
    TEST_PG_DATADIR="$(pg_datadir "${CLUSTER_DIR}")"
    TEST_PG_LOGFILE="$(pg_logfile "${CLUSTER_DIR}")"
    TEST_PG_CTL_USER="$(pg_ctl_user)"
    export TEST_PG_HOST TEST_PG_PORT TEST_PG_BINDIR TEST_PG_DATADIR TEST_PG_LOGFILE TEST_PG_CTL_USER
    export TEST_PG_SUPERUSER=postgres TEST_PG_DATABASE=ssdb_test
    export TEST_PG_CTL_HELPER="${ROOT}/scripts/lib/pg-ctl-as.sh"
    log "throwaway cluster: TEST_PG_HOST=${TEST_PG_HOST} TEST_PG_PORT=${TEST_PG_PORT}"
else
    log "using the cluster in the environment: TEST_PG_HOST=${TEST_PG_HOST:-?} TEST_PG_PORT=${TEST_PG_PORT}"
fi

# --- runs ------------------------------------------------------------------------------------------

cd "${ROOT}"
OUT="${MUTANTS_OUT:-${ROOT}/target/mutants-guards}"
mkdir -p "${OUT}" "${ROOT}/bench/results"
if [[ $# -eq ${#GROUPS_ALL[@]} ]]; then
    RESULT="${ROOT}/bench/results/mutants-guards.txt"
else
    RESULT="${ROOT}/bench/results/mutants-guards-partial.txt"
fi
extra=()
if [[ -n "${MUTANTS_ARGS:-}" ]]; then
    read -r -a extra <<<"${MUTANTS_ARGS}"
fi

count() { if [[ -f "$1" ]]; then grep -c . "$1" || true; else echo 0; fi; }

{
    echo "# Mutation run over the guard code (bench/mutants-guards.sh $*)"
    echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "${ROOT}" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "${ROOT}" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "# $(cargo mutants --version), $(cargo nextest --version | head -1), $(rustc --version)"
    echo "# $(nproc) CPUs; review of the survivors: bench/results/mutants-guards-review.md"
} >"${RESULT}"

overall=0
for g in "$@"; do
    read -r -a files <<<"$(group_files "${g}")"
    read -r -a targets <<<"$(group_targets "${g}")"
    re="$(group_re "${g}")"
    filter="$(group_filter "${g}")"
    file_args=()
    for f in "${files[@]}"; do
        file_args+=(-f "${f}")
    done
    cmd=(cargo mutants --test-tool nextest --no-shuffle --colors never -o "${OUT}/${g}"
        "${file_args[@]}" --re "${re}" "${extra[@]}" -- "${targets[@]}" -E "${filter}")
    log "group ${g}: ${cmd[*]}"
    started=$(date +%s)
    status=0
    nice -n 10 "${cmd[@]}" || status=$?
    took=$(($(date +%s) - started))
    # 0: all caught; 2: some missed; 3: some timed out; anything else is a failed run.
    case "${status}" in
        0 | 2 | 3) ;;
        *) overall=1; log "group ${g}: cargo mutants failed (exit ${status}); see ${OUT}/${g}/mutants.out" ;;
    esac
    mo="${OUT}/${g}/mutants.out"
    {
        echo
        echo "## ${g}"
        echo "command: ${cmd[*]}"
        echo "exit ${status}, ${took} s"
        echo "caught $(count "${mo}/caught.txt"), missed $(count "${mo}/missed.txt"), timeout $(count "${mo}/timeout.txt"), unviable $(count "${mo}/unviable.txt")"
        echo "missed:"
        if [[ -s "${mo}/missed.txt" ]]; then sed 's/^/  /' "${mo}/missed.txt"; else echo "  (none)"; fi
        echo "timeout (caught by a time limit):"
        if [[ -s "${mo}/timeout.txt" ]]; then sed 's/^/  /' "${mo}/timeout.txt"; else echo "  (none)"; fi
    } >>"${RESULT}"
done
log "survivors written to ${RESULT}"
exit "${overall}"
