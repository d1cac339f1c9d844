#!/usr/bin/env bash
# Download into .whl/ the wheels that the lent GPU machine lacks (scripts/device_wheels.txt), for its
# python 3.12 on manylinux x86_64, then check them (every pin has its wheel, every requirement is met by the
# machine's packages or another wheel) and print their total size. Run here, where the registries answer:
#
#     bash scripts/device_wheels.sh                       # .whl/ for the device (python 3.12)
#     bash scripts/device_wheels.sh --python-version 3.11 # for a CPU rehearsal in a python 3.11 venv
#
# .whl/ is git-ignored; the device tool carries it with `carry: [".whl"]` (64 MiB in all with the tree).
# PYTHON names the interpreter whose pip downloads (default python3; it needs `packaging`).
set -euo pipefail
cd "$(dirname "$0")/.."

PY_VERSION=3.12
DEST=.whl
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) PY_VERSION="$2"; shift 2 ;;
        --dest) DEST="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "device_wheels.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}

# pins: `name==version` lines of device_wheels.txt, comments and `-name` (not carried) lines left out
mapfile -t PINS < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' scripts/device_wheels.txt | grep -v -e '^$' -e '^-')

# A fresh folder: two versions of one name would stop the install there.
rm -rf "$DEST"
mkdir -p "$DEST"
# pip matches manylinux_2_N exactly, so name the N that these projects publish.
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$p")
done
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$PY_VERSION" --implementation cp "${PLATFORMS[@]}" -d "$DEST" "${PINS[@]}"

# bitsandbytes ships a library for every CUDA and ROCm version (41 MiB); torch cu130 there loads a CUDA 13 one.
for w in "$DEST"/bitsandbytes-*.whl; do
    [ -e "$w" ] || continue
    "$PY" scripts/device_kit.py trim-wheel "$w" --drop 'bitsandbytes/libbitsandbytes_*' \
        --keep 'bitsandbytes/libbitsandbytes_cpu.so' --keep 'bitsandbytes/libbitsandbytes_cuda13*.so'
done

"$PY" scripts/device_kit.py check-wheels "$DEST" --python-version "$PY_VERSION"
ls -l "$DEST" | tail -n +2 | awk '{printf "  %8.2f MiB  %s\n", $5 / 1048576, $9}'
TREE=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
WHEELS=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
awk -v w="$WHEELS" -v t="$TREE" -v n="${#PINS[@]}" 'BEGIN {
    printf "%d wheels: %.1f MiB; with the tracked tree (%.1f MiB): %.1f MiB of the 64 MiB a device call carries\n",
        n, w / 1048576, t / 1048576, (w + t) / 1048576 }'
