#!/usr/bin/env bash
# The benchmark table on an NVIDIA GPU, with one full-size correctness check first.
#
#   bash bench/gpu.sh [run_all.py options, e.g. --out=bench/RESULTS_gpu.md]
#
# NOT RUN YET ON A GPU: written and checked on a CPU-only machine (bench/gpu_parity.py with
# --allow-cpu, run_all.py --quick); the first GPU run may need fixes.
#
# Needs, in the Python it uses ($PY, default .venv/bin/python, else python3): jax with its
# CUDA plugin (pip install -U "jax[cuda12]>=0.10.2,<0.12", see docs/scaling.md), a CUDA
# build of torch, and the test requirements (requirements-test.txt).
#
# Steps, each stopping the script with a message when it fails:
#   1. nvidia-smi answers;
#   2. JAX lists GPU devices and PyTorch sees CUDA;
#   3. full-size correctness (bench/gpu_parity.py): the GMI generator and critic and the
#      FaceNet64 and VGG16 targets (random weights, converted by the library), batch 60 at
#      64 px, JAX on the GPU with JAX_DEFAULT_MATMUL_PRECISION=highest vs PyTorch on CUDA
#      with TF32 off; fails when an output differs by more than 2e-4 of its scale;
#   4. the whole table at full size (bench/run_all.py --gpu: the GMI, KEDMI, PLG-MI and LOMMA
#      attack steps at 60 identities, the VGG16/IR-152/FaceNet64 train steps at batch 64 with
#      and without the TL-DMI freeze, the GMI/KEDMI/PLG-MI GAN steps at batch 64, PPA
#      optimisation steps (bench/bench_ppa.py: full-width StyleGAN2 + ResNet-152, batch 25,
#      10 steps) at 256 px and at 1024 px, the attack's scaling over identities and the GPUs,
#      the Fisher row), the PyTorch side on CUDA and JAX on the GPU at their default
#      precisions (so the PPA rows' loss agreement is TF32-sized there); on the GPU the
#      attack steps run as one jitted lax.scan per chunk (LatentSearch loop='auto'); prints
#      the table, writes bench/RESULTS.md (or --out) and the elapsed time (the target was
#      under 5 minutes before the new rows; their compile times on a GPU are not measured).
#
# JAX and PyTorch share the GPU inside each benchmark process: JAX may take
# XLA_PYTHON_CLIENT_MEM_FRACTION of its memory (0.45 here unless set), PyTorch the rest.
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
start=$SECONDS

fail() {
  echo "gpu.sh: $*" >&2
  exit 1
}

echo '== 1. nvidia-smi'
command -v nvidia-smi >/dev/null 2>&1 || fail 'nvidia-smi not found: no NVIDIA driver here'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader ||
  fail 'nvidia-smi found no GPU'

echo '== 2. JAX and PyTorch see the GPU'
XLA_PYTHON_CLIENT_PREALLOCATE=false "$PY" -c '
import sys, jax
try:
    gpus = jax.devices("gpu")
except RuntimeError as e:
    hint = "pip install -U \"jax[cuda12]>=0.10.2,<0.12\""
    sys.exit(f"JAX has no GPU backend ({e}); install it: {hint}")
print(f"jax {jax.__version__}: {gpus}")
' || fail 'JAX does not see the GPU'
"$PY" -c '
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} does not see CUDA (a CPU build?): install a CUDA build")
print(f"torch {torch.__version__}: CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
' || fail 'PyTorch does not see CUDA'

echo '== 3. full-size correctness on the GPU (JAX precision highest, PyTorch TF32 off)'
JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" bench/gpu_parity.py --batch=60 ||
  fail 'the full-size parity check failed (see above)'

echo '== 4. the benchmark table at full size'
status=0
"$PY" bench/run_all.py --gpu "$@" || status=$?
echo "gpu.sh: $((SECONDS - start)) s in all (the target without the PPA rows: under 300 s)"
[[ $status -eq 0 ]] || fail "run_all.py exited with status $status (an ERROR row above)"
