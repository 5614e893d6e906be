#!/usr/bin/env bash
# The transformer trials of docs/transformers-2026-12-02.md: for each seed, one DQT checkpoint
# with a width per token (every static width and the controller from it), and the same
# architecture trained alone at static widths for as many epochs, at the same learning rates (--static-schedule
# phased: --lr for the warm-up's epochs, then --dqt-lr). Two runs at a time, one thread each.
# Usage: [TOKEN_ARGS="--bits 4 5 6 7 8"] bench/transformer_trials.sh vit|lm OUT_DIR [SEEDS...]
#   TOKEN_ARGS: extra options of the DQT checkpoint's run only (the models alone do not depend on them)
#   vit: TinyViT on digits, 50 epochs (20 + 30), alone at 8..4 bits
#   lm:  CharTransformer on the pydoc corpus (6,000 training windows), 16 epochs (10 + 6), alone at 8 and 4 bits
set -euo pipefail
task=${1:?vit or lm}; out=${2:?out dir}; shift 2
seeds=${*:-0 1 2}
if [ "$task" = vit ]; then
  common=(--model vit --data digits --warmup-epochs 20 --epochs 30); widths="8 7 6 5 4"
else
  common=(--data pydoc --limit 6000 --warmup-epochs 10 --epochs 6); widths="8 4"
fi
jobs=()
for seed in $seeds; do
  jobs+=("dqt train ${common[*]} --controller token ${TOKEN_ARGS:-} --seed $seed --out $out/token-s$seed")
  for bits in $widths; do
    jobs+=("dqt train ${common[*]} --static-bits $bits --static-schedule phased --seed $seed --out $out/static$bits-s$seed")
  done
done
printf '%s\n' "${jobs[@]}" | OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 xargs -P 2 -I{} sh -c '{} > /dev/null 2>&1 || echo "FAILED: {}"'
