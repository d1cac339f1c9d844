#!/usr/bin/env bash
# The GPU checks of issues #7 (speed) and #9 (the `gpu` nox session) in ONE command, for a lent CUDA
# machine with no network. Here first: `bash scripts/device_wheels.sh` (fills .whl/); then on the device,
# from the repository root, with .whl carried:
#
#     bash scripts/device_check.sh            # smoke mode by itself where torch sees no CUDA device
#     bash scripts/device_check.sh --smoke    # the same steps on tiny sizes (a CPU rehearsal)
#
# Steps, most valuable first, each time-boxed so that the whole fits in --budget seconds (default 540, with
# margin under the device's 600 s per command): install the wheels into $DEVICE_SITE (default /tmp/site),
# report versions / nvidia-smi / a bf16 matmul rate, benchmarks/gpu_throughput.py (#7's figures, plan() vs
# measured peak), then `nox --no-venv -s gpu` (#9; it fails, never skips, without CUDA). Everything is
# tee'd into $OUT (a temporary folder when OUT is unset) as it runs, so a killed run still leaves its logs:
# summary.txt, install.log, env.log, gpu_throughput.log, gpu_throughput.json, nox_gpu.log, gpu_junit.xml.
# Exit status: the number of steps that failed (in smoke mode the gpu session's no-CUDA failure is expected).
# Environment: PYTHON (default python3), DEVICE_SITE, OUT, DEVICE_CHECK_BUDGET_S (default 540).
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
BUDGET=${DEVICE_CHECK_BUDGET_S:-540}
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1; shift ;;
        --budget) BUDGET="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "device_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}
SITE=${DEVICE_SITE:-/tmp/site}
if [ -z "${OUT:-}" ]; then OUT=$(mktemp -d "${TMPDIR:-/tmp}/device-check.XXXXXX"); fi
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
# Nothing can be fetched there: never let a library wait on the hub.
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 MPLBACKEND=Agg
START=$SECONDS
FAILED=0

note() { echo "== $*" | tee -a "$SUMMARY"; }

# run_step NAME CAP RESERVE LOG CMD...: run CMD for at most CAP seconds, and never into the last RESERVE
# seconds of the budget (kept for the steps after it); its output goes to the console and to $OUT/LOG.
run_step() {
    local name=$1 cap=$2 reserve=$3 log=$4
    shift 4
    local left=$((START + BUDGET - SECONDS - reserve))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 10 ]; then
        note "$name: NOT RUN (${left}s of the budget left)"
        FAILED=$((FAILED + 1))
        return 1
    fi
    echo "== $name (at most ${limit}s): $*" | tee -a "$OUT/$log"
    local t0=$SECONDS
    timeout -k 15 "$limit" "$@" 2>&1 | tee -a "$OUT/$log"
    local rc=${PIPESTATUS[0]}
    local took=$((SECONDS - t0))
    if [ "$rc" -eq 0 ]; then
        note "$name: ok (${took}s)"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        note "$name: TIMED OUT after ${took}s (limit ${limit}s)"
    else
        note "$name: FAILED, exit $rc (${took}s)"
    fi
    [ "$rc" -eq 0 ] || FAILED=$((FAILED + 1))
    return "$rc"
}

note "device check $(date -u +%FT%TZ) in $PWD, git $(git rev-parse --short HEAD 2>/dev/null || echo '?'); logs in $OUT"

# 1. the carried wheels (the machine has torch, transformers 5.17, accelerate, pytest, ...; not trl, datasets,
#    pydantic, liger-kernel, bitsandbytes, nox). PYTHONPATH puts them, and tunekit's src/, before its own.
if ! ls .whl/*.whl >/dev/null 2>&1; then
    note "install: FAILED: no .whl/*.whl here (run scripts/device_wheels.sh first and carry .whl)"
    exit 1
fi
if ! run_step install 120 300 install.log "$PY" -m pip install --quiet --disable-pip-version-check --no-index \
    --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl; then
    note "the wheels did not install: nothing else can run"
    exit 1
fi
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"

# 2. what it runs on
run_step env 60 300 env.log bash -c "nvidia-smi || echo 'nvidia-smi: not available'; $PY scripts/device_kit.py env"
if [ "$SMOKE" -eq 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    note "torch sees no CUDA device: smoke mode (tiny sizes; the gpu session is expected to fail)"
    SMOKE=1
fi

# 3. issue #7: trl defaults vs tunekit's default, LoRA and full; tokens/s, MFU, peak memory, plan() vs peak.
#    About 2-3 minutes on an H200 (40 steps of batch 8, 128..2048 tokens, four variants); 150 s kept for nox.
BENCH_ARGS=()
[ "$SMOKE" -eq 1 ] && BENCH_ARGS=(--smoke --steps 12 --warm 4)
run_step gpu_throughput 300 150 gpu_throughput.log "$PY" benchmarks/gpu_throughput.py ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"}
grep -h '^{"benchmark": "gpu_throughput"' "$OUT/gpu_throughput.log" >"$OUT/gpu_throughput.json" || true

# 4. issue #9: the `gpu` nox session (tests marked gpu: tests/gpu/, tests/distributed/test_gpus.py) on this
#    interpreter; nox --no-venv installs nothing (noxfile.py), so it runs on the wheels installed above.
run_step nox_gpu 300 0 nox_gpu.log "$PY" -m nox --no-venv -s gpu -- -v -rA --durations=15 -p no:cacheprovider \
    --junitxml="$OUT/gpu_junit.xml"
NOX_RC=$?
if [ "$NOX_RC" -ne 0 ] && [ "$SMOKE" -eq 1 ] && grep -q "no CUDA device" "$OUT/nox_gpu.log"; then
    note "nox_gpu: the expected failure without CUDA (it fails, never skips)"
    FAILED=$((FAILED - 1))
fi

echo
echo "== results (${OUT})"
cat "$OUT/gpu_throughput.json" 2>/dev/null
grep -hE '^(FAILED|ERROR|PASSED)|^=+ .*(passed|failed|error)|^nox > (Session|Ran)' "$OUT/nox_gpu.log" | tail -n 25
cat "$SUMMARY"
note "failed steps: $FAILED; took $((SECONDS - START))s of a ${BUDGET}s budget"
exit "$FAILED"
