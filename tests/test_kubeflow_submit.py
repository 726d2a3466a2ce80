"""`graft kubeflow submit` against a fake KFP 2.x REST API on 127.0.0.1 (ephemeral port) that
records every call and answers minimal valid JSON: pipeline upload (new pipeline, then a new
version), experiment, one run, a cron recurring run with max concurrency and parameters."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from pipeline_runs import REPO

SPEC = REPO / "kubeflow" / "pipeline.yaml"


class FakeKfp(BaseHTTPRequestHandler):
    """Answers the v2beta1 calls kfp.Client 2.5 makes; state lives on the server object."""

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> tuple:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        call = {"method": self.command, "path": url.path, "query": parse_qs(url.query),
                "content_type": self.headers.get("Content-Type", ""), "raw": raw}
        if raw and call["content_type"].startswith("application/json"):
            call["json"] = json.loads(raw)
        self.server.calls.append(call)
        return url.path, call

    def do_GET(self):
        path, call = self._record()
        state = self.server.state
        if path == "/apis/v2beta1/healthz":
            return self._reply({"multi_user": False})
        if path == "/apis/v2beta1/experiments":
            return self._reply({"experiments": state.get("experiments", [])})
        if path == "/apis/v2beta1/pipelines":
            return self._reply({"pipelines": state.get("pipelines", [])})
        if path.startswith("/apis/v2beta1/pipelines/") and path.endswith("/versions"):
            return self._reply({"pipeline_versions": [
                {"pipeline_id": "pl-1", "pipeline_version_id": "ver-1"}], "total_size": 1})
        return self._reply({"error": "unexpected GET " + path}, 404)

    def do_POST(self):
        path, call = self._record()
        state = self.server.state
        if path == "/apis/v2beta1/experiments":
            exp = {"experiment_id": "exp-1", "display_name": call["json"]["display_name"]}
            state["experiments"] = [exp]
            return self._reply(exp)
        if path == "/apis/v2beta1/pipelines/upload":
            pipeline = {"pipeline_id": "pl-1", "display_name": call["query"]["name"][0]}
            state["pipelines"] = [pipeline]
            return self._reply(pipeline)
        if path == "/apis/v2beta1/pipelines/upload_version":
            return self._reply({"pipeline_id": call["query"]["pipelineid"][0],
                                "pipeline_version_id": "ver-2",
                                "display_name": call["query"]["name"][0]})
        if path == "/apis/v2beta1/runs":
            return self._reply({"run_id": "run-1", "display_name": call["json"]["display_name"]})
        if path == "/apis/v2beta1/recurringruns":
            return self._reply({"recurring_run_id": "rr-1",
                                "display_name": call["json"]["display_name"]})
        return self._reply({"error": "unexpected POST " + path}, 404)


@pytest.fixture()
def kfp_server(monkeypatch, tmp_path):
    from kfp.client import client as kfp_client

    # No user KFP context file, no proxy for loopback.
    monkeypatch.setattr(kfp_client.Client, "_LOCAL_KFP_CONTEXT",
                        str(tmp_path / "kfp-context.json"))
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKfp)
    server.calls, server.state = [], {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def submit(server, *args) -> int:
    from pipeline import cli
    host = "http://127.0.0.1:%d" % server.server_address[1]
    return cli.main(["kubeflow", "submit", "--host", host, "--package", str(SPEC),
                     *map(str, args)])


def _calls(server, method, path):
    return [c for c in server.calls if c["method"] == method and c["path"] == path]


def test_schedule_uploads_and_creates_a_cron_recurring_run(kfp_server, capsys):
    rc = submit(kfp_server, "--experiment", "nightly", "--schedule", "0 3 * * *",
                "--max-concurrency", 1, "--param", "data_root=gs://other/data",
                "--param", "serving_dir=gs://other/serving")
    assert rc == 0, capsys.readouterr().err
    (upload,) = _calls(kfp_server, "POST", "/apis/v2beta1/pipelines/upload")
    assert upload["query"]["name"] == ["graft"]
    assert upload["content_type"].startswith("multipart/form-data")
    assert SPEC.read_bytes() in upload["raw"]  # the committed spec, byte for byte
    (experiment,) = _calls(kfp_server, "POST", "/apis/v2beta1/experiments")
    assert experiment["json"]["display_name"] == "nightly"
    (job,) = _calls(kfp_server, "POST", "/apis/v2beta1/recurringruns")
    body = job["json"]
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"  # KFP's 6-field cron
    assert int(body["max_concurrency"]) == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["experiment_id"] == "exp-1"
    assert body["pipeline_version_reference"] == {"pipeline_id": "pl-1",
                                                  "pipeline_version_id": "ver-1"}
    assert body["runtime_config"]["parameters"] == {"data_root": "gs://other/data",
                                                    "serving_dir": "gs://other/serving"}
    assert not _calls(kfp_server, "POST", "/apis/v2beta1/runs")
    assert "recurring run graft-retrain (rr-1)" in capsys.readouterr().out


def test_one_run_on_a_new_version_of_an_existing_pipeline(kfp_server, capsys):
    kfp_server.state["pipelines"] = [{"pipeline_id": "pl-1", "display_name": "graft"}]
    kfp_server.state["experiments"] = [{"experiment_id": "exp-9", "display_name": "graft"}]
    rc = submit(kfp_server, "--run-name", "try-1", "--pipeline-root", "s3://b/graft")
    assert rc == 0, capsys.readouterr().err
    assert not _calls(kfp_server, "POST", "/apis/v2beta1/pipelines/upload")
    assert not _calls(kfp_server, "POST", "/apis/v2beta1/experiments")
    (version,) = _calls(kfp_server, "POST", "/apis/v2beta1/pipelines/upload_version")
    assert version["query"]["pipelineid"] == ["pl-1"]
    assert version["query"]["name"][0].startswith("graft-")
    (run,) = _calls(kfp_server, "POST", "/apis/v2beta1/runs")
    body = run["json"]
    assert body["display_name"] == "try-1"
    assert body["experiment_id"] == "exp-9"
    assert body["pipeline_version_reference"]["pipeline_version_id"] == "ver-2"
    assert body["runtime_config"]["pipeline_root"] == "s3://b/graft"
    assert "run try-1 (run-1)" in capsys.readouterr().out


def test_unknown_parameter_and_bad_cron_are_refused_before_any_call(kfp_server, capsys):
    assert submit(kfp_server, "--param", "epochs=3") == 2
    assert "unknown parameter 'epochs'" in capsys.readouterr().err
    assert submit(kfp_server, "--schedule", "every day") == 2
    assert "cron" in capsys.readouterr().err
    assert kfp_server.calls == []


def test_kfp_cron():
    from pipeline.kubeflow.submit import kfp_cron
    assert kfp_cron("*/30 * * * *") == "0 */30 * * * *"
    assert kfp_cron("0 0 4 * * 1") == "0 0 4 * * 1"
    with pytest.raises(ValueError):
        kfp_cron("* *")
