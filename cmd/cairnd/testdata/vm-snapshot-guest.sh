#!/bin/bash
# Guest script for ../shared/tools/vm-initiator (--mode custom): the kernel
# NBD client writes files to an ext4 on a cairn volume while the host takes
# a snapshot (vm-snapshot.sh); the guest then attaches the snapshot export
# read-only, copies it, replays its journal on the copy and checks it:
# e2fsck -fn clean, and every file the snapshot's manifest lists has the
# checksum the manifest gives (a manifest line is appended and fsynced only
# after its file was, so a consistent cut never lists a file it lacks).
set -u
VOL=${VMT_NBD_EXPORT:-svol}
SNAP=$VOL@during
fail() { echo "snapshot: FAIL: $*"; exit 1; }
modprobe nbd nbds_max=4 || fail modprobe
nbd-client "$VMT_TARGET_HOST" "$VMT_NBD_PORT" /dev/nbd0 -N "$VOL" || fail "attach $VOL"
mkfs.ext4 -q -F /dev/nbd0 || fail mkfs
mkdir -p /mnt/v
mount /dev/nbd0 /mnt/v || fail mount
: >/mnt/v/manifest
# Write 1 MiB files until the snapshot export appears (at most 90 s).
i=0 attached=0
for _ in $(seq 900); do
	i=$((i + 1))
	dd if=/dev/urandom of=/mnt/v/f$i bs=1M count=1 conv=fsync status=none || fail "write f$i"
	sum=$(sha256sum /mnt/v/f$i | cut -d' ' -f1)
	echo "f$i $sum" >>/mnt/v/manifest
	sync -d /mnt/v/manifest 2>/dev/null || sync /mnt/v/manifest
	if [ $((i % 5)) = 0 ] && nbd-client "$VMT_TARGET_HOST" "$VMT_NBD_PORT" /dev/nbd1 -N "$SNAP" -readonly >/dev/null 2>&1; then
		attached=1
		break
	fi
done
[ $attached = 1 ] || fail "snapshot export $SNAP never appeared"
# Write on for a little while after: the live volume moves on.
for j in $(seq 10); do dd if=/dev/urandom of=/mnt/v/after$j bs=1M count=1 conv=fsync status=none || fail "write after$j"; done
echo "snapshot: wrote $i files, attached $SNAP after f$i"
dd if=/dev/nbd1 of=/tmp/snap.img bs=1M status=none || fail "copy the snapshot"
nbd-client -d /dev/nbd1
e2fsck -E journal_only -y /tmp/snap.img >/tmp/replay.log 2>&1
rc=$?
[ $rc -le 1 ] || { cat /tmp/replay.log; fail "journal replay exit $rc"; }
e2fsck -fn /tmp/snap.img >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "e2fsck -fn of the snapshot"; }
# Read the copy with debugfs (the guest has no loop device).
dbg() { debugfs -R "$1" /tmp/snap.img 2>/dev/null; }
dbg "cat /manifest" >/tmp/manifest || fail "read the snapshot's manifest"
n=0
while read -r f sum; do
	[ "$(dbg "cat /$f" | sha256sum | cut -d' ' -f1)" = "$sum" ] || fail "$f in the snapshot differs from what was written"
	n=$((n + 1))
done </tmp/manifest
[ $n -gt 0 ] || fail "the snapshot's manifest is empty"
debugfs -R "stat /after1" /tmp/snap.img 2>&1 | grep -q "not found" || fail "a file written after the snapshot export appeared is in the snapshot"
umount /mnt/v
nbd-client -d /dev/nbd0
echo "snapshot: ok: e2fsck -fn clean, $n files of the manifest verified, $((i - n)) written during or after the cut"
