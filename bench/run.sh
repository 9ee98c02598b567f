#!/usr/bin/env bash
# Runs every benchmark scenario against every system in one invocation and
# writes the markdown table (default: bench-results.md in the current
# directory). Extra arguments go to the load generator, e.g.
#   bash bench/run.sh --quick
#   bash bench/run.sh --systems tidewater,rumqttd --out table.md
#   bash bench/run.sh s2 --fanouts 1000          # one scenario
#
# Needs: taskset (util-linux), mosquitto, nginx with libnginx-mod-nchan.
# As root with apt-get it installs what is missing; otherwise it prints the
# command and runs the systems it has (the others are reported as skipped).
# The servers are pinned to core 0 and the load generator to core 1; all
# traffic stays on loopback. Tidewater reads TIDEWATER_* variables from this
# environment, so `TIDEWATER_SSE__QUEUE_CAPACITY=16384 bash bench/run.sh`
# measures a changed setting.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"

missing=()
command -v taskset >/dev/null || missing+=(util-linux)
[[ -x /usr/sbin/mosquitto ]] || command -v mosquitto >/dev/null || missing+=(mosquitto)
[[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null || missing+=(nginx)
[[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]] || missing+=(libnginx-mod-nchan)
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "==> installing ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    else
        echo "warning: missing ${missing[*]}; install with:" >&2
        echo "    sudo apt-get install ${missing[*]}" >&2
        echo "continuing with the systems that are available" >&2
    fi
fi

echo "==> cargo build --release -p tidewater -p bench"
(cd "$repo" && cargo build --release --locked -p tidewater -p bench)

# Tens of thousands of connections: take the highest limit allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "==> file-descriptor limit $(ulimit -n); load average $(cut -d' ' -f1-3 /proc/loadavg)"

if [[ $# -eq 0 || $1 == -* ]]; then
    set -- all "$@"
fi
exec "$target/release/bench" "$@"
