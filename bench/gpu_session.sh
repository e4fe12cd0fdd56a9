#!/usr/bin/env bash
# The GPU checks of issue #5 as one command for the `device` machine (an H200 whose python3 already
# holds a CUDA build of torch, pluggy, pytest, pyyaml, safetensors, numpy, tqdm, sacrebleu; no
# network there, no pydantic).
#
#   here, once per checkout (needs PyPI):  bash bench/gpu_session.sh --fetch-wheels
#   then, with the device tool:             run(command="bash bench/gpu_session.sh", carry=[".whl"], timeout_s=540)
#
# It installs pydantic from the carried wheels and cellnet-core + cellnet-lattice + cellnet-kernels
# from this tree (no dependencies fetched), runs the `gpu`-marked tests and bench/bench_kernels_gpu.py,
# and leaves the logs and docs/results/kernels_gpu.md under $OUT (copy the latter into docs/results).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
        typing-extensions==4.16.0
    exit 0
fi

OUT=${OUT:-/tmp/cellnet-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
SITE=/tmp/cellnet-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$SITE" \
    . plugins/cellnet-lattice plugins/cellnet-kernels
export PYTHONPATH="$SITE"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/env.txt"
# the gpu-marked tests first (parity of the cuda kernel, bf16 and float32, CUDA graphs), then the benchmark
set +e
python3 -m pytest -q -p no:cacheprovider -m gpu plugins/cellnet-kernels/tests plugins/cellnet-lattice/tests \
    2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
timeout 420 python3 bench/bench_kernels_gpu.py --out "$OUT/kernels_gpu.md" 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}
echo "gpu tests rc=$tests_rc, bench rc=$bench_rc" | tee -a "$OUT/env.txt"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
