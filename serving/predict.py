"""Resolve, validate and run one PredictRequest against a loaded version.

Errors are `ServingError(grpc.StatusCode, message)`; the message says what is wrong and, for
image inputs, which batch element. Order of checks: model / version / signature (NOT_FOUND),
input keys, dtypes, shapes, batch size (INVALID_ARGUMENT), then each image element's header
(`serving.images`), then the concrete signature function. If the graph still rejects the batch,
each element is decoded on its own to name the one at fault.
"""
from __future__ import annotations

import io

import grpc
import numpy as np

from serving import images, protos
from serving.model_store import ModelStore, ServedVersion, Signature

DEFAULT_SIGNATURE = "serving_default"
IMAGE_INPUT_KEYS = frozenset({"image_bytes"})
DT_STRING = 7


class ServingError(Exception):
    """A request failure with its gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _spec_text(name: str, version: int | None) -> str:
    return f"Latest({name})" if version is None else f"Specific({name}, {version})"


def resolve(store: ModelStore, model_spec) -> ServedVersion:
    """The ServedVersion a ModelSpec asks for, or NOT_FOUND."""
    version = model_spec.version.value if model_spec.HasField("version") else None
    if model_spec.version_label:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"version labels are not configured on this server "
                           f"(got version_label {model_spec.version_label!r})")
    if model_spec.name != store.name:
        raise ServingError(grpc.StatusCode.NOT_FOUND,
                           f"Servable not found for request: {_spec_text(model_spec.name, version)}"
                           f": unknown model {model_spec.name!r} (this server serves "
                           f"{store.name!r})")
    served = store.get(version)
    if served is None:
        available = sorted(store.versions())
        what = (f"no version of model {store.name!r} is loaded yet (none complete under "
                f"{store.base_path})" if version is None else
                f"version {version} of model {store.name!r} is not loaded (available versions: "
                f"{available})")
        raise ServingError(grpc.StatusCode.NOT_FOUND,
                           f"Servable not found for request: {_spec_text(store.name, version)}: "
                           f"{what}")
    return served


def signature_of(served: ServedVersion, name: str) -> Signature:
    name = name or DEFAULT_SIGNATURE
    sig = served.signatures.get(name)
    if sig is None:
        raise ServingError(grpc.StatusCode.NOT_FOUND,
                           f"Serving signature key \"{name}\" not found (model version "
                           f"{served.version} has {sorted(served.signatures)})")
    return sig


def _shape_text(shape) -> str:
    return "[" + ",".join("?" if d < 0 else str(d) for d in shape) + "]" if shape is not None \
        else "<unknown rank>"


def _bad(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def parse_inputs(sig: Signature, request, max_batch: int, max_pixels: int) -> dict:
    """Request inputs -> {key: numpy array}, validated against the signature."""
    sent, expected = set(request.inputs), set(sig.inputs)
    if sent != expected:
        parts = []
        if sent - expected:
            parts.append(f"unknown input key(s) {sorted(sent - expected)}")
        if expected - sent:
            parts.append(f"missing input key(s) {sorted(expected - sent)}")
        raise _bad(f"{'; '.join(parts)}: signature \"{sig.name}\" takes exactly "
                   f"{sorted(expected)}")
    arrays = {}
    for key, info in sig.inputs.items():
        proto = request.inputs[key]
        if proto.dtype != info.dtype:
            hint = " (raw encoded image bytes)" if key in IMAGE_INPUT_KEYS else ""
            raise _bad(f"input '{key}' has dtype {protos.dtype_name(proto.dtype)} but signature "
                       f"\"{sig.name}\" expects {protos.dtype_name(info.dtype)}{hint}")
        try:
            array = protos.to_ndarray(proto)
        except ValueError as e:
            raise _bad(f"input '{key}': invalid tensor proto: {e}") from None
        if info.shape is not None:
            ok = len(array.shape) == len(info.shape) and all(
                want < 0 or want == got for want, got in zip(info.shape, array.shape))
            if not ok:
                raise _bad(f"input '{key}' has shape {_shape_text(array.shape)} but signature "
                           f"\"{sig.name}\" expects {_shape_text(info.shape)}")
            if info.shape and info.shape[0] < 0:
                batch = array.shape[0]
                if batch == 0:
                    raise _bad(f"empty batch: input '{key}' has 0 elements; send at least one")
                if batch > max_batch:
                    raise _bad(f"batch of {batch} elements in input '{key}' is larger than the "
                               f"server's maximum batch size of {max_batch}; split it")
        arrays[key] = array
    for key, array in arrays.items():
        if key in IMAGE_INPUT_KEYS and sig.inputs[key].dtype == DT_STRING:
            for i, data in enumerate(array.ravel()):
                try:
                    images.check_image(data, i, max_pixels)
                except images.BadImage as e:
                    raise _bad(f"input '{key}': {e}") from None
    return arrays


def _grpc_code(tf_error) -> grpc.StatusCode:
    code = getattr(tf_error, "error_code", None)
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status
    return grpc.StatusCode.INTERNAL


def _diagnose(arrays: dict) -> str | None:
    """Decode each image element alone; the first failure's description, or None."""
    import tensorflow as tf

    from components.image_ops import decode_rgb, tf_error_text
    for key, array in arrays.items():
        if key not in IMAGE_INPUT_KEYS or array.dtype != object:
            continue
        for i, data in enumerate(array.ravel()):
            try:
                decode_rgb(data)
            except tf.errors.OpError as e:
                return f"input '{key}': batch element {i}: image could not be decoded " \
                       f"({tf_error_text(e)})"
    return None


def run(served: ServedVersion, sig: Signature, arrays: dict, output_filter=()) -> dict:
    """Call the concrete signature function; {output key: numpy array}."""
    import tensorflow as tf

    from components.image_ops import tf_error_text
    wanted = list(output_filter) or list(sig.outputs)
    unknown = [k for k in wanted if k not in sig.outputs]
    if unknown:
        raise _bad(f"output tensor alias not found in signature: {unknown[0]} (signature "
                   f"\"{sig.name}\" has outputs {sorted(sig.outputs)})")
    feeds = {k: tf.constant(v) for k, v in arrays.items()}
    try:
        outputs = sig.fn(**feeds)
    except tf.errors.OpError as e:
        code = _grpc_code(e)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            detail = _diagnose(arrays)
            if detail:
                raise _bad(detail) from None
        raise ServingError(code, f"model version {served.version} failed: "
                                 f"{tf_error_text(e)}") from None
    return {k: outputs[k].numpy() for k in wanted}


def predict(store: ModelStore, request, max_batch: int, max_pixels: int):
    """PredictRequest -> PredictResponse (raises ServingError)."""
    apis = protos.load_apis()
    served = resolve(store, request.model_spec)
    sig = signature_of(served, request.model_spec.signature_name)
    arrays = parse_inputs(sig, request, max_batch, max_pixels)
    outputs = run(served, sig, arrays, request.output_filter)
    response = apis.predict_pb2.PredictResponse()
    response.model_spec.name = store.name
    response.model_spec.version.value = served.version
    response.model_spec.signature_name = sig.name
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(protos.from_ndarray(value))
    return response


def _tiny_png() -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 96, 64)).save(buf, format="PNG")
    return buf.getvalue()


def warmup(served: ServedVersion, max_records: int = 1000) -> None:
    """Run warm-up requests before a version goes live.

    Replays assets.extra/tf_serving_warmup_requests (TFRecord of PredictionLog, as TF Serving
    does; a failing record fails the load). Without that file, one synthetic 8x8 PNG goes
    through a `serving_default` that takes only `image_bytes`, so the first real request does
    not pay the first-call cost; its failure is only reported.
    """
    import os
    apis = protos.load_apis()
    path = os.path.join(served.path, "assets.extra", "tf_serving_warmup_requests")
    if os.path.isfile(path):
        import tensorflow as tf
        for n, record in enumerate(tf.data.TFRecordDataset(path)):
            if n >= max_records:
                break
            log = apis.prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.WhichOneof("log_type") != "predict_log":
                continue
            request = log.predict_log.request
            sig = signature_of(served, request.model_spec.signature_name)
            arrays = parse_inputs(sig, request, max_batch=1 << 30, max_pixels=1 << 62)
            run(served, sig, arrays, request.output_filter)
        return
    sig = served.signatures.get(DEFAULT_SIGNATURE)
    if sig is None or set(sig.inputs) != {"image_bytes"}:
        return
    try:
        run(served, sig, {"image_bytes": np.array([_tiny_png()], dtype=object)})
    except ServingError as e:
        print(f"warm-up request for version {served.version} failed: {e.message}", flush=True)
