#!/usr/bin/env bash
# The fleetsnap demo: a primary + replica pair, a snapshot of the replica into two local regions,
# a verified restore, and the restored dataset compared with the source.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
cargo build --release --quiet -p fleetsnap-agent
agent="$PWD/target/release/fleetsnap-agent"

demo="$(mktemp -d /tmp/fleetsnap-demo.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$demo"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_redis() { # name port [extra args]
  local name=$1 port=$2; shift 2
  mkdir -p "$demo/$name"
  redis-server --bind 127.0.0.1 --port "$port" --dir "$demo/$name" --save "" --appendonly no \
    --repl-diskless-sync-delay 0 --enable-debug-command yes --logfile "$demo/$name/redis.log" "$@" &
  pids+=($!)
  for _ in $(seq 1 300); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return 0; sleep 0.1; done
  echo "redis-server $name did not start: $(tail -5 "$demo/$name/redis.log")" >&2; exit 1
}

primary=$(free_port); replica=$(free_port); restored=$(free_port)
echo "== starting a primary (port $primary) and a replica (port $replica)"
start_redis primary "$primary"
start_redis replica "$replica" --replicaof 127.0.0.1 "$primary"

echo "== writing data to the primary"
# DEBUG POPULATE is not replicated; redis-benchmark's SETs are.
redis-benchmark -p "$primary" -t set -n 300000 -r 200000 -d 64 -q >/dev/null
redis-cli -p "$primary" hset user:1 name ada lang rust >/dev/null
redis-cli -p "$primary" rpush queue a b c >/dev/null
redis-cli -p "$primary" zadd board 1 one 2 two >/dev/null
redis-cli -p "$primary" xadd events '*' kind demo >/dev/null
redis-cli -p "$primary" set session:1 token EX 3600 >/dev/null
want=$(redis-cli -p "$primary" info replication | sed -n 's/^master_repl_offset:\([0-9]*\).*/\1/p')
for _ in $(seq 1 300); do
  got=$(redis-cli -p "$replica" info replication | sed -n 's/^master_repl_offset:\([0-9]*\).*/\1/p')
  [ "${got:-0}" -ge "$want" ] && break; sleep 0.1
done

echo "== snapshot of the replica to two regions"
"$agent" snapshot --redis "redis://127.0.0.1:$replica" --to "file://$demo/region-a" --to "file://$demo/region-b" \
  --cluster demo --shard shard-0
echo
"$agent" ls --from "file://$demo/region-b"
"$agent" ls --from "file://$demo/region-b" --json > "$demo/ls.json"
id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[-1]["backup_id"])' "$demo/ls.json")
echo

echo "== verify in region-a, restore (region-a first, region-b as fallback)"
"$agent" verify --from "file://$demo/region-a" --backup "$id"
"$agent" restore --from "file://$demo/region-a" --from "file://$demo/region-b" --backup "$id" --to-file "$demo/restored/dump.rdb"
start_redis restored "$restored"

src_keys=$(redis-cli -p "$primary" dbsize); dst_keys=$(redis-cli -p "$restored" dbsize)
src_digest=$(redis-cli -p "$primary" debug digest); dst_digest=$(redis-cli -p "$restored" debug digest)
printf '\n%-10s %10s  %s\n' "" "KEYS" "DIGEST"
printf '%-10s %10s  %s\n' source "$src_keys" "$src_digest" restored "$dst_keys" "$dst_digest"
if [ "$src_keys" = "$dst_keys" ] && [ "$src_digest" = "$dst_digest" ]; then
  echo "restored dataset equals the source"
else
  echo "MISMATCH: the restored dataset differs from the source" >&2; exit 1
fi
