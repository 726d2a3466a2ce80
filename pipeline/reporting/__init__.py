"""Reporting on a run after the fact, data flowing one way: mlmd.py reads ML Metadata,
facts.py gathers the facts of the latest run from it and the artifacts (collect()), and those
facts feed both the short text summary `graft run` prints (summary.py) and OUTPUT/report.html
(report.py writes what html.py renders). errors.py turns a failure into the one-line
`error: ...` that ends a failed run."""
