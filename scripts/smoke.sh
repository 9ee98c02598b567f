#!/usr/bin/env bash
# Smoke test of a built tidewater binary, end to end with real clients:
#   MQTT publish -> SSE stream, HTTP publish -> MQTT subscriber, SIGTERM -> exit 0,
#   and a retained value and the SSE stream's place kept across SIGTERM and
#   SIGKILL (the log in ./data of the temp dir).
#
# Usage: scripts/smoke.sh [path/to/tidewater]   (default: target/release/tidewater)
# Needs curl, mosquitto_pub, mosquitto_sub, and python3 (optional, for picking
# free ports). Builds nothing. Runs the bridge in a temporary directory, on
# free loopback ports, and kills only the processes it started.
set -euo pipefail

BIN=${1:-target/release/tidewater}
WORK=""         # temp dir, created once the checks below pass
PIDS=()         # every background process this script started
BRIDGE_PID=""
PASSED=0

# On exit, however it happens: stop what we started (by pid), show the
# bridge's log if something failed, remove the temp dir, print the summary.
cleanup() {
    local status=$?
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true # reap quietly (no "Killed" notice)
    done
    if [[ $PASSED -ne 1 ]]; then
        if [[ -n $WORK && -s $WORK/bridge.log ]]; then
            echo "--- bridge log (last 30 lines) ---" >&2
            tail -n 30 "$WORK/bridge.log" >&2
        fi
        echo "smoke: 0 passed, 1 failed"
        [[ $status -ne 0 ]] || status=1
    fi
    [[ -z $WORK ]] || rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT

step() { echo "smoke: $*"; }
# Drops a pid from PIDS once it has been waited for, so a recycled pid is
# never killed.
forget() {
    local keep=() pid
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        [[ $pid == "$1" ]] || keep+=("$pid")
    done
    PIDS=(${keep[@]+"${keep[@]}"})
}
fail() {
    echo "smoke: FAILED: $*" >&2
    exit 1
}

# Two loopback ports free right now: bound to port 0 together, then released.
free_ports() {
    if command -v python3 >/dev/null; then
        python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))'
    else
        # No python3: random high ports that nothing answers on.
        local ports=() port
        while [[ ${#ports[@]} -lt 2 ]]; do
            port=$((20000 + RANDOM % 40000))
            if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null \
                && [[ " ${ports[*]} " != *" $port "* ]]; then
                ports+=("$port")
            fi
        done
        echo "${ports[@]}"
    fi
}

# wait_for TRIES CMD...: runs CMD every 0.1 s until it succeeds, at most TRIES times.
wait_for() {
    local tries=$1
    shift
    for ((i = 0; i < tries; i++)); do
        if "$@"; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

[[ -x $BIN ]] || fail "expected an executable at $BIN (build it first: cargo build --release)"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
for tool in curl mosquitto_pub mosquitto_sub; do
    command -v "$tool" >/dev/null \
        || fail "expected $tool on PATH (apt-get install mosquitto-clients curl)"
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tidewater-smoke.XXXXXX")

cd "$WORK"

healthy() {
    kill -0 "$BRIDGE_PID" 2>/dev/null && curl -fsS -m 1 -o /dev/null "$BASE/healthz" 2>/dev/null
}

# Starts the bridge on $MQTT and $HTTP, its output appended to bridge.log.
launch() {
    TIDEWATER_MQTT__LISTEN="127.0.0.1:$MQTT" TIDEWATER_HTTP__LISTEN="127.0.0.1:$HTTP" \
        TIDEWATER_WEBSOCKET__LISTEN="127.0.0.1:0" \
        TIDEWATER_AUTH__ANONYMOUS_WEB=true TIDEWATER_AUTH__ANONYMOUS_MQTT=true \
        "$BIN" >>bridge.log 2>&1 &
    BRIDGE_PID=$!
    PIDS+=("$BRIDGE_PID")
}

# 1. Start the bridge in the temp dir (no bridge.toml there: defaults plus
#    env). Anonymous access is off by default; these clients have no
#    credentials, so it is turned on, as the shipped bridge.toml does.
#    The ports are free when chosen but released before the bridge binds
#    them, so another process may take one in between: then the bridge
#    exits naming the address, and the script tries again with new ports.
for attempt in 1 2 3; do
    read -r MQTT HTTP < <(free_ports) || true
    [[ -n ${MQTT:-} && -n ${HTTP:-} ]] || fail "expected two free loopback ports"
    BASE="http://127.0.0.1:$HTTP"
    step "starting $BIN (mqtt 127.0.0.1:$MQTT, http 127.0.0.1:$HTTP)"
    launch
    if wait_for 100 healthy; then
        break
    fi
    if [[ $attempt -lt 3 ]] && ! kill -0 "$BRIDGE_PID" 2>/dev/null \
        && grep -qs 'Address already in use' bridge.log; then
        step "a chosen port was taken before the bridge bound it; retrying with new ports"
        continue
    fi
    kill -0 "$BRIDGE_PID" 2>/dev/null || fail "expected the bridge to keep running; it exited during startup"
    fail "expected GET /healthz to answer 200 within 10 s"
done
step "ok: GET /healthz answers 200"

# 2. An SSE stream on home/+/temperature receives a device's MQTT publish.
curl -sN -m 60 "$BASE/events?topic=home/%2B/temperature" >events.txt 2>curl.err &
PIDS+=("$!")
# The `retry:` line comes after the subscription is registered.
wait_for 50 grep -qs '^retry:' events.txt \
    || fail "expected the SSE stream to start with a retry: line; got: $(cat events.txt curl.err)"
mosquitto_pub -h 127.0.0.1 -p "$MQTT" -t home/livingroom/temperature -m 21.5 \
    || fail "expected mosquitto_pub to the bridge's broker to succeed"
sse_has_message() { grep -qsx 'data: 21.5' events.txt && grep -qs '^id:' events.txt; }
wait_for 50 sse_has_message \
    || fail "expected 'data: 21.5' and an 'id:' line on the SSE stream; got: $(cat events.txt)"
step "ok: MQTT publish reached the SSE stream ($(grep -m1 '^id:' events.txt))"

# 3. An HTTP publish reaches an MQTT subscriber. With -d, mosquitto_sub logs
#    its SUBACK, so we publish only once the subscription is in place; stdbuf
#    line-buffers that log (stdout to a file is otherwise block-buffered).
if command -v stdbuf >/dev/null; then
    stdbuf -oL mosquitto_sub -d -h 127.0.0.1 -p "$MQTT" -t 'home/#' -C 1 -W 10 >sub.txt 2>&1 &
    SUB_PID=$!
    PIDS+=("$SUB_PID")
    wait_for 50 grep -qs 'SUBACK' sub.txt \
        || fail "expected mosquitto_sub to be subscribed to home/#; got: $(cat sub.txt)"
else
    mosquitto_sub -h 127.0.0.1 -p "$MQTT" -t 'home/#' -C 1 -W 10 >sub.txt 2>&1 &
    SUB_PID=$!
    PIDS+=("$SUB_PID")
    sleep 1 # no stdbuf: no way to see the SUBACK, give it a moment
fi
code=$(curl -sS -o publish.json -w '%{http_code}' -X POST "$BASE/publish/home/light/1/set" -d on) \
    || fail "expected POST /publish to connect"
[[ $code == 202 ]] || fail "expected POST /publish (qos 0) to answer 202; got $code: $(cat publish.json)"
sub_status=0
wait "$SUB_PID" || sub_status=$?
forget "$SUB_PID"
grep -qx 'on' sub.txt \
    || fail "expected mosquitto_sub to print 'on' (exit $sub_status); got: $(cat sub.txt)"
step "ok: POST /publish/home/light/1/set reached the MQTT subscriber"

# 4. A retained value, and the SSE stream's last id before it.
LAST_ID=$(grep -m1 '^id:' events.txt | cut -d' ' -f2)
mosquitto_pub -h 127.0.0.1 -p "$MQTT" -r -t home/kitchen/temperature -m 19 \
    || fail "expected mosquitto_pub -r to succeed"
wait_for 50 grep -qsx 'data: 19' events.txt \
    || fail "expected the retained publish on the SSE stream; got: $(cat events.txt)"

# 5. SIGTERM stops the bridge with status 0 within 5 s.
kill -TERM "$BRIDGE_PID"
stopped() { ! kill -0 "$BRIDGE_PID" 2>/dev/null; }
wait_for 50 stopped || fail "expected the bridge to exit within 5 s of SIGTERM"
bridge_status=0
wait "$BRIDGE_PID" || bridge_status=$?
forget "$BRIDGE_PID"
[[ $bridge_status -eq 0 ]] || fail "expected exit status 0 after SIGTERM; got $bridge_status"
step "ok: SIGTERM stopped the bridge with status 0"

# 6. After SIGTERM, then again after SIGKILL: the retained value is there
#    for a new MQTT subscriber, and a resume from the last id gets exactly
#    what came after it (the retained publish), with no gap.
for how in SIGTERM SIGKILL; do
    launch
    wait_for 100 healthy || fail "expected the bridge to start again after $how"
    mosquitto_sub -h 127.0.0.1 -p "$MQTT" -t 'home/kitchen/#' -C 1 -W 10 >retained.txt 2>&1 \
        || fail "expected the retained value after $how; got: $(cat retained.txt)"
    grep -qx '19' retained.txt || fail "expected '19' after $how; got: $(cat retained.txt)"
    curl -sN -m 2 -H "Last-Event-ID: $LAST_ID" "$BASE/events?topic=%23" >resumed.txt 2>/dev/null || true
    grep -qsx 'data: 19' resumed.txt && ! grep -qs '^event: gap' resumed.txt \
        || fail "expected the resume after $LAST_ID to replay 19 without a gap after $how; got: $(cat resumed.txt)"
    curl -sN -m 2 "$BASE/events?topic=%23&since=-5m" >since.txt 2>/dev/null || true
    grep -qsx 'data: 21.5' since.txt \
        || fail "expected since=-5m to replay 21.5 after $how; got: $(cat since.txt)"
    step "ok: after $how, the retained value, an exact resume and since=-5m"
    if [[ $how == SIGTERM ]]; then
        kill -KILL "$BRIDGE_PID"
        wait "$BRIDGE_PID" 2>/dev/null || true
        forget "$BRIDGE_PID"
    fi
done
kill -TERM "$BRIDGE_PID"
wait_for 50 stopped || fail "expected the restarted bridge to exit within 5 s of SIGTERM"
wait "$BRIDGE_PID" || fail "expected exit status 0 after SIGTERM"
forget "$BRIDGE_PID"

PASSED=1
echo "smoke: 1 passed, 0 failed"
