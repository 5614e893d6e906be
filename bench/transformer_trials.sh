#!/usr/bin/env bash
# The ViT-on-digits trials of docs/transformers-2026-12-02.md: for each seed, one DQT checkpoint
# with a width per token (every static width and the controller from it), and the same
# architecture trained alone at each static width 4..8. Two runs at a time, one thread each.
# Usage: bench/transformer_trials.sh OUT_DIR [SEEDS...]
set -euo pipefail
out=${1:?out dir}; shift
seeds=${*:-0 1 2}
common=(--model vit --data digits --warmup-epochs 20 --epochs 15)
jobs=()
for seed in $seeds; do
  jobs+=("dqt train ${common[*]} --controller token --seed $seed --out $out/token-s$seed")
  for bits in 8 7 6 5 4; do
    jobs+=("dqt train ${common[*]} --static-bits $bits --seed $seed --out $out/static$bits-s$seed")
  done
done
printf '%s\n' "${jobs[@]}" | OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 xargs -P 2 -I{} sh -c '{} > /dev/null 2>&1 || echo "FAILED: {}"'
