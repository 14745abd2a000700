#!/bin/sh
# Demo workload: a short pipeline plus a burst of short-lived children, the kind of
# process tree /proc pollers miss.
set -e
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
seq 1 300000 | awk '{ print ($1 * 7919) % 100003 }' | sort -n | uniq -c | sort -rn | head -n 3
i=0
while [ $i -lt 200 ]; do /bin/true; i=$((i + 1)); done
head -c 20000000 /dev/urandom > "$tmp/data.bin"
gzip -1 -c "$tmp/data.bin" | wc -c
