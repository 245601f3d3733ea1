#!/usr/bin/env bash
# End-to-end test of the Debian package on this machine (tests/package.rs runs it in the suite).
#
#   scripts/test-package.sh [--binary PATH]
#
# Builds the package twice (revisions 1 and 2) with scripts/package.sh (from PATH, or a debug build),
# inspects it with dpkg-deb, installs it into this machine's / with dpkg -i, checks the user, paths and
# modes, sets up a throwaway PostgreSQL cluster with setup-db, runs the installed binary the way the
# unit does (its User, EnvironmentFile, WorkingDirectory, LimitNOFILE) for /health, an admin route, a
# deploy and a call, calls it over https through the package's example nginx site (nginx and openssl
# installed from Debian's packages when missing; a throwaway certificate) and finds the client's address
# in the gateway's log, upgrades with a changed env file (kept), removes and purges (gone), and checks
# which service actions the maintainer scripts ask for while systemd seems to run.
#
# Needs root and dpkg; otherwise prints SKIP and exits 0. Refuses (SKIP) to touch a machine where the
# package or its user already exists. Always purges what it installed. Exit 1 on the first failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME=stonescriptdb-gateway
SVC_USER=stonescriptdb-gateway
ENV_FILE=/etc/${NAME}/env
UNIT=/lib/systemd/system/${NAME}.service

log() { printf '[test-package] %s\n' "$*" >&2; }
fail() { printf '[test-package] FAIL: %s\n' "$*" >&2; exit 1; }
skip() { printf '[test-package] SKIP: %s\n' "$*" >&2; exit 0; }
check() { # check DESCRIPTION COMMAND...: run COMMAND, fail with DESCRIPTION when it fails
    local what="$1"
    shift
    "$@" || fail "${what}"
    log "ok: ${what}"
}

binary=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        -h | --help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) fail "unknown argument: $1" ;;
    esac
done

# --- may we run here? -----------------------------------------------------------------------------

[[ "$(id -u)" -eq 0 ]] || skip "not root: installing a package needs root (CI runs as root)"
for tool in dpkg dpkg-deb dpkg-query objdump curl setpriv runuser; do
    command -v "${tool}" >/dev/null 2>&1 || skip "${tool} not found"
done
if dpkg-query -W -f='${Status}' "${NAME}" 2>/dev/null | grep -Eq 'installed|config-files'; then
    skip "${NAME} is already installed on this machine; not touching a real installation"
fi
if getent passwd "${SVC_USER}" >/dev/null || getent group "${SVC_USER}" >/dev/null || [[ -e /etc/${NAME} ]]; then
    skip "a ${SVC_USER} user/group or /etc/${NAME} exists already; not touching it"
fi

# shellcheck source=scripts/lib/pg-cluster.sh
source "${ROOT}/scripts/lib/pg-cluster.sh"
# shellcheck source=scripts/lib/test-tools.sh
source "${ROOT}/scripts/lib/test-tools.sh"
pg_ensure_installed

WORK="$(mktemp -d /tmp/ssdb-test-package.XXXXXX)"
chmod 0755 "${WORK}"
CLUSTER_DIR=""
GATEWAY_PID=""
NGINX_PID=""
INSTALLED=0
TOUCHED=0
# shellcheck disable=SC2317  # invoked via trap
cleanup() {
    local status=$?
    trap '' INT TERM
    if [[ -n "${GATEWAY_PID}" ]]; then
        kill -TERM "${GATEWAY_PID}" 2>/dev/null || true
        wait "${GATEWAY_PID}" 2>/dev/null || true
    fi
    if [[ -n "${NGINX_PID}" ]]; then
        kill -QUIT "${NGINX_PID}" 2>/dev/null || true
        wait "${NGINX_PID}" 2>/dev/null || true
    fi
    if [[ "${INSTALLED}" -eq 1 ]]; then
        log "purging ${NAME} (cleanup)"
        dpkg --purge "${NAME}" >/dev/null 2>&1 || true
    fi
    if [[ "${TOUCHED}" -eq 1 ]]; then
        # None of these existed before (checked above): whatever a failed purge left goes too.
        getent passwd "${SVC_USER}" >/dev/null && userdel "${SVC_USER}" 2>/dev/null
        getent group "${SVC_USER}" >/dev/null && groupdel "${SVC_USER}" 2>/dev/null
        rm -rf -- "/etc/${NAME}" "/var/log/${NAME}" "/var/lib/${NAME}" \
            "/etc/systemd/system/multi-user.target.wants/${NAME}.service"
    fi
    if [[ -n "${CLUSTER_DIR}" ]]; then
        pg_cluster_stop "${CLUSTER_DIR}" || true
    fi
    rm -rf -- "${WORK}"
    if [[ "${status}" -eq 0 ]]; then
        log "package test passed"
    else
        log "package test FAILED (exit ${status})"
    fi
    exit "${status}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build and inspect ------------------------------------------------------------------------------

if [[ -z "${binary}" ]]; then
    log "no --binary: building a debug binary"
    (cd "${ROOT}" && cargo build --locked --bin "${NAME}" >&2)
    binary="${CARGO_TARGET_DIR:-${ROOT}/target}/debug/${NAME}"
fi
deb1="$(bash "${ROOT}/scripts/package.sh" --binary "${binary}" --revision 1 --compress gzip --out "${WORK}/debs")"
deb2="$(bash "${ROOT}/scripts/package.sh" --binary "${binary}" --revision 2 --compress gzip --out "${WORK}/debs")"
version="$(dpkg-deb --field "${deb1}" Version)"

field() { dpkg-deb --field "${deb1}" "$1"; }
check "package name and architecture" \
    test "$(field Package) $(field Architecture)" = "${NAME} $(dpkg --print-architecture)"
check "Depends is libc6 only: '$(field Depends)'" grep -Eqx 'libc6 \(>= [0-9.]+\)' <<<"$(field Depends)"
check "no Pre-Depends or Recommends" test -z "$(field Pre-Depends)$(field Recommends)"
check "Suggests: postgresql, nginx" test "$(field Suggests)" = "postgresql, nginx"

dpkg-deb --contents "${deb1}" | awk '{ print $1, $2, $6 }' | sed 's#\./#/#' | grep -v '/$' | sort -k3 >"${WORK}/contents"
expected_files="-rw-r----- root/root /etc/${NAME}/env
-rw-r--r-- root/root /lib/systemd/system/${NAME}.service
-rwxr-xr-x root/root /usr/bin/${NAME}
-rw-r--r-- root/root /usr/share/doc/${NAME}/README.md
-rw-r--r-- root/root /usr/share/doc/${NAME}/copyright
-rw-r--r-- root/root /usr/share/${NAME}/gateway-login.sql
-rw-r--r-- root/root /usr/share/${NAME}/nginx/${NAME}.conf"
check "files, owners and modes in the package" \
    diff <(sort -k3 <<<"${expected_files}") "${WORK}/contents"

mkdir -p "${WORK}/control" "${WORK}/tree"
dpkg-deb --control "${deb1}" "${WORK}/control"
dpkg-deb --extract "${deb1}" "${WORK}/tree"
check "the env file is the only conffile" test "$(cat "${WORK}/control/conffiles")" = "/etc/${NAME}/env"
for script in postinst prerm postrm; do
    check "${script} is executable POSIX shell" test -x "${WORK}/control/${script}"
    check "${script} parses with sh -n" sh -n "${WORK}/control/${script}"
done
env_tpl="${WORK}/tree/etc/${NAME}/env"
while IFS= read -r key; do
    grep -q "^# ${key}=" "${env_tpl}" || fail "the env file does not document ${key}"
done < <(grep -o '^# [A-Z_]*=' "${ROOT}/scripts/.env.example" | sed 's/^# //; s/=$//')
log "ok: every setting of .env.example is in the env file, commented"
check "nothing in the env file is set" bash -c "! grep -Eq '^[[:space:]]*[A-Z_]+=' '${env_tpl}'"
check "the env file documents GATEWAY_HOST=0.0.0.0 with ALLOWED_NETWORKS for Docker" \
    grep -q '^# GATEWAY_HOST=0.0.0.0' "${env_tpl}"
check "... and the Docker bridge" grep -q '^# ALLOWED_NETWORKS=.*172.17.0.0/16' "${env_tpl}"
check "the shipped login SQL is scripts/gateway-login.sql" \
    cmp "${WORK}/tree/usr/share/${NAME}/gateway-login.sql" "${ROOT}/scripts/gateway-login.sql"

# Every library the binary loads belongs to libc6 or to libgcc-s1, which libc6 depends on.
while IFS= read -r lib; do
    path="$(ldd "${WORK}/tree/usr/bin/${NAME}" | awk -v l="${lib}" 'index($1, l) { print ($2 == "=>") ? $3 : $1 }' | head -n 1)"
    [[ -n "${path}" ]] || fail "ldd cannot find ${lib}"
    owner="$(dpkg -S "${path}" 2>/dev/null || dpkg -S "$(readlink -f "${path}")" 2>/dev/null || true)"
    owner="${owner%%:*}"
    [[ "${owner}" == libc6 || "${owner}" == libgcc-s1 ]] || fail "${lib} (${path}) belongs to '${owner}', not libc6"
done < <(objdump -p "${WORK}/tree/usr/bin/${NAME}" | awk '$1 == "NEEDED" { print $2 }')
check "libc6 itself depends on libgcc-s1" grep -q 'libgcc-s1' <<<"$(dpkg-query -W -f='${Depends}' libc6)"

unit_value() { sed -n "s/^$1=//p" "${UNIT}" | tail -n 1; }
tpl_unit="${WORK}/tree/lib/systemd/system/${NAME}.service"
for setting in "User=${SVC_USER}" "NoNewPrivileges=yes" "ProtectSystem=strict" "Restart=on-failure" \
    "EnvironmentFile=${ENV_FILE}" "ExecStart=/usr/bin/${NAME}" "LimitNOFILE=16384" \
    "ReadWritePaths=/var/log/${NAME} /var/lib/${NAME}"; do
    check "unit: ${setting}" grep -qx "${setting}" "${tpl_unit}"
done

# --- a fake running systemd, to see what the maintainer scripts ask of it --------------------------

# Where the kernel lets us (a private mount namespace), dpkg runs with /run/systemd/system present and
# systemctl/deb-systemd-invoke replaced by stubs that write down their arguments.
# Service actions are only written down; unit-file work (deb-systemd-helper's "systemctl preset")
# goes to the real systemctl, offline.
mkdir -p "${WORK}/stubs"
real_systemctl="$(command -v systemctl || true)"
cat >"${WORK}/stubs/systemctl" <<EOF
#!/bin/sh
echo "systemctl \$*" >>"${WORK}/systemd-calls"
for arg in "\$@"; do
    case "\$arg" in
        daemon-reload | start | stop | restart | try-restart | reload | is-active) exit 0 ;;
    esac
done
[ -n "${real_systemctl}" ] || exit 0
SYSTEMD_OFFLINE=1 exec "${real_systemctl}" "\$@"
EOF
cat >"${WORK}/stubs/deb-systemd-invoke" <<EOF
#!/bin/sh
echo "deb-systemd-invoke \$*" >>"${WORK}/systemd-calls"
EOF
chmod 0755 "${WORK}/stubs/systemctl" "${WORK}/stubs/deb-systemd-invoke"
FAKE_SYSTEMD=0
if unshare -m sh -c 'mount -t tmpfs tmpfs /run' 2>/dev/null; then
    FAKE_SYSTEMD=1
else
    log "note: no private mount namespace here (unshare -m); service actions are not checked"
fi
dpkg_with_systemd() { # dpkg_with_systemd ARGS...: dpkg under the fake systemd, or plain dpkg
    : >"${WORK}/systemd-calls"
    if [[ "${FAKE_SYSTEMD}" -eq 1 ]]; then
        unshare -m sh -c 'mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && PATH="$0:$PATH" exec dpkg "$@"' \
            "${WORK}/stubs" "$@" </dev/null
    else
        dpkg "$@" </dev/null
    fi
}
calls_include() { [[ "${FAKE_SYSTEMD}" -eq 0 ]] || grep -qx "$1" "${WORK}/systemd-calls"; }
calls_lack() { [[ "${FAKE_SYSTEMD}" -eq 0 ]] || ! grep -q "$1" "${WORK}/systemd-calls"; }

# --- install ----------------------------------------------------------------------------------------

INSTALLED=1
TOUCHED=1
check "dpkg -i ${deb1##*/}" dpkg_with_systemd -i "${deb1}"
check "dpkg says installed ${version}" \
    test "$(dpkg-query -W -f='${Status} ${Version}' "${NAME}")" = "install ok installed ${version}"
check "first installation starts nothing" calls_lack "start"
check "... and reloads systemd" calls_include "systemctl --system daemon-reload"

uid="$(id -u "${SVC_USER}")" || fail "no user ${SVC_USER}"
check "${SVC_USER} is a system user (uid ${uid})" test "${uid}" -lt 1000
check "its group is its own" test "$(id -gn "${SVC_USER}")" = "${SVC_USER}"
check "it has no login shell" grep -Eq "^${SVC_USER}:.*:/usr/sbin/nologin$" /etc/passwd
stat_of() { stat -c '%a %U:%G' "$1"; }
check "binary /usr/bin/${NAME} 755 root" test "$(stat_of "/usr/bin/${NAME}")" = "755 root:root"
check "env file 640 root:${SVC_USER}" test "$(stat_of "${ENV_FILE}")" = "640 root:${SVC_USER}"
check "/etc/${NAME} 750 root:${SVC_USER}" test "$(stat_of "/etc/${NAME}")" = "750 root:${SVC_USER}"
check "log directory 750 ${SVC_USER}" test "$(stat_of "/var/log/${NAME}")" = "750 ${SVC_USER}:${SVC_USER}"
check "state directory 750 ${SVC_USER}" test "$(stat_of "/var/lib/${NAME}")" = "750 ${SVC_USER}:${SVC_USER}"
check "the unit is installed" test -f "${UNIT}"
check "dpkg records the env file as a conffile" \
    grep -q "/etc/${NAME}/env" <<<"$(dpkg-query -W -f='${Conffiles}' "${NAME}")"
admin_token="$(sed -n 's/^ADMIN_TOKEN=//p' "${ENV_FILE}")"
platform_secret="$(sed -n 's/^PLATFORM_SECRET=//p' "${ENV_FILE}")"
check "postinst generated one ADMIN_TOKEN" grep -Eqx '[0-9a-f]{64}' <<<"${admin_token}"
check "postinst generated one PLATFORM_SECRET" grep -Eqx '[0-9a-f]{64}' <<<"${platform_secret}"
if command -v deb-systemd-helper >/dev/null 2>&1; then
    check "the unit is enabled for boot" test -L "/etc/systemd/system/multi-user.target.wants/${NAME}.service"
fi
if command -v systemd-analyze >/dev/null 2>&1; then
    if ! systemd-analyze verify "${UNIT}" >"${WORK}/verify.log" 2>&1; then
        cat "${WORK}/verify.log" >&2
        fail "systemd-analyze verify ${UNIT}"
    fi
    check "systemd-analyze verify: no warning about the unit" \
        bash -c "! grep -i '${NAME}' '${WORK}/verify.log'"
else
    log "note: systemd-analyze not found; the unit is not verified"
fi

# --- PostgreSQL: a cluster with a Debian-like pg_hba.conf, set up with setup-db ---------------------

CLUSTER_DIR="${WORK}/pg"
pg_cluster_init "${CLUSTER_DIR}" test
# As Debian's default: the superuser over the socket without password, everyone else by TCP with SCRAM.
printf 'local all postgres trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n' \
    >"$(pg_datadir "${CLUSTER_DIR}")/pg_hba.conf"
chown postgres: "$(pg_datadir "${CLUSTER_DIR}")/pg_hba.conf"
pg_port="$(pg_free_port)"
pg_cluster_start "${CLUSTER_DIR}" "${pg_port}" || fail "the test cluster did not start"
socket="$(pg_socketdir "${CLUSTER_DIR}")"

# setup-db as the superuser, its output appended to the env file as the README says: a changed env file.
gw_port="$(pg_free_port)"
"/usr/bin/${NAME}" setup-db --host "${socket}" --port "${pg_port}" --db-host 127.0.0.1 --db-port "${pg_port}" \
    >"${WORK}/setup-db.out" 2>"${WORK}/setup-db.err" || { cat "${WORK}/setup-db.err" >&2; fail "setup-db"; }
cat "${WORK}/setup-db.err" >&2
check "setup-db printed the login and a password" grep -Eq '^DB_PASSWORD=[0-9a-f]{48}$' "${WORK}/setup-db.out"
check "setup-db logged in as the new login with SCRAM" \
    grep -q "stonescriptdb_gateway logs in at 127.0.0.1:${pg_port}: ok" "${WORK}/setup-db.err"
check "setup-db a second time keeps the password" bash -c \
    "'/usr/bin/${NAME}' setup-db --host '${socket}' --port '${pg_port}' 2>/dev/null | grep -q '^# DB_PASSWORD unchanged'"
{
    printf '\n# test-package.sh: this machine'"'"'s PostgreSQL\nDB_HOST=127.0.0.1\nDB_PORT=%s\nGATEWAY_PORT=%s\n' \
        "${pg_port}" "${gw_port}"
    # nginx on this machine terminates TLS in front (README, "TLS"); every request gets a line.
    printf 'TRUSTED_PROXIES=127.0.0.1/32\nLOG_REQUESTS=all\n'
    cat "${WORK}/setup-db.out"
} >>"${ENV_FILE}"
cp -p "${ENV_FILE}" "${WORK}/env.changed"

# --- the installed binary, run the way the unit runs it ----------------------------------------------

start_gateway() {
    local user env_file workdir exec nofile environment
    user="$(unit_value User)"
    env_file="$(unit_value EnvironmentFile)"
    workdir="$(unit_value WorkingDirectory)"
    exec="$(unit_value ExecStart)"
    nofile="$(unit_value LimitNOFILE)"
    environment="$(unit_value Environment)"
    : >"${WORK}/gateway.out"
    # Environment= first, then the EnvironmentFile= over it, as systemd does; the file must be readable
    # by the service's user (group) for this to work at all.
    # setpriv execs (runuser would stay in between as a parent), so the pid is the gateway's own.
    setpriv --reuid="${user}" --regid="$(unit_value Group)" --init-groups -- env -i PATH=/usr/bin:/bin "${environment}" bash -c \
        'ulimit -n "$1" && set -a && . "$2" && set +a && cd "$3" && exec "$4"' \
        gateway "${nofile}" "${env_file}" "${workdir}" "${exec}" >"${WORK}/gateway.out" 2>&1 &
    GATEWAY_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        if curl -fsS -o /dev/null "http://127.0.0.1:${gw_port}/health" 2>/dev/null; then
            return 0
        fi
        kill -0 "${GATEWAY_PID}" 2>/dev/null || break
        sleep 0.2
    done
    cat "${WORK}/gateway.out" >&2
    fail "the installed gateway did not answer /health"
}
stop_gateway() {
    kill -TERM "${GATEWAY_PID}"
    wait "${GATEWAY_PID}" || fail "the gateway did not exit cleanly on SIGTERM"
    GATEWAY_PID=""
}

start_gateway
health="$(curl -sS "http://127.0.0.1:${gw_port}/health")"
check "/health is healthy: ${health}" grep -q '"status":"healthy"' <<<"${health}"
check "no warning about open files under LimitNOFILE" bash -c "! grep -q 'open-files limit' '${WORK}/gateway.out'"
code="$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${admin_token}" \
    "http://127.0.0.1:${gw_port}/admin/databases?platform=pkgtest")"
check "the generated ADMIN_TOKEN opens /admin (HTTP ${code})" test "${code}" = 200

# A deploy and a call: the least-rights login makes the platform's role, which logs in with SCRAM.
mkdir -p "${WORK}/schema/postgresql/functions"
cat >"${WORK}/schema/postgresql/functions/pkg_hello.sql" <<'SQL'
CREATE OR REPLACE FUNCTION pkg_hello(who text) RETURNS text LANGUAGE sql AS $$
    SELECT 'hello ' || who || ' from ' || current_user
$$;
SQL
tar -czf "${WORK}/schema.tar.gz" -C "${WORK}/schema" postgresql
register="$(curl -sS -F platform=pkgtest -F "schema=@${WORK}/schema.tar.gz" "http://127.0.0.1:${gw_port}/register")"
check "/register deploys: ${register:0:120}" grep -q '"status":"ready"' <<<"${register}"
call="$(curl -sS -H 'Content-Type: application/json' "http://127.0.0.1:${gw_port}/call" \
    -d '{"platform":"pkgtest","function":"pkg_hello","params":["vm"]}')"
check "/call runs as the platform's role: ${call}" grep -q '"pkg_hello":"hello vm from ssdb_pkgtest"' <<<"${call}"

# --- TLS in front: the package's nginx site, a throwaway certificate, a client on 127.0.0.2 ----------

nginx_ensure() {
    command -v nginx >/dev/null 2>&1 && return 0
    # Installing nginx must not start Debian's own nginx service on port 80 here: a policy-rc.d that
    # says no, for the install only, unless the machine has one already.
    local policy=/usr/sbin/policy-rc.d added=0 status=0
    if [[ ! -e "${policy}" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"${policy}" && chmod 0755 "${policy}" && added=1
    fi
    tool_ensure nginx nginx || status=1
    if [[ "${added}" -eq 1 ]]; then rm -f -- "${policy}"; fi
    return "${status}"
}
TLS_TESTED=0
if nginx_ensure && tool_ensure openssl openssl; then
    TLS_TESTED=1
    tls="${WORK}/tls"
    mkdir -p "${tls}/logs" "${tls}/tmp"
    chmod 0777 "${tls}/tmp"
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=gateway.test" \
        -addext "subjectAltName=IP:127.0.0.1" -keyout "${tls}/key.pem" -out "${tls}/cert.pem" 2>"${tls}/openssl.err" \
        || { cat "${tls}/openssl.err" >&2; fail "openssl could not make a throwaway certificate"; }
    site="/usr/share/${NAME}/nginx/${NAME}.conf"
    check "the package installed the nginx site ${site}" test -f "${site}"
    https_port="$(pg_free_port)"
    # The shipped site as an operator would edit it: the certificate's paths and the ports.
    sed -e "s#/etc/ssl/certs/${NAME}.pem#${tls}/cert.pem#" -e "s#/etc/ssl/private/${NAME}.key#${tls}/key.pem#" \
        -e "s#listen 443 ssl;#listen 127.0.0.1:${https_port} ssl;#" -e '/listen \[::\]:443 ssl;/d' \
        -e "s#server 127.0.0.1:9000;#server 127.0.0.1:${gw_port};#" "${site}" >"${tls}/site.conf"
    for edited in "${tls}/cert.pem" "${tls}/key.pem" "127.0.0.1:${https_port} ssl" "127.0.0.1:${gw_port};"; do
        grep -qF "${edited}" "${tls}/site.conf" || fail "the site has no line to edit for ${edited}"
    done
    # A private nginx for the site alone, beside (never instead of) any nginx of this machine.
    cat >"${tls}/nginx.conf" <<NGINX
worker_processes 1;
pid ${tls}/nginx.pid;
error_log ${tls}/logs/error.log;
events { worker_connections 64; }
http {
    access_log ${tls}/logs/access.log;
    client_body_temp_path ${tls}/tmp/body;
    proxy_temp_path ${tls}/tmp/proxy;
    fastcgi_temp_path ${tls}/tmp/fastcgi;
    uwsgi_temp_path ${tls}/tmp/uwsgi;
    scgi_temp_path ${tls}/tmp/scgi;
    include ${tls}/site.conf;
}
NGINX
    nginx -t -q -p "${tls}" -c "${tls}/nginx.conf" 2>"${tls}/nginx-t.err" \
        || { cat "${tls}/nginx-t.err" >&2; fail "nginx -t rejects the shipped site"; }
    log "ok: nginx -t accepts the shipped site"
    nginx -p "${tls}" -c "${tls}/nginx.conf" -g 'daemon off;' 2>>"${tls}/logs/error.log" &
    NGINX_PID=$!
    for ((i = 0; i < 50; i++)); do
        curl -fsS --cacert "${tls}/cert.pem" -o /dev/null "https://127.0.0.1:${https_port}/health" 2>/dev/null && break
        kill -0 "${NGINX_PID}" 2>/dev/null || { cat "${tls}/logs/error.log" >&2; fail "nginx exited"; }
        sleep 0.2
    done
    # The client connects from 127.0.0.2; nginx, on 127.0.0.1 towards the gateway, names it in
    # X-Forwarded-For, which the gateway believes from TRUSTED_PROXIES.
    call="$(curl -sS --cacert "${tls}/cert.pem" --interface 127.0.0.2 -H 'Content-Type: application/json' \
        "https://127.0.0.1:${https_port}/call" -d '{"platform":"pkgtest","function":"pkg_hello","params":["tls"]}')" \
        || fail "curl over https through nginx"
    check "/call over https through nginx: ${call}" grep -q '"pkg_hello":"hello tls from ssdb_pkgtest"' <<<"${call}"
    check "the certificate is checked (one from an unknown CA is refused)" \
        bash -c "! curl -sS -o /dev/null 'https://127.0.0.1:${https_port}/health' 2>/dev/null"
    kill -QUIT "${NGINX_PID}" 2>/dev/null || true
    wait "${NGINX_PID}" 2>/dev/null || true
    NGINX_PID=""
elif [[ "${CI:-}" == true ]]; then
    fail "nginx or openssl could not be installed (CI=true: the TLS part may not be skipped)"
else
    log "note: nginx or openssl missing and not installable; the TLS part is not checked"
fi
stop_gateway

logfile="/var/log/${NAME}/${NAME}.log"
check "the log file is ${logfile}" test -f "${logfile}"
check "... owned by ${SVC_USER}" test "$(stat -c '%U' "${logfile}")" = "${SVC_USER}"
# The deploy has its line (and, with LOG_REQUESTS=all set above, every request).
check "... with the deploy in it" grep -q 'deploy applied database=pkgtest_main' "${logfile}"
check "... and no secret" bash -c "! grep -q -e '${admin_token}' -e '${platform_secret}' '${logfile}'"
if [[ "${TLS_TESTED}" -eq 1 ]]; then
    check "... and the https call's line names the client (client=127.0.0.2) behind the proxy (peer=127.0.0.1)" \
        bash -c "grep 'path=/call' '${logfile}' | grep 'peer=127.0.0.1:' | grep -q 'client=127.0.0.2'"
fi

# --- upgrade: the changed env file is kept, the service restarted ------------------------------------

check "dpkg -i ${deb2##*/} (upgrade)" dpkg_with_systemd -i "${deb2}"
check "dpkg says installed $(dpkg-deb --field "${deb2}" Version)" \
    test "$(dpkg-query -W -f='${Version}' "${NAME}")" = "$(dpkg-deb --field "${deb2}" Version)"
check "the changed env file is kept as it was" cmp "${ENV_FILE}" "${WORK}/env.changed"
check "... no second ADMIN_TOKEN" test "$(grep -c '^ADMIN_TOKEN=' "${ENV_FILE}")" -eq 1
check "... still 640 root:${SVC_USER}" test "$(stat_of "${ENV_FILE}")" = "640 root:${SVC_USER}"
check "... no .dpkg-new/.dpkg-dist left beside it" bash -c "! ls /etc/${NAME}/env.dpkg-* 2>/dev/null"
check "the user keeps its uid" test "$(id -u "${SVC_USER}")" = "${uid}"
check "the upgrade restarts a running service" calls_include "deb-systemd-invoke try-restart ${NAME}.service"
check "... and stops nothing" calls_lack "stop"
start_gateway
check "the upgraded gateway serves the deployed platform" grep -q 'hello vm' <<<"$(curl -sS \
    -H 'Content-Type: application/json' "http://127.0.0.1:${gw_port}/call" \
    -d '{"platform":"pkgtest","function":"pkg_hello","params":["vm"]}')"
stop_gateway

# --- remove, then purge --------------------------------------------------------------------------------

check "dpkg -r" dpkg_with_systemd -r "${NAME}"
check "remove stops the service" calls_include "deb-systemd-invoke stop ${NAME}.service"
check "the binary is gone" test ! -e "/usr/bin/${NAME}"
check "the unit is gone" test ! -e "${UNIT}"
check "the env file stays until purge" cmp "${ENV_FILE}" "${WORK}/env.changed"
check "the user stays until purge" getent passwd "${SVC_USER}"
check "dpkg -P" dpkg_with_systemd -P "${NAME}"
INSTALLED=0
check "dpkg forgot the package" bash -c "! dpkg-query -W -f='\${Status}' '${NAME}' 2>/dev/null | grep -q installed"
for path in "/etc/${NAME}" "/var/log/${NAME}" "/var/lib/${NAME}" \
    "/etc/systemd/system/multi-user.target.wants/${NAME}.service"; do
    check "purge removed ${path}" test ! -e "${path}" -a ! -L "${path}"
done
check "purge removed the user" bash -c "! getent passwd '${SVC_USER}'"
check "purge removed the group" bash -c "! getent group '${SVC_USER}'"
