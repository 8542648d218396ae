#!/usr/bin/env bash
# Every GPU check in one run (CI has no GPU: the CUDA tests skip there, the GPU benchmarks are not run):
#   bash benchmarks/gpu_checks.sh [LOGDIR]
# the CUDA tests, then the GPU benchmarks. msign_schedules.py and step.py write their "(cuda)" sections of
# BENCHMARKS.md and benchmarks/results/*-cuda.json; muonbp.py and drop_muon.py print their ratios. Runs from a
# source checkout (PYTHONPATH=src); LOGDIR (default .) gets one log per check. With SUITE=SECONDS, the whole suite
# runs last on the machine's cores (pytest-xdist, one torch thread per worker: 14 workers of 16 threads each ran 5×
# slower) for at most SECONDS, naming each failure as it happens, so a run cut short still says what failed.
set -u
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1  # absolute: the CLI tests run python -m specopt.cli from other directories
log=${1:-.}
mkdir -p "$log"
py=${PYTHON:-python3}
run() {
    name=$1; limit=$2; shift 2
    echo "== $name"
    timeout "$limit" "$@" >"$log/$name.log" 2>&1
    echo "rc=$?"
    tail -n 25 "$log/$name.log"
}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
$py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
run tests 150 $py -m pytest -p no:cacheprovider -q -o addopts= tests/test_cuda.py tests/test_msign.py -k cuda
run msign_schedules 100 $py benchmarks/msign_schedules.py --device cuda
run step 120 $py benchmarks/step.py --device cuda
run muonbp_step 60 $py benchmarks/muonbp.py step --device cuda --blocks 12 --steps 20
run drop_muon_step 60 $py benchmarks/drop_muon.py --device cuda --blocks 12 --steps 24
run compile 240 $py benchmarks/compile.py --device cuda
if [ -n "${SUITE:-}" ]; then
    echo "== suite"
    OMP_NUM_THREADS=1 timeout "$SUITE" $py -m pytest -p no:cacheprovider -o addopts= -v --tb=short -n "$(nproc)" tests \
        >"$log/suite.log" 2>&1
    echo "rc=$?"
    grep -E "(FAILED|ERROR) tests/|[0-9]+ (passed|failed)" "$log/suite.log" | tail -n 40
fi
