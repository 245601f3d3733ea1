# shellcheck shell=bash
# The address the gateway will listen on, as scripts/run.sh prints it.
#
#   listen_url HOST PORT [GATEWAY ARGS...]
#
# HOST and PORT are GATEWAY_HOST and GATEWAY_PORT from the environment or .env (empty when unset);
# a --gateway-host/--gateway-port flag among the gateway's arguments wins, as it does for the
# gateway. Prints http://HOST:PORT with a wildcard address replaced by loopback (what a client on
# this machine connects to) and IPv6 in brackets; PORT 0 stays 0 (the gateway picks one).
listen_url() {
    local host="$1" port="$2" i
    shift 2
    local args=("$@")
    for ((i = 0; i < ${#args[@]}; i++)); do
        case "${args[i]}" in
            --gateway-host=*) host="${args[i]#*=}" ;;
            --gateway-port=*) port="${args[i]#*=}" ;;
            --gateway-host) host="${args[i + 1]:-}" ;;
            --gateway-port) port="${args[i + 1]:-}" ;;
        esac
    done
    host="${host:-127.0.0.1}"
    port="${port:-9000}"
    case "${host}" in
        0.0.0.0) host=127.0.0.1 ;;
        :: | "[::]") host="[::1]" ;;
        \[*) ;;
        *:*) host="[${host}]" ;;
    esac
    printf 'http://%s:%s\n' "${host}" "${port}"
}
