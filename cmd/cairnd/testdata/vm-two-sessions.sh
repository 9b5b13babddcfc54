#!/bin/bash
# Guest script for ../shared/tools/vm-initiator (run-guest-test.sh --mode
# custom --guest-script): the Linux initiator logs in to one cairn target
# with two sessions (node.session.nr_sessions=2, distinct ISIDs: how
# open-iscsi spreads a LUN over connections, since it does no MC/S), writes
# through one session's disk and reads the bytes back through the other's
# with O_DIRECT.
set -u
PORTAL=$VMT_TARGET_HOST:$VMT_ISCSI_PORT
fail() { echo "two-sessions: FAIL: $*"; iscsiadm -m node -T "$VMT_IQN" -p "$PORTAL" --logout >/dev/null 2>&1; exit 1; }
modprobe iscsi_tcp && modprobe sd_mod || fail modprobe
mkdir -p /etc/iscsi /var/lib/iscsi /run/lock/iscsi
iscsid || fail iscsid
sleep 0.5
iscsiadm -m discovery -t sendtargets -p "$PORTAL" || fail discovery
iscsiadm -m node -T "$VMT_IQN" -p "$PORTAL" -o update -n node.session.nr_sessions -v 2 || fail nr_sessions
iscsiadm -m node -T "$VMT_IQN" -p "$PORTAL" --login || fail login
disks=()
for _ in $(seq 100); do
  # shellcheck disable=SC2207 # device names have no spaces; the guest has no /dev/fd for <()
  disks=($(iscsiadm -m session -P 3 2>/dev/null | awk '/Attached scsi disk/ { print "/dev/" $4 }'))
  ((${#disks[@]} == 2)) && [[ -b ${disks[0]} && -b ${disks[1]} ]] && break
  sleep 0.2
done
((${#disks[@]} == 2)) || fail "want 2 disks, have ${#disks[@]}: $(iscsiadm -m session)"
echo "two-sessions: sessions $(iscsiadm -m session | wc -l), disks ${disks[*]}"
head -c $((4 << 20)) /dev/urandom >/tmp/pattern
dd if=/tmp/pattern of="${disks[0]}" bs=1M oflag=direct seek=7 status=none || fail "write via ${disks[0]}"
dd if="${disks[1]}" of=/tmp/back bs=1M iflag=direct skip=7 count=4 status=none || fail "read via ${disks[1]}"
a=$(sha256sum </tmp/pattern) b=$(sha256sum </tmp/back)
[[ $a == "$b" ]] || fail "read back through the second session differs: $a vs $b"
iscsiadm -m node -T "$VMT_IQN" -p "$PORTAL" --logout || fail logout
echo "two-sessions: ok (4 MiB written via ${disks[0]}, read back via ${disks[1]})"
