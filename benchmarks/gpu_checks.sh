#!/bin/bash
# The GPU checks of the speed work, as one script for a lent device machine (the `run` tool): the test suite on
# the GPU's torch, then the IBA and InputIBA benchmarks at 224 px with the batch sizes a GPU needs. Budgeted for
# about 10 minutes on one H100/H200; every result lands in $OUT (default outputs/gpu).
#
#   bash benchmarks/gpu_checks.sh            # then copy $OUT's tables into benchmarks/RESULTS.md
set -u
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
timeout 240 python -m pytest -q -x -p no:cacheprovider tests > "$OUT/tests.txt" 2>&1
echo "tests exit $?" >> "$OUT/tests.txt"
cd benchmarks
timeout 150 python bench_iba.py --device cuda --arch vgg16 resnet50 --sizes 224 --n-images 32 \
    --batch-sizes 1 8 16 32 --precisions float32 bfloat16 --out "../$OUT/iba.md" > "../$OUT/iba.log" 2>&1
timeout 180 python bench_inputiba.py --model vgg16 --size 224 --device cuda --n-reference 1 \
    --reference-fraction 0.1 --batch-sizes 1 8 16 32 --precisions float32 bfloat16 > "../$OUT/inputiba.md" 2>&1
timeout 90 python bench_compile.py --device cuda --size 224 --precisions float32 bfloat16 > "../$OUT/compile.md" 2>&1
tail -n 30 "../$OUT/tests.txt" "../$OUT/iba.md" "../$OUT/inputiba.md" "../$OUT/compile.md"
