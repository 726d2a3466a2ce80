"""The graft pipeline outside the components: the config (configs.py), the DAG (pipeline.py),
the CLI (cli.py), `graft imagenet-predict` (imagenet_predict.py), and one sub-package per job:
runners/ (`graft run`, `graft retrain`), kubeflow/ (compile and submit for Kubeflow
Pipelines), reporting/ (run facts, summary, report, errors), data/ (`graft make-tfrecords`,
the demo set)."""
import components  # noqa: F401  (sets the Keras choice before TensorFlow is imported)
