"""`graft serve` / `graft predict` against a toy SavedModel with graft's serving contract.

One server subprocess per module (loopback, free port, --poll-seconds 0.5, a small
--max-image-pixels). Covers: predictions through `graft predict --json` equal the in-process
SavedModel's; metadata and status; version / signature selection; every class of bad input
(right gRPC code, a message naming the problem and the batch element, and the next request
still works); the client's per-file errors and exit status; a hot swap to a newly pushed
version under continuous load with zero failed requests, never loading a partial version
directory; graceful SIGTERM. Tests run in file order (the hot swap changes the served version).
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from serving import model_store, protos

import toy_model
from conftest import SHARED_DATA
from pipeline_runs import REPO

POLL_SECONDS = 0.5
MAX_PIXELS = 1_000_000
MODEL = "toy"


def _png(size=(32, 24), colour=(220, 30, 20)) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(size=(64, 48), colour=(30, 200, 40)) -> bytes:
    from PIL import Image
    rng = np.random.default_rng(0)
    noise = rng.integers(-20, 20, size=(size[1], size[0], 3))
    pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _gif() -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (30, 30), (1, 2, 3)).save(buf, format="GIF")
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    base = root / MODEL
    toy_model.push(str(base), 1)
    port = _free_port()
    log_path = root / "server.log"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "serve", "--model-base-path", str(base),
             "--model-name", MODEL, "--port", str(port), "--poll-seconds", str(POLL_SECONDS),
             "--max-image-pixels", str(MAX_PIXELS)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    apis = protos.load_apis()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    ns = SimpleNamespace(
        proc=proc, port=port, base=base, root=root, log=log_path, apis=apis, channel=channel,
        predict=apis.prediction_service_pb2_grpc.PredictionServiceStub(channel),
        models=apis.model_service_pb2_grpc.ModelServiceStub(channel))
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"graft serve exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            status = ns.models.GetModelStatus(_status_request(apis, MODEL), timeout=2)
            if any(s.state == 30 for s in status.model_version_status):
                break
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"graft serve did not come up:\n{log_path.read_text()}")
        time.sleep(0.3)
    yield ns
    channel.close()
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _status_request(apis, name, version=None):
    request = apis.get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    return request


def _request(apis, images, model=MODEL, version=None, signature="serving_default",
             key="image_bytes"):
    request = apis.predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs[key].CopyFrom(protos.make_string_tensor(list(images)))
    return request


def _in_process(version_dir, data: bytes):
    import tensorflow as tf
    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    out = fn(image_bytes=tf.constant([data]))
    return out["probabilities"].numpy()[0], out["class_name"].numpy()[0].decode()


def _good_after(server):
    response = server.predict.Predict(_request(server.apis, [_png()]), timeout=30)
    assert protos.to_ndarray(response.outputs["probabilities"]).shape == (1, 3)


def test_scan_versions_skips_partial_and_temporary_dirs(tmp_path):
    for name in ("3", "12", ".tmp-13-abcd", "14", "15x", "0016"):
        (tmp_path / name).mkdir()
    for name in ("3", "12", ".tmp-13-abcd", "15x", "0016"):
        (tmp_path / name / "saved_model.pb").write_bytes(b"x")
    (tmp_path / "20").write_bytes(b"a file, not a dir")
    assert sorted(model_store.scan_versions(str(tmp_path))) == [3, 12, 16]
    assert model_store.scan_versions(str(tmp_path / "absent")) == {}


def test_tf_serving_flag_execs_the_real_server_or_exits_2(tmp_path):
    args = ["serve", "--tf-serving", "--model-base-path", str(tmp_path / "graft"),
            "--model-name", "graft", "--port", "9000", "--poll-seconds", "2"]
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = dict(os.environ, PATH=str(empty))
    missing = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "tensorflow_model_server" in missing.stderr

    fake = tmp_path / "bin" / "tensorflow_model_server"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho \"ARGS $*\"\nfor a in \"$@\"; do case \"$a\" in "
                    "--model_config_file=*) cat \"${a#--model_config_file=}\";; esac; done\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    argv = next(line for line in run.stdout.splitlines() if line.startswith("ARGS ")).split()
    assert {"--port=9000", "--rest_api_port=8501", "--file_system_poll_wait_seconds=2"} <= set(argv)
    assert any(a.startswith("--model_config_file=") for a in argv)
    assert 'name: "graft"' in run.stdout
    assert f'base_path: "{tmp_path / "graft"}"' in run.stdout


def test_predict_cli_json_matches_in_process_model(server, tmp_path, shared_data_optional):
    files = {"red.png": _png(colour=(220, 30, 20)), "green.jpg": _jpeg(colour=(30, 200, 40)),
             "blue.png": _png(size=(50, 70), colour=(20, 40, 230))}
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    paths += shared_data_optional
    result = _cli("predict", *paths, "--server", f"127.0.0.1:{server.port}", "--model", MODEL,
                  "--json", "--top-k", "3")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == paths
    for line in lines:
        probs, name = _in_process(server.base / "1", Path(line["file"]).read_bytes())
        preds = line["predictions"]
        assert [p["probability"] for p in preds] == sorted((p["probability"] for p in preds),
                                                           reverse=True)
        assert preds[0]["class"] == name
        assert preds[0]["index"] == int(np.argmax(probs))
        for p in preds:
            assert abs(p["probability"] - float(probs[p["index"]])) < 1e-5
    top = {Path(line["file"]).name: line["predictions"][0]["class"] for line in lines}
    assert (top["red.png"], top["green.jpg"], top["blue.png"]) == ("red", "green", "blue")


@pytest.fixture
def shared_data_optional():
    """Two real flower JPEGs when ../shared/data is present, else nothing."""
    root = SHARED_DATA / "flowers-dev"
    if not root.is_dir():
        return []
    from PIL import Image
    small = []
    for path in sorted(root.glob("*/*.jpg")):
        with Image.open(path) as im:
            if im.width * im.height <= MAX_PIXELS:
                small.append(str(path))
        if len(small) == 2:
            break
    return small


def test_predict_cli_text_output_and_per_file_errors(server, tmp_path):
    good = tmp_path / "red.png"
    good.write_bytes(_png())
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"definitely not an image")
    missing = tmp_path / "missing.jpg"
    result = _cli("predict", str(bad), str(good), str(missing), "--server",
                  f"127.0.0.1:{server.port}", "--model", MODEL, "--top-k", "2")
    assert result.returncode == 1
    out = result.stdout.splitlines()
    assert out[0] == str(good) and len(out) == 3
    assert out[1].split()[0] == "red" and 0.5 < float(out[1].split()[1]) <= 1.0
    errors = result.stderr.strip().splitlines()
    assert errors[0].startswith(f"error: {bad}: ") and "not an image" in errors[0]
    assert errors[1].startswith(f"error: {missing}: ")
    ok = _cli("predict", str(good), "--server", f"127.0.0.1:{server.port}", "--model", MODEL,
              "--version", "1", "--top-k", "1")
    assert ok.returncode == 0 and ok.stdout.splitlines()[1].split()[0] == "red"


def test_metadata_and_status(server):
    apis = server.apis
    request = apis.get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = MODEL
    request.metadata_field.append("signature_def")
    response = server.predict.GetModelMetadata(request, timeout=30)
    assert response.model_spec.version.value == 1
    sig_map = apis.get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    default = sig_map.signature_def["serving_default"]
    assert default.inputs["image_bytes"].dtype == 7
    assert [d.size for d in default.inputs["image_bytes"].tensor_shape.dim] == [-1]
    assert set(default.outputs) == {"probabilities", "class_index", "class_name", "class_names"}
    assert default.outputs["probabilities"].dtype == 1
    assert default.outputs["class_index"].dtype == 9
    assert "serve_tf_examples" in sig_map.signature_def

    status = server.models.GetModelStatus(_status_request(apis, MODEL), timeout=30)
    assert [(s.version, s.state) for s in status.model_version_status] == [(1, 30)]
    with pytest.raises(grpc.RpcError) as err:
        server.models.GetModelStatus(_status_request(apis, "nope"), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_version_and_signature_are_honoured(server):
    apis = server.apis
    data = _png(colour=(20, 40, 230))
    response = server.predict.Predict(_request(apis, [data], version=1), timeout=30)
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    default_probs = protos.to_ndarray(response.outputs["probabilities"])

    import tensorflow as tf
    example = tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))}))
    request = _request(apis, [example.SerializeToString()], signature="serve_tf_examples",
                       key="examples")
    response = server.predict.Predict(request, timeout=30)
    assert response.model_spec.signature_name == "serve_tf_examples"
    assert set(response.outputs) == {"probabilities"}
    np.testing.assert_allclose(protos.to_ndarray(response.outputs["probabilities"]),
                               default_probs, atol=1e-6)


def _float_request(apis):
    request = _request(apis, [b"x"])
    tensor = apis.tensor_pb2.TensorProto(dtype=1, float_val=[1.0])
    tensor.tensor_shape.dim.add().size = 1
    request.inputs["image_bytes"].CopyFrom(tensor)
    return request


BAD_REQUESTS = {
    # name: (request builder, expected code, substrings of the message)
    "non_image": (lambda a: _request(a, [_png(), _png(), b"hello, I am text"]),
                  grpc.StatusCode.INVALID_ARGUMENT, ["batch element 2", "not an image"]),
    "zero_bytes": (lambda a: _request(a, [_png(), b""]),
                   grpc.StatusCode.INVALID_ARGUMENT, ["batch element 1", "empty image"]),
    "truncated_jpeg": (lambda a: _request(a, [_jpeg()[: len(_jpeg()) // 2]]),
                       grpc.StatusCode.INVALID_ARGUMENT, ["batch element 0", "truncated JPEG"]),
    "truncated_png": (lambda a: _request(a, [_png()[:60]]),
                      grpc.StatusCode.INVALID_ARGUMENT, ["batch element 0", "truncated PNG"]),
    # passes the header checks, fails in the graph: each element is then decoded alone
    "corrupt_gif": (lambda a: _request(a, [_png(), _gif()[: len(_gif()) // 2]]),
                    grpc.StatusCode.INVALID_ARGUMENT, ["batch element 1", "could not be decoded"]),
    "too_many_pixels": (lambda a: _request(a, [_png(), _png(size=(1250, 1000))]),
                        grpc.StatusCode.INVALID_ARGUMENT,
                        ["batch element 1", "1250x1000", "1250000", str(MAX_PIXELS)]),
    "wrong_dtype": (_float_request, grpc.StatusCode.INVALID_ARGUMENT,
                    ["image_bytes", "DT_FLOAT", "DT_STRING"]),
    "wrong_key": (lambda a: _request(a, [_png()], key="images"),
                  grpc.StatusCode.INVALID_ARGUMENT, ["images", "image_bytes"]),
    "empty_batch": (lambda a: _request(a, []), grpc.StatusCode.INVALID_ARGUMENT,
                    ["empty batch"]),
    "batch_256": (lambda a: _request(a, [_png()] * 256), grpc.StatusCode.INVALID_ARGUMENT,
                  ["256", "maximum batch size of 32"]),
    "unknown_model": (lambda a: _request(a, [_png()], model="resnet"),
                      grpc.StatusCode.NOT_FOUND, ["resnet"]),
    "unknown_version": (lambda a: _request(a, [_png()], version=99),
                        grpc.StatusCode.NOT_FOUND, ["99", "available versions: [1]"]),
    "unknown_signature": (lambda a: _request(a, [_png()], signature="serve_nope"),
                          grpc.StatusCode.NOT_FOUND, ["serve_nope"]),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_is_rejected_clearly_and_server_recovers(server, case):
    build, code, words = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as err:
        server.predict.Predict(build(server.apis), timeout=30)
    assert err.value.code() == code, err.value.details()
    for word in words:
        assert word in err.value.details(), err.value.details()
    _good_after(server)


def test_hot_swap_to_pushed_version_without_failed_requests(server):
    apis = server.apis
    request = _request(apis, [_png(colour=(220, 30, 20))])
    seen, failures, stop = [], [], threading.Event()

    def keep_asking():
        stub = apis.prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        while not stop.is_set():
            try:
                response = stub.Predict(request, timeout=30)
                name = protos.to_ndarray(response.outputs["class_name"])[0].decode()
                seen.append((time.monotonic(), response.model_spec.version.value, name))
            except grpc.RpcError as e:
                failures.append(f"{e.code()}: {e.details()}")
            time.sleep(0.01)

    thread = threading.Thread(target=keep_asking, daemon=True)
    thread.start()
    try:
        # A higher-numbered directory without saved_model.pb must never be loaded.
        (server.base / "7" / "variables").mkdir(parents=True)
        time.sleep(3 * POLL_SECONDS)
        toy_model.push(str(server.base), 2)          # built under .tmp-*, then renamed
        pushed = time.monotonic()
        deadline = pushed + POLL_SECONDS + 60
        while not any(v == 2 for _, v, _ in seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(30)
    assert not failures, failures[:5]
    versions = [v for _, v, _ in seen]
    assert versions and versions[0] == 1 and versions[-1] == 2, versions[-5:]
    switch = versions.index(2)
    assert set(versions[:switch]) == {1} and set(versions[switch:]) == {2}
    assert {n for _, v, n in seen if v == 1} == {"red"}
    assert {n for _, v, n in seen if v == 2} == {"green"}
    delay = seen[switch][0] - pushed
    print(f"version 2 answered {delay:.2f}s after the push ({len(seen)} requests, 0 failed)")
    assert delay < POLL_SECONDS + 30

    status = server.models.GetModelStatus(_status_request(apis, MODEL), timeout=30)
    states = {s.version: s.state for s in status.model_version_status}
    assert states[2] == 30 and states.get(1) != 30 and 7 not in states
    assert "loaded model toy version 2" in server.log.read_text()
    _good_after(server)


def test_sigterm_shuts_down_gracefully(server):
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    log = server.log.read_text()
    assert f"serving model {MODEL} version 1 on 127.0.0.1:{server.port}" in log
    assert "shutting down" in log
