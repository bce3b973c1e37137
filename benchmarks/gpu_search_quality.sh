#!/usr/bin/env bash
# The search-quality protocol at full Fashion-MNIST scale on one GPU (sized for about 8 minutes on one H100):
# supernet on all 54,000 training images (6,000 held out for validation; the official 10,000 test images),
# TPE vs random search, verify, and stand-alone training of the searched network and of MobileNetV2 /
# MobileNetV3-Large width-scaled to the budget, over several seeds, with the sign test and Welch's t-test of
# bench_search.py; then training throughput and bf16/fp16 accuracy parity on the same GPU.
#
#   bash benchmarks/gpu_search_quality.sh [DATA_DIR] [OUT_DIR]
#
# DATA_DIR defaults to ../shared/datasets/fashion-mnist (standard IDX files), OUT_DIR to results/gpu. Needs
# a CUDA GPU that PyTorch sees; refuses in one line otherwise. Reports go to OUT_DIR/*.md; the trained
# networks and studies are cached under OUT_DIR, so a killed run started again resumes.
#
# SMOKE=1 runs the same three commands on the CPU at toy size (a few hundred images, one seed, one epoch; bf16
# and fp16 emulated): a check that the script and its flags work before GPU time is spent, not a result.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/datasets/fashion-mnist}
OUT=${2:-results/gpu}
mkdir -p "$OUT"
CPUS=$(nproc)
if [ "${SMOKE:-0}" = 1 ]; then
    DEVICE=cpu
    SEARCH_SIZE=(--supernet-epochs 1,1,1,1 --trials 3 --seeds 1 --epochs 1 --train-seeds 1 --verify 1
                 --train-images 600 --val-images 200)
    THROUGHPUT_SIZE=(--steps 1 --warmup 0 --repeats 1 --batch-size 32)
    PARITY_SIZE=(--seeds 1 --epochs 1 --train-images 300 --val-images 200 --test-images 300 --emulated
                 --arch "$(python -c 'import search_spaces as ss; print(ss.get_space("small32").smallest())')")
else
    python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_search_quality.sh: no CUDA GPU visible to PyTorch')"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
    DEVICE=cuda
    SEARCH_SIZE=(--supernet-epochs 2,2,2,4 --trials 40 --seeds 2 --epochs 10 --train-seeds 3 --verify 3)
    THROUGHPUT_SIZE=()
    PARITY_SIZE=()
fi
python benchmarks/bench_search.py --data "$DATA" --train-device "$DEVICE" --budget 100MFLOPs "${SEARCH_SIZE[@]}" \
    --no-ray --no-equal-latency --threads "$CPUS" --out "$OUT" | tee "$OUT/search_quality.md"
python benchmarks/bench_train_throughput.py "${THROUGHPUT_SIZE[@]}" | tee "$OUT/throughput.md"
python benchmarks/bench_precision_parity.py --train-device "$DEVICE" --data digits --data "$DATA" "${PARITY_SIZE[@]}" \
    | tee "$OUT/precision_parity.md"
