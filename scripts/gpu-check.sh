#!/usr/bin/env bash
# The GPU check of the model crate, in two halves:
#
#   scripts/gpu-check.sh prepare   (on the build machine, which has cargo)
#     builds osa-model-bench in release with `--features cuda` (libtorch_cuda
#     linked, see crates/model/build.rs), strips it and copies it to .gpu/
#     (git-ignored: hand it to the GPU machine as a carried path).
#
#   scripts/gpu-check.sh run       (on the GPU machine: python3 with PyTorch
#     2.11, no cargo, no network) finds torch's lib folder through python3,
#     prints nvidia-smi, checks that CUDA is really used (a tiny CUDA run
#     first: the bench fails when CUDA was asked for and is not available),
#     then times the 512x512 echomimic preset with random weights in fp16 and
#     bf16 at 1, 2 and 4 steps. Tables, JSON and nvidia-smi memory samples go
#     to $OUT (or .gpu/out). Bounded to about 6 minutes in all (timeouts 60 + 2 x 150 s).
#
# Environment: PYTHON (default python3) for `run`; CARGO_TARGET_DIR for
# `prepare`; WARMUP and CLIPS (default 2 and 5) for `run`; PRESET and DEVICE
# (default echomimic and cuda) only for a dry run of `run` on CPU:
# `PYTHON=.venv/bin/python PRESET=tiny DEVICE=cpu scripts/gpu-check.sh run`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
GPU_DIR="$ROOT/.gpu"
BIN="$GPU_DIR/osa-model-bench"
MAX_BYTES=$((48 * 1024 * 1024)) # carried paths travel within 64 MiB in all

die() {
  echo "gpu-check: FAILED: $*" >&2
  exit 1
}

prepare() {
  command -v cargo >/dev/null || die "cargo not found: run 'prepare' on the build machine"
  local target="${CARGO_TARGET_DIR:-$ROOT/target}"
  cargo build --release -p osa-model --bin osa-model-bench --features cuda
  mkdir -p "$GPU_DIR"
  rm -f "$BIN"
  strip -o "$BIN" "$target/release/osa-model-bench"
  readelf -d "$BIN" | grep -q 'NEEDED.*libtorch_cuda\.so' ||
    die "$BIN does not link libtorch_cuda (the cuda feature's link args were not applied)"
  local bytes
  bytes="$(stat -c %s "$BIN")"
  [ "$bytes" -lt "$MAX_BYTES" ] || die "$BIN is $bytes bytes, over $MAX_BYTES"
  echo "gpu-check: $BIN: $((bytes / 1024)) KiB, links:"
  readelf -d "$BIN" | grep NEEDED | sed 's/^/  /'
  # Smoke run here (CPU; the build machine's rpath finds libtorch).
  "$BIN" --preset tiny --device auto --steps 1 --warmup 0 --clips 1 >/dev/null 2>"$GPU_DIR/smoke.log" ||
    die "the stripped binary does not run here: $(tail -n 3 "$GPU_DIR/smoke.log")"
  echo "gpu-check: smoke run here OK ($(head -n 1 "$GPU_DIR/smoke.log"))"
  echo "gpu-check: prepared; on the GPU machine run 'scripts/gpu-check.sh run' with .gpu carried"
}

# Exports LD_LIBRARY_PATH so the binary resolves every library against the
# python3 torch installation.
setup_libs() {
  local python="${PYTHON:-python3}" torch_dir site
  command -v "$python" >/dev/null || die "$python not found"
  torch_dir="$("$python" -c 'import torch,os;print(os.path.dirname(torch.__file__))')" ||
    die "$python cannot import torch"
  echo "gpu-check: torch $("$python" -c 'import torch;print(torch.__version__)') at $torch_dir"
  case "$("$python" -c 'import torch;print(torch.__version__)')" in
    2.11.*) ;;
    *) echo "gpu-check: warning: the bench is built against torch 2.11 (tch 0.24)" >&2 ;;
  esac
  [ -f "$torch_dir/lib/libtorch_cuda.so" ] || die "no libtorch_cuda.so in $torch_dir/lib (CPU-only torch?)"
  export LD_LIBRARY_PATH="$torch_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if ldd "$BIN" | grep -q 'not found'; then
    # libtorch_cuda finds the CUDA runtime through its own $ORIGIN rpath;
    # add the pip nvidia folders only when something is still missing.
    site="$(dirname "$torch_dir")"
    for d in "$site"/nvidia/*/lib "$site"/nvidia/cu*/lib; do
      [ -d "$d" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
    done
  fi
  if ldd "$BIN" | grep 'not found'; then
    die "libraries not found (above) with LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  fi
  ldd "$BIN" | grep -E 'libtorch|libc10|libcudart' | sed 's/^/  /'
}

run() {
  [ -x "$BIN" ] || die "$BIN missing: run 'scripts/gpu-check.sh prepare' on the build machine and carry .gpu"
  local out="${OUT:-$GPU_DIR/out}" warmup="${WARMUP:-2}" clips="${CLIPS:-5}" failed=0
  local preset="${PRESET:-echomimic}" device="${DEVICE:-cuda}"
  mkdir -p "$out"
  setup_libs
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi | tee "$out/nvidia-smi.txt"
  else
    echo "gpu-check: nvidia-smi not found (no NVIDIA driver here?)" | tee "$out/nvidia-smi.txt"
  fi

  echo "gpu-check: CUDA sanity run (tiny preset)"
  if ! timeout 60 "$BIN" --preset tiny --device "$device" --dtype f16 --steps 1 --warmup 1 --clips 2 \
    2>&1 | tee "$out/tiny-cuda.txt"; then
    die "CUDA is not usable from the bench (see above)"
  fi

  for dtype in f16 bf16; do
    local name="$preset-$dtype" poller=""
    echo "gpu-check: $name, steps 1,2,4, warmup $warmup, clips $clips"
    if command -v nvidia-smi >/dev/null; then
      # Device memory sampled every 200 ms: its peak minus the first sample
      # is the run's peak (tch has no max_memory_allocated binding).
      nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -i 0 -lms 200 \
        >"$out/$name-nvidia-smi.csv" &
      poller=$!
    fi
    # stderr (progress and table) to the console and $name.txt, stdout
    # (the JSON) to $name.json.
    set +e
    timeout 150 "$BIN" --preset "$preset" --device "$device" --dtype "$dtype" --steps 1,2,4 \
      --warmup "$warmup" --clips "$clips" --json 2>&1 >"$out/$name.json" | tee "$out/$name.txt"
    local rc="${PIPESTATUS[0]}"
    set -e
    if [ -n "$poller" ]; then
      kill "$poller" 2>/dev/null || true
      wait "$poller" 2>/dev/null || true
      awk -F', *' 'NR == 1 {b = $2} $2 > m {m = $2} END {
        if (NR) printf "gpu-check: nvidia-smi device memory: %d MiB before, peak %d MiB (+%d MiB)\n", b, m, m - b
      }' "$out/$name-nvidia-smi.csv" | tee -a "$out/$name.txt"
    fi
    if [ "$rc" -ne 0 ]; then
      local why=""
      [ "$rc" -eq 124 ] && why=" (timed out)"
      echo "gpu-check: $name exited with $rc$why" | tee -a "$out/$name.txt"
      failed=1
    fi
  done
  [ "$failed" -eq 0 ] || die "some runs failed (see $out)"
  echo "gpu-check: done; results in $out"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *)
    echo "usage: scripts/gpu-check.sh prepare|run" >&2
    exit 2
    ;;
esac
