#!/bin/bash
# Issue 17 runs: relief (official scaling/pivot/rewind/L1) vs iterative magnitude, 2 seeds, same budget.
set -u
cd /work/main
export OMP_NUM_THREADS=1 PRUNELAB_DATA=/work/shared/data
P=.venv/bin/prunelab
O=/work/runs/relief17
L300="--set device=cpu --set data.train_subset=10000 --set train.epochs=4 --set finetune.epochs=4 --set prune.options.rounds=3 --set prune.options.stop_at_remaining=null"
M300="--set device=cpu --set data.train_subset=10000 --set train.epochs=4 --set finetune.epochs=4 --set prune.options.rounds=3"
L5="--set device=cpu --set data.train_subset=5000 --set train.epochs=3 --set finetune.epochs=3 --set prune.options.rounds=3 --set prune.options.stop_at_remaining=null"
M5="--set device=cpu --set data.train_subset=5000 --set train.epochs=3 --set finetune.epochs=3 --set prune.options.rounds=3"
sparsity() {  # weight sparsity whose weights+biases remaining equal relief's final remaining %
  .venv/bin/python - "$1" "$2" "$3" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1] + "/rounds.csv")))
r = float(rows[-1]["relief_remaining_percent"]) / 100
W, B = float(sys.argv[2]), float(sys.argv[3])
print(f"{1 - (r * (W + B) - B) / W:.6f}")
PY
}
stamp() { date -u +%H:%M:%S; }
echo "$(stamp) start"
for s in 0 1; do $P run recipes/relief/lenet300_mnist.yaml $L300 --set seed=$s --out $O/relief_lenet300_s$s --quiet > $O/relief_lenet300_s$s.log 2>&1 & done; wait
echo "$(stamp) relief300 done"
for s in 0 1; do sp=$(sparsity $O/relief_lenet300_s$s 266200 410); echo "lenet300 s$s sparsity $sp"
  $P run recipes/relief/magnitude_lenet300_mnist.yaml $M300 --set seed=$s --set prune.sparsity=$sp --out $O/magnitude_lenet300_s$s --quiet > $O/magnitude_lenet300_s$s.log 2>&1 & done; wait
echo "$(stamp) magnitude300 done"
for s in 0 1; do $P run recipes/relief/lenet5_mnist.yaml $L5 --set seed=$s --out $O/relief_lenet5_s$s --quiet > $O/relief_lenet5_s$s.log 2>&1 & done; wait
echo "$(stamp) relief5 done"
for s in 0 1; do sp=$(sparsity $O/relief_lenet5_s$s 430500 580); echo "lenet5 s$s sparsity $sp"
  $P run recipes/relief/magnitude_lenet5_mnist.yaml $M5 --set seed=$s --set prune.sparsity=$sp --out $O/magnitude_lenet5_s$s --quiet > $O/magnitude_lenet5_s$s.log 2>&1 & done; wait
echo "$(stamp) magnitude5 done"
# Round-1 kept fraction under mean/std inputs (the issue's comparison): same budget, one round.
$P run recipes/relief/lenet300_mnist.yaml $L300 --set seed=0 --set data.normalize=dataset --set prune.options.rounds=1 --out $O/relief_lenet300_normalised_s0 --quiet > $O/relief_lenet300_normalised_s0.log 2>&1 &
$P run recipes/relief/lenet5_mnist.yaml $L5 --set seed=0 --set data.normalize=dataset --set prune.options.rounds=1 --out $O/relief_lenet5_normalised_s0 --quiet > $O/relief_lenet5_normalised_s0.log 2>&1 &
wait
echo "$(stamp) all done"
