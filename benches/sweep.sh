#!/usr/bin/env bash
# Server CPU against forwarded packets, Switchboard and Janus: the meeting scenario (rooms of
# 4, everyone sends 800 kbit/s video and audio) at a growing number of rooms, one server at a
# time, then a plot (docs/cpu-vs-packets.png, gnuplot) and the table behind it
# ($OUT/sweep.tsv: server, rooms, egress packets/s, CPU cores, loss %, delay p50 and p99 µs).
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
meeting_header >"$table"
for rooms in ${ROOMS:-1 2 4 6 8 10}; do
  for target in switchboard janus; do
    echo "== $rooms rooms: $target"
    report="$out/$target.$rooms.json"
    load "$target" --scenario meeting --rooms "$rooms" --participants 4 --seconds "${SECONDS_EACH:-10}" --json "$report" >/dev/null
    meeting_row "$report" "$target" "$rooms" >>"$table"
    tail -1 "$table"
  done
done

# One server's rows together, so gnuplot draws each line without gaps.
sorted="$out/sweep-sorted.tsv"
(head -1 "$table" && tail -n +2 "$table" | sort -t$'\t' -k1,1 -k2,2n) >"$sorted"
gnuplot -e "table='$sorted'; output='docs/cpu-vs-packets.png'" benches/cpu-vs-packets.gp
echo "plot in docs/cpu-vs-packets.png, table in $table"
