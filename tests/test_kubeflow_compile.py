"""`graft kubeflow compile`: the KFP spec TFX's KubeflowV2DagRunner writes, after graft's
open-source-KFP rewrite; the committed kubeflow/pipeline.yaml; the ImportExampleGen entry point
run for real on a tiny data set; kubeflow/Dockerfile linted."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline_runs import REPO

IMAGE = "ghcr.io/OWNER/graft:0.1.0"
# The command that wrote kubeflow/pipeline.yaml (kubeflow/README.md shows the same).
DEFAULT_ARGS = ["kubeflow", "compile", "--image", IMAGE, "--pipeline-root", "gs://BUCKET/graft",
                "--data", "gs://BUCKET/data", "--labels",
                "daisy,dandelion,roses,sunflowers,tulips"]
TASKS = {"ImportExampleGen", "ImageCheck", "StatisticsGen", "SchemaGen", "ExampleValidator",
         "DataGate", "Transform", "Trainer", "Evaluator", "VersionedPusher", "TFLiteExport"}


def compile_to(path: Path, *extra) -> dict:
    from pipeline import cli

    assert cli.main([*DEFAULT_ARGS, "--output", str(path), *map(str, extra)]) == 0
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    return path, compile_to(path)


def _container(spec, task):
    from pipeline.kubeflow import spec as kubeflow_spec
    return kubeflow_spec.container(spec, task)


def test_spec_has_the_pipeline_tasks_and_no_resolver(compiled):
    _, spec = compiled
    assert spec["schemaVersion"] == "2.1.0"
    assert set(spec["root"]["dag"]["tasks"]) == TASKS
    assert not any("resolver" in e for e in spec["deploymentSpec"]["executors"].values())
    deps = spec["root"]["dag"]["tasks"]["VersionedPusher"]["dependentTasks"]
    assert set(deps) == {"Evaluator", "Trainer"}
    deps = spec["root"]["dag"]["tasks"]["TFLiteExport"]["dependentTasks"]
    assert set(deps) == {"Evaluator", "ImageCheck", "Trainer", "VersionedPusher"}


def test_trainer_requests_gpus_and_components_cpu_memory(compiled):
    _, spec = compiled
    trainer = _container(spec, "Trainer")["resources"]
    assert trainer["accelerator"]["type"] == "nvidia.com/gpu"
    assert int(trainer["accelerator"]["count"]) == 1
    assert trainer["cpuLimit"] == 8.0 and trainer["memoryLimit"] == 32.0
    for task in set(spec["root"]["dag"]["tasks"]) - {"Trainer"}:
        res = _container(spec, task)["resources"]
        assert "accelerator" not in res, task
        assert res["cpuLimit"] == 4.0 and res["memoryLimit"] == 16.0, task


def test_image_command_and_beam_args(compiled):
    _, spec = compiled
    for task in spec["root"]["dag"]["tasks"]:
        c = _container(spec, task)
        assert c["image"] == IMAGE
        assert c["command"][:2] == ["python", "-m"]
        assert "--direct_running_mode=multi_processing" in c["args"]
        assert "--direct_num_workers=0" in c["args"]
        assert "--sdk_container_image=" + IMAGE in c["args"]


def test_module_files_are_container_paths(compiled):
    path, spec = compiled
    tasks = spec["root"]["dag"]["tasks"]
    for task, name in (("Transform", "transform.py"), ("Trainer", "trainer.py")):
        module = tasks[task]["inputs"]["parameters"]["module_file"]
        assert module["runtimeValue"]["constant"] == "/app/components/" + name
    text = path.read_text()
    assert str(REPO) not in text and "_wheels" not in text and "graft-output" not in text


def test_oss_kfp_rewrite(compiled):
    _, spec = compiled
    assert spec["defaultPipelineRoot"] == "gs://BUCKET/graft"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["data_root"]["defaultValue"] == "gs://BUCKET/data"
    assert params["serving_dir"]["defaultValue"] == "gs://BUCKET/graft/serving"
    assert all(p["isOptional"] for p in params.values())
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["ImportExampleGen"]["inputs"]["parameters"]["input_base"] == {
        "componentInputParameter": "data_root"}
    assert tasks["VersionedPusher"]["inputs"]["parameters"]["serving_dir"] == {
        "componentInputParameter": "serving_dir"}
    example_gen = _container(spec, "ImportExampleGen")
    assert example_gen["command"] == ["python", "-m", "pipeline.kfp_example_gen"]
    assert "lifecycle" not in example_gen
    assert tasks["ImportExampleGen"]["cachingOptions"] == {"enableCache": False}
    assert tasks["Trainer"]["cachingOptions"] == {"enableCache": True}
    assert "baseline_model" not in tasks["Evaluator"]["inputs"].get("artifacts", {})
    # TFX's artifact types stay tfx.* (instanceSchema), not KFP's system.* (README).
    schema = spec["components"]["Trainer"]["outputDefinitions"]["artifacts"]["model"]
    assert schema["artifactType"]["instanceSchema"].startswith("title: tfx.Model")


def test_kfp_sdk_loads_the_spec(compiled):
    from kfp.client import client as kfp_client

    path, _ = compiled
    doc = kfp_client._extract_pipeline_yaml(str(path))  # the parser kfp.Client submits with
    assert doc.pipeline_spec.default_pipeline_root == "gs://BUCKET/graft"
    assert doc.pipeline_spec.pipeline_info.name == "graft"


def test_committed_spec_is_the_default_compile(compiled):
    path, _ = compiled
    committed = REPO / "kubeflow" / "pipeline.yaml"
    assert committed.read_text() == path.read_text(), (
        "kubeflow/pipeline.yaml is stale: regenerate it with `graft %s`" % " ".join(DEFAULT_ARGS))


def test_flags_change_gpus_project_dir_and_params(tmp_path):
    spec = compile_to(tmp_path / "p.yaml", "--gpus", 2, "--gpu-type", "nvidia.com/mig-1g.10gb",
                      "--project-dir", "/opt/graft", "--serving-dir", "s3://models/graft",
                      "--min-accuracy", 0.9, "--cpu", 2, "--memory", 6, "--epochs", 3,
                      "--learning-rate", 0.01,
                      "--beam-args=--runner=DirectRunner --direct_num_workers=2")
    trainer = _container(spec, "Trainer")
    assert trainer["resources"]["accelerator"] == {"type": "nvidia.com/mig-1g.10gb",
                                                   "count": "2"}
    assert "--runner=DirectRunner" in trainer["args"]
    assert "--direct_running_mode=multi_processing" not in trainer["args"]
    assert not any(a.startswith("--sdk_container_image") for a in trainer["args"])
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["Trainer"]["inputs"]["parameters"]["module_file"]["runtimeValue"][
        "constant"] == "/opt/graft/components/trainer.py"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["serving_dir"]["defaultValue"] == "s3://models/graft"
    eval_config = tasks["Evaluator"]["inputs"]["parameters"]["eval_config"]
    assert '"lower_bound": 0.9' in eval_config["runtimeValue"]["constant"]
    assert _container(spec, "StatisticsGen")["resources"]["memoryLimit"] == 6.0
    config = json.loads(tasks["Trainer"]["inputs"]["parameters"]["custom_config"][
        "runtimeValue"]["constant"])
    assert config["epochs"] == 3 and config["learning_rate"] == 0.01


def test_vertex_target_keeps_tfx_output(tmp_path):
    from pipeline.kubeflow import spec as kubeflow_spec

    spec = compile_to(tmp_path / "v.yaml", "--target", "vertex", "--gpu-type",
                      "NVIDIA_TESLA_T4")
    assert kubeflow_spec.resolver_tasks(spec)  # latest blessed model baseline kept
    assert "lifecycle" in _container(spec, "ImportExampleGen")
    assert "defaultPipelineRoot" not in spec
    with pytest.raises(ValueError, match="resolver"):
        kubeflow_spec.for_oss_kfp(spec, "gs://b", {}, None)


def test_labels_needed_for_remote_data(tmp_path, capsys):
    from pipeline import cli

    args = [a for a in DEFAULT_ARGS if a not in ("--labels", DEFAULT_ARGS[-1])]
    assert cli.main([*args, "--output", str(tmp_path / "x.yaml")]) == 2
    assert "--labels" in capsys.readouterr().err


def test_labels_read_from_a_local_data_dir(tmp_path):
    from pipeline import cli

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "labels.txt").write_text("cat\ndog\nfox\n")
    out = tmp_path / "l.yaml"
    args = ["kubeflow", "compile", "--image", IMAGE, "--pipeline-root", "gs://B/g",
            "--data", str(tmp_path / "data"), "--output", str(out)]
    assert cli.main(args) == 0
    spec = yaml.safe_load(out.read_text())
    trainer = spec["root"]["dag"]["tasks"]["Trainer"]["inputs"]["parameters"]
    config = json.loads(trainer["custom_config"]["runtimeValue"]["constant"])
    assert config["label_names"] == ["cat", "dog", "fox"]
    gate = spec["root"]["dag"]["tasks"]["DataGate"]["inputs"]["parameters"]
    assert gate["num_classes"]["runtimeValue"]["constant"] == 3


def test_example_gen_entry_point_resolves_the_span(compiled, tmp_path):
    """The OSS ImportExampleGen container: TFX's driver then executor, for real."""
    from pipeline.data import demo_dataset

    _, spec = compiled
    data = Path(demo_dataset.build(tmp_path / "demo", per_class=4, image_size=16, classes=3,
                                   log=lambda *_: None))
    (data / "span-1").rename(data / "span-7")
    task = spec["root"]["dag"]["tasks"]["ImportExampleGen"]
    params = {k: v["runtimeValue"]["constant"] for k, v in task["inputs"]["parameters"].items()
              if "runtimeValue" in v}
    params["input_base"] = str(data)
    component = spec["components"][task["componentRef"]["name"]]
    output_file = tmp_path / "kfp_outputs" / "output_metadata.json"
    executor_input = {
        "inputs": {"parameterValues": params},
        "outputs": {"artifacts": {"examples": {"artifacts": [{
            "name": "examples", "uri": str(tmp_path / "examples"),
            "type": component["outputDefinitions"]["artifacts"]["examples"]["artifactType"]}]}},
            "outputFile": str(output_file)}}
    c = _container(spec, "ImportExampleGen")
    args = [json.dumps(executor_input) if a == "{{$}}" else
            "--direct_running_mode=in_memory" if a.startswith("--direct_running_mode") else a
            for a in c["args"]]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable] + c["command"][1:] + args, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    out = json.loads(output_file.read_text())
    meta = out["artifacts"]["examples"]["artifacts"][0]["metadata"]
    assert meta["custom:span"] == 7
    assert json.loads(meta["split_names"]) == ["train", "eval", "test"]
    for split in ("train", "eval", "test"):
        assert list((tmp_path / "examples" / ("Split-" + split)).glob("*.gz"))


def _dockerfile_instructions(path: Path) -> list:
    """[(INSTRUCTION, arguments)] with continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        current += " " + line.rstrip("\\").strip() if current else line.rstrip("\\").strip()
        if not line.endswith("\\"):
            lines.append(current)
            current = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "")
            for ln in lines]


def test_dockerfile_lint():
    from pipeline import configs

    dockerfile = REPO / "kubeflow" / "Dockerfile"
    ins = _dockerfile_instructions(dockerfile)
    kinds = [k for k, _ in ins]
    froms = [a for k, a in ins if k == "FROM"]
    assert len(froms) == 1
    image, _, tag = froms[0].partition(":")
    assert image == "python" and re.fullmatch(r"3\.10\.\d+-[a-z-]+", tag), froms[0]
    assert "latest" not in dockerfile.read_text()
    assert ("WORKDIR", configs.KubeflowSettings().project_dir) in ins
    copies = " ".join(a for k, a in ins if k == "COPY")
    for needed in ("constraints.txt", "pyproject.toml", "pipeline/", "components/"):
        assert needed in copies, needed
    installs = [a for k, a in ins if k == "RUN" and "pip install" in a]
    assert installs and all("-c constraints.txt" in a for a in installs)
    assert any("tensorflow[and-cuda]==2.16.2" in a for a in installs)
    # TFLite label metadata on the cluster: the extra and the system library it links.
    assert all("tflite-metadata" in a for a in installs)
    assert any("libusb-1.0-0" in a for k, a in ins if k == "RUN")
    users = [a for k, a in ins if k == "USER"]
    assert users and users[-1] not in ("root", "0")
    # TFX's V2 runner sets every task's command (python -m ...): no ENTRYPOINT to fight it.
    assert "ENTRYPOINT" not in kinds
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN" and
                                     "pip install" in ins[i][1])
    ignore = (REPO / "kubeflow" / "Dockerfile.dockerignore").read_text().split()
    for needed in ("!pipeline/", "!components/", "!constraints.txt", "!pyproject.toml"):
        assert needed in ignore
