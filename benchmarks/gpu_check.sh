#!/usr/bin/env bash
# One check of fond on a CUDA machine, under 8 minutes: the GPU-marked tests, `fond bench --device cuda`
# (inference step at B 1000 and 10000; training iteration at B 200 with T_train 16 and 128) and a
# 10,000-iteration paper-recipe iP-VAE on natural patches with its 1000-step evaluation; one table at the end.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default OUT_DIR: runs/gpu-check)
#
# Record the table with the card's name in BENCHMARKS.md. Without a GPU it stops at once and says so.
# A dry run of the script itself on a CPU (small sizes): DEVICE=cpu ITERATIONS=20 BENCH_STEPS=5 bash ...
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
ITERATIONS=${ITERATIONS:-10000}
BENCH_STEPS=${BENCH_STEPS:-100}

if ! $PY -c "import fond, torch" 2>/dev/null; then
    echo "gpu_check: $PY cannot import fond and torch (activate the environment: make venv; . .venv/bin/activate)" >&2
    exit 2
fi
if [ "$DEVICE" = cuda ] && ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing measured" >&2
    exit 2
fi
CARD=$($PY -c "from fond.device import device_name; print(device_name('$DEVICE'))")
echo "gpu_check: $CARD, torch $($PY -c 'import torch; print(torch.__version__, torch.version.cuda)')" >&2

stage() {  # stage NAME LIMIT_S COMMAND...: run it with a time limit, keep its log, record its wall time and status
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name $rc $((SECONDS - start))" >>"$OUT/stages.txt"
    echo "gpu_check: $name: exit $rc in $((SECONDS - start)) s (log: $OUT/$name.log)" >&2
}
: >"$OUT/stages.txt"

stage tests 120 $PY -m pytest -p no:xdist -q -m gpu tests/test_gpu.py
stage bench_b1000 90 $PY -m fond bench --device "$DEVICE" --batch 1000 --train-batch 200 --train-steps 16 \
    --steps "$BENCH_STEPS" --inputs 256 --json "$OUT/bench_b1000.json"
stage bench_b10000 90 $PY -m fond bench --device "$DEVICE" --batch 10000 --train-batch 200 --train-steps 128 \
    --steps "$BENCH_STEPS" --inputs 256 --json "$OUT/bench_b10000.json"
stage paper_10k 240 $PY -m fond train --device "$DEVICE" --model ipvae --preset paper --data natural16-lcn \
    --iterations "$ITERATIONS" --eval-steps 1000 --no-progress --out "$OUT/paper-10k"

$PY - "$OUT" "$CARD" <<'EOF'
import json, sys
from pathlib import Path

out, card = Path(sys.argv[1]), sys.argv[2]
print(f"\n## fond on {card}\n")
print("| stage | exit | wall s | result |\n|---|---|---|---|")
for line in (out / "stages.txt").read_text().splitlines():
    name, rc, wall = line.split()
    result = ""
    if name == "tests":
        tail = (out / "tests.log").read_text().strip().splitlines()
        result = tail[-1] if tail else ""
    elif name.startswith("bench") and (out / f"{name}.json").is_file():
        rows = json.loads((out / f"{name}.json").read_text())
        result = "; ".join(f"{r['kind']} B {r['batch']} T {r['steps']}: {r['fond_ms']:.3f} ms "
                           f"({r['vs_floor']:.1f}× floor, {r['speedup']:.1f}× straightforward)" for r in rows)
    elif name == "paper_10k" and (out / "paper-10k" / "done.json").is_file():
        row = json.loads((out / "paper-10k" / "done.json").read_text())
        result = (f"{row.get('iterations')} iterations in {row.get('minutes', 0):.1f} min; R² {row['r2']:.3f}, "
                  f"zeros {row['zeros']:.3f}, d {row['rate_distortion']:.3f} at 1000 steps")
    print(f"| {name} | {rc} | {wall} | {result} |")
EOF
