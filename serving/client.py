"""`graft predict`: classify image files through a TF Serving gRPC endpoint.

One Predict request per image (so one bad image fails alone), model_spec.signature_name
'serving_default', input `image_bytes` = DT_STRING [1] holding the raw file bytes (exactly the
TensorProto tf.make_tensor_proto([data], dtype=tf.string, shape=[1]) builds, built by hand so
TensorFlow is not imported). Works against `graft serve` and the real tensorflow_model_server.

Output per image: the file, then top-k lines '  CLASS_NAME PROBABILITY'; with --json one line
per image: {"file", "predictions": [{"class", "index", "probability"}, ...]} sorted by
probability. Class names come from the signature's `class_names` output (graft models have
it); for a model with only `class_name`, names of other classes are learned from the argmax
of the other images in the same run, and a class never seen prints as '#INDEX' (JSON null).
Results are printed after all requests have finished; failures go to stderr as
'error: FILE: MESSAGE'. Exit status 1 if any failed. `--tls-ca PEM` (or `--tls` for the
system's roots) talks TLS to a `graft serve --tls-cert/--tls-key`.
"""
from __future__ import annotations

import argparse
import json
import sys

from serving import protos

MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def build_request(data: bytes, model: str, version: int | None = None,
                  signature: str = "serving_default"):
    apis = protos.load_apis()
    request = apis.predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["image_bytes"].CopyFrom(protos.make_string_tensor([data]))
    return request


def parse_response(response) -> tuple[list[float], int, str | None, list | None]:
    """(probabilities of the single image, argmax index, argmax class name or None,
    every class's name or None)."""
    outputs = response.outputs
    probs = protos.to_ndarray(outputs["probabilities"]).reshape(-1).tolist()
    if "class_index" in outputs:
        index = int(protos.to_ndarray(outputs["class_index"]).reshape(-1)[0])
    else:
        index = max(range(len(probs)), key=probs.__getitem__)
    name = None
    if "class_name" in outputs:
        raw = protos.to_ndarray(outputs["class_name"]).reshape(-1)[0]
        name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    all_names = None
    if "class_names" in outputs:
        all_names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n)
                     for n in protos.to_ndarray(outputs["class_names"]).reshape(-1)]
        all_names = all_names[:len(probs)]
    return probs, index, name, all_names


def open_channel(server: str, tls: bool = False, ca_file: str | None = None,
                 server_name: str | None = None):
    """A gRPC channel to HOST:PORT; TLS if `tls` or `ca_file` (a PEM CA or self-signed
    certificate to trust instead of the system roots); `server_name` overrides the name the
    certificate is checked against."""
    import grpc
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    if not (tls or ca_file):
        return grpc.insecure_channel(server, options=options)
    root = None
    if ca_file:
        with open(ca_file, "rb") as f:
            root = f.read()
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(server, grpc.ssl_channel_credentials(root_certificates=root),
                               options=options)


def _rpc_message(error) -> str:
    import grpc
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return f"{code.name}: {details}"
    return details or (code.name if code else str(error))


def read_images(paths, results: list):
    """(path, bytes) of each readable file; an unreadable one goes to `results` as
    (path, error message) in its place, so the output keeps the order of `paths`."""
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            results.append((path, e.strerror or str(e)))
            continue
        yield path, data


def main(args: argparse.Namespace) -> int:
    import grpc
    if args.top_k < 1:
        print("error: --top-k must be at least 1", file=sys.stderr)
        return 2
    apis = protos.load_apis()
    try:
        channel = open_channel(args.server, tls=getattr(args, "tls", False),
                               ca_file=getattr(args, "tls_ca", None),
                               server_name=getattr(args, "tls_server_name", None))
    except OSError as e:
        print(f"error: cannot read --tls-ca {args.tls_ca}: {e.strerror or e}", file=sys.stderr)
        return 2
    stub = apis.prediction_service_pb2_grpc.PredictionServiceStub(channel)
    results: list[tuple[str, object]] = []   # (file, (probs, index) | error message)
    names: dict[int, str] = {}
    for path, data in read_images(args.images, results):
        try:
            response = stub.Predict(build_request(data, args.model, args.version),
                                    timeout=args.timeout)
            probs, index, name, all_names = parse_response(response)
        except grpc.RpcError as e:
            results.append((path, _rpc_message(e)))
            continue
        except (ValueError, KeyError, IndexError) as e:
            results.append((path, f"unexpected response: {e}"))
            continue
        if all_names:
            names.update(enumerate(all_names))
        if name is not None:
            names[index] = name
        results.append((path, (probs, index)))
    channel.close()
    return print_results(results, names, args.top_k, args.json)


def print_results(results: list, names: dict, top_k: int, as_json: bool) -> int:
    """Prints [(file, (probabilities, index) | error message)] in the output contract above
    (also `graft predict --tflite`'s); returns the exit status (1 if any failed)."""
    failed = 0
    for path, result in results:
        if isinstance(result, str):
            failed += 1
            print(f"error: {path}: {result}", file=sys.stderr, flush=True)
            continue
        probs, _ = result
        order = sorted(range(len(probs)), key=lambda i: -probs[i])[:top_k]
        if as_json:
            print(json.dumps({"file": path, "predictions": [
                {"class": names.get(i), "index": i, "probability": probs[i]} for i in order]}),
                flush=True)
        else:
            print(path)
            for i in order:
                print(f"  {names.get(i, f'#{i}')} {probs[i]:.6f}")
            sys.stdout.flush()
    return 1 if failed else 0
