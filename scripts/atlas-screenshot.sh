#!/usr/bin/env bash
# Regenerate docs/atlas.png, the README's picture of `monet-edit atlas serve`, from a real atlas of
# `tiny`: build it over five embedded corpora (20,000 tokens each), serve it on a free local port,
# open the page of the expert that fires most on the German word "der" with the masking panel run
# on a German sentence (?mask=...), screenshot it in headless Chromium and reduce the PNG to 256
# colours. Offline; the temporary atlas is deleted afterwards.
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${1:-docs/atlas.png}
WORK=$(mktemp -d)
SERVER=
cleanup() { [[ -n "$SERVER" ]] && kill -INT "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
$BIN/monet-edit atlas build tiny --corpus de --corpus en --corpus python --corpus law --corpus fr \
    --tokens 20000 --out "$WORK/atlas"
COLUMNS=300 $BIN/monet-edit atlas serve "$WORK/atlas" --port 0 2>"$WORK/serve.log" &
SERVER=$!
for _ in $(seq 300); do grep -q "serving" "$WORK/serve.log" && break; sleep 0.2; done
URL=$(grep -o 'http://127.0.0.1:[0-9]*/' "$WORK/serve.log")
PAGE=$($BIN/python - "$URL" <<'PY'
import json
import sys
import urllib.parse
import urllib.request

base = sys.argv[1]
top = json.load(urllib.request.urlopen(base + "api/search?q=der"))["results"][0]
text = urllib.parse.quote("Der Hund und die Katze sind in der Stadt.")
print(f"{base}expert/{top['group']}/{top['i']}/{top['j']}?mask={text}")
PY
)
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
    --disable-sync --no-first-run --user-data-dir="$WORK/profile" --hide-scrollbars --window-size=1200,2300 \
    --virtual-time-budget=20000 --screenshot="$WORK/shot.png" "$PAGE" 2>/dev/null
mkdir -p "$(dirname "$OUT")"
$BIN/python - "$WORK/shot.png" "$OUT" <<'PY'
import sys

from PIL import Image

with Image.open(sys.argv[1]) as shot:
    small = shot.convert("RGB").resize((shot.width * 3 // 4, shot.height * 3 // 4), Image.LANCZOS)
    small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(sys.argv[2], optimize=True)
PY
echo "wrote $OUT ($PAGE)"
