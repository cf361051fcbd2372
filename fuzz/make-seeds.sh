#!/bin/sh
# Writes a seed corpus for the tar_apply fuzz target into corpus/tar_apply/:
# small layer tars made by GNU tar (ustar, GNU and PAX formats; whiteouts,
# links, long names, xattrs, a device, a sparse file; gzip), each prefixed
# by the target's flags byte (whiteout format in bits 0-1, bit 2: repair
# checksums). Needs GNU tar, gzip and root (mknod). Idempotent.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/corpus/tar_apply"
mkdir -p "$out"
work=$(mktemp -d /dev/shm/strata-seeds.XXXXXX)
trap 'rm -rf "$work"' EXIT
t="$work/tree"
mkdir -p "$t/d/e" "$t/o"
echo data > "$t/d/f"
printf 'x' > "$t/o/.wh..wh..opq"
: > "$t/.wh.gone"
ln -s ../d/f "$t/o/rel"
ln -s /etc/passwd "$t/abs"
ln "$t/d/f" "$t/hard"
mkfifo "$t/fifo"
mknod "$t/null" c 1 3 2>/dev/null || true
chmod 4755 "$t/d/f"
long=$(printf 'n%.0s' $(seq 1 150))
mkdir -p "$t/$long" && echo long > "$t/$long/$long"
setfattr -n user.k -v v "$t/d/f" 2>/dev/null || true
i=0
for fmt in ustar gnu pax; do
    for flags in 0 1 2 4 5 6; do
        i=$((i + 1))
        { printf "\\$(printf %o "$flags")"
          tar -b 1 --format=$fmt --sparse --xattrs -C "$t" -cf - . 2>/dev/null || true
        } > "$out/seed-$fmt-$flags"
    done
done
{ printf '\004'; tar -b 1 --format=pax -C "$t" -czf - d o; } > "$out/seed-gzip"
mkdir "$work/sp"
truncate -s 1M "$work/sp/sparse"
printf end | dd of="$work/sp/sparse" bs=1 seek=900000 conv=notrunc 2>/dev/null
{ printf '\004'; tar -b 1 --format=pax --sparse -C "$work/sp" -cf - .; } > "$out/seed-sparse"
echo "wrote $(ls "$out" | wc -l) seeds to $out"
