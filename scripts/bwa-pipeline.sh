#!/bin/sh
# A small, deterministic read-alignment pipeline: bwa index, bwa mem | samtools sort,
# samtools index and flagstat on a random 2 Mb reference and 100k reads of 100 bp
# sampled from it (fixed seeds). Used by `cargo xtask bench` as a realistic workload.
# Usage: bwa-pipeline.sh WORKDIR   (data is generated there once and reused)
set -eu
dir=${1:?usage: bwa-pipeline.sh WORKDIR}
mkdir -p "$dir"
cd "$dir"
if [ ! -s ref.fa.bwt ] || [ ! -s reads.fq ]; then
  awk 'BEGIN { srand(7); print ">chr1"; s = "";
    for (i = 0; i < 2000000; i++) { s = s substr("ACGT", int(rand() * 4) + 1, 1);
      if (length(s) == 60) { print s; s = "" } } if (s != "") print s }' > ref.fa
  awk 'BEGIN { srand(11) } !/^>/ { g = g $0 } END { n = length(g);
    for (r = 0; r < 100000; r++) { p = int(rand() * (n - 100)) + 1;
      printf "@r%d\n%s\n+\n%s\n", r, substr(g, p, 100),
        "IIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIII" } }' ref.fa > reads.fq
  bwa index ref.fa 2>/dev/null
fi
bwa mem -t 2 ref.fa reads.fq 2>/dev/null | samtools sort -@ 1 -o aln.bam - 2>/dev/null
samtools index aln.bam
samtools flagstat aln.bam > flagstat.txt
