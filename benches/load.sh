#!/usr/bin/env bash
# Runs the load generator's scenarios (benches/scenarios/*.yaml) against a release Switchboard
# on this machine and writes one JSON report per scenario to $OUT (default target/load).
# benches/compare.sh runs the same scenarios against Switchboard and Janus.
#
#   benches/load.sh                    # every scenario
#   benches/load.sh meeting churn      # some of them
#   SECONDS_EACH=30 benches/load.sh
#   TRANSPORT=tcp benches/load.sh      # the clients' media over ICE-TCP only
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-target/load}"
mkdir -p "$out"
source benches/servers.sh
start_switchboard "$out/server.log"

scenarios=("$@")
((${#scenarios[@]})) || scenarios=(meeting livestream audio churn)
for name in "${scenarios[@]}"; do
  echo "== $name"
  extra=()
  [[ -n "${SECONDS_EACH:-}" ]] && extra=(--seconds "$SECONDS_EACH")
  [[ -n "${TRANSPORT:-}" ]] && extra+=(--transport "$TRANSPORT")
  load switchboard --file "benches/scenarios/$name.yaml" "${extra[@]}" --json "$out/$name.json"
done
echo "reports in $out"
