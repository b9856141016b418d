#!/usr/bin/env bash
# Reproduces policies/playtable-small on a CPU, from the repository root:
#   ./policies/playtable-small/recipe.sh [WORK_DIR]
# WORK_DIR (default /tmp/vw2-playtable-small) holds the dataset (~7.6 GB) and the
# training runs; every step resumes when re-run after an interruption.
# Measured on 2 cores (see README.md here): record 55 min 20 s, train 33 min 26 s.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-/tmp/vw2-playtable-small}
SEED=0

./scripts/setup.sh
cargo build --release --locked
VW2=target/release/vw2

# 1. Chained play: 1000 subtasks solved by the scripted expert in chains of up to 5 from
#    CALVIN-like initial conditions (the recording's own seed, not the evaluation chains).
$VW2 record --backend playtable --chained 5 --episodes 1000 --seed "$SEED" --out "$WORK/dataset"

# 2. dLDM warm-up (unlabelled frames) → AR on the frozen codes → action head on
#    the labels of 10% of the training episodes (20% of episodes held out for validation).
$VW2 train all --dataset "$WORK/dataset" --config policies/playtable-small/train.yaml \
    --label-fraction 0.1 --seed "$SEED" --name playtable-small --out "$WORK/run"

# 3. Ship the bundle, not the training state (checkpoints and caches stay in $WORK/run/train).
for f in policy.yaml dldm.safetensors ar.safetensors head.safetensors metrics.json split.json; do
    cp "$WORK/run/$f" policies/playtable-small/
done

# What the codes carry: the AR's next-code accuracy on a recording it never saw (its own
# seed, 60 subtasks), and the codebook usage there.
$VW2 record --backend playtable --chained 5 --episodes 60 --seed 1000000 --out "$WORK/heldout"
$VW2 eval codes --policy policies/playtable-small --dataset "$WORK/heldout" --out "$WORK/codes.json"

# The end-to-end baseline on the same labelled episodes (10%), for the comparison row.
$VW2 train e2e --dataset "$WORK/dataset" --config policies/playtable-small/train.yaml \
    --label-fraction 0.1 --seed "$SEED" --out "$WORK/e2e-10"

# Optional: the IDM probe (codebook usage, R² of the actions from the codes on held-out episodes).
# (cd python && ../.venv/bin/python -m vw2_sim_tools.probe_codes \
#     --cache "$WORK/run/train/ar/code_cache.safetensors" --dataset "$WORK/dataset" \
#     --split "$WORK/run/split.json")

# Optional: the same head and the baseline with every label, for the 10% vs 100% rows.
# $VW2 train e2e --dataset "$WORK/dataset" --config policies/playtable-small/train.yaml \
#     --label-fraction 1.0 --seed "$SEED" --out "$WORK/e2e-100"
# $VW2 finetune-head --dataset "$WORK/dataset" --policy "$WORK/run/train/ar/bundle" \
#     --label-fraction 1.0 --seed "$SEED" --config policies/playtable-small/train.yaml \
#     --out "$WORK/head-100"
