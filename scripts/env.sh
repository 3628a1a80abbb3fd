# Shared paths for the osa scripts; sourced, not run.
OSA_ROOT="${OSA_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
OSA_PYTHON_VERSION="3.11"
OSA_VENV="${OSA_VENV:-$OSA_ROOT/.venv}"
OSA_LIBTORCH="$OSA_VENV/lib/python$OSA_PYTHON_VERSION/site-packages/torch"
OSA_SAMPLES="${OSA_SAMPLES:-$OSA_ROOT/target/samples}"
OSA_WEIGHTS_DIR="${OSA_WEIGHTS_DIR:-$OSA_ROOT/target/weights}"
export OSA_ROOT OSA_WEIGHTS_DIR OSA_VENV OSA_LIBTORCH OSA_SAMPLES
