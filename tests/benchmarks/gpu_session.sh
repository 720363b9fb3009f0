#!/usr/bin/env bash
# The GPU checks of the trainer issue as one prepared script, for a session that is lent a GPU machine
# (15 minutes of device time in all, so everything runs in one call and writes its logs under $OUT).
#
#   here, with PyPI:   bash tests/benchmarks/gpu_session.sh prepare
#       downloads the wheels the GPU image lacks (diffusers, pydantic and their missing needs, pinned to the
#       versions in this checkout's .venv) for its Python 3.12 into .wheels/ (git-ignored)
#   there:             bash tests/benchmarks/gpu_session.sh run        (device tool: carry [".wheels"],
#                      timeout_s 600; each part has its own limit, 560 s in all)
#       installs them under /tmp/site, then: the `gpu` tests of tests/train, bench_train.py --sd15 (bf16,
#       batch 16, naive step alongside), the same with --compile, bench_eval.py --sd15; prints a summary
#       table and writes every log to $OUT. A failing part is reported and the next one still runs.
#
# Record the table, the card's name and this command in tests/benchmarks/RESULTS.md.
set -uo pipefail

mode=${1:-run}
wheels=${WHEELS_DIR:-.wheels}
# What the GPU image (tests/benchmarks/RESULTS.md; /work/.library/device/KINDS.md) does not have.
packages=(diffusers pydantic pydantic-core annotated-types typing-inspection importlib-metadata)

if [ "$mode" = prepare ]; then
    py=${PYTHON:-.venv/bin/python}
    pins=()
    for name in "${packages[@]}"; do
        version=$("$py" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
        [ -n "$version" ] || { echo "prepare: $name is not installed in $py's environment" >&2; exit 1; }
        pins+=("$name==$version")
    done
    mkdir -p "$wheels"
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$wheels" "${pins[@]}" || exit 1
    ls -la "$wheels"
    exit 0
fi

[ "$mode" = run ] || { echo "usage: $0 prepare|run" >&2; exit 2; }
out=${OUT:-/tmp/dkto-gpu-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$wheels"/*.whl || { echo "installing the carried wheels failed" >&2; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, diffusers, transformers, accelerate; print('torch', torch.__version__, 'diffusers', \
diffusers.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" \
    | tee -a "$out/gpu.txt"

declare -A status
part() {  # part NAME TIMEOUT_S COMMAND...: run one check, keep its log, go on when it fails
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $*"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    status[$name]=$?
    tail -n 15 "$out/$name.log"
}
part gpu_tests 100 python3 -m pytest -q -p no:cacheprovider -m gpu tests/train
part bench_train 170 python3 tests/benchmarks/bench_train.py --sd15 --batch-size 16 --dtype bf16 --steps 20
part bench_train_compile 170 python3 tests/benchmarks/bench_train.py --sd15 --batch-size 16 --dtype bf16 \
    --steps 20 --compile --skip-naive
part bench_eval 120 python3 tests/benchmarks/bench_eval.py --sd15 --prompts 16 --images-per-prompt 4

echo
echo "=== summary ($(head -n 1 "$out/gpu.txt"))"
for name in gpu_tests bench_train bench_train_compile bench_eval; do
    echo "$name: exit ${status[$name]} ($out/$name.log)"
done
grep -h -E "passed|failed|error|skipped" "$out/gpu_tests.log" | tail -n 1
# bench_train's last line is one JSON object of its figures (bench_eval's figures are in its log's tail above).
for name in bench_train bench_train_compile; do
    tail -n 1 "$out/$name.log" | python3 -c "import json, sys
try:
    print('$name', json.dumps(json.loads(sys.stdin.read())))
except ValueError:
    print('$name: no figures (see its log)')"
done
