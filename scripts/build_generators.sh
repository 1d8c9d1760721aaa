#!/usr/bin/env bash
# Rebuild the generators shipped in inag/models/ (data_a and digits) from scratch:
# Monte Carlo dataset -> encoder + NAGAN. Deterministic for the given seeds.
# Takes about 10 + 9 minutes of dataset building (20 epochs x 16 restarts per net) and 2 x 1
# minute of training on 2 idle cores.
set -euo pipefail
cd "$(dirname "$0")/.."
INAG=${INAG:-inag}
mkdir -p runs
$INAG sample --task data_a --space mlp --n 2000 --seed 0 --db runs/data_a.sqlite
$INAG train --db runs/data_a.sqlite --out inag/models/data_a.nagan --seed 0
$INAG sample --task digits --space mlp --n 1500 --seed 0 --db runs/digits.sqlite
$INAG train --db runs/digits.sqlite --out inag/models/digits.nagan --seed 0
