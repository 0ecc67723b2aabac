#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one run of about 6 minutes:
#   1. what the machine has: the GPU, CUDA in torch, onnxruntime's providers, TensorRT;
#   2. ViT-B-32 throughput of PyTorch fp16, ONNX Runtime on CUDA (fp16) and TensorRT (fp16) at
#      batch 32 and 256, in-process, with random weights saved to a file (nothing is downloaded),
#      and each runtime's peak GPU memory;
#   3. the bundled PyTorch Flow served with `replicas: 2` and CUDA_VISIBLE_DEVICES=RR, encoding
#      through clip_client: each replica's GPU from its log, embeddings equal to open_clip's;
#   4. images/s at batch 256 with JPEGs decoded on the CPU (as served) or on the GPU (nvJPEG);
#   5. the shipped server benchmark on the GPU (server against in-process, same precision);
#   6. the GPU-only tests, which every other machine skips, so here they must run, not skip.
#
#   benchmarks/gpu_check.sh [--install | --wheels DIR] [--dry-run] [--seconds S]
#
#   --install    first pip install -e '.[onnx,tensorrt,test]' and swap onnxruntime for onnxruntime-gpu
#                (needs a package index or a wheel cache; its time is not in the 6 minutes)
#   --wheels DIR for a machine without a package index that has torch: unpack the wheels in DIR
#                (jina, docarray, open_clip, clip_client and what they need beyond such a machine's
#                own packages, downloaded elsewhere for its Python) into a folder put first on
#                PYTHONPATH; the repository itself is imported from the working directory
#   --dry-run    print the commands without running them, on any machine
#   --seconds S  measuring time of each throughput cell (default 3)
#
# Each stage has its own time limit, so a hang cannot take the others' time; lines are printed
# as they are measured, TensorRT last in its stage, as its engine builds are the slowest part
# (one engine pair per batch size, as a server builds them for its minibatch_size).
# The exit status is non-zero if any stage failed, timed out, or skipped a GPU-only test.
set -uo pipefail
cd "$(dirname "$0")/.."
export JINA_OPTOUT_TELEMETRY=1 NO_VERSION_CHECK=1 HF_HUB_OFFLINE=1
PYTHON=${PYTHON:-python}

# The GPU-only tests: `needs_gpu` in tests/unit/test_tensorrt.py (TensorRT and a CUDA GPU) and the
# nvJPEG cases of tests/unit/test_device_pixels.py (`needs_cuda`; its CPU cases run everywhere). No
# other test is skipped for lack of CUDA; tests/unit/test_openclip_model.py's
# test_bad_runtime_options_are_named only leaves out its no-CUDA assertion where CUDA is present.
GPU_TESTS=(
  'tests/unit/test_tensorrt.py::test_tensorrt_matches_pytorch'
  'tests/unit/test_tensorrt.py::test_engines_are_built_once_and_reused'
  'tests/unit/test_device_pixels.py::test_pixels_stay_within_tolerance_of_the_models_own_transform'
)

install=0 dry_run=0 seconds=3 wheels=''
while (($#)); do
  case $1 in
    --install) install=1 ;;
    --wheels) wheels=${2:?--wheels needs a folder}; shift ;;
    --dry-run) dry_run=1 ;;
    --seconds) seconds=${2:?--seconds needs a value}; shift ;;
    *) echo "usage: $0 [--install | --wheels DIR] [--dry-run] [--seconds S]" >&2; exit 2 ;;
  esac
  shift
done

failed=() stage=''

step() {
  stage=$*
  printf '\n== %s\n' "$stage"
}

# Show a command, then run it unless this is a dry run; a failure is recorded, not fatal.
run() {
  echo "+ $*"
  ((dry_run)) && return 0
  "$@"
  local status=$?
  ((status == 124)) && echo "!! timed out: $*"
  ((status)) && failed+=("$stage: status $status from: $*")
  return "$status"
}

# Prints the runtimes this machine can measure (on stdout) and what it has (on stderr).
PREFLIGHT='
import importlib.util, sys
import torch
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA GPU: nothing here can be checked")
say = lambda line: print(line, file=sys.stderr)
say(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
runtimes = ["torch"]
if importlib.util.find_spec("onnxruntime") is None:
    say("ONNX Runtime skipped: onnxruntime is not installed (--install)")
else:
    import onnxruntime as ort
    say(f"onnxruntime {ort.__version__}: {ort.get_available_providers()}")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        runtimes.append("onnx")
    else:
        say("ONNX Runtime skipped: this onnxruntime has no CUDA provider; install onnxruntime-gpu (--install)")
if importlib.util.find_spec("tensorrt") is None:
    say("TensorRT skipped: tensorrt is not installed (--install)")
else:
    import tensorrt
    say(f"TensorRT {tensorrt.__version__}")
    runtimes.append("tensorrt")
print(" ".join(runtimes))
'

if ((install)); then
  step 'install'
  run "$PYTHON" -m pip install -e '.[onnx,tensorrt,test]'
  # onnxruntime and onnxruntime-gpu install the same module: remove the CPU build first
  run "$PYTHON" -m pip uninstall -y onnxruntime
  run "$PYTHON" -m pip install 'onnxruntime-gpu>=1.17'
fi

if [[ -n $wheels ]]; then
  step 'unpack wheels'
  site=$(mktemp -d)
  # Unpacked, not pip-installed: pip would refuse a wheel built here for another Python's tag even
  # where its binary part is abi3, and nothing needs the console scripts.
  for wheel in "$wheels"/*.whl; do
    run "$PYTHON" -m zipfile -e "$wheel" "$site"
  done
  export PYTHONPATH=$site:$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

step 'machine (limit 45 s)'
run timeout 15 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "+ $PYTHON -c \"\$PREFLIGHT\""
if ((dry_run)); then
  runtimes='torch onnx tensorrt'
elif ! runtimes=$(timeout 30 "$PYTHON" -c "$PREFLIGHT"); then
  echo '!! no usable GPU: stopping here'
  exit 1
fi
echo "runtimes to measure: $runtimes"

step 'ViT-B-32 throughput and GPU memory, fp16 on cuda (limit 240 s)'
# shellcheck disable=SC2086  # one word per runtime
run timeout 240 "$PYTHON" benchmarks/runtime_throughput.py --model ViT-B-32 --device cuda --dtype fp16 \
  --batch 32 256 --runtime $runtimes --seconds "$seconds"

step 'replicas over GPUs: torch-flow.yml, replicas 2, CUDA_VISIBLE_DEVICES=RR (limit 150 s)'
run timeout 150 "$PYTHON" benchmarks/gpu_replicas.py --replicas 2

step 'JPEG decoding on the CPU or the GPU, ViT-B-32 fp16, batch 256 (limit 120 s)'
run timeout 120 "$PYTHON" benchmarks/gpu_decode.py --batch 256 --seconds "$seconds"

step 'server against in-process on the GPU: python -m clip_server.benchmark (limit 240 s)'
run timeout 240 "$PYTHON" -m clip_server.benchmark torch-flow.yml --random-weights --skip-yardstick \
  --seconds "$seconds"

step 'GPU-only tests (limit 120 s)'
log=$(mktemp)
trap 'rm -f "$log"' EXIT
run timeout 120 "$PYTHON" -m pytest -q -rs -p no:cacheprovider "${GPU_TESTS[@]}" >"$log" 2>&1
cat "$log"
if ((!dry_run)) && grep -Eq '[0-9]+ skipped' "$log"; then
  echo '!! GPU-only tests were skipped: they must run on this machine (see the reasons above)'
  failed+=("$stage: skipped")
fi

step 'summary'
if ((dry_run)); then
  echo 'dry run: nothing was run'
elif ((${#failed[@]})); then
  printf '!! %s\n' "${failed[@]}"
  exit 1
else
  echo 'all GPU checks passed'
fi
