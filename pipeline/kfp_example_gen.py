"""Entry-point shim: `python -m pipeline.kfp_example_gen ARGS` runs ImportExampleGen on
open-source Kubeflow Pipelines.

Compiled specs already deployed (and the committed kubeflow/pipeline.yaml) name this module as
the ImportExampleGen container command, so it stays importable under this name; the code lives
in pipeline/kubeflow/example_gen.py.
"""
from __future__ import annotations

import sys

from pipeline.kubeflow.example_gen import main

if __name__ == "__main__":
    sys.exit(main())
