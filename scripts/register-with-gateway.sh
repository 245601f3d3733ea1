#!/usr/bin/env bash
# Register a platform's database (or one tenant's) with a StoneScriptDB Gateway: pack the
# postgresql/ folder as tar.gz and POST it to /register, which creates the database when missing
# and deploys extensions, types, tables, migrations, functions and seeders.
#
# Copy this file into your platform's repository. Environment:
#   DB_GATEWAY_URL   required  e.g. http://10.0.0.5:9000
#   PLATFORM_ID      required  platform name ([a-z0-9_], not starting with a digit)
#   TENANT_ID        optional  register the tenant database {platform}_{tenant} instead of main
#   POSTGRESQL_PATH  optional  the schema folder (default ./src/postgresql)
#   RETRY_COUNT      optional  attempts in all while the gateway is unreachable or answers 503 (default 5)
#   RETRY_DELAY      optional  seconds between attempts (default 3)
#   FORCE            optional  true: accept schema drift and missing seed rows (default false)
#   DRY_RUN          optional  true: report what would change, change nothing (default false)
#   CURL_MAX_TIME    optional  seconds one request may take (default 900)
#
# Exit status: 0 when the gateway answered 2xx, 1 otherwise (never retried on 4xx), 2 on a usage
# error. The response body is printed on failure; a short summary on success.
set -euo pipefail

ENDPOINT=/register
NAME=register-with-gateway

log() { printf '[%s] %s\n' "${NAME}" "$*" >&2; }
die() {
    log "$*"
    exit 2
}
is_bool() { [[ "$1" == true || "$1" == false ]]; }

DB_GATEWAY_URL="${DB_GATEWAY_URL:-}"
PLATFORM_ID="${PLATFORM_ID:-}"
TENANT_ID="${TENANT_ID:-}"
POSTGRESQL_PATH="${POSTGRESQL_PATH:-./src/postgresql}"
RETRY_COUNT="${RETRY_COUNT:-5}"
RETRY_DELAY="${RETRY_DELAY:-3}"
FORCE="${FORCE:-false}"
DRY_RUN="${DRY_RUN:-false}"
CURL_MAX_TIME="${CURL_MAX_TIME:-900}"

[[ -n "${DB_GATEWAY_URL}" ]] || die "DB_GATEWAY_URL is required (e.g. http://10.0.0.5:9000)"
[[ -n "${PLATFORM_ID}" ]] || die "PLATFORM_ID is required"
[[ "${RETRY_COUNT}" =~ ^[1-9][0-9]*$ ]] || die "RETRY_COUNT must be a positive integer, got '${RETRY_COUNT}'"
[[ "${RETRY_DELAY}" =~ ^[0-9]+$ ]] || die "RETRY_DELAY must be a whole number of seconds, got '${RETRY_DELAY}'"
[[ "${CURL_MAX_TIME}" =~ ^[1-9][0-9]*$ ]] || die "CURL_MAX_TIME must be a positive integer, got '${CURL_MAX_TIME}'"
is_bool "${FORCE}" || die "FORCE must be true or false, got '${FORCE}'"
is_bool "${DRY_RUN}" || die "DRY_RUN must be true or false, got '${DRY_RUN}'"
[[ -d "${POSTGRESQL_PATH}" ]] || die "POSTGRESQL_PATH '${POSTGRESQL_PATH}' is not a directory"
command -v curl >/dev/null 2>&1 || die "curl is required"
command -v tar >/dev/null 2>&1 || die "tar is required"

workdir="$(mktemp -d "${TMPDIR:-/tmp}/${NAME}.XXXXXX")"
trap 'rm -rf -- "${workdir}"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
archive="${workdir}/postgresql.tar.gz"
body="${workdir}/response.json"

# The gateway finds the folder by its name `postgresql/`; a folder named otherwise is packed
# from the inside, which the gateway reads the same way.
dir="${POSTGRESQL_PATH%/}"
if [[ "$(basename "${dir}")" == postgresql ]]; then
    tar -czf "${archive}" -C "$(dirname "${dir}")" "$(basename "${dir}")"
else
    tar -czf "${archive}" -C "${dir}" .
fi

form=(--form-string "platform=${PLATFORM_ID}" -F "schema=@${archive};type=application/gzip")
if [[ -n "${TENANT_ID}" ]]; then
    form+=(--form-string "tenant_id=${TENANT_ID}")
fi
form+=(--form-string "force=${FORCE}" --form-string "dry_run=${DRY_RUN}")
url="${DB_GATEWAY_URL%/}${ENDPOINT}"

# Prints a short summary of a JSON response: python3 when present, else grep/sed on the first
# occurrence of each member (the gateway writes one line of JSON).
summary() {
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$1" <<'PY' && return 0
import json, sys
try:
    with open(sys.argv[1], encoding="utf-8") as f:
        v = json.load(f)
except Exception:
    sys.exit(1)
def count(x):
    return len(x) if isinstance(x, list) else x
keys = ["status", "error", "message", "database", "platform", "created", "migrations_applied",
        "functions_deployed", "functions_changed", "functions_updated", "functions_skipped",
        "functions_dropped", "failed_count", "run_id"]
for k in keys:
    if k in v and v[k] is not None:
        x = count(v[k])
        print(f"  {k}: {str(x).lower() if isinstance(x, bool) else x}")
for r in v.get("results", []) or []:
    if r.get("status") == "failed":
        e = r.get("error") or {}
        print(f"  failed: {r.get('database')}: {e.get('error')}: {e.get('message')}")
PY
    fi
    local k line
    for k in status error message database platform created migrations_applied functions_deployed \
        functions_changed functions_updated functions_skipped functions_dropped failed_count run_id; do
        line="$(grep -o "\"${k}\":\(\"[^\"]*\"\|\[[^]]*\]\|[^,}]*\)" "$1" | head -n 1 || true)"
        line="${line#*:}"
        if [[ "${line}" == "[]" ]]; then
            line=0
        elif [[ "${line}" == \[* ]]; then
            # A list of names: print how many (names hold no quote or comma).
            line="$(printf '%s' "${line}" | tr -cd ',' | wc -c)"
            line=$((line + 1))
        fi
        if [[ -n "${line}" ]]; then
            printf '  %s: %s\n' "${k}" "$(printf '%s' "${line}" | sed 's/^"//; s/"$//')"
        fi
    done
}

attempt=0
while :; do
    attempt=$((attempt + 1))
    : >"${body}"
    rc=0
    code="$(curl -sS -o "${body}" -w '%{http_code}' --connect-timeout 10 --max-time "${CURL_MAX_TIME}" \
        "${form[@]}" "${url}")" || rc=$?
    retry=""
    case "${rc}" in
        0)
            if [[ "${code}" == 503 ]]; then
                retry="the gateway answered 503 (busy or not ready)"
            fi
            ;;
        7 | 28 | 52 | 56) retry="the gateway is unreachable (curl exit ${rc})" ;;
        *)
            log "request failed (curl exit ${rc})"
            exit 1
            ;;
    esac
    if [[ -z "${retry}" ]]; then
        break
    fi
    if ((attempt >= RETRY_COUNT)); then
        log "${retry}; giving up after attempt ${attempt}/${RETRY_COUNT}"
        if [[ -s "${body}" ]]; then
            cat "${body}" >&2
            printf '\n' >&2
        fi
        exit 1
    fi
    log "${retry}; attempt ${attempt}/${RETRY_COUNT}, retrying in ${RETRY_DELAY}s"
    sleep "${RETRY_DELAY}"
done

if [[ "${code}" =~ ^2[0-9][0-9]$ ]]; then
    printf '%s %s: HTTP %s\n' "${NAME}" "${PLATFORM_ID}${TENANT_ID:+/${TENANT_ID}}" "${code}"
    summary "${body}"
    exit 0
fi
log "the gateway refused the request: HTTP ${code}"
summary "${body}" >&2 || true
cat "${body}" >&2
printf '\n' >&2
exit 1
