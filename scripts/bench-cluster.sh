#!/usr/bin/env bash
# Server CPU per provisioning and provisionings/s of dpsd on bbolt, on etcd
# with one node, and on etcd with three nodes (three etcd members), all on
# this machine (BENCHMARKS.md, "Cluster on etcd"). etcd members are the
# embedded etcd of internal/etcdtest, each a process of its own (the test
# binary re-executed). Usage: scripts/bench-cluster.sh [ECC-DEVICES] [COUNT]
set -euo pipefail
N=${1:-500}
COUNT=${2:-1000}
B=$(mktemp -d /tmp/bench-cluster.XXXX)
ALL=()
trap 'kill $(jobs -p) "${ALL[@]}" 2>/dev/null || true' EXIT
go build -o "$B/dpsd" ./cmd/dpsd
go build -o "$B/dps-load" ./cmd/dps-load
go test -c -o "$B/etcdmember" ./internal/etcdtest

LIMITS=(--retry-after 0s --log-level warn --conns-per-address -1 --conn-rate-per-address -1
  --restricted-sessions -1 --restricted-sessions-per-address -1 --challenges-per-connection -1 --challenge-rate-per-address -1
  --challenge-rate-total -1 --request-rate-per-connection -1 --polls-per-device -1
  --registers-per-device -1 --restricted-idle-timeout 10m --auth-failure-rate-per-address -1
  --mqtts-addr= --hubs hub1.example.com,hub2.example.com)

cpu() { awk '{print $14+$15}' "/proc/$1/stat"; } # clock ticks (1/100 s)
waitfile() { for _ in $(seq 300); do [ -s "$1" ] && return; sleep 0.1; done; echo "no $1" >&2; exit 1; }

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

members() { # members NAME CLIENT-PORT PEER-PORT ...: starts the members, prints their pids
  local name=$1 ic="" i=0 args=("${@:2}")
  while [ $i -lt ${#args[@]} ]; do ic+="${ic:+,}m$((i/2))=http://127.0.0.1:${args[$((i+1))]}"; i=$((i+2)); done
  i=0
  while [ $i -lt ${#args[@]} ]; do
    DPSD_ETCDTEST_MEMBER="{\"name\":\"m$((i/2))\",\"dir\":\"$B/$name-$i\",\"clientUrl\":\"http://127.0.0.1:${args[$i]}\",\"peerUrl\":\"http://127.0.0.1:${args[$((i+1))]}\",\"initialCluster\":\"$ic\"}" \
      "$B/etcdmember" -test.run='^$' >/dev/null 2>&1 & echo $!
    i=$((i+2))
  done
}

load() { # load DATA-DIR ADDR API PREFIX [extra]: one dps-load run, JSON report
  "$B/dps-load" run --data-dir "$1" --addr "$2" --api-url "https://$3" --prefix "$4" --tpm-ecc "$N" \
    --count "$COUNT" --concurrency 50 --quiet --json "${@:5}"
}

echo "== bbolt, one node"
M=$(port); A=$(port)
"$B/dpsd" serve --data-dir "$B/bolt" --mqtt-addr 127.0.0.1:$M --api-addr 127.0.0.1:$A "${LIMITS[@]}" 2>"$B/bolt.log" &
P=$!; waitfile "$B/bolt/service-connection-string"
load "$B/bolt" 127.0.0.1:$M 127.0.0.1:$A bolt --server-pid $P >"$B/bolt.json"
kill $P; wait $P || true

"$B/dpsd" cluster init "$B/secrets" >/dev/null
SCOPE=$(python3 -c "import json;print(json.load(open('$B/secrets/secrets.json'))['idScope'])")

echo "== etcd, one node, one member"
C=$(port); E=$(members one $C $(port)); ALL+=($E); sleep 1
M=$(port); A=$(port)
"$B/dpsd" serve --data-dir "$B/n1" --secrets-dir "$B/secrets" --store etcd://127.0.0.1:$C/one \
  --mqtt-addr 127.0.0.1:$M --api-addr 127.0.0.1:$A "${LIMITS[@]}" 2>"$B/n1.log" &
P=$!; waitfile "$B/n1/service-connection-string"
e0=$(cpu $E)
load "$B/n1" 127.0.0.1:$M 127.0.0.1:$A one --server-pid $P --id-scope "$SCOPE" --ca-file "$B/secrets/ca.pem" >"$B/etcd1.json"
e1=$(cpu $E)
echo "etcd ticks: $((e1-e0))" >"$B/etcd1.etcdcpu"
kill $P $E; wait $P 2>/dev/null || true

echo "== etcd, three nodes, three members"
C0=$(port); C1=$(port); C2=$(port)
ES=$(members three $C0 $(port) $C1 $(port) $C2 $(port)); ALL+=($ES); sleep 2
EPS=etcd://127.0.0.1:$C0,127.0.0.1:$C1,127.0.0.1:$C2/three
PS=(); MS=(); AS=()
for i in 0 1 2; do
  MS+=($(port)); AS+=($(port))
  "$B/dpsd" serve --data-dir "$B/t$i" --secrets-dir "$B/secrets" --store "$EPS" \
    --mqtt-addr 127.0.0.1:${MS[$i]} --api-addr 127.0.0.1:${AS[$i]} "${LIMITS[@]}" 2>"$B/t$i.log" &
  PS+=($!)
done
for i in 0 1 2; do waitfile "$B/t$i/service-connection-string"; done
e0=0; for p in $ES; do e0=$((e0+$(cpu $p))); done
LP=()
for i in 0 1 2; do
  load "$B/t$i" 127.0.0.1:${MS[$i]} 127.0.0.1:${AS[$i]} three$i --server-pid ${PS[$i]} --id-scope "$SCOPE" --ca-file "$B/secrets/ca.pem" >"$B/etcd3-$i.json" &
  LP+=($!)
done
wait "${LP[@]}"
e1=0; for p in $ES; do e1=$((e1+$(cpu $p))); done
echo "etcd ticks: $((e1-e0))" >"$B/etcd3.etcdcpu"
kill "${PS[@]}"
echo "results in $B"
