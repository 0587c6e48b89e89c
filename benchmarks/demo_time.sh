#!/usr/bin/env bash
# `make demo` wall time of a baseline commit against this checkout's HEAD, run alternately (base, head,
# base, head, ...) in fresh clones after `make install`, so a noisy shared machine still compares.
#
#   benchmarks/demo_time.sh BASE_REF [ROUNDS]      # e.g. benchmarks/demo_time.sh b13cb91 2 (about 55 min)
#
# Prints each run's seconds and the ratio head / base over all rounds; per-stage times are in the logs.
set -euo pipefail
base_ref=${1:?usage: benchmarks/demo_time.sh BASE_REF [ROUNDS]}
rounds=${2:-2}
repo=$(git rev-parse --show-toplevel)
dir=$(mktemp -d /tmp/demo_time.XXXX)
for name in base head; do
  ref=$([ $name = base ] && echo "$base_ref" || git -C "$repo" rev-parse HEAD)
  git clone -q "$repo" "$dir/$name"
  git -C "$dir/$name" checkout -q "$ref"
  (cd "$dir/$name" && make install > "$dir/$name.install.log" 2>&1) || { echo "make install failed for $name ($ref)"; exit 1; }
done
declare -A total=([base]=0 [head]=0)
for round in $(seq 1 "$rounds"); do
  for name in base head; do
    rm -rf "$dir/$name/work"
    start=$(date +%s)
    (cd "$dir/$name" && make demo > "$dir/$name.demo$round.log" 2>&1) || { echo "make demo failed: $dir/$name.demo$round.log"; exit 1; }
    secs=$(( $(date +%s) - start ))
    total[$name]=$(( ${total[$name]} + secs ))
    echo "round $round $name: $secs s"
  done
done
echo "head / base over $rounds rounds: $(python3 -c "print(f'{${total[head]} / ${total[base]}:.3f}')") (logs in $dir)"
