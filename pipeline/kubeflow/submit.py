"""`graft kubeflow submit`: upload the compiled spec to a Kubeflow Pipelines 2.x API server and
start one run, or a recurring run (cron) for scheduled retraining, with kfp.Client.

The spec is uploaded as a new version of the pipeline named after the spec (the pipeline is
created on first upload), so every run is traceable to the exact spec it ran. Run parameters
(`--param data_root=gs://...`) are checked against the spec's runtime parameters.
"""
from __future__ import annotations

import datetime
import hashlib
import sys

import yaml


def load_spec(path: str) -> dict:
    with open(path) as f:
        spec = yaml.safe_load(f)
    return spec.get("pipelineSpec", spec)  # a PipelineJob JSON holds the spec one level down


def parse_params(pairs: list, spec: dict) -> dict:
    """KEY=VALUE pairs -> {key: value}, keys checked against the spec's runtime parameters."""
    known = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError("--param %r is not KEY=VALUE" % pair)
        if key not in known:
            raise ValueError("unknown parameter %r; the spec has: %s"
                             % (key, ", ".join(sorted(known)) or "none"))
        kind = known[key].get("parameterType", "STRING")
        out[key] = (float(value) if kind == "NUMBER_DOUBLE" else
                    int(value) if kind == "NUMBER_INTEGER" else value)
    return out


def kfp_cron(expression: str) -> str:
    """KFP schedules with 6-field cron (seconds first): a 5-field '0 3 * * *' gets '0 ' prefixed."""
    fields = expression.split()
    if len(fields) == 5:
        return "0 " + " ".join(fields)
    if len(fields) == 6:
        return " ".join(fields)
    raise ValueError("--schedule %r: need a 5- or 6-field cron expression" % expression)


def version_name(package: str, pipeline_name: str) -> str:
    with open(package, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:8]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return "%s-%s-%s" % (pipeline_name, stamp, digest)


def upload(client, package: str, pipeline_name: str) -> tuple[str, str]:
    """(pipeline_id, version_id) of the package uploaded as a new version."""
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(package, pipeline_name=pipeline_name).pipeline_id
        versions = client.list_pipeline_versions(pipeline_id, page_size=1,
                                                 sort_by="created_at desc").pipeline_versions
        return pipeline_id, versions[0].pipeline_version_id
    version = client.upload_pipeline_version(package, version_name(package, pipeline_name),
                                             pipeline_id=pipeline_id)
    return pipeline_id, version.pipeline_version_id


def submit(args, client=None) -> dict:
    import kfp

    spec = load_spec(args.package)
    params = parse_params(args.param, spec)
    cron = kfp_cron(args.schedule) if args.schedule else None
    pipeline_name = args.pipeline_name or spec["pipelineInfo"]["name"]
    client = client or kfp.Client(host=args.host, namespace=args.namespace or "kubeflow")
    experiment = client.create_experiment(args.experiment, namespace=args.namespace)
    pipeline_id, version_id = upload(client, args.package, pipeline_name)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    common = dict(experiment_id=experiment.experiment_id, pipeline_id=pipeline_id,
                  version_id=version_id, params=params, pipeline_root=args.pipeline_root,
                  service_account=args.service_account)
    if cron:
        name = args.run_name or "%s-retrain" % pipeline_name
        job = client.create_recurring_run(job_name=name, cron_expression=cron,
                                          max_concurrency=args.max_concurrency, no_catchup=True,
                                          **common)
        return {"kind": "recurring run", "id": job.recurring_run_id, "name": name,
                "pipeline_id": pipeline_id, "version_id": version_id}
    name = args.run_name or "%s-%s" % (pipeline_name, stamp)
    run = client.run_pipeline(job_name=name, **common)
    return {"kind": "run", "id": run.run_id, "name": name, "pipeline_id": pipeline_id,
            "version_id": version_id}


def main(args) -> int:
    try:
        result = submit(args)
    except (ValueError, FileNotFoundError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    print("graft kubeflow submit: %s %s (%s), pipeline %s version %s"
          % (result["kind"], result["name"], result["id"], result["pipeline_id"],
             result["version_id"]))
    return 0
