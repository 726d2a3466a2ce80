"""Container entry point of ImportExampleGen on open-source Kubeflow Pipelines.

TFX's KubeflowV2 runner resolves the span/version/fingerprint of a FileBasedExampleGen in a
`preCacheCheck` driver hook that only Vertex AI runs. This runs TFX's own driver first (it
writes the resolved exec properties to the task's executor-output file) and then TFX's
executor entry point, which reads them back: `python -m pipeline.kfp_example_gen ARGS` (that
shim calls main() here), with the same ARGS that TFX gives `kubeflow_v2_run_executor`. The
executor rewrites the output file without the driver's artifact metadata (span, version, input
fingerprint): it is merged back, so that KFP records the span of the Examples artifact.
"""
from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    from tfx.dsl.io import fileio
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor as executor
    from tfx.orchestration.kubeflow.v2.file_based_example_gen import driver

    argv = list(sys.argv[1:] if argv is None else argv)
    flags = driver._parse_flags(argv)  # pylint: disable=protected-access
    output_file = json.loads(flags.json_serialized_invocation_args)["outputs"]["outputFile"]
    driver.main(flags)
    with fileio.open(output_file) as f:
        resolved = json.load(f)
    executor.main(executor._parse_flags(argv))  # pylint: disable=protected-access
    with fileio.open(output_file) as f:
        final = json.load(f)
    merge_metadata(final, resolved)
    with fileio.open(output_file, "w") as f:
        f.write(json.dumps(final, indent=2, sort_keys=True))
    return 0


def merge_metadata(final: dict, resolved: dict) -> dict:
    """Add the driver's artifact metadata keys that the executor's output lacks."""
    for key, group in resolved.get("artifacts", {}).items():
        for before, after in zip(group.get("artifacts", []),
                                 final.get("artifacts", {}).get(key, {}).get("artifacts", [])):
            meta = after.setdefault("metadata", {})
            for k, v in before.get("metadata", {}).items():
                meta.setdefault(k, v)
    return final


if __name__ == "__main__":
    sys.exit(main())
