#!/usr/bin/env bash
# A soak: churn beside a steady meeting against one release Switchboard for an hour, on
# loopback and a veth pair inside a network namespace of its own (see servers.sh). The
# meeting (benches/scenarios/meeting.yaml: 4 rooms of 4 publishing video and audio) and the
# churn (churn.yaml: 2 rooms of 5, everyone replaced every 3 s) run in rounds of 10 minutes
# (the load generator's longest run), back to back. Every minute the server's resident
# memory, open descriptors, threads and database size are sampled into samples.tsv.
#
# The meeting's participants leave and join again at each round, so resident memory rises
# through a round and falls at its end: what must stay flat is its level from round to
# round. Passes when, after the first 10 minutes (warm-up), the mean of resident memory and
# of descriptors over each 10-minute window is within 5 % of the first such window's, the
# server logged no ERROR line, and in
# every round no client failed and every one that connected got media (all of the meeting's
# connect; of the churn's, a replacement the round's end stops before it connects is not
# counted against it).
#
#   benches/soak.sh                                # an hour
#   MINUTES=20 benches/soak.sh                     # a shorter one
#   MINUTES=1 ROUND_SECONDS=30 benches/soak.sh     # a smoke test of the script
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-target/soak}"
minutes="${MINUTES:-60}"
round_seconds="${ROUND_SECONDS:-570}"
mkdir -p "$out"
rm -f "$out"/*.json
source benches/servers.sh
start_switchboard "$out/server.log"
data="$work/switchboard-$port"

# A round is 570 s of measurement plus the generator's ramp and settling: about 10 minutes.
rounds=$(((minutes * 60 + round_seconds + 29) / (round_seconds + 30)))
run_rounds() { # scenario
  for round in $(seq 1 "$rounds"); do
    load switchboard --file "benches/scenarios/$1.yaml" --seconds "$round_seconds" --json "$out/$1-$round.json" >>"$out/$1.log" 2>&1
  done
}
run_rounds meeting &
meeting=$!
run_rounds churn &
churn=$!

printf 'minute\trss_kib\tfds\tthreads\tdb_kib\n' >"$out/samples.tsv"
minute=0
while kill -0 "$meeting" 2>/dev/null || kill -0 "$churn" 2>/dev/null; do
  rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$ours/status")
  threads=$(awk '/^Threads/ { print $2 }' "/proc/$ours/status")
  fds=$(find "/proc/$ours/fd" -mindepth 1 | wc -l)
  db=$(du -ck "$data"/switchboard.db* | tail -1 | cut -f1)
  printf '%s\t%s\t%s\t%s\t%s\n' "$minute" "$rss" "$fds" "$threads" "$db" >>"$out/samples.tsv"
  sleep 60
  minute=$((minute + 1))
done
wait "$meeting" "$churn"

python3 - "$out" <<'PY'
import csv, glob, json, os, sys
out = sys.argv[1]
rows = list(csv.DictReader(open(os.path.join(out, "samples.tsv")), delimiter="\t"))
failures = []
windows = {}
for r in rows:
    if int(r["minute"]) >= 10:
        windows.setdefault(int(r["minute"]) // 10, []).append(r)
# A last window of a few minutes says little.
windows = {k: v for k, v in windows.items() if len(v) >= 5}
if windows:
    for key in ("rss_kib", "fds"):
        means = [sum(float(r[key]) for r in window) / len(window) for _, window in sorted(windows.items())]
        low = min(float(r[key]) for window in windows.values() for r in window)
        high = max(float(r[key]) for window in windows.values() for r in window)
        print(f"{key}: means of the 10-minute windows after the warm-up: {', '.join(f'{m:.0f}' for m in means)} (samples {low:.0f} to {high:.0f})")
        if any(abs(m - means[0]) > 0.05 * means[0] for m in means):
            failures.append(f"the level of {key} moved more than 5 % after the warm-up")
else:
    failures.append("shorter than the warm-up")
print(f"threads: {rows[0]['threads']} to {rows[-1]['threads']}; database: {rows[0]['db_kib']} to {rows[-1]['db_kib']} KiB")
errors = [line for line in open(os.path.join(out, "server.log")) if " ERROR " in line]
print(f"server ERROR lines: {len(errors)}")
if errors:
    failures.append("the server logged errors")
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    r = json.load(open(path))
    got_media = r["join_to_media_us"]["count"]
    print(f"{os.path.basename(path)}: {r['clients']} clients, {r['connected']} connected, {r['failed']} failed, {got_media} got media, loss {r['loss'] * 100:.3f} %")
    # A churn replacement started in the last moments of a round can be stopped by its end
    # before it connects: at most one per place (2 rooms of 5).
    cut = 10 if r["scenario"] == "churn" else 0
    if r["failed"] or got_media != r["connected"] or r["clients"] - r["connected"] > cut:
        failures.append(f"{os.path.basename(path)}: not every client connected and got media")
print("PASS" if not failures else "FAIL: " + "; ".join(failures))
sys.exit(1 if failures else 0)
PY
