#!/usr/bin/env bash
# Regenerate docs/report.png, the README's picture of `monet-edit report`, from a real run on `tiny`:
# remove German (skew, ratio 2 against en/fr/es/it/pt; small token budgets so it takes about two
# minutes on CPU), evaluate before/after, write the report, render it in headless Chromium and
# reduce the screenshot to a 256-colour PNG. Offline; the temporary run is deleted afterwards.
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${1:-docs/report.png}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
$BIN/monet-edit resect --language de --tokens 20000 --seq-len 128 --profiles-dir "$WORK/profiles" \
    --out "$WORK/resected-de"
$BIN/monet-edit eval --model "$WORK/resected-de" --tokens 4000 --seq-len 128
$BIN/monet-edit report "$WORK/resected-de" --out "$WORK/report.html" --tokens 10000 --top-experts 6
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1180,3500 \
    --screenshot="$WORK/shot.png" "file://$WORK/report.html" 2>/dev/null
mkdir -p "$(dirname "$OUT")"
$BIN/python - "$WORK/shot.png" "$OUT" <<'PY'
import sys

from PIL import Image

with Image.open(sys.argv[1]) as shot:
    small = shot.convert("RGB").resize((shot.width * 3 // 4, shot.height * 3 // 4), Image.LANCZOS)
    small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(sys.argv[2], optimize=True)
PY
echo "wrote $OUT"
