"""No TFX source package for a Beam DirectRunner on this machine.

Every Beam-powered TFX executor (ExampleGen, StatisticsGen, Transform, Evaluator...) calls
`tfx.utils.dependency_utils.make_beam_dependency_flags` when it is constructed. Unless a Beam
flag already names the workers' dependencies (--extra_package, --setup_file,
--requirements_file, --sdk_container_image...), that copies TFX's installed source into a new
`tempfile.mkdtemp()` directory and runs `setup.py sdist` in a subprocess, so that a remote
runner (Dataflow, Flink) could pip-install TFX. The directory is never deleted. Measured here:
2.0 s and 49 MB of /tmp per Beam component per run; a development machine's /tmp held 72 GB
of them and a CI run failed with ENOSPC. The DirectRunner's workers are this machine's Python
(in_memory: this process; multi_processing: `sys.executable` subprocesses), so the package
would never be installed anywhere: `graft run` skips building it.
"""
from __future__ import annotations

import contextlib


def _direct_runner(beam_pipeline_args: list) -> bool:
    runners = [a.split("=", 1)[1] for a in beam_pipeline_args if a.startswith("--runner=")]
    return all(r in ("DirectRunner", "direct") for r in runners)


@contextlib.contextmanager
def skipped_for_direct_runner():
    """Within the block, TFX's Beam executors get their Beam flags unchanged when they run on
    the DirectRunner (no --runner, or --runner=DirectRunner); any other runner still gets TFX's
    inferred --extra_package."""
    from tfx.utils import dependency_utils

    infer = dependency_utils.make_beam_dependency_flags

    def flags(beam_pipeline_args):
        if _direct_runner(beam_pipeline_args):
            return list(beam_pipeline_args)
        return infer(beam_pipeline_args)

    dependency_utils.make_beam_dependency_flags = flags
    try:
        yield
    finally:
        dependency_utils.make_beam_dependency_flags = infer
