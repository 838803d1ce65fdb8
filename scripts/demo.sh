#!/usr/bin/env bash
# `make demo`: the main job on the embedded model `tiny`, offline.
set -euo pipefail
BIN=.venv/bin
$BIN/monet-edit info tiny
$BIN/monet-edit generate tiny --prompt "def " --max-new-tokens 40 --seed 0
