"""Running the pipeline on this machine: `graft run` on TFX's LocalDagRunner (local.py) and
`graft retrain`, which runs it only when a new span of data arrived (retrain.py)."""
