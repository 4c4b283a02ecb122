#!/usr/bin/env bash
# Runs a sweep of ASC runs (methods x orders x seeds, the paper's epochs) on one GPU of the
# device tool with `run.py --jobs`, and tars their run folders (no checkpoints, with each run's
# log.txt) into $OUT/runs.tgz. The successor of asc_paper.sh, which started its runs by hand.
#
# Set-up here first: `bash scripts/device/prepare.sh` builds .gpu/ and .whl/ (git-ignored).
# The backbone travels as in asc_paper.sh (its header): model.safetensors (91 MB) is over the
# tool's 64 MiB carry limit, so it goes in two halves in two calls made back to back (the
# machine stays warm 30 s between calls):
#   call 1, carry [.gpu/ma, .gpu/data]: mkdir -p /root/stash && cp -r .gpu/ma .gpu/data /root/stash/
#   call 2, carry [.gpu/mb, .gpu/sh, .whl]:
#     METHODS="ctr hat ncl" ORDERS="1 2" JOBS=6 DEADLINE=520 bash .gpu/sh/asc_sweep.sh
# (.gpu/sh holds a copy of this script: scripts/ is in the working tree too, so
#  `bash scripts/device/asc_sweep.sh` works as well.)
# At DEADLINE seconds the sweep gets SIGINT: every run keeps its finished tasks (results.json
# and the matrices are written after each task) and a later sweep resumes them.
# After the sweep, `python -m ctr_jax.transfer` analyses every CTR / B-CL run with a checkpoint
# (transfer.json/.csv/.png in its run folder), and `python -m ctr_jax.drift` every sequential
# run (drift_K_L.json/.md), in the last PROBE_S seconds before DEADLINE; then ctr_jax.report
# writes the table and the paired comparison to runs/$NAME_report/ (no plots).
# Env: DEADLINE, STASH (/root/stash), PY (python3), METHODS, ORDERS, SEEDS, JOBS, EXTRA (more
# --set KEY=VALUE words), NAME (run name prefix, default gpu), PROBE_S (60; 0 = no analysis),
# GRADS (training batches per task for the analysis' gradient check, 4).
set -u
T0=$(date +%s)
DEADLINE=${DEADLINE:-520}
STASH=${STASH:-/root/stash}
PY=${PY:-python3}
OUT=${OUT:-/tmp/out}
METHODS=${METHODS:-"ctr hat ncl"}
ORDERS=${ORDERS:-"0"}
SEEDS=${SEEDS:-"0"}
JOBS=${JOBS:-6}
EXTRA=${EXTRA:-}
NAME=${NAME:-gpu}
PROBE_S=${PROBE_S:-60}
GRADS=${GRADS:-4}
mkdir -p "$OUT" logs
el() { echo $(( $(date +%s) - T0 )); }

M=$STASH/minilm
mkdir -p "$M"
cp .gpu/mb/*.json .gpu/mb/vocab.txt "$M"/
# 1_Pooling/ says how the backbone pools (model.pooling=auto reads it): keep it with the weights.
[ ! -d .gpu/mb/1_Pooling ] || cp -r .gpu/mb/1_Pooling "$M"/
cat "$STASH"/ma/part_aa .gpu/mb/part_ab > "$M"/model.safetensors
echo "$(cat .gpu/mb/sha256)  $M/model.safetensors" | sha256sum -c - || { echo "BAD WEIGHTS"; exit 3; }

$PY -m pip install -q --no-deps --target /tmp/pylib .whl/orbax_checkpoint-*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/pylib:$PWD
if ! $PY -c "import ctr_jax.training.loop" 2>logs/import.err; then
  echo "import with pinned orbax failed:"; tail -3 logs/import.err
  export PYTHONPATH=$PWD
  $PY -c "import ctr_jax.training.loop" || exit 4
fi
$PY -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
(nvidia-smi dmon -s u -d 10 > logs/dmon.log 2>&1 &) 2>/dev/null

export CTR_JAX_DATA_ROOT=$STASH/data
export JAX_COMPILATION_CACHE_DIR=/tmp/xla_cache
configs=""
for m in $METHODS; do configs="$configs configs/asc_$m.yaml"; done
sets=()
for w in $EXTRA; do sets+=(--set "$w"); done
# shellcheck disable=SC2086
timeout -s INT "$(( DEADLINE - PROBE_S - $(el) ))" $PY run.py --config $configs --orders $ORDERS \
  --seeds $SEEDS --jobs "$JOBS" --set model.backbone="$M" --set 'train.buckets=[32,64,128]' \
  "${sets[@]}" --set "runs_dir=runs/$NAME" 2>&1 | tee logs/sweep.log
echo "sweep ended at $(el) s"
for d in runs/"$NAME"/*ctr* runs/"$NAME"/*bcl*; do
  left=$(( DEADLINE - $(el) ))
  [ -d "$d/checkpoints" ] && [ "$left" -gt 5 ] || continue
  timeout -s INT "$left" $PY -m ctr_jax.transfer "$d" --grads "$GRADS" 2>&1 | tail -4
done
# Which parameter groups moved the earlier tasks in each sequential run's last task
# (drift_K_L.json/.md in its run folder); ONE and MTL have no such step.
for d in runs/"$NAME"/*; do
  case "$d" in *_one_*|*_mtl_*) continue ;; esac
  left=$(( DEADLINE - $(el) ))
  [ -d "$d/checkpoints" ] && [ "$left" -gt 5 ] || continue
  timeout -s INT "$left" $PY -m ctr_jax.drift "$d" 2>&1 | tail -3
done
# The table with the paired comparison (CTR against each method on the same orders and seeds),
# tables only: the image need not have matplotlib. It is cheap (reads results.json files).
$PY -m ctr_jax.report runs/"$NAME" --by model.pooling --no-plots --out runs/"$NAME"_report \
  2>&1 | tail -40 || true
tar czf "$OUT"/runs.tgz --exclude=checkpoints --exclude=.lock runs logs
ls -la "$OUT"
