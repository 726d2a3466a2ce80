"""Kubeflow Pipelines job: `graft kubeflow compile` (compile.py: the DAG compiled by TFX's
KubeflowV2DagRunner into a KFP 2.x spec), the spec rewrite for open-source KFP (spec.py),
`graft kubeflow submit` (submit.py: upload, run, cron schedule) and the ImportExampleGen
container entry point that runs on the cluster (example_gen.py)."""
