#!/usr/bin/env bash
# Server CPU against forwarded packets, Switchboard and Janus: the meeting scenario (rooms of
# 4, everyone sends 800 kbit/s video and audio) at a growing number of rooms, one server at a
# time, then a plot (docs/cpu-vs-packets.png, gnuplot) and the table behind it
# ($OUT/sweep.tsv: server, rooms, egress packets/s, CPU cores, loss %, delay p99 µs).
#
#   benches/sweep.sh                  # rooms 1 2 4 6 8 10
#   ROOMS="1 2 3" SECONDS_EACH=10 benches/sweep.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-target/sweep}"
mkdir -p "$out"
source benches/servers.sh
start_switchboard "$out/switchboard.log"
start_janus "$out/janus.log"

table="$out/sweep.tsv"
printf 'server\trooms\tegress_pps\tcpu_cores\tloss_pct\tdelay_p99_us\n' >"$table"
for rooms in ${ROOMS:-1 2 4 6 8 10}; do
  for target in switchboard janus; do
    echo "== $rooms rooms: $target"
    report="$out/$target.$rooms.json"
    load "$target" --scenario meeting --rooms "$rooms" --participants 4 --seconds "${SECONDS_EACH:-10}" --json "$report" >/dev/null
    python3 - "$report" "$target" "$rooms" >>"$table" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
pps = r["window_packets_received"] / r["window_seconds"]
print(f'{sys.argv[2]}\t{sys.argv[3]}\t{pps:.0f}\t{r["server_cpu_share"]:.3f}\t{r["loss"] * 100:.3f}\t{r["delay_us"]["p99"]}')
PY
    tail -1 "$table"
  done
done

# One server's rows together, so gnuplot draws each line without gaps.
sorted="$out/sweep-sorted.tsv"
(head -1 "$table" && tail -n +2 "$table" | sort -t$'\t' -k1,1 -k2,2n) >"$sorted"
gnuplot -e "table='$sorted'; output='docs/cpu-vs-packets.png'" benches/cpu-vs-packets.gp
echo "plot in docs/cpu-vs-packets.png, table in $table"
