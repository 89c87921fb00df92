#!/usr/bin/env bash
# One GPU session (issue 19, point 5), run once on a lent accelerator (an H200 for minutes):
#   1. GNS at the paper's OC20 width (latent 512, 10 MP steps, budget 1024/12800/10): fp32 and bf16, FLOP/s as a fraction
#      of the same run's matmul rate at that precision (goal >= 0.4 of bf16), graphs/s, device peak memory;
#   2. DeeperGATGNN at 20 layers on 1,000 Pt10 clusters, batch 100 (the reference config): fp32 and bf16;
#   3. the PyTorch reference DeeperGATGNN (usccolumbia/deeperGATGNN, a user-supplied clone: its code is not shipped here)
#      on the same 1,000 clusters, 20 layers, batch 100, on the same GPU (goal: ours >= 5x its training graphs/s);
#   4. the data-parallel step on 1 (.. all) devices;
#   5. the fraction of step time the device waits for the host input pipeline (OC20 paper width, K = 1 and all cores).
# Every result goes to $OUT (JSON and the printed tables in $OUT/session.log).
#
# Usage:
#   benchmarks/gpu_session.sh [--wheels DIR] [--reference PATH] [--out DIR] [--dry]
#     --wheels DIR     install the project's dependencies from wheels in DIR first (the device machine has JAX with CUDA,
#                      torch and torch_geometric but no network): make them here with
#                        pip download -d wheels --only-binary=:all: --python-version 3.12 dm-haiku jraph optax \
#                          ml-collections orbax-checkpoint pymatgen ase spglib vesin pyxtal lmdb orjson tensorboardX jmp
#     --reference PATH a clone of usccolumbia/deeperGATGNN (or $DEEPERGATGNN_CHECKOUT); without it step 3 is skipped
#     --dry            the same steps in their quick modes on whatever backend is here (CPU): checks the script
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
WHEELS=""
REF="${DEEPERGATGNN_CHECKOUT:-}"
OUT="${OUT:-runs/gpu_session}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry) DRY=1 ;;
    --wheels) WHEELS="$2"; shift ;;
    --reference) REF="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
LOG="$OUT/session.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$WHEELS" ]; then
  python -m pip install -q --no-index --find-links "$WHEELS" dm-haiku jraph optax ml-collections orbax-checkpoint \
    pymatgen ase spglib vesin pyxtal lmdb orjson tensorboardX jmp
fi

step() {  # step NAME COMMAND...: runs, logs, keeps going if one fails
  local name="$1"; shift
  echo "=== $name: $* ($(date -u +%FT%TZ))" | tee -a "$LOG"
  if ! "$@" 2>&1 | grep -v -e '^WARNING' -e '^I[0-9]' -e '^W[0-9]' | tee -a "$LOG"; then
    echo "=== $name FAILED" | tee -a "$LOG"
  fi
}

python -c "import jax; d = jax.devices()[0]; print('session:', jax.__version__, jax.default_backend(), \
jax.device_count(), 'x', d.device_kind)" | tee -a "$LOG"
if [ "$DRY" = 1 ]; then
  step "gns bf16 (quick)" python benchmarks/gns_bench.py --quick --precision bf16 --profile "$OUT/profile_gns"
  step "deeper_gatgnn bf16 (quick)" python benchmarks/crystal_bench.py --quick --precision bf16 \
    --json "$OUT/crystal_bf16.json"
  step "scaling (quick)" python benchmarks/scaling_bench.py --quick --devices 1,2 --json "$OUT/scaling.json"
  step "reference data (dry)" python benchmarks/reference_bench.py --dry
  step "input wait (quick)" python benchmarks/data_bench.py --device --device_variant=demo --big 2000 --steps 20
else
  for p in fp32 bf16; do
    step "gns $p" python benchmarks/gns_bench.py --precision "$p" --sections flops --timed 5 \
      --profile "$OUT/profile_gns_$p"
    step "deeper_gatgnn 20 layers $p" python benchmarks/crystal_bench.py --depths 20 --precision "$p" \
      --json "$OUT/crystal_$p.json"
  done
  step "gns bf16 memory, 100-step models" python benchmarks/gns_bench.py --precision bf16 --sections memory
  if [ -n "$REF" ]; then
    step "PyTorch reference, 20 layers" python benchmarks/reference_bench.py --checkout "$REF" --layers 20 \
      --batch 100 --n 1000 --json "$OUT/reference.json"
  else
    echo "=== PyTorch reference skipped: no --reference PATH / DEEPERGATGNN_CHECKOUT" | tee -a "$LOG"
  fi
  step "input wait, OC20 paper width, K = 1 and all cores" python benchmarks/data_bench.py --device --big 20000 \
    --steps 200
  N=$(python -c "import jax; print(jax.device_count())")
  DEVS=1; [ "$N" -ge 2 ] && DEVS="1,2"; [ "$N" -ge 4 ] && DEVS="1,2,4"
  step "scaling, DeeperGATGNN 20 layers" python benchmarks/scaling_bench.py --config configs/deeper_gatgnn.py \
    --set model.num_layers=20 --set data.generate.kind=pt10 --set data.generate.n=1000 --per_device 100 --devices "$DEVS" --json "$OUT/scaling.json"
fi
echo "=== done; results in $OUT" | tee -a "$LOG"
