#!/usr/bin/env bash
# End-to-end registry benchmark over HTTP with the release binary:
#   1. start `herd serve` on a fresh data directory (SQLite, port chosen by the OS),
#   2. import N devices from a generated CSV through `herd device import` (streamed upload),
#   3. time filtered first pages of 50 with curl (client-observed latency, median and p99).
# Usage: scripts/bench-http-registry.sh [N=1000000] [RUNS=100]
# Prints a markdown table for docs/benchmarks.md. Figures are measured, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
RUNS=${2:-100}
cargo build --release --bin herd -q
HERD=$PWD/target/release/herd
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

python3 - "$N" > "$WORK/fleet.csv" <<'PY'
import sys
n = int(sys.argv[1])
sites = ["berlin","paris","rome","madrid","vienna","prague","oslo","lisbon","dublin","athens"]
# New devices may start only as registered or active (the lifecycle rule).
states = ["registered","active"]
out = sys.stdout
out.write("id,name,state,tag.site,tag.floor,attributes\n")
for i in range(n):
    out.write(f'dev-{i:07d},Sensor {i},{states[(i // 10) % 2]},{sites[i % 10]},{i % 5},"{{""slot"":{i}}}"\n')
PY

"$HERD" serve --data-dir "$WORK/data" --http-listen 127.0.0.1:0 --log-format json 2> "$WORK/serve.log" &
PID=$!
for _ in $(seq 1 100); do grep -q 'herd is serving' "$WORK/serve.log" && break; sleep 0.1; done
ADDR=$(grep 'herd is serving' "$WORK/serve.log" | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["http"])')
export HERD_URL=http://$ADDR HERD_TOKEN=$(cat "$WORK/data/admin-token")

SIZE=$(du -h "$WORK/fleet.csv" | cut -f1)
START=$(date +%s.%N)
"$HERD" device import "$WORK/fleet.csv" > "$WORK/import.txt"
head -n 1 "$WORK/import.txt"
END=$(date +%s.%N)
python3 -c "print(f'import of $N devices ($SIZE CSV) over HTTP: {($END-$START):.1f} s, {$N/($END-$START):.0f} devices/s')"

echo
echo "| filter | median | p99 |"
echo "|---|---:|---:|"
for F in "" "state = 'active'" "tags.site = 'berlin'" "tags.site = 'berlin' and state = 'active'" "id startswith 'dev-00012'" "tags.site = 'berlin' and state = 'retired'"; do
  Q=$(python3 -c 'import sys,urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$F")
  for _ in $(seq 1 "$RUNS"); do
    curl -s -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $HERD_TOKEN" "$HERD_URL/api/v1/devices?limit=50&filter=$Q"
  done | python3 -c '
import sys
t = sorted(float(x) * 1000 for x in sys.stdin)
f = sys.argv[1] or "none"
print(f"| `{f}` | {t[len(t)//2]:.2f} ms | {t[min(len(t)-1, int(len(t)*0.99))]:.2f} ms |")' "$F"
done
