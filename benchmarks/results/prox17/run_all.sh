#!/usr/bin/env bash
# Issue 17.4: proximal NS (lambda 0.03, 25 sparsity epochs, zero_gamma, no fine-tuning) vs network slimming
# (20 sparsity epochs + 5 fine-tuning epochs) at proximal's channel share: the same 25 epochs each; 2 seeds.
set -euo pipefail
cd /work/main
OUT=${OUT:-/work/runs/prox17}   # where the runs go (outside the repository)
COMMON="--data-dir /work/shared/data --set eval.latency=false --set prune.options.speed_batch_sizes=[] --quiet"
for seed in 0 1; do
  OMP_NUM_THREADS=1 .venv/bin/prunelab run recipes/proximal_slimming/vgg19_cifar10.yaml $COMMON --set seed=$seed \
    --set prune.options.lam=0.03 --set prune.options.sparsity_train.epochs=25 \
    --set prune.options.sparsity_train.milestones=[12,19] --set prune.options.zero_gamma=true \
    --set finetune.epochs=0 --out $OUT/prox_l03_e25_zg_s$seed --overwrite
  share=$(.venv/bin/python -c "import json,sys; print(round(json.load(open(sys.argv[1]))['structured']['channels_removed_share'], 4))" $OUT/prox_l03_e25_zg_s$seed/summary.json)
  OMP_NUM_THREADS=1 .venv/bin/prunelab run recipes/slimming/vgg19_cifar10.yaml $COMMON --set seed=$seed \
    --set prune.options.lam=0.0007 --set prune.sparsity=$share --set prune.options.sparsity_train.epochs=20 \
    --set prune.options.sparsity_train.milestones=[10,15] --set finetune.epochs=5 \
    --out $OUT/ns_e20_ft5_s$seed --overwrite
done
