# Sourced by the load scripts of benches/: starts a release Switchboard and, when asked,
# Janus 1.1.2 with benches/janus, each stopped when the calling script exits. Sets $bin,
# $host_ip, $ours (pid) and $theirs (pid).
#
# Servers and clients run inside a network namespace the script makes itself (`unshare -n`):
# loopback, plus a veth pair with addresses of its own (10.77.0.1 and 10.77.0.2), so nothing
# is sent to the machine's own interface address and no other traffic shares the path.
# Signaling is on 127.0.0.1. Janus never offers loopback ICE candidates, so the media of both
# servers and of the clients uses the veth pair's 10.77.0.1. Needs root (or CAP_SYS_ADMIN and
# CAP_NET_ADMIN) for the namespace.

port="${PORT:-7990}"
janus_port="${JANUS_PORT:-8188}"
# SWITCHBOARD_BIN runs a given build (an earlier commit's, say) instead of building this tree;
# LOAD_BIN, the load generator of another (by default the server's), so that two servers can
# be measured under the same load.
if [[ -n "${SWITCHBOARD_BIN:-}" ]]; then
  bin=$SWITCHBOARD_BIN
else
  [[ -n "${SWITCHBOARD_BENCH_NETNS:-}" ]] || cargo build --release --quiet
  bin=target/release/switchboard
fi
if [[ -z "${SWITCHBOARD_BENCH_NETNS:-}" ]]; then
  # Run the calling script again inside a namespace of its own.
  exec unshare -n env SWITCHBOARD_BENCH_NETNS=1 bash "$0" "$@"
fi
ip link set lo up
ip link add sb-bench0 type veth peer name sb-bench1
ip addr add 10.77.0.1/24 dev sb-bench0
ip addr add 10.77.0.2/24 dev sb-bench1
ip link set sb-bench0 up
ip link set sb-bench1 up
host_ip=10.77.0.1
work=$(mktemp -d)
pids=()
stop_servers() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap stop_servers EXIT

# Starts a Switchboard on $port with a data directory of its own, so that two can run at once.
start_switchboard() { # log file
  local data="$work/switchboard-$port"
  mkdir -p "$data"
  SWITCHBOARD__HTTP__LISTEN="127.0.0.1:$port" \
  SWITCHBOARD__MEDIA__PORT_BASE=0 \
  SWITCHBOARD__MEDIA__ANNOUNCED_IPS="[$host_ip]" \
  SWITCHBOARD__DATABASE__URL="sqlite://$data/switchboard.db?mode=rwc" \
  SWITCHBOARD__OBJECTS__LOCAL_DIR="$data/objects" \
  SWITCHBOARD__RECORDING__SPOOL_DIR="$data/spool" \
  RUST_LOG=warn "$bin" >"$1" 2>&1 &
  ours=$!
  pids+=("$ours")
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return
    sleep 0.1
  done
  echo "Switchboard did not start; see $1" >&2
  exit 1
}

start_janus() { # log file
  command -v janus >/dev/null || { echo "Janus is not installed: apt-get install janus" >&2; exit 1; }
  mkdir -p "$work/janus"
  cp benches/janus/*.jcfg "$work/janus/"
  sed -i "s/ws_port = 8188/ws_port = $janus_port/" "$work/janus/janus.transport.websockets.jcfg"
  sed -i "s/@HOST_IP@/$host_ip/" "$work/janus/janus.jcfg"
  janus -F "$work/janus" -C "$work/janus/janus.jcfg" --disable-colors >"$1" 2>&1 &
  theirs=$!
  pids+=("$theirs")
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$janus_port") 2>/dev/null && return
    sleep 0.1
  done
  echo "Janus did not start; see $1" >&2
  exit 1
}

# Runs the load generator against one server: target (switchboard|janus), then loadtest flags.
load() {
  local target=$1
  shift
  if [[ $target == janus ]]; then
    "${LOAD_BIN:-$bin}" loadtest --target janus --url "ws://127.0.0.1:$janus_port" --server-pid "$theirs" --client-ip "$host_ip" "$@"
  else
    "${LOAD_BIN:-$bin}" loadtest --url "http://127.0.0.1:$port" --server-pid "$ours" --client-ip "$host_ip" "$@"
  fi
}

# Where datagrams were dropped so far, as four counts: in the receive buffers of process $1's
# sockets, in any UDP receive buffer of the namespace (servers and clients), by a full UDP send
# buffer in the namespace, and in the kernel's per-CPU backlog (which loopback and veth
# traffic passes through; counted machine-wide).
udp_drops() { # pid
  local inodes
  inodes=$(find "/proc/$1/fd" -lname 'socket:*' -printf '%l\n' 2>/dev/null | tr -dc '0-9\n' | paste -sd'|')
  awk -v inodes="^(${inodes:-none})$" 'FNR > 1 && $10 ~ inodes { sum += $NF } END { printf "%d", sum }' /proc/net/udp /proc/net/udp6
  awk '/^Udp: [0-9]/ { printf " %d %d", $6, $7 }' /proc/net/snmp
  awk '{ sum += strtonum("0x" $2) } END { printf " %d\n", sum }' /proc/net/softnet_stat
}

# The meeting table's columns, for sweep.sh and capacity.sh: a header, then one row per report.
meeting_header() {
  printf 'server\trooms\tegress_pps\tcpu_cores\tloss_pct\tdelay_p50_us\tdelay_p99_us\tnot_connected\n'
}
meeting_row() { # report.json server rooms
  python3 - "$@" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
pps = r["window_packets_received"] / r["window_seconds"]
d = r["delay_us"]
print(f'{sys.argv[2]}\t{sys.argv[3]}\t{pps:.0f}\t{r["server_cpu_share"]:.3f}\t{r["loss"] * 100:.3f}\t{d["p50"]}\t{d["p99"]}\t{r["clients"] - r["connected"]}')
PY
}
