#!/usr/bin/env bash
# Renders a sample talking-portrait video on the embedded default (one
# process, tiny preset, seeded random weights unless OSA_WEIGHTS names a
# weights directory) and prints where the MP4 is.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# shellcheck source=scripts/env.sh
source scripts/env.sh
cargo build --release -p osa-cli
out="$ROOT/target/demo/portrait.mp4"
mkdir -p "$(dirname "$out")"
target/release/osa render --image "$OSA_SAMPLES/portrait.png" --audio "$OSA_SAMPLES/speech.wav" \
  --face-detector "$OSA_WEIGHTS_DIR/face_detector.safetensors" --out "$out" "$@"
echo "video: $out"
ffprobe -v error -show_entries stream=codec_name,width,height,r_frame_rate,duration -of compact "$out" || true
