#!/usr/bin/env bash
# A local 3-node NATS JetStream cluster (n1..n3 on 127.0.0.1) and a dagnats
# engine against it, for development and crash drills.
#
#   deploy/cluster.sh start            three nats-servers; waits for /healthz on each
#   deploy/cluster.sh engine [ARGS]    dagnats serve --external against all three nodes
#   deploy/cluster.sh status           what runs, on which ports; exit 1 unless 3 nodes are healthy
#   deploy/cluster.sh url              the client URL list (for DAGNATS_NATS_URL)
#   deploy/cluster.sh kill-node N      kill -9 node N (1..3), as a crash would
#   deploy/cluster.sh restart-node N   stop node N if it runs, start it again, wait for /healthz
#   deploy/cluster.sh stop             engine, then nodes: SIGTERM, wait, SIGKILL
#
# Environment:
#   DAGNATS_DEPLOY_DIR         run directory: data/nN, nN.log, nN.pid, engine.log,
#                              engine.pid (default: deploy/.cluster)
#   DAGNATS_PORT_BASE          client port of n1; n2, n3 follow (default 4222)
#   DAGNATS_CLUSTER_PORT_BASE  route port of n1 (default 6222)
#   DAGNATS_MONITOR_PORT_BASE  monitoring port of n1 (default 8222)
#   DAGNATS_NATS_SERVER        nats-server binary (default: beside python, else on PATH)
#   DAGNATS_CLI                dagnats executable (default: beside python, else on PATH)
#   DAGNATS_START_TIMEOUT      seconds to wait for health / engine ready (default 30)
#   DAGNATS_STOP_TIMEOUT       seconds between SIGTERM and SIGKILL (default 15)
#
# Processes are only ever signalled through the PID files of the run
# directory, and only while their command line is still the one started.

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONF_DIR="$HERE/nats"
NODES=(1 2 3)

RUN_DIR="${DAGNATS_DEPLOY_DIR:-$HERE/.cluster}"
# Absolute: the servers run from inside it, and a relative path means the caller's.
[[ "$RUN_DIR" == /* ]] || RUN_DIR="$PWD/$RUN_DIR"
PORT_BASE="${DAGNATS_PORT_BASE:-4222}"
CLUSTER_PORT_BASE="${DAGNATS_CLUSTER_PORT_BASE:-6222}"
MONITOR_PORT_BASE="${DAGNATS_MONITOR_PORT_BASE:-8222}"
START_TIMEOUT="${DAGNATS_START_TIMEOUT:-30}"
STOP_TIMEOUT="${DAGNATS_STOP_TIMEOUT:-15}"

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

say() {
    echo "cluster.sh: $*"
}

for value in "$PORT_BASE" "$CLUSTER_PORT_BASE" "$MONITOR_PORT_BASE" "$START_TIMEOUT" "$STOP_TIMEOUT"; do
    [[ "$value" =~ ^[0-9]+$ ]] || die "not a number: '$value' (check the DAGNATS_* variables)"
done

client_port() { echo $((PORT_BASE + $1 - 1)); }
cluster_port() { echo $((CLUSTER_PORT_BASE + $1 - 1)); }
monitor_port() { echo $((MONITOR_PORT_BASE + $1 - 1)); }

urls() {
    local i out=""
    for i in "${NODES[@]}"; do
        out+="${out:+,}nats://127.0.0.1:$(client_port "$i")"
    done
    echo "$out"
}

routes() {
    local i out=""
    for i in "${NODES[@]}"; do
        out+="${out:+,}nats-route://127.0.0.1:$(cluster_port "$i")"
    done
    echo "$out"
}

# An executable: $1 if set, else beside the Python interpreter on PATH (a
# virtualenv's bin/), else on PATH.
find_exe() {
    local override="$1" name="$2" py dir
    if [[ -n "$override" ]]; then
        [[ -x "$override" ]] || die "$override is not executable"
        echo "$override"
        return
    fi
    for py in python python3; do
        if command -v "$py" >/dev/null 2>&1; then
            dir="$("$py" -c 'import os, sys; print(os.path.dirname(sys.executable))' 2>/dev/null || true)"
            if [[ -n "$dir" && -x "$dir/$name" ]]; then
                echo "$dir/$name"
                return
            fi
        fi
    done
    command -v "$name" 2>/dev/null || die "$name not found: activate the dagnats virtualenv, or set ${3}"
}

# -- processes, through PID files --------------------------------------------

pid_file() { echo "$RUN_DIR/$1.pid"; }

cmdline_of() {
    if [[ -r "/proc/$1/cmdline" ]]; then
        tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true
    else
        ps -p "$1" -o args= 2>/dev/null || true
    fi
}

# True while process $1 exists and is not a zombie.
exists() {
    local pid="$1" state
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r "/proc/$pid/stat" ]]; then
        state="$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1 || true)"
        [[ "$state" != "Z" ]] || return 1
    fi
}

# True while $1 runs and its command line contains $2 (so a recycled PID is
# never taken for ours).
alive() {
    exists "$1" && [[ "$(cmdline_of "$1")" == *"$2"* ]]
}

node_cmd() { echo "$CONF_DIR/n$1.conf"; }
ENGINE_CMD="serve --external"

# The PID recorded for process $1 (n1, n2, n3, engine) if it still runs, else nothing.
running_pid() {
    local name="$1" what="$2" file pid
    file="$(pid_file "$name")"
    [[ -f "$file" ]] || return 0
    pid="$(cat "$file")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" "$what"; then
        echo "$pid"
    fi
}

# SIGTERM, up to STOP_TIMEOUT seconds, then SIGKILL; removes the PID file.
stop_process() {
    local name="$1" what="$2" pid waited=0
    pid="$(running_pid "$name" "$what")"
    if [[ -z "$pid" ]]; then
        rm -f "$(pid_file "$name")"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    while alive "$pid" "$what" && ((waited < STOP_TIMEOUT * 10)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    if alive "$pid" "$what"; then
        say "$name (pid $pid) still running after ${STOP_TIMEOUT}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" "$what"
    fi
    rm -f "$(pid_file "$name")"
    say "stopped $name (pid $pid)"
}

wait_gone() {
    local pid="$1" what="$2" waited=0
    while alive "$pid" "$what" && ((waited < 100)); do
        sleep 0.1
        waited=$((waited + 1))
    done
}

# True if something accepts connections on 127.0.0.1:$1 (bash's /dev/tcp).
port_taken() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

http_ok() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -m 2 -o /dev/null "$1" 2>/dev/null
    elif command -v wget >/dev/null 2>&1; then
        wget -q -T 2 -O /dev/null "$1" 2>/dev/null
    else
        python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null
    fi
}

# -- nodes ----------------------------------------------------------------------

NATS_SERVER=""

start_node() {
    local i="$1" pid
    pid="$(running_pid "n$i" "$(node_cmd "$i")")"
    if [[ -n "$pid" ]]; then
        say "n$i already running (pid $pid)"
        return 0
    fi
    [[ -n "$NATS_SERVER" ]] || NATS_SERVER="$(find_exe "${DAGNATS_NATS_SERVER:-}" nats-server DAGNATS_NATS_SERVER)"
    mkdir -p "$RUN_DIR/data"
    # From the run directory: the config's store_dir "./data/nN" resolves there.
    # Flags override the config file's ports, so DAGNATS_*_PORT_BASE can move them.
    (
        cd "$RUN_DIR"
        exec nohup "$NATS_SERVER" -c "$CONF_DIR/n$i.conf" \
            -p "$(client_port "$i")" -m "$(monitor_port "$i")" \
            --cluster "nats://127.0.0.1:$(cluster_port "$i")" --routes "$(routes)" \
            </dev/null >>"$RUN_DIR/n$i.log" 2>&1
    ) &
    echo "$!" >"$(pid_file "n$i")"
    say "started n$i (pid $!): client nats://127.0.0.1:$(client_port "$i"), monitor http://127.0.0.1:$(monitor_port "$i")"
}

# Refuse ports someone else listens on (another cluster, a dagnats serve).
check_ports() {
    local i="$1" port
    [[ -z "$(running_pid "n$i" "$(node_cmd "$i")")" ]] || return 0
    for port in "$(client_port "$i")" "$(cluster_port "$i")" "$(monitor_port "$i")"; do
        if port_taken "$port"; then
            die "port 127.0.0.1:$port (for n$i) is already in use; pick other ports with DAGNATS_PORT_BASE, DAGNATS_CLUSTER_PORT_BASE, DAGNATS_MONITOR_PORT_BASE"
        fi
    done
}

wait_healthy() {
    local i="$1" deadline pid
    deadline=$((SECONDS + START_TIMEOUT))
    pid="$(cat "$(pid_file "n$i")")"
    until http_ok "http://127.0.0.1:$(monitor_port "$i")/healthz"; do
        # Just started, it may not have exec'd nats-server yet: existence is enough.
        if ! exists "$pid"; then
            tail -n 20 "$RUN_DIR/n$i.log" >&2 || true
            die "n$i exited before it was healthy (log: $RUN_DIR/n$i.log)"
        fi
        if ((SECONDS > deadline)); then
            tail -n 20 "$RUN_DIR/n$i.log" >&2 || true
            die "n$i not healthy within ${START_TIMEOUT}s (log: $RUN_DIR/n$i.log)"
        fi
        sleep 0.2
    done
    exists "$pid" || die "n$i exited (log: $RUN_DIR/n$i.log)"
}

node_number() {
    [[ "${1:-}" =~ ^[123]$ ]] || die "node must be 1, 2 or 3 (got '${1:-}')"
    echo "$1"
}

# -- commands -------------------------------------------------------------------

cmd_start() {
    local i
    mkdir -p "$RUN_DIR"
    for i in "${NODES[@]}"; do
        check_ports "$i"
    done
    for i in "${NODES[@]}"; do
        start_node "$i"
    done
    for i in "${NODES[@]}"; do
        wait_healthy "$i"
    done
    say "cluster healthy; DAGNATS_NATS_URL=$(urls)"
}

cmd_engine() {
    local pid dagnats log offset deadline
    pid="$(running_pid engine "$ENGINE_CMD")"
    if [[ -n "$pid" ]]; then
        say "engine already running (pid $pid)"
        return 0
    fi
    dagnats="$(find_exe "${DAGNATS_CLI:-}" dagnats DAGNATS_CLI)"
    mkdir -p "$RUN_DIR"
    log="$RUN_DIR/engine.log"
    touch "$log"
    offset="$(wc -c <"$log")"
    (
        cd "$RUN_DIR"
        exec nohup "$dagnats" serve --external --nats-url "$(urls)" "$@" </dev/null >>"$log" 2>&1
    ) &
    pid="$!"
    echo "$pid" >"$(pid_file engine)"
    deadline=$((SECONDS + START_TIMEOUT))
    until tail -c "+$((offset + 1))" "$log" | grep -q "engine ready"; do
        if ! exists "$pid"; then
            tail -c "+$((offset + 1))" "$log" | tail -n 20 >&2 || true
            rm -f "$(pid_file engine)"
            die "engine exited before it was ready (log: $log)"
        fi
        if ((SECONDS > deadline)); then
            tail -c "+$((offset + 1))" "$log" | tail -n 20 >&2 || true
            die "engine not ready within ${START_TIMEOUT}s (still running as pid $pid; log: $log)"
        fi
        sleep 0.2
    done
    say "engine ready (pid $pid, log $log)"
}

cmd_stop() {
    local i
    stop_process engine "$ENGINE_CMD"
    # SIGTERM every node first, so they shut down side by side.
    for i in "${NODES[@]}"; do
        stop_process "n$i" "$(node_cmd "$i")" &
    done
    wait
}

cmd_status() {
    local i pid health healthy=0
    for i in "${NODES[@]}"; do
        pid="$(running_pid "n$i" "$(node_cmd "$i")")"
        if [[ -z "$pid" ]]; then
            echo "n$i      stopped       nats://127.0.0.1:$(client_port "$i")"
            continue
        fi
        health="unhealthy"
        if http_ok "http://127.0.0.1:$(monitor_port "$i")/healthz"; then
            health="healthy"
            healthy=$((healthy + 1))
        fi
        echo "n$i      pid $pid  nats://127.0.0.1:$(client_port "$i")  monitor http://127.0.0.1:$(monitor_port "$i")  $health"
    done
    pid="$(running_pid engine "$ENGINE_CMD")"
    if [[ -n "$pid" ]]; then echo "engine  pid $pid"; else echo "engine  stopped"; fi
    echo "DAGNATS_NATS_URL=$(urls)"
    ((healthy == ${#NODES[@]}))
}

cmd_kill_node() {
    local i pid
    i="$(node_number "${1:-}")"
    pid="$(running_pid "n$i" "$(node_cmd "$i")")"
    [[ -n "$pid" ]] || die "n$i is not running"
    kill -KILL "$pid"
    wait_gone "$pid" "$(node_cmd "$i")"
    rm -f "$(pid_file "n$i")"
    say "killed n$i (pid $pid) with SIGKILL"
}

cmd_restart_node() {
    local i
    i="$(node_number "${1:-}")"
    stop_process "n$i" "$(node_cmd "$i")"
    check_ports "$i"
    start_node "$i"
    wait_healthy "$i"
    say "n$i healthy"
}

usage() {
    sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

main() {
    local command="${1:-}"
    [[ $# -gt 0 ]] && shift
    case "$command" in
    start) cmd_start ;;
    engine) cmd_engine "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    url) urls ;;
    kill-node) cmd_kill_node "$@" ;;
    restart-node) cmd_restart_node "$@" ;;
    -h | --help | help)
        usage
        ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
}

main "$@"
