#!/usr/bin/env bash
# Runs the load generator's scenarios against a Switchboard server on this machine
# (loopback only) and writes one JSON report per scenario to $OUT (default target/load).
#
#   benches/load.sh            # release build, every scenario, 15 s each
#   SECONDS_EACH=30 benches/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-target/load}"
seconds="${SECONDS_EACH:-15}"
port="${PORT:-7990}"
mkdir -p "$out"
cargo build --release --quiet
bin=target/release/switchboard

work=$(mktemp -d)
SWITCHBOARD__HTTP__LISTEN="127.0.0.1:$port" \
SWITCHBOARD__MEDIA__PORT_BASE=0 \
SWITCHBOARD__MEDIA__ANNOUNCED_IPS="[127.0.0.1]" \
SWITCHBOARD__DATABASE__URL="sqlite://$work/switchboard.db?mode=rwc" \
SWITCHBOARD__OBJECTS__LOCAL_DIR="$work/objects" \
SWITCHBOARD__RECORDING__SPOOL_DIR="$work/spool" \
RUST_LOG=warn "$bin" >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 50); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  sleep 0.1
done

run() { # name, then loadtest arguments
  local name=$1
  shift
  echo "== $name"
  "$bin" loadtest --url "http://127.0.0.1:$port" --seconds "$seconds" --server-pid "$server" --json "$out/$name.json" "$@"
}
run meeting --scenario meeting --rooms 4 --participants 4
run livestream --scenario livestream --rooms 1 --participants 50
run audio --scenario audio --rooms 2 --participants 25 --speakers 3
run churn --scenario churn --rooms 2 --participants 5 --lifetime 3
echo "reports in $out"
