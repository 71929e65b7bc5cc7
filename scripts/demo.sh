#!/usr/bin/env bash
# The fleetsnap demo on the embedded default: one coordinator (single-node mode), a 3-shard Redis
# Cluster with a replica per shard plus a primary/replica pair, an agent beside every Redis node,
# two local regions. It runs a `consistent` backup window across both clusters, shows it, restores
# one shard (RDB plus the replication tail up to the cut) and compares it with the source, runs a
# restore drill, rebuilds the whole cluster in a new server with the restore-cluster runbook, and
# undoes a FLUSHALL with the continuous archive.
set -euo pipefail
# No cloud SDK looks for an instance-metadata service: everything here is on loopback.
export AWS_EC2_METADATA_DISABLED=true
cd "$(dirname "$0")/.."
scripts/setup.sh demo
cargo build --release --quiet -p fleetsnap-coordinator -p fleetsnap-agent -p fleetsnap-cli
bin="$PWD/target/release"

demo="$(mktemp -d /tmp/fleetsnap-demo.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$demo"; }
trap cleanup EXIT
fail() { echo "demo: $*" >&2; for l in "$demo"/*.log; do [ -f "$l" ] && { echo "--- $l" >&2; tail -5 "$l" >&2; }; done; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# A cluster node also listens on its port + 10000.
cluster_port() { local p; while :; do p=$(free_port); [ "$p" -le 55535 ] && { echo "$p"; return; }; done; }
start_redis() { # name port [extra args]
  local name=$1 port=$2; shift 2
  mkdir -p "$demo/$name"
  redis-server --bind 127.0.0.1 --port "$port" --dir "$demo/$name" --save "" --appendonly no \
    --repl-diskless-sync-delay 0 --enable-debug-command yes --logfile "$demo/$name/redis.log" "$@" &
  pids+=($!)
  for _ in $(seq 1 300); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return 0; sleep 0.1; done
  fail "redis-server $name did not start: $(tail -5 "$demo/$name/redis.log")"
}

echo "== Redis: a 3-shard cluster with a replica per shard, and a primary/replica pair"
names=(); ports=()
for i in 0 1 2 3 4 5; do
  p=$(cluster_port); names+=("shop-$i"); ports+=("$p")
  start_redis "shop-$i" "$p" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000
done
redis-cli --cluster create $(for p in "${ports[@]}"; do printf '127.0.0.1:%s ' "$p"; done) \
  --cluster-replicas 1 --cluster-yes >/dev/null
for _ in $(seq 1 300); do
  redis-cli -p "${ports[0]}" cluster info | grep -q cluster_state:ok && break; sleep 0.1
done
pp=$(free_port); rp=$(free_port)
names+=(cache-primary cache-replica); ports+=("$pp" "$rp")
start_redis cache-primary "$pp"
start_redis cache-replica "$rp" --replicaof 127.0.0.1 "$pp"

echo "== writing data"
redis-benchmark --cluster -p "${ports[0]}" -t set -n 200000 -r 150000 -d 64 -q >/dev/null
redis-benchmark -p "$pp" -t set -n 50000 -r 40000 -d 64 -q >/dev/null
redis-cli -c -p "${ports[0]}" hset user:1 name ada lang rust >/dev/null
redis-cli -c -p "${ports[0]}" rpush queue a b c >/dev/null
redis-cli -c -p "${ports[0]}" zadd board 1 one 2 two >/dev/null

echo "== certificates, one coordinator, an agent per Redis node"
agents=$(for i in "${!names[@]}"; do printf 'a%s,' "$i"; done)
"$bin/fleetsnap" certs init --dir "$demo/certs" --peers 1 --agents "${agents%,}" --admins demo >/dev/null
cport=$(free_port); mport=$(free_port)
tls() { printf '[tls]\nca = "%s"\ncert = "%s.pem"\nkey = "%s.key"\n' "$demo/certs/ca.pem" "$demo/certs/$1" "$demo/certs/$1"; }
{
  printf 'node_id = 1\nlisten = "127.0.0.1:%s"\ndata_dir = "%s"\n' "$cport" "$demo/coordinator"
  tls peer-1
  printf '[[initial_members]]\nid = 1\naddress = "127.0.0.1:%s"\n' "$cport"
  printf '[telemetry]\nmetrics_listen = "127.0.0.1:%s"\n' "$mport"
  cat <<EOF
[[policy]]
name = "demo"
clusters = ["shop", "cache"]
consistency = "consistent"
write_pause_budget_ms = 50
min_regions = 2
[[policy.destinations]]
region = "region-a"
url = "file://$demo/region-a"
[[policy.destinations]]
region = "region-b"
url = "file://$demo/region-b"
EOF
} > "$demo/coordinator.toml"
"$bin/fleetsnap-coordinator" --config "$demo/coordinator.toml" > "$demo/coordinator.log" 2>&1 &
pids+=($!)
mkdir -p "$demo/drills"
for i in "${!names[@]}"; do
  cluster=shop; [[ ${names[$i]} == cache-* ]] && cluster=cache
  {
    printf 'agent_id = "a%s"\ncoordinators = ["127.0.0.1:%s"]\n' "$i" "$cport"
    tls "agent-a$i"
    printf '[[instance]]\nname = "%s"\nurl = "redis://127.0.0.1:%s"\ncluster = "%s"\n' "${names[$i]}" "${ports[$i]}" "$cluster"
    printf '[snapshot]\nspool_dir = "%s"\n' "$demo"
    # The first agent also runs restore drills, in scratch servers under the demo directory.
    if [ "$i" = 0 ]; then printf '[drill]\nwork_dir = "%s/drills"\n' "$demo"; fi
  } > "$demo/agent-a$i.toml"
  "$bin/fleetsnap-agent" run --config "$demo/agent-a$i.toml" > "$demo/agent-a$i.log" 2>&1 &
  pids+=($!)
done
export FLEETSNAP_COORDINATORS="127.0.0.1:$cport" FLEETSNAP_CA="$demo/certs/ca.pem" \
  FLEETSNAP_CERT="$demo/certs/admin-demo.pem" FLEETSNAP_KEY="$demo/certs/admin-demo.key"
ready=0
for _ in $(seq 1 300); do
  if "$bin/fleetsnap" status --json 2>/dev/null > "$demo/status.json" && python3 - "$demo/status.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
shards = {c["name"]: c["shards"] for c in s["clusters"]}
ok = len(shards.get("shop", [])) == 3 and len(shards.get("cache", [])) == 1 and all(
    len(sh["nodes"]) == 2 for c in shards.values() for sh in c)
sys.exit(0 if ok else 1)
EOF
  then ready=1; break; fi
  sleep 0.2
done
[ "$ready" = 1 ] || fail "the fleet did not report 4 shards with 2 nodes each"
"$bin/fleetsnap" status
echo

echo "== a consistent window across both clusters"
"$bin/fleetsnap" backup run --policy demo --wait 120 --json > "$demo/window.json" || {
  cat "$demo/window.json"; fail "the window did not end complete"; }
id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["backup_id"])' "$demo/window.json")
"$bin/fleetsnap" backup show "$id"
echo
echo "== the catalog"
"$bin/fleetsnap" backup list
echo
echo "== what Prometheus scrapes from the coordinator (http://127.0.0.1:$mport/metrics), in part"
python3 - "$mport" <<'EOF'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
for line in text.splitlines():
    if line.startswith(("fleetsnap_backup_age_seconds", "fleetsnap_backup_region_complete",
                        "fleetsnap_window_write_pause_seconds", "fleetsnap_raft_is_leader")):
        print(" ", line)
EOF
echo

# The shard whose primary is ports[0]'s node, by its slot ranges.
read -r shard primary < <(python3 - "$demo/window.json" <<'EOF'
import json, sys
w = json.load(open(sys.argv[1]))
for s in w["shards"]:
    if s["cluster"] == "shop":
        node = next(n for n in s["plan"]["nodes"] if n["role"] == "primary")
        print(s["plan"]["shard"].replace(",", "_"), node["address"].split(":")[1])
        break
EOF
)
echo "== restore shard $shard of cluster shop (RDB + tail to the cut) and compare with its primary"
"$bin/fleetsnap-agent" restore --from "file://$demo/region-a" --from "file://$demo/region-b" \
  --backup "$id" --shard "$shard" --aof-dir "$demo/restored/appendonlydir"
rport=$(free_port)
start_redis restored "$rport" --appendonly yes
src_keys=$(redis-cli -p "$primary" dbsize); dst_keys=$(redis-cli -p "$rport" dbsize)
src_digest=$(redis-cli -p "$primary" debug digest); dst_digest=$(redis-cli -p "$rport" debug digest)
printf '\n%-10s %10s  %s\n' "" "KEYS" "DIGEST"
printf '%-10s %10s  %s\n' source "$src_keys" "$src_digest" restored "$dst_keys" "$dst_digest"
if [ "$src_keys" = "$dst_keys" ] && [ "$src_digest" = "$dst_digest" ]; then
  echo "restored shard equals its source"
else
  fail "MISMATCH: the restored shard differs from its source"
fi
echo

echo "== a restore drill: the latest set of shop loaded into scratch servers and checked"
"$bin/fleetsnap" drill run --cluster shop --wait 120 || fail "the drill failed"
echo

echo "== the restore-cluster runbook: the whole set rebuilt in a new, empty server"
nport=$(free_port)
start_redis rebuilt "$nport"
"$bin/fleetsnap" runbook restore-cluster --set "shop/$id" --target "redis://127.0.0.1:$nport" --yes \
  || fail "the restore-cluster runbook failed"
src_total=0
for i in 0 1 2 3 4 5; do
  if redis-cli -p "${ports[$i]}" info replication | grep -q role:master; then
    src_total=$((src_total + $(redis-cli -p "${ports[$i]}" dbsize)))
  fi
done
new_total=$(redis-cli -p "$nport" dbsize)
echo
printf '%-28s %10s\n' "keys in the shop cluster" "$src_total" "keys in the rebuilt server" "$new_total"
[ "$src_total" = "$new_total" ] || fail "MISMATCH: the rebuilt server holds $new_total keys, the cluster $src_total"
echo "the rebuilt server holds every key of the cluster"
echo

echo "== the continuous archive: the cache's replica followed into both regions, a FLUSHALL undone"
regions=(--from "file://$demo/region-a" --from "file://$demo/region-b")
"$bin/fleetsnap-agent" archive run --redis "redis://127.0.0.1:$rp" --cluster cache --shard cache-0 \
  --to "file://$demo/region-a" --to "file://$demo/region-b" --spool-dir "$demo/archive-spool" \
  --segment-seconds 1 >"$demo/archiver.log" 2>&1 &
apid=$!; pids+=("$apid")
chains() { "$bin/fleetsnap-agent" archive status "${regions[@]}" --cluster cache --shard cache-0 --json 2>/dev/null \
  | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["chains"]))' 2>/dev/null || echo 0; }
for _ in $(seq 1 300); do [ "$(chains)" = 1 ] && break; sleep 0.2; done
[ "$(chains)" = 1 ] || fail "the archiver stored no base"
redis-benchmark -p "$pp" -t set -n 20000 -r 20000 -d 64 -q >/dev/null
redis-cli -p "$pp" hset account:7 balance 100 >/dev/null
before_keys=$(redis-cli -p "$pp" dbsize); before_digest=$(redis-cli -p "$pp" debug digest)
redis-cli -p "$pp" flushall >/dev/null
echo "FLUSHALL on the cache's primary: $(redis-cli -p "$pp" dbsize) keys left"
found() { "$bin/fleetsnap-agent" archive find "${regions[@]}" --cluster cache --shard cache-0 \
  --command FLUSHALL --since 0 "$@"; }
for _ in $(seq 1 150); do [ "$(found --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 1 ] && break; sleep 0.2; done
kill -INT "$apid"; wait "$apid" || fail "the archiver failed"
found
handle=$(found --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["before"])')
"$bin/fleetsnap-agent" restore "${regions[@]}" --cluster cache --shard cache-0 --before "$handle" \
  --aof-dir "$demo/undo/appendonlydir"
uport=$(free_port)
start_redis undo "$uport" --appendonly yes
undo_keys=$(redis-cli -p "$uport" dbsize); undo_digest=$(redis-cli -p "$uport" debug digest)
printf '\n%-22s %10s  %s\n' "" "KEYS" "DIGEST"
printf '%-22s %10s  %s\n' "before the FLUSHALL" "$before_keys" "$before_digest" "restored from archive" "$undo_keys" "$undo_digest"
[ "$before_keys" = "$undo_keys" ] && [ "$before_digest" = "$undo_digest" ] \
  || fail "MISMATCH: the restore to just before the FLUSHALL differs from the data before it"
echo "the data from just before the FLUSHALL is back"
