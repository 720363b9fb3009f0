#!/usr/bin/env bash
# The GPU checks of the trainer issue as one prepared script, for a session that is lent a GPU machine
# (15 minutes of device time in all, so everything runs in one call and writes its logs under $OUT).
#
#   here, with PyPI:   bash tests/benchmarks/gpu_session.sh prepare
#       downloads the wheels the GPU image lacks (diffusers, pydantic and their missing needs, pinned to the
#       versions in this checkout's .venv) for its Python 3.12 into .wheels/ (git-ignored)
#   there:             bash tests/benchmarks/gpu_session.sh run        (device tool: carry [".wheels"],
#                      timeout_s 540; each part has its own limit and all share one 450 s deadline)
#       installs them under /tmp/site, then: the `gpu` tests of tests/train, bench_train.py --sd15 (bf16,
#       batch 16, naive step alongside), bench_eval.py --sd15, bench_train.py --sd15 with --compile, with
#       --compile --compile-regions and with --profile; prints a summary table and writes every log to $OUT (8 files at
#       most come back). A failing part is reported and the next one still runs.
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
# One deadline for all parts (BUDGET_S, default 450 s) so the summary prints inside the device call's
# timeout whatever hangs; each part also has its own limit. Parts run in order of what the issue needs.
deadline=$((SECONDS + ${BUDGET_S:-450}))
names=()
part() {  # part NAME TIMEOUT_S COMMAND...: run one check, keep its log, go on when it fails
    local name=$1 limit=$2 left=$((deadline - SECONDS))
    shift 2
    names+=("$name")
    if [ "$left" -lt 20 ]; then
        echo "=== $name: skipped, the session's deadline is near"
        status[$name]=skipped
        return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    echo "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    status[$name]="$? after $((SECONDS - t0))s"
    tail -n 12 "$out/$name.log"
}
sd15=(python3 tests/benchmarks/bench_train.py --sd15 --batch-size 16 --dtype bf16)
part gpu_tests 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests/train
part bench_train 130 "${sd15[@]}" --steps 20
part bench_eval 110 python3 tests/benchmarks/bench_eval.py --sd15 --prompts 16 --images-per-prompt 4
part bench_train_compile 160 "${sd15[@]}" --steps 20 --skip-naive --compile
# channels_last measured 5% slower on an H200 (RESULTS.md); regional compilation is the next thing to measure
part bench_train_regions 120 "${sd15[@]}" --steps 20 --skip-naive --compile --compile-regions
part bench_train_profile 60 "${sd15[@]}" --profile --warmup 3

{
    echo "=== summary ($(head -n 1 "$out/gpu.txt"))"
    for name in "${names[@]}"; do
        echo "$name: exit ${status[$name]} ($out/$name.log)"
    done
    grep -h -E "passed|failed|error|skipped" "$out/gpu_tests.log" | tail -n 1
    grep -h -E "images/s" "$out/bench_eval.log" 2>/dev/null
    # bench_train's last line is one JSON object of its figures.
    for name in bench_train bench_train_compile bench_train_regions; do
        tail -n 1 "$out/$name.log" 2>/dev/null | python3 -c "import json, sys
try:
    r = json.loads(sys.stdin.read())
    r.pop('flops_gflop_per_sample', None)
    print('$name', json.dumps(r))
except ValueError:
    print('$name: no figures (see its log)')"
    done
} | tee "$out/summary.txt"
