"""Post-processing of the pipeline spec that TFX's KubeflowV2DagRunner writes, so that it runs
on open-source Kubeflow Pipelines 2.x and not only on Vertex AI Pipelines.

TFX 1.16's V2 runner targets Vertex AI. What `for_oss_kfp()` changes in the spec (a dict):
- ImportExampleGen: TFX resolves the span (`{SPAN}` in the split patterns), version and input
  fingerprint in a `lifecycle.preCacheCheck` driver hook that only Vertex runs. The executor
  container is rewritten to run `python -m pipeline.kfp_example_gen` (a shim that calls
  pipeline/kubeflow/example_gen.py), which runs TFX's own driver and then the executor in one
  container; the hook is removed.
- ImportExampleGen caching is turned off: without the driver, KFP's cache key holds only the
  constant input_base, so a cached ExampleGen would never see a new span.
- ImportExampleGen gets the CPU/memory resources (TFX copies platform_config to every container
  but the FileBasedExampleGen one).
- `defaultPipelineRoot` is set (TFX writes the root only into a Vertex PipelineJob's runtime
  config, which the YAML form drops).
- Runtime parameters get their default values and `isOptional` (same reason).
- No `resolver` executor may remain (OSS KFP: "resolver executors not implemented"); the
  runner builds the DAG without resolvers for this target, and this is checked here.
"""
from __future__ import annotations

import copy

EXAMPLE_GEN = "ImportExampleGen"
EXAMPLE_GEN_COMMAND = ["python", "-m", "pipeline.kfp_example_gen"]


def executor_label(spec: dict, task: str) -> str:
    component = spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]
    return spec["components"][component]["executorLabel"]


def container(spec: dict, task: str) -> dict:
    return spec["deploymentSpec"]["executors"][executor_label(spec, task)]["container"]


def resolver_tasks(spec: dict) -> list:
    executors = spec["deploymentSpec"]["executors"]
    return sorted(t for t in spec["root"]["dag"]["tasks"]
                  if "resolver" in executors[executor_label(spec, t)])


def set_parameter_defaults(spec: dict, defaults: dict) -> None:
    """Give the root's runtime parameters their compile-time defaults."""
    params = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    for name, value in defaults.items():
        if name in params:
            params[name]["defaultValue"] = value
            params[name]["isOptional"] = True


def for_oss_kfp(spec: dict, pipeline_root: str, parameter_defaults: dict,
                example_gen_resources: dict | None) -> dict:
    """The spec rewritten for open-source KFP 2.x (a new dict; see the module docstring)."""
    spec = copy.deepcopy(spec)
    left = resolver_tasks(spec)
    if left:
        raise ValueError("open-source KFP runs no resolver tasks, the spec has %s" % left)
    spec["defaultPipelineRoot"] = pipeline_root
    set_parameter_defaults(spec, parameter_defaults)
    tasks = spec["root"]["dag"]["tasks"]
    if EXAMPLE_GEN in tasks:
        c = container(spec, EXAMPLE_GEN)
        c.pop("lifecycle", None)
        c["command"] = list(EXAMPLE_GEN_COMMAND)
        if example_gen_resources:
            c["resources"] = copy.deepcopy(example_gen_resources)
        tasks[EXAMPLE_GEN]["cachingOptions"] = {"enableCache": False}
    return spec
