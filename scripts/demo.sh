#!/usr/bin/env bash
# `make demo`: the main job on the embedded model `tiny`, offline:
# describe it, sample from it, then remove law knowledge end to end
# (profile -> skew selection -> resect -> before/after eval -> gate).
set -euo pipefail
BIN=.venv/bin
OUT=${DEMO_OUT:-runs/demo}
$BIN/monet-edit info tiny
$BIN/monet-edit generate tiny --prompt "def " --max-new-tokens 40 --seed 0
$BIN/monet-edit run law --out "$OUT/resected-law" --force
