"""Reporting on a run after the fact: reading ML Metadata (mlmd.py), the facts of a run and
the short text summary `graft run` prints (summary.py), the HTML report OUTPUT/report.html
(report.py gathers, html.py renders) and the one-line `error: ...` of a failed run."""
