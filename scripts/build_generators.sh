#!/usr/bin/env bash
# Rebuild the generators shipped in inag/models/ (data_a, digits, digits_cnn) from scratch:
# Monte Carlo dataset -> encoder + NAGAN, and the datasets packed beside them (the generators
# and inag/models/NAME.sqlite.gz must come from the same build: evaluate checks the hash).
# Deterministic for the given seeds on one machine (labels differ in the last float digits
# between CPUs: the trainer is built with -march=native).
# Takes about 10 + 9 minutes of dataset building (20 epochs x 16 restarts per net) and 2 x 1
# minute and a half of training on 2 cores (session 6).
set -euo pipefail
cd "$(dirname "$0")/.."
INAG=${INAG:-inag}
mkdir -p runs
$INAG sample --task data_a --space mlp --n 2000 --seed 0 --db runs/data_a.sqlite
$INAG train --db runs/data_a.sqlite --out inag/models/data_a.nagan --seed 0
$INAG sample --task digits --space mlp --n 1500 --seed 0 --db runs/digits.sqlite
$INAG train --db runs/digits.sqlite --out inag/models/digits.nagan --seed 0
# CNNs on digits: 4 restarts (a CNN costs ~4 CPU-s per row at 16, 1 at 4: 12.6 min for 1500
# rows on 2 idle cores, docs/dataset.md)
$INAG sample --task digits --space cnn --n 1500 --seed 0 --restarts 4 --db runs/digits_cnn.sqlite
$INAG train --db runs/digits_cnn.sqlite --out inag/models/digits_cnn.nagan --seed 0
PY=${PY:-python}
for d in data_a digits digits_cnn; do
  $PY -c "import sys; from inag.dataset import pack_dataset; pack_dataset(sys.argv[1], sys.argv[2])" \
    runs/$d.sqlite inag/models/$d.sqlite.gz
done
