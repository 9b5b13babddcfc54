#!/bin/bash
# The Linux kernel initiators against a replicated volume of a 3-node
# cluster. Run as root from the repository root, with the vm-initiator of
# ../shared/tools:
#
#   make build && cmd/cairnd/testdata/vm-cluster.sh [nbd|iscsi|both]
#
# Three cairnd (every role) run in vm-initiator's network namespace;
# node1's NBD and iSCSI listen on the bridge address the guest reaches
# (10.200.0.1:10809 and :3260), everything else on the namespace's
# loopback. A 1 GiB volume cvol0 with three replicas is attached to node1;
# the guest runs nbd-client / iscsiadm, mkfs, files with checksums,
# reconnect, e2fsck and fio against it. Afterwards the volume is moved to
# node2's target and then node3's, and each copies it out with nbdcopy: a
# target reads its own replica first, so equal checksums mean the three
# replicas are equal.
set -euo pipefail
mode=${1:-both}
VMT=${VMT:-../shared/tools/vm-initiator}
work=$(mktemp -d /tmp/cairn-vm-cluster.XXXXXX)
ns=vmtest
"$VMT/netns.sh" up >/dev/null
ip netns exec $ns ip link set lo up

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	echo "logs: $work"
}
trap cleanup EXIT

for i in 1 2 3; do
	mkdir -p "$work/node$i"
	nbd="127.0.0.1:1081$i" iscsi="127.0.0.1:326$i"
	if [ $i = 1 ]; then nbd="10.200.0.1:10809" iscsi="10.200.0.1:3260"; fi
	join=()
	for j in 1 2 3; do [ $j = $i ] || join+=("\"127.0.0.1:796$j\""); done
	cat >"$work/node$i/cairn.toml" <<EOF
node_name = "node$i"
data_dir = "data"
roles = ["target", "storage", "manager"]
[admin]
listen = "127.0.0.1:790$i"
[nbd]
listen = "$nbd"
[iscsi]
listen = "$iscsi"
iqn_prefix = "iqn.2026-11.dev.cairn"
[gossip]
bind = "127.0.0.1:796$i"
join = [$(IFS=,; echo "${join[*]}")]
[raft]
bind = "127.0.0.1:797$i"
bootstrap_expect = 3
[storage]
listen = "127.0.0.1:798$i"
cache_size = "256MiB"
EOF
	ip netns exec $ns bin/cairnd --config "$work/node$i/cairn.toml" >"$work/node$i.log" 2>&1 &
	pids+=($!)
done

cli() { ip netns exec $ns bin/cairn --addr 127.0.0.1:7901 --token-file "$work/node1/data/admin.token" "$@"; }
for _ in $(seq 60); do
	n=$(cli node list 2>/dev/null | grep -c in_service || true)
	[ "$n" = 3 ] && break
	sleep 1
done
[ "$n" = 3 ] || { echo "cluster did not form; see $work/node*.log"; exit 1; }
cli volume create cvol0 --size 1GiB --replicas 3 --target node1
for _ in $(seq 60); do grep -q 'msg="volume attached" volume=cvol0' "$work/node1.log" && break; sleep 0.5; done
cli volume show cvol0

rc=0
if [ "$mode" = nbd ] || [ "$mode" = both ]; then
	"$VMT/run-guest-test.sh" --mode nbd --export cvol0 --fio-seconds 10 || rc=1
fi
if [ "$mode" = iscsi ] || [ "$mode" = both ]; then
	"$VMT/run-guest-test.sh" --mode iscsi --iqn iqn.2026-11.dev.cairn:cvol0 --fio-seconds 10 || rc=1
fi

# Every replica holds what node1 serves.
sum() { ip netns exec $ns nbdcopy "$1" - | sha256sum | cut -d' ' -f1; }
s1=$(sum nbd://10.200.0.1:10809/cvol0)
echo "node1 serves cvol0 with sha256 $s1"
for i in 2 3; do
	cli volume attach cvol0 --target node$i >/dev/null
	for _ in $(seq 120); do ip netns exec $ns nbdinfo --size nbd://127.0.0.1:1081$i/cvol0 >/dev/null 2>&1 && break; sleep 0.5; done
	si=$(sum nbd://127.0.0.1:1081$i/cvol0)
	echo "node$i serves cvol0 with sha256 $si"
	[ "$si" = "$s1" ] || { echo "FAIL: node$i's replica differs"; rc=1; }
done
cli volume show cvol0
[ $rc = 0 ] && echo "vm-cluster: PASS" || echo "vm-cluster: FAIL"
exit $rc
