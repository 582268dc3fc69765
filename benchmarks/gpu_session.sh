#!/usr/bin/env bash
# Every GPU figure of issue 15.5 in one prepared command, for a session that is lent a CUDA machine.
#
# A lent machine gives a session about 15 minutes in all, and one command may run for at most 10, so
# this runs the measurements in order of importance, each under its own time limit, and writes each
# record as soon as it is done (a stage cut off by its limit loses only itself):
#
#   1. the CUDA tests of the fast path (tests/test_fast_path.py: bf16 masked training vs the plain loop);
#   2. gpu_throughput.py, eager fast path vs plain loop, one model per record: resnet20, resnet56 (the
#      targets: epoch <= 3 s and <= 6 s), vgg16, mobilenet_v1;
#   3. the same for resnet20 and resnet56 with torch.compile (reduce-overhead: CUDA graphs).
#
# Data: the full CIFAR-10 file (144 MB) cannot travel (the working tree that goes to the machine is
# limited to 64 MiB), so without $PRUNELAB_DATA the throughput runs use 50,000 random images of the
# CIFAR-10 shape (gpu_throughput.py --synthetic: the work per epoch does not depend on the pixels).
#
# The machine's image holds PyTorch but not Torch-Pruning, which the tests import; carry its wheel:
#
#   echo /.whl/ >> .git/info/exclude    # once (.whl/ is in .gitignore too)
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl torch-pruning==1.6.1
#
# then, from the device tool:
#
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=590)
#
# Results: $OUT/gpu_*.json and $OUT/gpu_session.log (here, without $OUT: build/gpu_session/). Copy the
# records to benchmarks/results/ and the figures into benchmarks/gpu.md with this command line.
#
# GPU_SESSION_SCALE=smoke runs every stage on 256 images for 1 epoch (a check of the script on any
# machine, CPU included; its figures mean nothing).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build/gpu_session}
mkdir -p "$out"
log="$out/gpu_session.log"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl >>"$log" 2>&1 && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

# The time left until the whole script should end (570 s: inside the tool's 600 s command limit).
left() { echo $((570 - ($(date +%s) - start))); }

# stage NAME SECONDS COMMAND...: run COMMAND for at most min(SECONDS, time left), logging its output.
stage() {
  local name=$1 limit=$2
  shift 2
  local budget
  budget=$(left)
  [ "$budget" -lt "$limit" ] && limit=$budget
  if [ "$limit" -lt 20 ]; then
    echo "== $name: skipped, $(left) s left" | tee -a "$log"
    return 0
  fi
  echo "== $name (limit ${limit} s, $(($(date +%s) - start)) s since start)" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  echo "== $name: rc=${PIPESTATUS[0]}" | tee -a "$log"
}

python3 - <<'EOF' 2>&1 | tee -a "$log"
import platform, torch
cuda = torch.cuda.is_available()
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0) if cuda else "none (CPU fallback)")
EOF

if [ "${GPU_SESSION_SCALE:-full}" = smoke ]; then
  size=(--train-subset 256 --epochs 1)
else
  size=(--epochs 3)
fi
data=()
[ -z "${PRUNELAB_DATA:-}" ] && data=(--synthetic)

stage fast_path_tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_fast_path.py
for model in resnet20 resnet56 vgg16 mobilenet_v1; do
  stage "throughput_$model" 120 python3 benchmarks/gpu_throughput.py --models "$model" "${size[@]}" \
    "${data[@]}" --out "$out/gpu_throughput_$model.json"
done
for model in resnet20 resnet56; do
  stage "throughput_compiled_$model" 150 python3 benchmarks/gpu_throughput.py --models "$model" "${size[@]}" \
    "${data[@]}" --compile --compile-mode reduce-overhead --out "$out/gpu_throughput_compile_$model.json"
done
echo "== done, $(($(date +%s) - start)) s" | tee -a "$log"
