#!/usr/bin/env bash
# A local tkeyless deployment on 127.0.0.1: a development CA, three signer
# nodes holding a (1,3) threshold key (any two sign), a certificate for
# "localhost" issued by a demo CA to a CSR the cluster signed, and an HTTPS
# edge that never holds the private key. Re-running reuses what exists.
# Ctrl-C stops everything.
set -euo pipefail

BIN=${BIN:-$(pwd)/bin}
DEMO=${DEMO:-$(pwd)/demo}
HERE=$(cd "$(dirname "$0")" && pwd)
EDGE_ADDR=${EDGE_ADDR:-127.0.0.1:8443}
NODES=(a b c)
declare -A PEER=([a]=127.0.0.1:7101 [b]=127.0.0.1:7102 [c]=127.0.0.1:7103)
declare -A KEYLESS=([a]=127.0.0.1:7201 [b]=127.0.0.1:7202 [c]=127.0.0.1:7203)
declare -A HTTP=([a]=127.0.0.1:7301 [b]=127.0.0.1:7302 [c]=127.0.0.1:7303)

signer() { "$BIN/signer" --log-format console "$@"; }
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

pids=()
cleanup() {
  trap - INT TERM EXIT
  if ((${#pids[@]})); then
    step "stopping"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap cleanup INT TERM EXIT

wait_port() { # addr name logfile
  local host=${1%:*} port=${1##*:}
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
    if ! kill -0 "${pids[-1]}" 2>/dev/null; then echo "$2 exited; see $3" >&2; tail -20 "$3" >&2; exit 1; fi
    sleep 0.1
  done
  echo "$2 did not listen on $1 in 20 s; see $3" >&2; exit 1
}

mkdir -p "$DEMO/logs"
step "development CA and identities in $DEMO/pki"
signer pki init --dir "$DEMO/pki"
for n in "${NODES[@]}"; do
  [[ -f $DEMO/pki/$n.pem ]] || signer pki issue --dir "$DEMO/pki" --name "$n" --role node
done
[[ -f $DEMO/pki/edge.pem ]] || signer pki issue --dir "$DEMO/pki" --name edge --role edge
# The operator's identity: ceremonies and the kill switch carry its
# signature, which every node checks. In production it lives with the
# operator, never on a signer host.
[[ -f $DEMO/pki/admin.pem ]] || signer pki issue --dir "$DEMO/pki" --name admin --role admin
export TKEYLESS_ADMIN_CERT=$DEMO/pki/admin.pem TKEYLESS_ADMIN_KEY=$DEMO/pki/admin-key.pem

for n in "${NODES[@]}"; do
  {
    echo "name: $n"
    echo "data_dir: $n"
    echo "peer_listen: ${PEER[$n]}"
    echo "keyless_listen: ${KEYLESS[$n]}"
    echo "http_listen: ${HTTP[$n]}"
    echo "tls: {ca: pki/ca.pem, cert: pki/$n.pem, key: pki/$n-key.pem}"
    echo "secrets: {key_file: secrets/$n.key}"
    echo "presign: {depth: ${PRESIGN_DEPTH:-4}}   # docs/presigning.md; 0 turns it off"
    echo "peers:"
    for p in "${NODES[@]}"; do [[ $p == "$n" ]] || echo "  - {name: $p, addr: ${PEER[$p]}}"; done
  } >"$DEMO/$n.yaml"
done

step "secrets keys (encrypt each node's shares at rest; in production keep them off the data disk)"
mkdir -p "$DEMO/secrets"
for n in "${NODES[@]}"; do
  [[ -f $DEMO/secrets/$n.key ]] || signer secrets-key --out "$DEMO/secrets/$n.key"
done

step "pre-parameters (safe primes), once per node: 10-30 s each on 2 cores"
for n in "${NODES[@]}"; do signer preparams --config "$DEMO/$n.yaml"; done

step "starting signers a, b, c"
for n in "${NODES[@]}"; do
  "$BIN/signer" serve --config "$DEMO/$n.yaml" >"$DEMO/logs/$n.log" 2>&1 &
  pids+=($!)
  wait_port "${PEER[$n]}" "signer $n" "$DEMO/logs/$n.log"
  wait_port "${KEYLESS[$n]}" "signer $n" "$DEMO/logs/$n.log"
done

if [[ ! -s $DEMO/key.id ]]; then
  step "distributed key generation, (t,n) = (1,3): any 2 of 3 sign"
  signer keygen --config "$DEMO/a.yaml" --threshold 1 --out "$DEMO/key.pub.pem" >"$DEMO/key.id"
fi
KEY=$(cat "$DEMO/key.id")
echo "cluster key $KEY"

if [[ ! -f $DEMO/site.pem ]]; then
  step "CSR for localhost signed by the cluster, certificate from a demo web CA"
  signer csr --signer "${KEYLESS[a]},${KEYLESS[b]},${KEYLESS[c]}" --public-key "$DEMO/key.pub.pem" \
    --name localhost --name 127.0.0.1 --cert "$DEMO/pki/edge.pem" --key "$DEMO/pki/edge-key.pem" \
    --ca "$DEMO/pki/ca.pem" --out "$DEMO/site.csr"
  signer pki init --dir "$DEMO/webca" --name "tkeyless demo web CA"
  signer pki sign-csr --dir "$DEMO/webca" --csr "$DEMO/site.csr" --out "$DEMO/site.pem"
fi

step "starting the edge on https://$EDGE_ADDR"
edge_pid=
"$BIN/edge" serve --listen "$EDGE_ADDR" --cert "$DEMO/site.pem" \
  --signer "keyless://${KEYLESS[a]},${KEYLESS[b]},${KEYLESS[c]}" \
  --keyless-cert "$DEMO/pki/edge.pem" --keyless-key "$DEMO/pki/edge-key.pem" --keyless-ca "$DEMO/pki/ca.pem" \
  --static "$HERE/www" >"$DEMO/logs/edge.log" 2>&1 &
edge_pid=$!
pids+=($edge_pid)
wait_port "$EDGE_ADDR" edge "$DEMO/logs/edge.log"

cat <<MSG

tkeyless is serving https://localhost:${EDGE_ADDR##*:}/ with key $KEY,
which exists only as three shares on signers a, b and c (any two sign).

  curl --cacert $DEMO/webca/ca.pem https://localhost:${EDGE_ADDR##*:}/

Trust $DEMO/webca/ca.pem in a browser to open the URL. Logs: $DEMO/logs/.
Stop one signer (kill the process of a, b or c): handshakes still complete.

  $BIN/signer status --config $DEMO/a.yaml                    # every node and key at a glance
  export TKEYLESS_ADMIN_CERT=$DEMO/pki/admin.pem TKEYLESS_ADMIN_KEY=$DEMO/pki/admin-key.pem   # the operator
  $BIN/signer key disable --config $DEMO/a.yaml --key $KEY    # the kill switch (admin; enable to undo)
  curl http://${HTTP[a]}/metrics                              # Prometheus
  $BIN/loadtest --url https://localhost:${EDGE_ADDR##*:}/ --ca $DEMO/webca/ca.pem -c 4 -d 10s   # handshakes under load

Press Ctrl-C to stop.
MSG
# Signers may be stopped and restarted by hand to see failover; the demo
# runs until Ctrl-C or until the edge itself exits.
wait "$edge_pid" || true
echo "the edge exited; see $DEMO/logs/edge.log" >&2
