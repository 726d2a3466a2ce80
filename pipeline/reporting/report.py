"""The run report: OUTPUT/report.html, written by every `graft run`, failed runs included.

write() renders the facts of a run (pipeline/reporting/facts.py) with
pipeline/reporting/html.py into one self-contained HTML file (CSS inline, PNGs as base64 data
URIs) in the run's output dir. See docs/report.md for what it shows.
"""
from __future__ import annotations

import os

REPORT_NAME = "report.html"


def write(facts: dict) -> str:
    """Writes OUTPUT/report.html of a run's facts (facts.collect()); returns its path. Raises
    OSError if it cannot be written."""
    from pipeline.reporting import html
    path = os.path.join(facts["output_dir"], REPORT_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(html.render(facts))
    os.replace(tmp, path)
    return path
