"""`graft kubeflow compile`: the graft DAG compiled by TFX's KubeflowV2DagRunner into a
Kubeflow Pipelines 2.x spec (YAML), GPU Trainer included.

- The pipeline config is built through pipeline/configs.py (`from_args`), then the paths that
  the cluster reads become URIs and two of them KFP runtime parameters with compile-time
  defaults: `data_root` (ImportExampleGen input base) and `serving_dir` (push target).
- The Trainer asks for `--gpus` accelerators of `--gpu-type` plus CPU/memory through
  `with_platform_config(ResourceSpec)`, the proto TFX's V2 step builder copies into the
  container spec; every other component gets `--cpu`/`--memory` and the Beam args.
- The Transform/Trainer module files are the image's (`--project-dir`, default /app):
  `/app/components/transform.py`. TFX would otherwise package this checkout's module files as
  a wheel under the pipeline root at compile time (and write to gs:// from the laptop).
- `--target kfp` (default) builds the DAG without resolvers and rewrites the spec for
  open-source KFP (pipeline/kubeflow/spec.py); `--target vertex` keeps TFX's output and the
  latest-blessed-model baseline.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex

from pipeline import configs, console

PARAM_DATA = "data_root"
PARAM_SERVING = "serving_dir"
MODULE_FILES = {"Transform": "transform.py", "Trainer": "trainer.py"}
# `graft run` flags that make no sense on a cluster (it has --beam-args instead).
LOCAL_ONLY_FLAGS = ("beam_mode",)


def add_compile_arguments(p: argparse.ArgumentParser) -> None:
    k = configs.KubeflowSettings()
    p.add_argument("--output", default=k.package, help="spec file to write (default %(default)s)")
    p.add_argument("--image", required=True,
                   help="container image with graft installed (kubeflow/Dockerfile)")
    p.add_argument("--pipeline-root", required=True,
                   help="artifact root the cluster can write: gs://BUCKET/graft, s3://BUCKET/graft")
    p.add_argument("--data", default="",
                   help="URI of span-N/{train,eval}/* TFRecords (default PIPELINE_ROOT/data); "
                   "a KFP run parameter '%s'" % PARAM_DATA)
    p.add_argument("--labels", default="",
                   help="class names a,b,c (default: labels.txt of --data if it is local)")
    p.add_argument("--serving-dir", default="",
                   help="push target URI (default PIPELINE_ROOT/serving); a KFP run parameter "
                   "'%s'" % PARAM_SERVING)
    p.add_argument("--target", choices=["kfp", "vertex"], default=k.target,
                   help="open-source Kubeflow Pipelines 2.x or Vertex AI (default %(default)s)")
    p.add_argument("--project-dir", default=k.project_dir,
                   help="where the image installs graft (default %(default)s)")
    p.add_argument("--gpus", type=int, default=k.gpus,
                   help="Trainer GPUs, 0 for none (default %(default)s)")
    p.add_argument("--gpu-type", default=k.gpu_type,
                   help="accelerator resource name (default %(default)s; Vertex: "
                   "NVIDIA_TESLA_T4...)")
    p.add_argument("--trainer-cpu", type=float, default=k.trainer_cpu)
    p.add_argument("--trainer-memory", type=float, default=k.trainer_memory_gb, help="GB")
    p.add_argument("--cpu", type=float, default=k.cpu, help="CPU of the other components")
    p.add_argument("--memory", type=float, default=k.memory_gb,
                   help="memory of the other components, GB")
    p.add_argument("--beam-args", default=None,
                   help="Beam flags as one string, e.g. --beam-args='--runner=DataflowRunner "
                   "--project=P --region=R --temp_location=gs://B/tmp' (default: DirectRunner, "
                   "--direct_running_mode=multi_processing --direct_num_workers=0 "
                   "--sdk_container_image=IMAGE)")
    configs.add_config_arguments(p, exclude=LOCAL_ONLY_FLAGS)


def label_names(args) -> tuple:
    if args.labels:
        return tuple(n.strip() for n in args.labels.split(",") if n.strip())
    if args.data and "://" not in args.data and os.path.isdir(args.data):
        return configs.read_label_names(args.data)
    raise ValueError("--labels a,b,c is needed (labels.txt is read only from a local --data)")


def build_config(args) -> configs.PipelineConfig:
    """The PipelineConfig of a compile: the same flags as `graft run`, cluster URIs."""
    root = args.pipeline_root.rstrip("/")
    # code_version stays empty: KFP's cache key holds the image, so a new image is a new key.
    return configs.from_args(args, data_dir=args.data or root + "/data",
                             label_names=label_names(args), output_dir=root,
                             serving_dir=args.serving_dir or root + "/serving")


def resource_spec(cpu: float, memory_gb: float, gpus: int = 0, gpu_type: str = ""):
    from kfp.pipeline_spec import pipeline_spec_pb2
    spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec(
        cpu_limit=cpu, memory_limit=memory_gb, cpu_request=cpu, memory_request=memory_gb)
    if gpus:
        spec.accelerator.type = gpu_type
        spec.accelerator.count = gpus
    return spec


def build_pipeline(cfg: configs.PipelineConfig, args, beam_args: list):
    """The TFX pipeline object for Kubeflow: runtime parameters, resources, container modules."""
    from tfx.dsl.components.base import base_component
    from tfx.orchestration import data_types

    from pipeline.pipeline import create_pipeline

    kfp_cfg = dataclasses.replace(
        cfg,
        data_dir=data_types.RuntimeParameter(name=PARAM_DATA, ptype=str, default=cfg.data_dir),
        serving_dir=data_types.RuntimeParameter(name=PARAM_SERVING, ptype=str,
                                                default=cfg.serving_dir))
    trainer_resources = resource_spec(args.trainer_cpu, args.trainer_memory, args.gpus,
                                      args.gpu_type)
    pipeline = create_pipeline(kfp_cfg, beam_pipeline_args=beam_args,
                               trainer_platform_config=trainer_resources,
                               span_window=False, baseline=args.target == "vertex",
                               baseline_skips_candidate=False)
    components_dir = args.project_dir.rstrip("/") + "/components"
    for component in pipeline.components:
        if component.id != "Trainer" and isinstance(component, base_component.BaseComponent):
            component.with_platform_config(resource_spec(args.cpu, args.memory))
        if component.id in MODULE_FILES:
            # The image's copy of the module, not a wheel of this checkout's copy.
            component.exec_properties["module_file"] = (
                components_dir + "/" + MODULE_FILES[component.id])
            component._pip_dependencies = []  # pylint: disable=protected-access
    return pipeline


def compile_spec(args) -> dict:
    """Compile; returns the PipelineJob dict whose 'pipelineSpec' is what gets written."""
    from google.protobuf import json_format
    from tfx import v1 as tfx

    from pipeline.kubeflow import spec as kubeflow_spec

    cfg = build_config(args)
    # A cluster pod has its own cores: Beam's DirectRunner uses one worker process per core.
    # --sdk_container_image: the image holds TFX, so TFX's Beam executors build no sdist of
    # it (2 s a component; pipeline/runners/tfx_sdist.py). The DirectRunner ignores the flag.
    beam_args = shlex.split(args.beam_args) if args.beam_args is not None else \
        dataclasses.replace(cfg, beam_mode="multi_processing").beam_args() + [
            "--sdk_container_image=" + args.image]
    pipeline = build_pipeline(cfg, args, beam_args)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=args.image, use_pipeline_spec_2_1=True))
    job = runner.run(pipeline, write_out=False)
    if args.target == "kfp":
        resources = json_format.MessageToDict(resource_spec(args.cpu, args.memory))
        job["pipelineSpec"] = kubeflow_spec.for_oss_kfp(
            job["pipelineSpec"], args.pipeline_root.rstrip("/"),
            {PARAM_DATA: cfg.data_dir, PARAM_SERVING: cfg.serving_dir}, resources)
    return job


def write_spec(job: dict, path: str) -> None:
    """YAML with TFX's header comments, keys sorted (deterministic: the file is committed)."""
    from tfx import version
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    kubeflow_v2_dag_runner._write_pipeline_spec_to_file(  # pylint: disable=protected-access
        job, "graft: transfer learning from ImageNet backbones (TFX %s)" % version.__version__,
        path)


def main(args) -> int:
    try:
        job = compile_spec(args)
    except (ValueError, FileNotFoundError) as e:
        console.error(str(e))
        return 2
    write_spec(job, args.output)
    tasks = sorted(job["pipelineSpec"]["root"]["dag"]["tasks"])
    console.say("graft kubeflow compile: %s (%d tasks, image %s, target %s)"
                % (args.output, len(tasks), args.image, args.target))
    return 0
