#!/usr/bin/env bash
# Every GPU check in one run, for a machine with an NVIDIA GPU and CuPy (100-120 s on a 16-core
# H200 machine, half of it writing the full-width checkpoint): the CuPy parity tests, then
# `bench` on the tiny preset (resident, then streamed under a memory cap) and on two full-width
# Grok-1 layers (resident, a 4096-token prompt, then streamed), then tests/gpu_profile.py on
# those layers. Results go to $OUT (default /tmp/minigrok-gpu): pytest.log, bench.jsonl (one
# JSON line per bench run, tagged with what it ran) and profile.jsonl. Each step has a time
# limit, so that one that hangs leaves the others their time.
#
#     bash tests/gpu_check.sh            # FULL=0 skips the full-width part
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/minigrok-gpu}"
work="${WORK:-/tmp/minigrok-gpu-work}"
py="${PYTHON:-python3}"
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1 MINIGROK_NO_DOWNLOAD=1 MINIGROK_CACHE="$work/cache"

nvidia-smi -L || true
$py -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__)"

# 1. Parity: the same logits and tokens on the GPU (resident, streamed, split) as on the CPU,
#    and the int8 GEMV kernel against x @ dequantize(W).
timeout 240 $py -m pytest -q -p no:cacheprovider tests/test_cupy.py 2>&1 | tee "$out/pytest.log"

bench() {       # bench TAG ARGS...: one JSON line in bench.jsonl, tagged
    local tag="$1"; shift
    echo "== bench $tag: $*"
    timeout 120 $py -m minigrok bench --json "$@" | $py -c "
import json, sys
r = json.loads(sys.stdin.read()); r['tag'] = '$tag'; print(json.dumps(r))" | tee -a "$out/bench.jsonl"
}

# 2. tiny: all resident, then under a cap that leaves room for 3 of its 12 layers.
$py -m minigrok make-checkpoint --preset tiny --out "$work/tiny" --force
bench tiny-gpu --checkpoint "$work/tiny" --device cuda --prompt-len 16 --new-tokens 32
bench tiny-gpu-streamed --checkpoint "$work/tiny" --device cuda --gpu-memory 0.322 \
    --prompt-len 16 --new-tokens 32

# 3. Two full-width Grok-1 layers (13 GB): resident, then with 8 GiB (both layers streamed).
if [ "${FULL:-1}" = 1 ]; then
    time timeout 240 $py -m minigrok make-checkpoint --preset grok-1 --num-layers 2 \
        --out "$work/grok2" --force
    bench grok2-gpu --checkpoint "$work/grok2" --device cuda --prompt-len 16 --new-tokens 32
    # a long prompt: attention in query blocks, experts 1024 tokens at a time, within the
    # working room engine/placement.reserve_bytes keeps
    bench grok2-gpu-long --checkpoint "$work/grok2" --device cuda --prompt-len 4096 --new-tokens 4
    bench grok2-gpu-streamed --checkpoint "$work/grok2" --device cuda --gpu-memory 8 \
        --prompt-len 16 --new-tokens 16
    timeout 120 $py tests/gpu_profile.py "$work/grok2" 2>&1 | tee "$out/profile.jsonl"
fi
echo "results: $out"
