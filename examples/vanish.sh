#!/bin/bash
# How long a vanished client's stream lives (README, "Disconnects"):
#   cargo build --release
#   sudo unshare -n examples/vanish.sh PING WRITE_TIMEOUT PORT   # e.g. 1s 1s 8351
# In a network namespace of its own (root), it opens a stream with curl, then
# takes loopback down (the client vanishes: no FIN, no RST) and prints the
# seconds until the server logs "stream closed". Loopback only.
set -u
cd "$(dirname "$0")/.."
mkdir -p /tmp/tinysse-vanish
PING=$1; WT=$2; PORT=$3
BIN=${BIN:-target/release/tinysse}
D=$(mktemp -d /tmp/tinysse-vanish/run.XXXX)
ip link set lo up
$BIN --host 127.0.0.1 --port $PORT --ping-interval $PING --write-timeout $WT --tick-interval 0 --log debug 2>$D/server.log &
SRV=$!
for i in $(seq 1 100); do curl -s -o /dev/null localhost:$PORT/health && break; sleep 0.05; done
curl -sN localhost:$PORT/events?channel=v >$D/client.out 2>&1 &
CLI=$!
for i in $(seq 1 100); do grep -q "stream opened\|stream " $D/server.log && break; sleep 0.05; done
# let a ping or two go through, then start at a random phase within the ping interval
sleep $(python3 -c "import random; print(1.5 + random.random()*${PING%s})")
DOWN=$(date +%s.%N)
ip link set lo down
CLOSED=""
for i in $(seq 1 600); do
  if grep -q "stream closed" $D/server.log; then CLOSED=$(date +%s.%N); break; fi
  sleep 0.02
done
LASTPING=$(grep -c ping $D/client.out)
if [ -n "$CLOSED" ]; then
  echo "ping=$PING wt=$WT closed_after=$(python3 -c "print(f'{$CLOSED-$DOWN:.2f}')")s pings_received=$LASTPING :: $(grep 'stream closed\|stream ended' $D/server.log | sed 's/^.*\] //' | tr '\n' ' ')"
else
  echo "ping=$PING wt=$WT NOT closed within 12s"
fi
ip link set lo up
kill $CLI $SRV 2>/dev/null; wait $CLI $SRV 2>/dev/null
