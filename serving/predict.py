"""Resolve, validate and run one PredictRequest against a loaded version.

Errors are `ServingError(grpc.StatusCode, message)`; the message says what is wrong and, for
image inputs, which batch element. Order of checks: model / version / signature (NOT_FOUND),
input keys, dtypes, declared shapes, batch size, total elements and expanded bytes
(INVALID_ARGUMENT; counted from the declared shapes, nothing is allocated before), then each
image's header (`serving.images`: pixels x frames per image and per request, including image
bytes inside serialized tf.Examples), then admission (`serving.admission`: RESOURCE_EXHAUSTED
when busy; a cancelled or expired call stops here), then the concrete signature function. If
the graph still rejects the batch, each element is decoded on its own to name the one at fault.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
from typing import Callable

import grpc
import numpy as np

from serving import flags, images, model_store, protos
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
        what = (f"no version of model {store.name!r} is loaded yet" if version is None else
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


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may cost; all checked before any tensor is built or image decoded."""
    max_batch: int = flags.MAX_BATCH                    # leading dimension of a batched input
    max_image_pixels: int = flags.MAX_IMAGE_PIXELS      # one image: width x height x frames
    max_request_pixels: int = flags.MAX_REQUEST_PIXELS  # sum over every image in the request
    max_elements: int = flags.MAX_TENSOR_ELEMENTS       # sum of the inputs' element counts
    max_bytes: int = flags.MAX_REQUEST_BYTES            # sum of the inputs' expanded sizes


UNLIMITED = Limits(1 << 30, 1 << 62, 1 << 62, 1 << 62, 1 << 62)


@dataclasses.dataclass
class Parsed:
    """A validated request and the decoded pixels (w x h x frames) its images will cost.

    `arrays()` builds the numpy inputs; the server calls it only once the request is admitted
    to run, so a request waiting for admission holds nothing but its own message.
    """
    sig: Signature
    request: object
    limits: Limits
    pixels: int = 0
    images: int = 0
    batch: int = 1

    def arrays(self) -> dict:
        out = {}
        for key in self.sig.inputs:
            try:
                out[key] = protos.to_ndarray(self.request.inputs[key],
                                             max_elements=self.limits.max_elements)
            except ValueError as e:
                raise _bad(f"input '{key}': invalid tensor proto: {e}") from None
        return out


def _check_shapes(sig: Signature, request, limits: Limits) -> int:
    """dtype, declared shape, batch size, element count and expanded bytes of every input;
    returns the batch size (1 for a signature without a batch dimension)."""
    elements = nbytes = 0
    largest_batch = 1
    for key, info in sig.inputs.items():
        proto = request.inputs[key]
        if proto.dtype != info.dtype:
            hint = " (raw encoded image bytes)" if key in IMAGE_INPUT_KEYS else ""
            raise _bad(f"input '{key}' has dtype {protos.dtype_name(proto.dtype)} but signature "
                       f"\"{sig.name}\" expects {protos.dtype_name(info.dtype)}{hint}")
        try:
            shape, n, size = protos.tensor_cost(proto)
        except ValueError as e:
            raise _bad(f"input '{key}': invalid tensor proto: {e}") from None
        if info.shape is not None:
            ok = len(shape) == len(info.shape) and all(
                want < 0 or want == got for want, got in zip(info.shape, shape))
            if not ok:
                raise _bad(f"input '{key}' has shape {_shape_text(shape)} but signature "
                           f"\"{sig.name}\" expects {_shape_text(info.shape)}")
            if info.shape and info.shape[0] < 0:
                batch = shape[0]
                if batch == 0:
                    raise _bad(f"empty batch: input '{key}' has 0 elements; send at least one")
                if batch > limits.max_batch:
                    raise _bad(f"batch of {batch} elements in input '{key}' is larger than the "
                               f"server's maximum batch size of {limits.max_batch}; split it")
                largest_batch = max(largest_batch, batch)
        elements += n
        nbytes += size
        if elements > limits.max_elements:
            raise _bad(f"input '{key}' has shape {_shape_text(shape)}: the request's inputs "
                       f"hold {elements} elements, over the server limit of "
                       f"{limits.max_elements} (--max-tensor-elements)")
        if nbytes > limits.max_bytes:
            raise _bad(f"input '{key}' has shape {_shape_text(shape)}: the request's inputs "
                       f"expand to {nbytes} bytes, over the server limit of {limits.max_bytes} "
                       f"bytes (--max-request-bytes)")
    return largest_batch


def _example_images(data: bytes, example_cls):
    """(feature name, value index, bytes) of every image-looking value in a serialized
    tf.Example; nothing if `data` does not parse as one."""
    try:
        example = example_cls.FromString(data)
    except Exception:  # noqa: BLE001 - not an Example: the graph's parser rejects it
        return
    for name, feature in example.features.feature.items():
        if feature.WhichOneof("kind") != "bytes_list":
            continue
        for j, value in enumerate(feature.bytes_list.value):
            if images.sniff(value):
                yield name, j, value


def _check_images(sig: Signature, request, limits: Limits) -> tuple[int, int]:
    """Header-check every element that can reach an image decoder; (pixels, images).

    `image_bytes` elements must all be images. Any other DT_STRING input is checked where it
    holds image bytes: elements that start like an image, and the image-looking bytes values
    inside elements that are serialized tf.Examples (what `serve_tf_examples` and
    `transform_features` parse and decode). Reads the request proto one value at a time; a
    value broadcast to N elements is checked once and costs N times.
    """
    example_cls = protos.load_apis().example_pb2.Example
    pixels = count = 0

    def add(info: images.ImageInfo, key: str, where: str, times: int) -> None:
        nonlocal pixels, count
        pixels += info.pixels * times
        count += times
        if pixels > limits.max_request_pixels:
            raise _bad(f"input '{key}': {where}: the request's images decode to {pixels} "
                       f"pixels (width x height x frames) so far, over the server limit of "
                       f"{limits.max_request_pixels} per request (--max-request-pixels)")
        if count > 4 * limits.max_batch:
            raise _bad(f"input '{key}': {where}: more than {4 * limits.max_batch} images in "
                       f"one request")

    for key, info in sig.inputs.items():
        if info.dtype != DT_STRING:
            continue
        proto = request.inputs[key]
        _, n, _ = protos.tensor_cost(proto)
        values = proto.string_val
        times = n if len(values) == 1 else 1
        strict = key in IMAGE_INPUT_KEYS
        for i in range(len(values)):
            data = values[i]
            try:
                if strict or images.sniff(data):
                    add(images.check_image(data, i, limits.max_image_pixels), key,
                        f"batch element {i}", times)
                    continue
                for name, j, value in _example_images(data, example_cls):
                    where = f"batch element {i}: tf.Example feature '{name}' value {j}"
                    add(images.check_image(value, i, limits.max_image_pixels, where=where),
                        key, where, times)
            except images.BadImage as e:
                raise _bad(f"input '{key}': {e}") from None
    return pixels, count


def parse_inputs(sig: Signature, request, limits: Limits) -> Parsed:
    """Validate a request against the signature and the limits; nothing is allocated.

    Order: input keys; per input dtype, declared shape, batch size; then the request's total
    element count and expanded bytes (all from the declared shapes); then every image's header
    (pixels x frames, per image and summed over the request).
    """
    sent, expected = set(request.inputs), set(sig.inputs)
    if sent != expected:
        parts = []
        if sent - expected:
            parts.append(f"unknown input key(s) {sorted(sent - expected)}")
        if expected - sent:
            parts.append(f"missing input key(s) {sorted(expected - sent)}")
        raise _bad(f"{'; '.join(parts)}: signature \"{sig.name}\" takes exactly "
                   f"{sorted(expected)}")
    batch = _check_shapes(sig, request, limits)
    pixels, count = _check_images(sig, request, limits)
    return Parsed(sig, request, limits, pixels, count, batch)


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


def _wanted_outputs(sig: Signature, output_filter) -> list[str]:
    wanted = list(output_filter) or list(sig.outputs)
    unknown = [k for k in wanted if k not in sig.outputs]
    if unknown:
        raise _bad(f"output tensor alias not found in signature: {unknown[0]} (signature "
                   f"\"{sig.name}\" has outputs {sorted(sig.outputs)})")
    return wanted


def run(served: ServedVersion, sig: Signature, arrays: dict, output_filter=()) -> dict:
    """Call the concrete signature function; {output key: numpy array}."""
    import tensorflow as tf

    from components.image_ops import tf_error_text
    wanted = _wanted_outputs(sig, output_filter)
    feeds = {k: tf.constant(v) for k, v in arrays.items()}
    try:
        outputs = sig.fn(**feeds)
    except tf.errors.OpError as e:
        code = _grpc_code(e)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            detail = _diagnose(arrays)
            if detail:
                raise _bad(detail) from None
        text = model_store.public_error(Exception(tf_error_text(e)), served.path)
        raise ServingError(code, f"model version {served.version} failed: {text}") from None
    return {k: outputs[k].numpy() for k in wanted}


_REFUSED = {"busy": grpc.StatusCode.RESOURCE_EXHAUSTED, "cancelled": grpc.StatusCode.CANCELLED,
            "deadline": grpc.StatusCode.DEADLINE_EXCEEDED}


def predict(store: ModelStore, request, limits: Limits = Limits(), admission=None,
            alive: Callable[[], bool] = lambda: True,
            time_remaining: Callable[[], float | None] = lambda: None):
    """PredictRequest -> PredictResponse (raises ServingError).

    Everything a request will cost is checked first (`parse_inputs`); then it waits for
    admission (`serving.admission`, if given) and runs only if its caller is still there
    (`alive()`) and its deadline (`time_remaining()`, seconds) has not passed.
    """
    from serving.admission import Refused
    apis = protos.load_apis()
    served = resolve(store, request.model_spec)
    sig = signature_of(served, request.model_spec.signature_name)
    parsed = parse_inputs(sig, request, limits)
    _wanted_outputs(sig, request.output_filter)
    gate = (admission.slot(admission.charge(parsed.pixels, parsed.batch), alive,
                           time_remaining) if admission is not None
            else contextlib.nullcontext())
    try:
        with gate:
            remaining = time_remaining()
            if remaining is not None and remaining <= 0:
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   "the call's deadline passed before the model ran")
            if not alive():
                raise ServingError(grpc.StatusCode.CANCELLED,
                                   "the call was cancelled before the model ran")
            outputs = run(served, sig, parsed.arrays(), request.output_filter)
    except Refused as e:
        raise ServingError(_REFUSED[e.reason], e.message) from None
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
            parsed = parse_inputs(sig, request, UNLIMITED)
            run(served, sig, parsed.arrays(), request.output_filter)
        return
    sig = served.signatures.get(DEFAULT_SIGNATURE)
    if sig is None or set(sig.inputs) != {"image_bytes"}:
        return
    try:
        run(served, sig, {"image_bytes": np.array([_tiny_png()], dtype=object)})
    except ServingError as e:
        print(f"warm-up request for version {served.version} failed: {e.message}", flush=True)
