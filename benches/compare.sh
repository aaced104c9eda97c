#!/usr/bin/env bash
# Switchboard against Janus VideoRoom under the same load on this machine: starts a release
# Switchboard and Janus 1.1.2 (Debian's `janus`, config in benches/janus), runs each scenario
# of benches/scenarios against one server, then the other, and prints both servers' figures
# and the ratios ours / Janus. JSON reports go to $OUT.
#
# Signaling is on 127.0.0.1. Janus never offers loopback ICE candidates, so the media of both
# servers and of the clients uses the machine's own IPv4 address: the kernel delivers it
# locally, nothing leaves the machine, and both servers see the same path.
#
#   benches/compare.sh                       # every scenario, 15 s each
#   benches/compare.sh meeting livestream    # some of them
#   SECONDS_EACH=30 benches/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-target/compare}"
port="${PORT:-7990}"
janus_port="${JANUS_PORT:-8188}"
scenarios=("$@")
((${#scenarios[@]})) || scenarios=(meeting livestream audio churn)
host_ip="${HOST_IP:-$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1)}"
[[ -n "$host_ip" ]] || { echo "no IPv4 address on this machine besides loopback; set HOST_IP" >&2; exit 1; }
mkdir -p "$out"
command -v janus >/dev/null || { echo "Janus is not installed: apt-get install janus" >&2; exit 1; }
cargo build --release --quiet
bin=target/release/switchboard

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

SWITCHBOARD__HTTP__LISTEN="127.0.0.1:$port" \
SWITCHBOARD__MEDIA__PORT_BASE=0 \
SWITCHBOARD__MEDIA__ANNOUNCED_IPS="[$host_ip]" \
SWITCHBOARD__DATABASE__URL="sqlite://$work/switchboard.db?mode=rwc" \
SWITCHBOARD__OBJECTS__LOCAL_DIR="$work/objects" \
SWITCHBOARD__RECORDING__SPOOL_DIR="$work/spool" \
RUST_LOG=warn "$bin" >"$out/switchboard.log" 2>&1 &
ours=$!
pids+=("$ours")

# Janus with the config of benches/janus, its API on 127.0.0.1:$janus_port.
cp benches/janus/*.jcfg "$work/"
sed -i "s/ws_port = 8188/ws_port = $janus_port/" "$work/janus.transport.websockets.jcfg"
sed -i "s/@HOST_IP@/$host_ip/" "$work/janus.jcfg"
janus -F "$work" -C "$work/janus.jcfg" --disable-colors >"$out/janus.log" 2>&1 &
theirs=$!
pids+=("$theirs")

for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$janus_port") 2>/dev/null && break
  sleep 0.1
done

for name in "${scenarios[@]}"; do
  spec="benches/scenarios/$name.yaml"
  extra=(--client-ip "$host_ip")
  [[ -n "${SECONDS_EACH:-}" ]] && extra+=(--seconds "$SECONDS_EACH")
  echo "== $name: switchboard"
  "$bin" loadtest --file "$spec" "${extra[@]}" --url "http://127.0.0.1:$port" --server-pid "$ours" --json "$out/$name.switchboard.json"
  echo "== $name: janus"
  "$bin" loadtest --file "$spec" "${extra[@]}" --target janus --url "ws://127.0.0.1:$janus_port" --server-pid "$theirs" --json "$out/$name.janus.json"
done

python3 benches/ratios.py "$out" "${scenarios[@]}" | tee "$out/ratios.md"
