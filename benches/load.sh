#!/usr/bin/env bash
# Runs the load generator's scenarios (benches/scenarios/*.yaml) against a Switchboard server
# on this machine (loopback only) and writes one JSON report per scenario to $OUT (default
# target/load). benches/compare.sh runs the same scenarios against Switchboard and Janus.
#
#   benches/load.sh                    # release build, every scenario
#   benches/load.sh meeting churn      # some of them
#   SECONDS_EACH=30 benches/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-target/load}"
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

scenarios=("$@")
((${#scenarios[@]})) || scenarios=(meeting livestream audio churn)
for name in "${scenarios[@]}"; do
  echo "== $name"
  extra=()
  [[ -n "${SECONDS_EACH:-}" ]] && extra=(--seconds "$SECONDS_EACH")
  "$bin" loadtest --file "benches/scenarios/$name.yaml" "${extra[@]}" --url "http://127.0.0.1:$port" --server-pid "$server" --json "$out/$name.json"
done
echo "reports in $out"
