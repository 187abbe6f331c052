#!/usr/bin/env bash
# Build (once) the separate venv that bench/st_onnx_peer.py runs in and print its python.
#   bench/make_st_onnx_env.sh [DIR]      default: ${XDG_CACHE_HOME:-~/.cache}/contrasent/st-onnx-env
# Rebuilt only when bench/st-onnx-requirements.txt changed (~1.5 min on a 2-core machine).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/contrasent/st-onnx-env}"
req="$here/st-onnx-requirements.txt"
if [ -x "$dir/bin/python" ] && cmp -s "$req" "$dir/.requirements"; then
  echo "$dir/bin/python"
  exit 0
fi
rm -rf "$dir"
python3 -m venv "$dir"
"$dir/bin/pip" install -q -c "$here/../constraints-cpu.txt" -r "$req" 1>&2
cp "$req" "$dir/.requirements"
echo "$dir/bin/python"
