"""The graft pipeline: configuration, DAG, runners, CLI (runs outside the components)."""
import components  # noqa: F401  (sets the Keras choice before TensorFlow is imported)
