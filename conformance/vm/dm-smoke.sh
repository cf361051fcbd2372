#!/bin/sh
# Guest-side smoke test of the path the devmapper driver takes, by hand with
# dmsetup: a thin pool on two loop-attached sparse files, a thin device with
# ext4, a snapshot of it (suspend/resume the origin around create_snap), then
# everything removed again. Run it through the VM runner:
#   conformance/vm/run -- sh conformance/vm/dm-smoke.sh
# It exits non-zero at the first failing step and cleans up in every case.
set -eu

dir=$(mktemp -d "${TMPDIR:-/tmp}/dm-smoke.XXXXXX")
pool=strata-smoke-pool
thin=strata-smoke-thin
snap=strata-smoke-snap
data_loop=
meta_loop=

step() { echo "dm-smoke: $*"; }
# The guest runs no udev: have dmsetup make the /dev/mapper nodes itself.
dm_create() { dmsetup create --noudevsync "$@" && dmsetup mknodes "$1"; }

cleanup() {
    set +e
    for m in "$dir/mnt-thin" "$dir/mnt-snap"; do
        mountpoint -q "$m" 2>/dev/null && umount "$m"
    done
    for d in $snap $thin; do
        dmsetup info $d >/dev/null 2>&1 && dmsetup remove $d
    done
    dmsetup info $pool >/dev/null 2>&1 && dmsetup remove $pool
    [ -n "$data_loop" ] && losetup -d "$data_loop"
    [ -n "$meta_loop" ] && losetup -d "$meta_loop"
    rm -rf "$dir"
}
trap cleanup EXIT

modprobe dm-thin-pool
modprobe loop 2>/dev/null || true
[ -e /dev/mapper/control ] || { echo "dm-smoke: no /dev/mapper/control"; exit 1; }

step "sparse files and loop devices"
truncate -s 1G "$dir/data"
truncate -s 64M "$dir/metadata"
data_loop=$(losetup -f --show "$dir/data")
meta_loop=$(losetup -f --show "$dir/metadata")
# A new pool needs the start of its metadata device zeroed.
dd if=/dev/zero of="$meta_loop" bs=4096 count=1 status=none

step "thin pool"
data_sectors=$(blockdev --getsz "$data_loop")
# 64 KiB data blocks, low-water mark 1024 blocks, no block zeroing.
dm_create $pool --table "0 $data_sectors thin-pool $meta_loop $data_loop 128 1024 1 skip_block_zeroing"
dmsetup status $pool
ls -l /dev/mapper/

step "thin device 0 (512 MiB), ext4, write"
dmsetup message $pool 0 "create_thin 0"
dm_create $thin --table "0 1048576 thin /dev/mapper/$pool 0"
mkfs.ext4 -q -E nodiscard /dev/mapper/$thin
mkdir "$dir/mnt-thin" "$dir/mnt-snap"
mount /dev/mapper/$thin "$dir/mnt-thin"
mkdir "$dir/mnt-thin/rootfs"
echo "hello from the thin device" >"$dir/mnt-thin/rootfs/hello"
sync

step "snapshot 1 of 0 (origin suspended around create_snap)"
dmsetup suspend $thin
dmsetup message $pool 0 "create_snap 1 0"
dmsetup resume $thin
dm_create $snap --table "0 1048576 thin /dev/mapper/$pool 1"
mount -o ro /dev/mapper/$snap "$dir/mnt-snap"
grep -q "hello from the thin device" "$dir/mnt-snap/rootfs/hello"
echo "changed in the origin" >"$dir/mnt-thin/rootfs/hello"
sync
grep -q "hello from the thin device" "$dir/mnt-snap/rootfs/hello"
dmsetup status $pool

step "unmount, deactivate, delete thin ids, remove pool"
umount "$dir/mnt-snap"
umount "$dir/mnt-thin"
dmsetup remove $snap
dmsetup remove $thin
dmsetup message $pool 0 "delete 1"
dmsetup message $pool 0 "delete 0"
dmsetup status $pool
dmsetup remove $pool
losetup -d "$data_loop"; data_loop=
losetup -d "$meta_loop"; meta_loop=
[ -z "$(dmsetup ls | grep strata-smoke || true)" ]
step "ok"
