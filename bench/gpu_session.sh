#!/usr/bin/env bash
# Run cellnet's GPU checks on a CUDA machine: the `gpu`-marked tests (parity of the `cuda` kernel
# with the reference step in float32 and bf16, CUDA-graph capture and replay) and the GPU kernel
# benchmark bench/bench_kernels_gpu.py.
#
#   bash bench/gpu_session.sh [--out DIR] [--wheels DIR]
#
#   --out DIR      where the report and logs go (default: ${TMPDIR:-/tmp}/cellnet-gpu-results):
#                  env.txt (GPU, driver, torch), gpu_tests.log, bench.log and kernels_gpu.md;
#                  copy kernels_gpu.md into docs/results/ to keep it.
#   --wheels DIR   install missing Python dependencies from this folder of wheels instead of PyPI,
#                  for a machine without network access. Fill it on a machine with network, for
#                  the GPU machine's Python and platform, e.g.
#                    python3 -m pip download --only-binary=:all: --python-version 3.12 \
#                      --platform manylinux2014_x86_64 -d wheels pydantic PyYAML pluggy safetensors
#
# It uses the `python3` on PATH (or $PYTHON), which must hold a CUDA build of torch. cellnet-core,
# cellnet-lattice and cellnet-kernels are installed from this tree into a private folder
# (${TMPDIR:-/tmp}/cellnet-gpu-site, put on PYTHONPATH for the checks only), together with any of
# pydantic, PyYAML, pluggy, safetensors, numpy, pytest, setuptools that python3 lacks; the Python environment
# itself is left as it was. Exit status 0 only when the tests and the benchmark both pass.
set -euo pipefail
cd "$(dirname "$0")/.."

RESULTS=${TMPDIR:-/tmp}/cellnet-gpu-results
WHEELS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) RESULTS=$2; shift 2 ;;
        --wheels) WHEELS=$2; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "gpu_session.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
SITE=${TMPDIR:-/tmp}/cellnet-gpu-site
rm -rf "$SITE" && mkdir -p "$SITE"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_session.sh: $PY has no CUDA torch or sees no GPU; the GPU checks need one" >&2
    exit 2
fi

# Python dependencies the checks import, by import name = distribution name
missing=()
for pair in pydantic:pydantic yaml:PyYAML pluggy:pluggy safetensors:safetensors numpy:numpy pytest:pytest \
            setuptools:setuptools; do
    "$PY" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing into $SITE: ${missing[*]}"
    if [ -n "$WHEELS" ]; then
        "$PY" -m pip install -q --no-index --find-links "$WHEELS" --target "$SITE" "${missing[@]}"
    else
        "$PY" -m pip install -q --target "$SITE" "${missing[@]}"
    fi
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"  # also for the build backend below
echo "installing cellnet-core, cellnet-lattice, cellnet-kernels from this tree into $SITE"
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$SITE" \
    . plugins/cellnet-lattice plugins/cellnet-kernels

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" || true
} 2>&1 | tee "$RESULTS/env.txt"

# the gpu-marked tests first (parity of the cuda kernel, bf16 and float32, CUDA graphs), then the benchmark
set +e
"$PY" -m pytest -q -p no:cacheprovider -m gpu plugins/cellnet-kernels/tests plugins/cellnet-lattice/tests \
    2>&1 | tee "$RESULTS/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
timeout 420 "$PY" bench/bench_kernels_gpu.py --out "$RESULTS/kernels_gpu.md" 2>&1 | tee "$RESULTS/bench.log"
bench_rc=${PIPESTATUS[0]}
echo "gpu tests rc=$tests_rc, bench rc=$bench_rc" | tee -a "$RESULTS/env.txt"
echo "results in $RESULTS (copy kernels_gpu.md into docs/results/ to keep it)"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
