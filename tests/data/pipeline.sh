#!/bin/sh
# A small pipeline with several processes, a failing and a killed one, an orphan.
seq 1 200000 | awk '{ print ($1 * 7919) % 1009 }' | sort -n | uniq -c | sort -rn | head -n 3
i=0
while [ $i -lt 20 ]; do /bin/true; i=$((i + 1)); done
head -c 24000000 /dev/urandom | gzip -1 > /tmp/denet-pipeline.gz
ls -l /tmp/denet-pipeline.gz > /dev/null
rm -f /tmp/denet-pipeline.gz
false || true
sh -c 'kill -TERM $$' || true
(sleep 0.2 &)
/usr/bin/python3 -c 'x = bytearray(60 * 1024 * 1024); import time; time.sleep(0.3)'
