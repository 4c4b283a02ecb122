#!/usr/bin/env bash
# Runs several methods on ASC (order 0, the paper's epochs) at once on one GPU of the device
# tool, and tars their run folders (no checkpoints) and logs into $OUT/runs.tgz.
#
# How it was used (2026-11-30, H200; docs/FINDINGS.md, "ASC at the paper's epochs on a GPU"):
#   The default backbone's model.safetensors (91 MB) is over the tool's 64 MiB carry limit, so
#   it travels in two halves (split -b 46000000 -> part_aa, part_ab) in two calls made back to
#   back (the machine stays warm 30 s between calls):
#     call 1, carry [.gpu/ma, .gpu/data]: mkdir -p /root/stash && cp -r .gpu/ma .gpu/data /root/stash/
#     call 2, carry [.gpu/mb, .gpu/sh, .whl]: METHODS="bcl one mtl" DEADLINE=480 bash <this script>
#   .gpu/mb holds part_ab, sha256 (of the whole file) and the backbone's json/vocab files;
#   .gpu/data/absa is ../shared/data/absa; .whl holds the orbax-checkpoint 0.12.8 wheel (the
#   image has jax 0.11.2 / flax 0.12.10, and its own orbax). .gpu/ and .whl/ are git-excluded.
#   Three runs share the GPU: each gets 28% of its memory (MEMFRAC); runs still going at
#   DEADLINE seconds are stopped (their finished tasks are in metrics.jsonl and results.json).
# Env: DEADLINE, STASH (/root/stash), PY (python3), METHODS, EXTRA (more --set), MEMFRAC.
set -u
T0=$(date +%s)
DEADLINE=${DEADLINE:-480}
STASH=${STASH:-/root/stash}
PY=${PY:-python3}
OUT=${OUT:-/tmp/out}
METHODS=${METHODS:-"bcl one mtl"}
EXTRA=${EXTRA:-}
mkdir -p "$OUT" logs
el() { echo $(( $(date +%s) - T0 )); }

# Backbone: the two halves of model.safetensors joined, checked against the sha256.
M=$STASH/minilm
mkdir -p "$M"
cp .gpu/mb/*.json .gpu/mb/vocab.txt "$M"/
# 1_Pooling/ says how the backbone pools (model.pooling=auto reads it): keep it with the weights.
[ ! -d .gpu/mb/1_Pooling ] || cp -r .gpu/mb/1_Pooling "$M"/
cat "$STASH"/ma/part_aa .gpu/mb/part_ab > "$M"/model.safetensors
echo "$(cat .gpu/mb/sha256)  $M/model.safetensors" | sha256sum -c - || { echo "BAD WEIGHTS"; exit 3; }

# orbax 0.12.8 (our pin) beside the image's jax/flax; fall back to the image's orbax.
$PY -m pip install -q --no-deps --target /tmp/pylib .whl/orbax_checkpoint-*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/pylib:$PWD
if ! $PY -c "import ctr_jax.training.loop" 2>logs/import.err; then
  echo "import with pinned orbax failed:"; tail -3 logs/import.err
  export PYTHONPATH=$PWD
  $PY -c "import ctr_jax.training.loop" || exit 4
fi
$PY -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, 'orbax', o.__file__, jax.devices())"
nvidia-smi -L 2>/dev/null
(nvidia-smi dmon -s u -d 10 > logs/dmon.log 2>&1 &) 2>/dev/null

export CTR_JAX_DATA_ROOT=$STASH/data
export XLA_PYTHON_CLIENT_MEM_FRACTION=${MEMFRAC:-0.28}
export JAX_COMPILATION_CACHE_DIR=/tmp/xla_cache
pids=()
TV=""; [[ -x /usr/bin/time ]] && TV="/usr/bin/time -v"
for m in $METHODS; do
  # shellcheck disable=SC2086
  $TV $PY run.py --config configs/asc_$m.yaml --set name=gpu_asc_${m}_paper \
    --set model.backbone="$M" --set 'train.buckets=[32,64,128]' $EXTRA \
    > logs/$m.log 2>&1 &
  pids+=($!)
done
echo "started ${METHODS} at $(el) s"
while :; do
  alive=0
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  [[ $alive == 0 ]] && break
  if (( $(el) >= DEADLINE )); then
    echo "deadline at $(el) s: stopping"; pkill -TERM -f "run.py --config" ; sleep 5; break
  fi
  sleep 5
done
for m in $METHODS; do echo "== $m: $(grep -cE 'task [0-9]+/' logs/$m.log) task lines"; tail -3 logs/$m.log; grep -E "Elapsed|Maximum resident" logs/$m.log; done
echo "done at $(el) s"
tar czf "$OUT"/runs.tgz --exclude=checkpoints runs logs
ls -la "$OUT"
