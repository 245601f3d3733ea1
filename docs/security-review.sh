#!/usr/bin/env bash
# The attacks of docs/security-review.md, run against a real gateway: a throwaway PostgreSQL cluster,
# the least-rights login of scripts/gateway-login.sql, ADMIN_TOKEN and PLATFORM_SECRET set.
#
#   bash docs/security-review.sh [false|true]    REQUIRE_PLATFORM_KEYS (default false)
#
# Uses the debug binary (cargo build first). Prints one line per attack: HELD or BROKEN, what was sent,
# what came back. Exits 1 when an attack was not held.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${ROOT}/scripts/lib/pg-cluster.sh"
KEYS="${1:-false}"
BIN="${ROOT}/target/debug/stonescriptdb-gateway"
[[ -x "${BIN}" ]] || { echo "build first: cargo build" >&2; exit 2; }
pg_ensure_installed

DIR="$(mktemp -d /tmp/ssdb-review.XXXXXX)"
GW_PID=""
cleanup() {
    [[ -n "${GW_PID}" ]] && kill "${GW_PID}" 2>/dev/null && wait "${GW_PID}" 2>/dev/null || true
    pg_cluster_stop "${DIR}" >/dev/null 2>&1 || true
    rm -rf -- "${DIR}"
}
trap cleanup EXIT
pg_cluster_init "${DIR}" test >/dev/null 2>&1
PGPORT_="$(pg_free_port)"
pg_cluster_start "${DIR}" "${PGPORT_}" >/dev/null
SOCK="$(pg_socketdir "${DIR}")"
PSQL=("${PG_BINDIR}/psql" -X -q -v ON_ERROR_STOP=1 -h "${SOCK}" -p "${PGPORT_}" -U postgres -d postgres)
"${PSQL[@]}" -f "${ROOT}/scripts/gateway-login.sql" >/dev/null

TOKEN="review-admin-token-0123456789abcdef"
PORT="$(pg_free_port)"
GW="http://127.0.0.1:${PORT}"
(cd "${DIR}" && exec env -i PATH="${PATH}" GATEWAY_PORT="${PORT}" DB_HOST="${SOCK}" DB_PORT="${PGPORT_}" \
    DB_USER=stonescriptdb_gateway ADMIN_TOKEN="${TOKEN}" PLATFORM_SECRET="review-platform-secret-0123456789abcdef" \
    REQUIRE_PLATFORM_KEYS="${KEYS}" LOG_DIR="${DIR}/logs" "${BIN}" 2>"${DIR}/gateway.err") &
GW_PID=$!
UP=0
for _ in $(seq 1 300); do curl -fs "${GW}/health" >/dev/null 2>&1 && { UP=1; break; }; sleep 0.1; done
[[ "${UP}" == 1 ]] || { echo "the gateway did not start:" >&2; cat "${DIR}/gateway.err" >&2; exit 2; }

FAILED=0
# check NAME EXPECTED-STATUS[|ALT] CURL-ARGS...: HELD when the status is one of the expected ones.
check() {
    local name="$1" want="$2"
    shift 2
    local out code
    out="$(curl -s -o "${DIR}/body" -w '%{http_code}' "$@" || true)"
    code="${out}"
    local body
    body="$(head -c 200 "${DIR}/body" | tr -d '\r\n')"
    if [[ "|${want}|" == *"|${code}|"* ]]; then
        printf 'HELD    %-58s %s %s\n' "${name}" "${code}" "${body}"
    else
        printf 'BROKEN  %-58s %s (wanted %s) %s\n' "${name}" "${code}" "${want}" "${body}"
        FAILED=1
    fi
}
AUTH=(-H "Authorization: Bearer ${TOKEN}")
JSON=(-H "Content-Type: application/json")
tgz() { # tgz DIR → DIR.tar.gz of its files
    tar -C "$1" -czf "$1.tar.gz" .
}

mkdir -p "${DIR}/app/functions"
echo "CREATE OR REPLACE FUNCTION hello() RETURNS int LANGUAGE sql AS 'SELECT 1';" >"${DIR}/app/functions/hello.sql"
tgz "${DIR}/app"
# The owner's platform: deployed keyless (or by the operator when keys are required).
if [[ "${KEYS}" == true ]]; then
    curl -s -o /dev/null "${AUTH[@]}" -F platform=owned -F "schema=@${DIR}/app.tar.gz" "${GW}/register"
    curl -s -o /dev/null "${AUTH[@]}" -F platform=a_b -F "schema=@${DIR}/app.tar.gz" "${GW}/register"
else
    curl -s -o /dev/null -F platform=owned -F "schema=@${DIR}/app.tar.gz" "${GW}/register"
    curl -s -o /dev/null -F platform=a_b -F "schema=@${DIR}/app.tar.gz" "${GW}/register"
fi

echo "== registration and takeover (REQUIRE_PLATFORM_KEYS=${KEYS})"
check "register an existing keyless platform, upper case" 401 "${JSON[@]}" -d '{"platform":"OWNED","require_key":true}' "${GW}/platform/register"
# Names that sanitise to another name ("owned " → "owned_") make another platform, not this one.
NEW=201
[[ "${KEYS}" == true ]] && NEW=401 # PLATFORM_REGISTRATION defaults to admin then
check "register 'owned ' (sanitised to a new platform owned_)" "${NEW}" "${JSON[@]}" -d '{"platform":"owned ","require_key":true}' "${GW}/platform/register"
check "register 'owned' + zero-width space (→ owned_, now keyed)" 401 "${JSON[@]}" -d '{"platform":"owned\u200b","require_key":true}' "${GW}/platform/register"
check "register it with Basic admin credentials" 401 -H "Authorization: Basic $(printf 'x:%s' "${TOKEN}" | base64 -w0)" "${JSON[@]}" -d '{"platform":"owned","require_key":true}' "${GW}/platform/register"
check "register it with X-Forwarded-For of an admin address" 401 -H "X-Forwarded-For: 127.0.0.1" "${JSON[@]}" -d '{"platform":"owned","require_key":true}' "${GW}/platform/register"
"${PSQL[@]}" -c "CREATE ROLE ssdb_orphan NOLOGIN" >/dev/null
check "register a platform whose role exists but nothing else" 401 "${JSON[@]}" -d '{"platform":"orphan","require_key":true}' "${GW}/platform/register"
"${PSQL[@]}" -c "CREATE DATABASE lonely_main" >/dev/null
check "register a platform whose {p}_main exists unrecorded" 401 "${JSON[@]}" -d '{"platform":"lonely","require_key":true}' "${GW}/platform/register"
check "platform 'a' tenant 'b_main' reaches a_b_main" "409|401" "${JSON[@]}" -d '{"platform":"a","tenant_id":"b_main","function":"hello"}' "${GW}/call"
check "/database/create for a keyless platform without the token" 401 "${JSON[@]}" -d '{"platform":"owned","schema_name":"s","database_id":"x"}' "${GW}/database/create"
check "rotate another platform's key with a platform key" 401 -H "Authorization: Bearer ssdbk_000000000000000000000000000000000000000000000000" "${JSON[@]}" -d '{}' "${GW}/admin/platforms/owned/key"

echo "== cross-site requests and DNS rebinding"
BASIC="Basic $(printf 'ops:%s' "${TOKEN}" | base64 -w0)"
check "text/plain form post with the status page's Basic login" 401 -H "Authorization: ${BASIC}" -H "Content-Type: text/plain" -d 'x' "${GW}/admin/platforms/owned/key"
check "same with Bearer (a page cannot set it, but still)" 415 "${AUTH[@]}" -H "Content-Type: text/plain" -d 'x' "${GW}/admin/platforms/owned/key"
check "Content-Type application/json, text/plain" 415 "${AUTH[@]}" -H "Content-Type: application/json, text/plain" -d '{}' "${GW}/admin/isolate"
check "Content-Type application/jsonp" 415 "${AUTH[@]}" -H "Content-Type: application/jsonp" -d '{}' "${GW}/admin/isolate"
check "urlencoded body with no Content-Type override (curl -d)" 415 "${AUTH[@]}" -d '{}' "${GW}/admin/servers/x/drain"
check "Origin of another site on an admin change" 403 "${AUTH[@]}" "${JSON[@]}" -H "Origin: https://evil.example" -d '{}' "${GW}/admin/servers/x/drain"
check "Origin that starts like the Host (prefix trick)" 403 "${AUTH[@]}" "${JSON[@]}" -H "Origin: http://127.0.0.1:${PORT}.evil.example" -d '{}' "${GW}/admin/servers/x/drain"
check "Origin null (sandboxed iframe)" 403 "${JSON[@]}" -H "Origin: null" -d '{"platform":"owned","function":"hello"}' "${GW}/call"
check "cross-site /call" 403 "${JSON[@]}" -H "Origin: http://evil.example" -d '{"platform":"owned","function":"hello"}' "${GW}/call"
check "cross-site v1 deploy (multipart form)" 403 -H "Origin: http://evil.example" -F platform=owned -F "schema=@${DIR}/app.tar.gz" "${GW}/register"
check "two Origin headers, the first one ours" 400 "${JSON[@]}" -H "Origin: http://127.0.0.1:${PORT}" -H "Origin: http://evil.example" -d '{"platform":"owned","function":"hello"}' "${GW}/call"
check "rebound name reading the status data" 421 -H "Host: rebind.evil.example:${PORT}" -H "Authorization: ${BASIC}" "${GW}/status/data"
check "rebound name that embeds an IP (127.0.0.1.evil.example)" 421 -H "Host: 127.0.0.1.evil.example" "${GW}/health"
# raw NAME WANT REQUEST: a request curl would not send as written, over a plain socket.
raw() {
    local name="$1" want="$2" req="$3" line
    exec 3<>"/dev/tcp/127.0.0.1/${PORT}"
    printf '%b' "${req}" >&3
    IFS= read -r line <&3 || true
    exec 3<&- 3>&-
    if [[ "${line}" == "HTTP/1.1 ${want}"* ]]; then
        printf 'HELD    %-58s %s\n' "${name}" "${line%$'\r'}"
    else
        printf 'BROKEN  %-58s %s (wanted %s)\n' "${name}" "${line%$'\r'}" "${want}"
        FAILED=1
    fi
}
raw "two Host headers, the first one ours" 400 'GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n'
raw "Host with a bare IPv6 literal and a rebinding suffix" 421 'GET /health HTTP/1.1\r\nHost: [::1].evil.example\r\nConnection: close\r\n\r\n'
raw "HTTP/1.0 without Host (no browser sends it)" 200 'GET /health HTTP/1.0\r\n\r\n'
check "Basic login on an admin read route" 401 -H "Authorization: ${BASIC}" "${GW}/admin/servers"
check "GET on a state-changing route" 405 "${AUTH[@]}" "${GW}/admin/isolate"

echo "== keys, tenants and what a refusal says"
if [[ "${KEYS}" == true ]]; then
    check "keyed /call to an existing database without key" 401 "${JSON[@]}" -d '{"platform":"owned","function":"hello"}' "${GW}/call"
    check "keyed /call to a missing tenant without key" 401 "${JSON[@]}" -d '{"platform":"owned","tenant_id":"nobody","function":"hello"}' "${GW}/call"
    check "anonymous creation of a new platform" 401 "${JSON[@]}" -d '{"platform":"newcomer"}' "${GW}/platform/register"
else
    check "keyless /call still works for the owner (v1 client)" 200 "${JSON[@]}" -d '{"platform":"owned","function":"hello"}' "${GW}/call"
fi
check "the owner's keyless calls after all of the above" "200|401" "${JSON[@]}" -d '{"platform":"owned","function":"hello"}' "${GW}/call"
check "admin token in the query string" 401 "${GW}/admin/servers?token=${TOKEN}"
check "path with an encoded new line (log forging)" 404 "${GW}/health%0a2026-01-01T00:00:00Z%20info%20forged"

echo "== what PostgreSQL shows a platform (as its role, in its own database)"
AS_PLATFORM=("${PG_BINDIR}/psql" -X -q -At -h "${SOCK}" -p "${PGPORT_}" -U ssdb_owned -d owned_main)
# A session of another role that stays open while the platform looks.
"${PG_BINDIR}/psql" -X -q -h "${SOCK}" -p "${PGPORT_}" -U postgres -d postgres -c "SELECT 'secret-query-text', pg_sleep(3)" >/dev/null &
SLEEPER=$!
sleep 1
OTHERS="$("${AS_PLATFORM[@]}" -c "SELECT count(*) FILTER (WHERE query LIKE '%secret-query-text%') || '/' || count(*) FROM pg_stat_activity WHERE usename IS DISTINCT FROM current_user" || echo error)"
wait "${SLEEPER}" || true
if [[ "${OTHERS}" == 0/* ]]; then
    printf 'HELD    %-58s %s\n' "other sessions' query text (visible/rows)" "${OTHERS}"
else
    printf 'BROKEN  %-58s %s\n' "other sessions' query text (visible/rows)" "${OTHERS}"
    FAILED=1
fi
NAMES="$("${AS_PLATFORM[@]}" -c "SELECT count(*) FROM pg_database WHERE datname = 'a_b_main'")"
printf 'KNOWN   %-58s %s\n' "other platforms' database names visible (documented)" "${NAMES}"
if ERR="$("${PG_BINDIR}/psql" -X -q -At -h "${SOCK}" -p "${PGPORT_}" -U ssdb_owned -d a_b_main -c "SELECT 1" 2>&1)"; then
    printf 'BROKEN  %-58s\n' "connect to another platform's database"
    FAILED=1
else
    printf 'HELD    %-58s %s\n' "connect to another platform's database" "$(head -1 <<<"${ERR}")"
fi
if ERR="$("${AS_PLATFORM[@]}" -c "ALTER ROLE ssdb_a_b PASSWORD 'x'" 2>&1)"; then
    printf 'BROKEN  %-58s\n' "change another platform role's password"
    FAILED=1
else
    printf 'HELD    %-58s %s\n' "change another platform role's password" "$(head -1 <<<"${ERR}")"
fi
if "${AS_PLATFORM[@]}" -c "ALTER ROLE ssdb_owned SET work_mem = '64kB'" >/dev/null 2>&1; then
    printf 'KNOWN   %-58s\n' "ALTER ROLE on its own role (documented: hurts only itself)"
fi

echo "== floods"
for _ in $(seq 1 2000); do printf 'GET /admin/servers HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer wrong\r\n\r\n'; done >"${DIR}/flood"
printf 'GET /admin/servers HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >>"${DIR}/flood"
curl -s --max-time 20 "telnet://127.0.0.1:${PORT}" <"${DIR}/flood" >/dev/null || true
sleep 0.5
SIZE="$(stat -c %s "${DIR}/logs/stonescriptdb-gateway.log")"
if [[ "${SIZE}" -le 65536 ]]; then
    printf 'HELD    %-58s %s bytes of log\n' "2,001 refused admin requests from one peer" "${SIZE}"
else
    printf 'BROKEN  %-58s %s bytes of log\n' "2,001 refused admin requests from one peer" "${SIZE}"
    FAILED=1
fi
if grep -q $'\x1b' "${DIR}/logs/stonescriptdb-gateway.log"; then
    printf 'BROKEN  %-58s\n' "an escape character reached the log"
    FAILED=1
fi
exit "${FAILED}"
