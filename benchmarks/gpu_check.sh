#!/usr/bin/env bash
# The GPU check: one prepared script of at most 8 minutes on one GPU, run when a GPU machine is lent.
#
#   bash benchmarks/gpu_check.sh             # on the GPU: writes section gpu_check of benchmarks/RESULTS.md
#   bash benchmarks/gpu_check.sh --dry-run   # the same steps, tiny and on the CPU, into $GPU_CHECK_DIR/RESULTS.md
#
# Steps (each under its own time limit, so one slow step cannot eat the others' time):
#   1. fp32 vs bf16-mixed training throughput of every method        (benchmarks/precision_throughput.py)
#   2. a few minutes of full-width SCNet training on CrackForest      (benchmarks/scnet_cfd.py; CFD_ROOT, default
#      ../shared/data/cfd, else data/cfd; skipped with a line when absent)
#   3. pseudo-label speed with the paper's ResNet-50 classifier       (benchmarks/pseudo_label_speed.py)
#   4. tiled prediction of a 6000x4000 photo: time, peak RSS and GPU memory (benchmarks/predict_memory.py)
# Outputs and logs: $GPU_CHECK_DIR (default runs/gpu_check). PYTHON picks the interpreter (default .venv/bin/python).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DIR=${GPU_CHECK_DIR:-runs/gpu_check}
mkdir -p "$DIR"
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
CFD=${CFD_ROOT:-../shared/data/cfd}
[ -d "$CFD" ] || CFD=data/cfd
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DRY" = 1 ]; then
    export CRACKSEG_RESULTS="$DIR/RESULTS.md"  # never touches benchmarks/RESULTS.md
    THROUGHPUT=(--devices cpu --methods UNet SCNet --size 32 --batch 2 --warmup 1 --windows 1 --window_steps 1)
    SCNET=(--width 0.05 --epochs 1 --models SCNet --trainer-config configs/trainer/cpu.yaml
           --extra --data.init_args.crop_size 32)
    PSEUDO=(--models tiny-cnn --images 1 --runs 1 --reference_runs 1 --device cpu)
    PREDICT=(--size 320 240 --tiles 128:2 --train-steps 2 --runs 1 --base-channels 4 --depth 2 --device cpu)
    LIMITS=(300 300 300 300)
else
    THROUGHPUT=(--devices cuda --windows 3)
    SCNET=(--width 1 --epochs 1000 --minutes 2.5 --models SCNet --trainer-config configs/trainer/gpu.yaml)
    PSEUDO=(--models resnet50 --images 8 --runs 3 --reference_runs 1 --device cuda)
    PREDICT=(--tiles 1024:4 --train-steps 100 --runs 1 --device gpu --precision bf16-mixed)
    LIMITS=(130 230 70 100)
fi

step() {  # step <name> <seconds> <command...>: run with a limit, keep stdout / stderr, record time and status
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$DIR/$name.out" 2>"$DIR/$name.err"
    local status=$?
    echo "$name $status $((SECONDS - start))" >>"$DIR/steps.txt"
    echo "gpu_check: $name exit $status in $((SECONDS - start)) s"
}

rm -f "$DIR/steps.txt"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; } \
    >"$DIR/device.txt"
step throughput "${LIMITS[0]}" "$PY" -m benchmarks.precision_throughput "${THROUGHPUT[@]}"
if [ -d "$CFD" ]; then
    step scnet "${LIMITS[1]}" "$PY" -m benchmarks.scnet_cfd --root "$CFD" --workdir "$DIR/scnet" \
        --section gpu_check_scnet "${SCNET[@]}"
else
    echo "skipped: no CrackForest folder at $CFD (set CFD_ROOT)" >"$DIR/scnet.out"
    echo "scnet skipped 0" >>"$DIR/steps.txt"
fi
step pseudo_label "${LIMITS[2]}" "$PY" -m benchmarks.pseudo_label_speed "${PSEUDO[@]}"
step predict "${LIMITS[3]}" "$PY" -m benchmarks.predict_memory --workdir "$DIR/predict" "${PREDICT[@]}"
"$PY" - "$DIR" "$DRY" <<'EOF'
"""Join the steps' tables into section gpu_check (their own sections are left as they are)."""
import datetime as dt
import sys
from pathlib import Path

from benchmarks.common import RESULTS, commit, machine, write_section

folder, dry = Path(sys.argv[1]), sys.argv[2] == "1"
titles = {"throughput": "fp32 vs bf16-mixed training throughput", "scnet": "full-width SCNet on CrackForest",
          "pseudo_label": "pseudo-label speed, ResNet-50 classifier", "predict": "tiled prediction of a large photo"}
lines = [f"## GPU check{' (CPU dry run)' if dry else ''}", "",
         f"`bash benchmarks/gpu_check.sh{' --dry-run' if dry else ''}`, {dt.date.today()}, commit {commit()}; "
         f"{machine()}; GPU: {(folder / 'device.txt').read_text().strip()}.", ""]
for row in (folder / "steps.txt").read_text().split("\n"):
    if not row.strip():
        continue
    name, status, seconds = row.split()
    out = (folder / f"{name}.out").read_text(errors="replace").splitlines()
    table = [line for line in out if line.startswith("|")] or out[-3:]
    state = "skipped" if status == "skipped" else "ok" if status == "0" else \
        "TIME LIMIT" if status == "124" else f"FAILED (exit {status})"
    lines += [f"### {titles[name]}: {state}, {seconds} s", ""] + table + [""]
    if state.startswith(("FAILED", "TIME")):
        err = (folder / f"{name}.err").read_text(errors="replace").strip().splitlines()[-5:]
        lines += ["```", *err, "```", ""]
write_section("gpu_check", "\n".join(lines))
print(f"gpu_check: section gpu_check written to {RESULTS}")
EOF
