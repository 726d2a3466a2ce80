"""`graft serve`: a development server speaking TF Serving's gRPC API for pushed models.

Implements `tensorflow.serving.PredictionService/Predict`, `.../GetModelMetadata` and
`tensorflow.serving.ModelService/GetModelStatus` over the versions under --model-base-path
(see `serving.model_store` for the version policy and hot swap, `serving.predict` for request
validation and its limits, `serving.admission` for admission control). Requests run
concurrently on a thread pool, each calling the loaded version's concrete signature function
(no graph building per request). Binds 127.0.0.1 by default; with --tls-cert/--tls-key the
port speaks TLS only.

Every request's cost is bounded before any work is done (`serving.flags` has the flags and
their defaults): message size (gRPC refuses larger ones with RESOURCE_EXHAUSTED), element
count and expanded bytes from the declared shapes, decoded pixels x frames per image and per
request, at most --max-concurrent-requests calls in the server (more get RESOURCE_EXHAUSTED
from gRPC at once), at most --max-concurrent-runs of them running the model within a pixel
budget (the others wait up to --queue-timeout, then RESOURCE_EXHAUSTED), and a call that was
cancelled or whose deadline passed is dropped before the model runs. Failures the client did
not cause are INTERNAL with an incident number; the details go to the server log only.

Knob without a CLI flag (environment): GRAFT_SERVE_NUM_VERSIONS (how many of the newest
versions stay loaded, default 1 like TF Serving).

With --tf-serving the real `tensorflow_model_server` is exec'd instead (same model directory;
note it binds all interfaces and also serves REST on 8501).
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import itertools  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from concurrent import futures  # noqa: E402

import grpc  # noqa: E402

from pipeline import console  # noqa: E402
from serving import admission, flags, predict as predict_lib, protos  # noqa: E402
from serving.model_store import ModelStore  # noqa: E402

MAX_SEND_BYTES = 256 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """The per-request limits plus the server-wide admission settings."""
    request: predict_lib.Limits = predict_lib.Limits()
    max_concurrent_requests: int = flags.MAX_CONCURRENT_REQUESTS
    max_concurrent_runs: int = flags.MAX_CONCURRENT_RUNS
    max_pixels_in_flight: int = flags.MAX_PIXELS_IN_FLIGHT
    queue_timeout: float = flags.QUEUE_TIMEOUT
    pixels_per_element: int = flags.PIXELS_PER_ELEMENT


DEFAULTS = ServerLimits()


def limits_from_args(args: argparse.Namespace) -> ServerLimits:
    request = predict_lib.Limits(
        max_batch=args.max_batch, max_image_pixels=args.max_image_pixels,
        max_request_pixels=args.max_request_pixels, max_elements=args.max_tensor_elements,
        max_bytes=args.max_request_bytes)
    return ServerLimits(request, args.max_concurrent_requests, args.max_concurrent_runs,
                        args.max_pixels_in_flight, args.queue_timeout, args.pixels_per_element)


def _log(message: str) -> None:
    """A line of the server's own: the terminal (pipeline/console.py), not the log file."""
    console.say(message)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


_incidents = itertools.count(1)
_NOT_RUN = (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED)


def _internal(context, what: str):
    """INTERNAL with an incident number; the exception itself goes to the server log only."""
    incident = next(_incidents)
    _log(f"incident {incident}: {what} failed:\n{traceback.format_exc().rstrip()}")
    context.abort(grpc.StatusCode.INTERNAL,
                  f"internal server error (incident {incident}); the server log has the details")


class _Handlers:
    """The servicer methods; subclassed below into the two generated servicer bases."""

    def __init__(self, store: ModelStore, limits: ServerLimits):
        self.store, self.limits = store, limits
        self.admission = admission.Admission(
            limits.max_concurrent_runs, limits.max_pixels_in_flight, limits.queue_timeout,
            limits.pixels_per_element)

    @staticmethod
    def _abort(context, error: predict_lib.ServingError):
        context.abort(error.code, error.message)

    def Predict(self, request, context):
        try:
            return predict_lib.predict(self.store, request, self.limits.request, self.admission,
                                       alive=context.is_active,
                                       time_remaining=context.time_remaining)
        except predict_lib.ServingError as e:
            if e.code in _NOT_RUN:
                _log(f"Predict not run ({e.code.name}): {e.message}")
            self._abort(context, e)
        except Exception:  # noqa: BLE001 - a server bug must not look like bad input
            _internal(context, "Predict")

    def GetModelMetadata(self, request, context):
        try:
            return self._metadata(request)
        except predict_lib.ServingError as e:
            self._abort(context, e)
        except Exception:  # noqa: BLE001 - never a raw exception text to the client
            _internal(context, "GetModelMetadata")

    def GetModelStatus(self, request, context):
        try:
            return self._status(request)
        except predict_lib.ServingError as e:
            self._abort(context, e)
        except Exception:  # noqa: BLE001 - never a raw exception text to the client
            _internal(context, "GetModelStatus")

    def _metadata(self, request):
        apis = protos.load_apis()
        served = predict_lib.resolve(self.store, request.model_spec)
        fields = list(request.metadata_field)
        if not fields:
            raise predict_lib.ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "GetModelMetadataRequest must specify at least one metadata_field")
        for field in fields:
            if field != "signature_def":
                raise predict_lib.ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Metadata field {field} is not supported (only signature_def)")
        response = apis.get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.store.name
        response.model_spec.version.value = served.version
        sig_map = apis.get_model_metadata_pb2.SignatureDefMap()
        for name, sig_def in served.signature_defs.items():
            sig_map.signature_def[name].CopyFrom(sig_def)
        response.metadata["signature_def"].Pack(sig_map)
        return response

    def _status(self, request):
        apis = protos.load_apis()
        status_pb2 = apis.get_model_status_pb2
        spec = request.model_spec

        def not_found(message: str) -> predict_lib.ServingError:
            return predict_lib.ServingError(grpc.StatusCode.NOT_FOUND, message)

        if spec.name != self.store.name:
            raise not_found(f"Could not find any versions of model {spec.name} "
                            f"(this server serves {self.store.name!r})")
        states = self.store.states()
        if spec.HasField("version"):
            if spec.version.value not in states:
                raise not_found(f"Could not find version {spec.version.value} of model "
                                f"{spec.name} (known versions: {sorted(states)})")
            states = {spec.version.value: states[spec.version.value]}
        if not states:
            raise not_found(f"Could not find any versions of model {spec.name}")
        response = status_pb2.GetModelStatusResponse()
        for version in sorted(states, reverse=True):
            state, error = states[version]
            status = response.model_version_status.add()
            status.version = version
            status.state = status_pb2.ModelVersionStatus.State.Value(state)
            if error:
                status.status.error_code = 13  # INTERNAL (tensorflow.error.Code)
                status.status.error_message = error
        return response


def build_server(store: ModelStore, host: str, port: int, limits: ServerLimits = DEFAULTS,
                 tls: tuple[bytes, bytes] | None = None):
    """A started-not grpc.Server with both services; returns (server, bound port).

    `tls` is (PEM private key, PEM certificate chain): the port then speaks TLS only.
    """
    apis = protos.load_apis()
    handlers = _Handlers(store, limits)

    class PredictionService(apis.prediction_service_pb2_grpc.PredictionServiceServicer):
        Predict = staticmethod(handlers.Predict)
        GetModelMetadata = staticmethod(handlers.GetModelMetadata)

    class ModelService(apis.model_service_pb2_grpc.ModelServiceServicer):
        GetModelStatus = staticmethod(handlers.GetModelStatus)

    options = [("grpc.max_receive_message_length", limits.request.max_bytes),
               ("grpc.max_send_message_length", MAX_SEND_BYTES)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=limits.max_concurrent_requests,
                                                    thread_name_prefix="grpc"),
                         options=options,
                         maximum_concurrent_rpcs=limits.max_concurrent_requests)
    apis.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(), server)
    apis.model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if tls is not None:
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([tls]))
    else:
        bound = server.add_insecure_port(address)
    if not bound:
        raise RuntimeError(f"could not bind {address}")
    return server, bound


def write_models_config(path: str, name: str, base_path: str) -> None:
    """A TF Serving ModelServerConfig (text proto) with one model."""
    with open(path, "w") as f:
        f.write("model_config_list {\n  config {\n"
                f"    name: \"{name}\"\n    base_path: \"{os.path.abspath(base_path)}\"\n"
                "    model_platform: \"tensorflow\"\n  }\n}\n")


def exec_tf_serving(args: argparse.Namespace) -> int:
    binary = shutil.which("tensorflow_model_server")
    if binary is None:
        print("error: --tf-serving needs tensorflow_model_server on PATH (install the "
              "tensorflow-model-server package or use the tensorflow/serving image); without "
              "--tf-serving, graft serves with its own development server", file=sys.stderr)
        return 2
    config = os.path.join(tempfile.mkdtemp(prefix="graft-serving-"), "models.config")
    write_models_config(config, args.model_name, args.model_base_path)
    argv = [binary, f"--port={args.port}", "--rest_api_port=8501",
            f"--model_config_file={config}",
            f"--file_system_poll_wait_seconds={max(1, round(args.poll_seconds))}"]
    print(f"exec {' '.join(argv)} (tensorflow_model_server binds all interfaces; "
          f"--host is ignored)", flush=True)
    os.execvp(binary, argv)
    return 2  # not reached


def _check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the limit and TLS flags, or None."""
    for name in ("max_batch", "max_image_pixels", "max_request_pixels", "max_pixels_in_flight",
                 "max_request_bytes", "max_tensor_elements", "max_concurrent_requests",
                 "max_concurrent_runs"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1"
    if args.pixels_per_element < 0:
        return "--pixels-per-element must not be negative"
    if args.queue_timeout < 0:
        return "--queue-timeout must not be negative"
    if bool(args.tls_cert) != bool(args.tls_key):
        return "--tls-cert and --tls-key go together"
    return None


def main(args: argparse.Namespace) -> int:
    if args.tf_serving:
        if args.tls_cert:
            console.error("--tls-cert/--tls-key are for graft's own server; give "
                          "tensorflow_model_server its --ssl_config_file instead")
            return 2
        return exec_tf_serving(args)
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = None   # --max-image-pixels is checked on the header instead

    problem = _check_args(args)
    if problem:
        console.error(problem)
        return 2
    if not args.tls_cert and args.host not in ("127.0.0.1", "localhost", "::1"):
        _log(f"warning: serving plaintext on {args.host}; anyone who can reach the port can "
             f"read and send requests (give --tls-cert/--tls-key)")
    tls = None
    if args.tls_cert:
        try:
            with open(args.tls_key, "rb") as f:
                key = f.read()
            with open(args.tls_cert, "rb") as f:
                tls = (key, f.read())
        except OSError as e:
            console.error(f"cannot read the TLS key or certificate: {e}")
            return 2
    limits = limits_from_args(args)
    admission.limit_malloc_arenas()
    import tensorflow  # noqa: F401  (before the API protos, so they bind to the real package)

    store = ModelStore(args.model_name, args.model_base_path,
                       num_versions=_env_int("GRAFT_SERVE_NUM_VERSIONS", 1),
                       warmup=predict_lib.warmup, log=_log)
    if not os.path.isdir(store.base_path):
        _log(f"warning: {store.base_path} does not exist yet; waiting for versions to appear")
    store.poll()
    try:
        server, port = build_server(store, args.host, args.port, limits, tls)
    except RuntimeError as e:
        console.error(str(e))
        return 1

    stop = threading.Event()
    received = []

    def on_signal(signum, _frame):
        received.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    store.start_polling(args.poll_seconds)
    current = store.get()
    version = current.version if current else "none (waiting for a version)"
    _log(f"serving model {args.model_name} version {version} on {args.host}:{port}"
         f"{' (TLS)' if tls else ''}")
    while not stop.wait(1.0):
        pass
    _log(f"received {received[0] if received else 'stop'}, shutting down")
    store.stop()
    server.stop(grace=5).wait()
    return 0
