#!/bin/bash
# The Linux kernel NBD client and a snapshot taken while it writes: run as
# root from the repository root, with ../shared/tools/vm-initiator:
#
#   make build && cmd/cairnd/testdata/vm-snapshot.sh
#
# cairnd runs in vm-initiator's network namespace with NBD on the bridge
# address. The guest (vm-snapshot-guest.sh) makes an ext4 on volume svol
# and writes files; once 16 MiB are allocated the host takes snapshot
# "during" with cairn snapshot create, I/O going on; the guest attaches
# svol@during, and checks it with e2fsck -fn and the files' checksums.
set -euo pipefail
VMT=${VMT:-../shared/tools/vm-initiator}
work=$(mktemp -d /tmp/cairn-vm-snapshot.XXXXXX)
ns=vmtest
"$VMT/netns.sh" up >/dev/null
ip netns exec $ns ip link set lo up
cat >"$work/cairn.toml" <<CFG
node_name = "snap1"
data_dir = "data"
[admin]
listen = "127.0.0.1:7909"
[nbd]
listen = "10.200.0.1:10809"
[iscsi]
listen = "127.0.0.1:3269"
[[volume]]
name = "svol"
size = "128MiB"
CFG
ip netns exec $ns bin/cairnd --config "$work/cairn.toml" >"$work/cairnd.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; echo "logs: $work"' EXIT
cli() { ip netns exec $ns bin/cairn --addr 127.0.0.1:7909 --token-file "$work/data/admin.token" "$@"; }
for _ in $(seq 60); do cli volume show svol >/dev/null 2>&1 && break; sleep 0.5; done

"$VMT/run-guest-test.sh" --mode custom --export svol --guest-script cmd/cairnd/testdata/vm-snapshot-guest.sh &
guest=$!
# Once the guest has written 16 MiB, snapshot while it writes.
taken=0
for _ in $(seq 600); do
	alloc=$(cli --json volume show svol | sed -n 's/.*"allocated_bytes": *\([0-9]*\).*/\1/p')
	if [ "${alloc:-0}" -ge $((16 << 20)) ]; then
		cli snapshot create svol --name during
		taken=1
		break
	fi
	sleep 0.5
done
[ $taken = 1 ] || echo "FAIL: the guest never wrote 16 MiB"
rc=0
wait $guest || rc=1
[ $taken = 1 ] || rc=1
grep -o 'held[^"]*' "$work/cairnd.log" | tail -1 || true
[ $rc = 0 ] && echo "vm-snapshot: PASS" || echo "vm-snapshot: FAIL"
exit $rc
