#!/usr/bin/env bash
# Switchboard against Janus VideoRoom under the same load on this machine: starts a release
# Switchboard and Janus 1.1.2 (Debian's `janus`, config in benches/janus), runs each scenario
# of benches/scenarios against one server, then the other, and prints both servers' figures
# and the ratios ours / Janus. JSON reports go to $OUT.
#
#   benches/compare.sh                       # every scenario
#   benches/compare.sh meeting livestream    # some of them
#   SECONDS_EACH=30 benches/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-target/compare}"
mkdir -p "$out"
source benches/servers.sh
start_switchboard "$out/switchboard.log"
start_janus "$out/janus.log"

scenarios=("$@")
((${#scenarios[@]})) || scenarios=(meeting livestream audio churn)
for name in "${scenarios[@]}"; do
  extra=()
  [[ -n "${SECONDS_EACH:-}" ]] && extra=(--seconds "$SECONDS_EACH")
  for target in switchboard janus; do
    echo "== $name: $target"
    load "$target" --file "benches/scenarios/$name.yaml" "${extra[@]}" --json "$out/$name.$target.json"
  done
done

python3 benches/ratios.py "$out" "${scenarios[@]}" | tee "$out/ratios.md"
