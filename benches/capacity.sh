#!/usr/bin/env bash
# Where loss starts, and the forwarding delay at half that load, for Switchboard and Janus
# held to the same CPU budget. On this 2-core machine the load generator (every client with
# its own ICE, DTLS and SRTP) runs out of CPU long before a server does, so each server is put
# in a cgroup of its own with a CFS quota of $CORES cores (0.25 by default): a smaller machine
# for the server, the same for both. Each server starts inside its cgroup, as it would in a
# container with that CPU limit. The meeting scenario (rooms of 4) then grows until the
# clients lose packets or some cannot connect; the delay target is read at the largest load at
# most half of that. That load is then run once more against a Switchboard with no quota but
# the same threads (media workers and runtime threads as the quota gives): its delay is what
# the machine itself gives (a VM's scheduling, the load generator sharing its cores), the floor
# under what any quota can give.
#
#   benches/capacity.sh                          # CORES=0.25, rooms 2 4 6 8 10 12 16 20 24 28 32
#   CORES=0.5 ROOMS="2 4 6 8 10 12 14" benches/capacity.sh
#
# Needs root (it writes the cgroup). Table: $OUT/capacity.tsv (server, rooms, egress packets/s,
# server CPU in cores, loss %, delay p50 and p99 in µs, clients that never connected, then the
# datagrams dropped during the load: in the server's receive buffer, in any receive buffer, by a
# full send buffer, in the kernel's backlog); summary:
# $OUT/capacity.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-target/capacity}"
cores="${CORES:-0.25}"
loss_pct="${LOSS_PCT:-0.1}"
mkdir -p "$out"
source benches/servers.sh

# The CFS period: short, so a server that used up its quota waits at most this long.
period_us=10000
quota_us=$(python3 -c "print(int($cores * $period_us))")
cgroups=()
# Makes the cgroup of server $1 and moves this shell into it, so that the server started
# next starts inside it, as in a container with a CPU limit: a server that sizes its threads
# by the CPUs it may use (Switchboard's media workers and runtime do) sees the quota.
enter_cgroup() { # name
  local dir
  if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control || echo +cpu >/sys/fs/cgroup/cgroup.subtree_control
    dir=/sys/fs/cgroup/switchboard-capacity-$1
    mkdir -p "$dir"
    echo "$quota_us $period_us" >"$dir/cpu.max"
  else
    dir=/sys/fs/cgroup/cpu/switchboard-capacity-$1
    mkdir -p "$dir"
    echo "$period_us" >"$dir/cpu.cfs_period_us"
    echo "$quota_us" >"$dir/cpu.cfs_quota_us"
  fi
  echo $$ >"$dir/cgroup.procs"
  cgroups+=("$dir")
}
# Moves this shell back to the root cgroup: the load generator runs unrestricted.
leave_cgroup() {
  if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    echo $$ >/sys/fs/cgroup/cgroup.procs
  else
    echo $$ >/sys/fs/cgroup/cpu/cgroup.procs
  fi
}
cleanup() {
  leave_cgroup
  stop_servers
  for dir in "${cgroups[@]}"; do rmdir "$dir" 2>/dev/null || true; done
}
trap cleanup EXIT

enter_cgroup switchboard
start_switchboard "$out/switchboard.log"
enter_cgroup janus
start_janus "$out/janus.log"
leave_cgroup
echo "each server held to $cores cores (CFS quota $quota_us µs per $period_us µs)"

table="$out/capacity.tsv"
printf '%s\tserver_rcvbuf_drops\trcvbuf_drops\tsndbuf_drops\tbacklog_drops\n' "$(meeting_header)" >"$table"
# Runs one meeting load against server $1 (pid $2) labelled $3 and prints its row of the table,
# which also says where datagrams were dropped during the load (udp_drops, as differences).
measure() { # target pid label rooms
  local report="$out/$3.$4.json" before after
  read -ra before <<<"$(udp_drops "$2")"
  load "$1" --scenario meeting --rooms "$4" --participants 4 --seconds "${SECONDS_EACH:-10}" --json "$report" >/dev/null
  read -ra after <<<"$(udp_drops "$2")"
  printf '%s' "$(meeting_row "$report" "$3" "$4")"
  for i in 0 1 2 3; do printf '\t%d' $((after[i] - before[i])); done
  echo
}
for target in switchboard janus; do
  pid=$ours
  [[ $target == janus ]] && pid=$theirs
  for rooms in ${ROOMS:-2 4 6 8 10 12 16 20 24 28 32}; do
    row=$(measure "$target" "$pid" "$target" "$rooms")
    echo "$row" | tee -a "$table"
    # Past the first load with loss (or clients that never connected), more rooms only lose more.
    awk -F'\t' -v limit="$loss_pct" '{ exit !($5 >= limit || $8 > 0) }' <<<"$row" && break
  done
done

# The largest load measured at most half of where $1 started to lose (nothing if it never did).
half_load() { # server
  python3 - "$table" "$loss_pct" "$1" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]), delimiter="\t") if r["server"] == sys.argv[3]]
lossy = [int(r["rooms"]) for r in rows if float(r["loss_pct"]) >= float(sys.argv[2]) or int(r["not_connected"]) > 0]
half = [int(r["rooms"]) for r in rows if lossy and int(r["rooms"]) <= lossy[0] / 2]
print(half[-1] if half else "")
PY
}
half=$(half_load switchboard)
if [[ -n $half ]]; then
  port=$((port + 1))
  # The threads a quota of $cores gives (available_parallelism: the quota in whole cores, at least one).
  threads=$(python3 -c "import os; print(max(1, min(int($cores), os.cpu_count())))")
  SWITCHBOARD__MEDIA__WORKERS=$threads TOKIO_WORKER_THREADS=$threads start_switchboard "$out/switchboard-no-quota.log"
  measure switchboard "$ours" no-quota "$half" | tee -a "$table"
fi

python3 - "$table" "$loss_pct" "$cores" <<'PY' | tee "$out/capacity.md"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
threshold, cores = float(sys.argv[2]), sys.argv[3]
reference = {r["rooms"]: r for r in rows if r["server"] == "no-quota"}
print(f"| server ({cores} cores) | loss starts at | half that load | egress packets/s there | delay p50 / p99 there | the same load with no quota |")
print("| --- | --- | --- | --- | --- | --- |")
for server in ("switchboard", "janus"):
    own = [r for r in rows if r["server"] == server]
    lossy = [r for r in own if float(r["loss_pct"]) >= threshold or int(r["not_connected"]) > 0]
    if not lossy:
        print(f"| {server} | no loss up to {own[-1]['rooms']} rooms | – | – | – | – |")
        continue
    start = int(lossy[0]["rooms"])
    half = [r for r in own if int(r["rooms"]) <= start / 2]
    if not half:
        print(f"| {server} | {start} rooms | – | – | – | – |")
        continue
    h = half[-1]
    free = reference.get(h["rooms"]) if server == "switchboard" else None
    floor = f"{int(free['delay_p50_us']) / 1000:.2f} / {int(free['delay_p99_us']) / 1000:.2f} ms" if free else "–"
    failed = f", {lossy[0]['not_connected']} clients never connected" if int(lossy[0]["not_connected"]) else ""
    print(f"| {server} | {start} rooms ({lossy[0]['egress_pps']} packets/s, {lossy[0]['loss_pct']} % lost{failed}) | {h['rooms']} rooms "
          f"| {h['egress_pps']} | {int(h['delay_p50_us']) / 1000:.2f} / {int(h['delay_p99_us']) / 1000:.2f} ms | {floor} |")
PY
