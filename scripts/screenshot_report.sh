#!/usr/bin/env bash
# Screenshot of a graft run report in headless Chromium (docs/report-screenshot.png).
#
#   scripts/screenshot_report.sh [REPORT_HTML] [OUT_PNG]
#
# REPORT_HTML defaults to a fresh report of the small digits set with three corrupt images
# (tests/fault_data.py; one `graft run`, ~2 min on 2 cores) under /tmp/graft-report-shot.
# Needs chromium (Debian: apt-get install -y chromium) and, for the default report, the
# project venv (.venv). The page is 1200 px wide, HEIGHT (default 2600) px tall; with Pillow
# the PNG is cropped below the content and quantised if needed to stay < 300 KB.
set -euo pipefail
cd "$(dirname "$0")/.."
REPORT=${1:-}
OUT=${2:-docs/report-screenshot.png}
PY=${PYTHON:-.venv/bin/python}
CHROMIUM=$(command -v chromium || command -v chromium-headless-shell || command -v chromium-browser \
           || command -v google-chrome || true)
[ -n "$CHROMIUM" ] || { echo "error: chromium not found (apt-get install -y chromium)" >&2; exit 2; }

if [ -z "$REPORT" ]; then
  WORK=/tmp/graft-report-shot
  rm -rf "$WORK"
  DATA=$(TF_CPP_MIN_LOG_LEVEL=3 "$PY" -c "
import sys; sys.path.insert(0, 'tests')
from pathlib import Path
import fault_data
print(fault_data.build(Path('$WORK')))" 2>/dev/null | tail -1)
  TF_CPP_MIN_LOG_LEVEL=2 "$PY" -m pipeline.cli run --data "$DATA" --output "$WORK/out" \
    --serving-dir "$WORK/serving" --beam-mode in_memory --image-size 48 --epochs 6 \
    --fine-tune-epochs 2 --fine-tune-layers 10 --batch-size 16 --model-name digits \
    --min-accuracy 0.4 > "$WORK/run.log" 2>&1 || { tail -20 "$WORK/run.log"; exit 1; }
  REPORT="$WORK/out/report.html"
fi

"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
  --screenshot="$OUT" --window-size=1200,${HEIGHT:-2600} "file://$(realpath "$REPORT")" \
  2>/dev/null
"$PY" - "$OUT" <<'PY' || true
import os
import sys
from PIL import Image
path = sys.argv[1]
image = Image.open(path).convert("RGB")
# Crop the empty background below the page content.
pixels = image.load()
w, h = image.size
bottom = h
while bottom > 1 and all(pixels[x, bottom - 1] == pixels[0, h - 1] for x in range(0, w, 7)):
    bottom -= 1
image = image.crop((0, 0, w, min(h, bottom + 24)))
image.save(path, optimize=True)
if os.path.getsize(path) > 290_000:  # keep docs/report-screenshot.png < 300 KB
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
PY
echo "$OUT ($(du -k "$OUT" | cut -f1) KB) from $REPORT"
