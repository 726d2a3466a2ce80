"""TF Serving API protos without the cost of `import tensorflow`, and TensorProto <-> numpy.

`tensorflow_serving.apis` imports `tensorflow.core.framework.*_pb2`, which would execute the
full `tensorflow/__init__.py` (seconds). When TensorFlow is not imported yet, `load_apis` puts a
bare namespace module named `tensorflow` in `sys.modules` just long enough to import the
generated proto modules, then removes it again, so a later real `import tensorflow` still works
(the proto submodules it finds in `sys.modules` are the same generated code it would import).

The tensor conversions follow TF's TensorProto rules: values in the typed `*_val` field (one
value broadcast to the whole shape) or packed little-endian in `tensor_content`. Outputs are
written in the typed fields, as TF Serving's Predict does by default. `tensor_cost` gives a
proto's element count and expanded size from the declared shape and the values actually sent,
without materialising anything, so a server can refuse a tiny proto that declares a huge
shape before `to_ndarray` would broadcast it (which also refuses past its `max_elements`).
"""
from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np

_APIS = None

# DataType enum value -> (numpy dtype, TensorProto field holding the values).
_DT = {
    1: (np.float32, "float_val"),      # DT_FLOAT
    2: (np.float64, "double_val"),     # DT_DOUBLE
    3: (np.int32, "int_val"),          # DT_INT32
    4: (np.uint8, "int_val"),          # DT_UINT8
    5: (np.int16, "int_val"),          # DT_INT16
    6: (np.int8, "int_val"),           # DT_INT8
    7: (object, "string_val"),         # DT_STRING
    9: (np.int64, "int64_val"),        # DT_INT64
    10: (np.bool_, "bool_val"),        # DT_BOOL
    17: (np.uint16, "int_val"),        # DT_UINT16
    19: (np.float16, "half_val"),      # DT_HALF (values are the uint16 bit patterns)
    22: (np.uint32, "uint32_val"),     # DT_UINT32
    23: (np.uint64, "uint64_val"),     # DT_UINT64
}
_NP_TO_DT = {np.dtype(t): dt for dt, (t, _) in _DT.items() if t is not object}


def load_apis() -> types.SimpleNamespace:
    """Import the TF Serving gRPC/proto modules (cheaply if TensorFlow is not loaded yet)."""
    global _APIS
    if _APIS is not None:
        return _APIS
    stub = None
    if "tensorflow" not in sys.modules:
        spec = importlib.util.find_spec("tensorflow")
        if spec is not None and spec.submodule_search_locations:
            stub = types.ModuleType("tensorflow")
            stub.__path__ = list(spec.submodule_search_locations)
            sys.modules["tensorflow"] = stub
    try:
        from tensorflow.core.example import example_pb2
        from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorflow.core.protobuf import meta_graph_pb2
        from tensorflow_serving.apis import (
            get_model_metadata_pb2,
            get_model_status_pb2,
            model_service_pb2_grpc,
            predict_pb2,
            prediction_log_pb2,
            prediction_service_pb2_grpc,
        )
    finally:
        if stub is not None and sys.modules.get("tensorflow") is stub:
            del sys.modules["tensorflow"]
    _APIS = types.SimpleNamespace(
        tensor_pb2=tensor_pb2, tensor_shape_pb2=tensor_shape_pb2, types_pb2=types_pb2,
        meta_graph_pb2=meta_graph_pb2, predict_pb2=predict_pb2, example_pb2=example_pb2,
        get_model_metadata_pb2=get_model_metadata_pb2,
        get_model_status_pb2=get_model_status_pb2, prediction_log_pb2=prediction_log_pb2,
        prediction_service_pb2_grpc=prediction_service_pb2_grpc,
        model_service_pb2_grpc=model_service_pb2_grpc)
    return _APIS


def dtype_name(dtype_enum: int) -> str:
    """'DT_FLOAT' for 1, etc."""
    try:
        return load_apis().types_pb2.DataType.Name(dtype_enum)
    except ValueError:
        return f"DataType({dtype_enum})"


def shape_of(proto) -> list[int] | None:
    """The dims of a TensorProto's shape (-1 for unknown), None if the rank is unknown."""
    if proto.tensor_shape.unknown_rank:
        return None
    return [d.size for d in proto.tensor_shape.dim]


def make_string_tensor(values: list[bytes]):
    """A DT_STRING [len(values)] TensorProto, what tf.make_tensor_proto(values, tf.string) gives."""
    apis = load_apis()
    proto = apis.tensor_pb2.TensorProto(dtype=7)
    proto.tensor_shape.dim.add().size = len(values)
    proto.string_val.extend(values)
    return proto


def tensor_cost(proto) -> tuple[list[int], int, int]:
    """(shape, element count, bytes once expanded) of a TensorProto, from its declared shape.

    Counted with Python integers (no overflow) and without building any array: a DT_STRING
    value broadcast to N elements costs N times its length. ValueError if the dtype is not
    supported or the shape is not fully defined.
    """
    if proto.dtype not in _DT:
        raise ValueError(f"unsupported dtype {dtype_name(proto.dtype)}")
    np_type, field = _DT[proto.dtype]
    shape = shape_of(proto)
    if shape is None or any(d < 0 for d in shape):
        raise ValueError("tensor shape must be fully defined")
    n = 1
    for d in shape:
        n *= d
    if proto.dtype == 7:
        values = proto.string_val
        count = len(values)
        sent = sum(len(v) for v in values)
        nbytes = sent if count != 1 else n * sent
    else:
        itemsize = np.dtype(np_type).itemsize
        nbytes = n * itemsize
        if proto.tensor_content:
            count = len(proto.tensor_content) // itemsize
            if count != n or len(proto.tensor_content) % itemsize:
                raise ValueError(f"tensor_content holds {len(proto.tensor_content)} bytes but "
                                 f"shape {shape} needs {nbytes}")
            return shape, n, nbytes
        count = len(getattr(proto, field))
        if count == 0:
            return shape, n, nbytes              # all zeros
    if count != n and not (count == 1 and n > 1):
        raise ValueError(f"tensor proto has {count} values but shape {shape} needs {n}")
    return shape, n, nbytes


def to_ndarray(proto, max_elements: int = 1 << 26) -> np.ndarray:
    """TensorProto -> numpy array; ValueError with a readable reason if it is malformed or
    declares more than `max_elements` elements (checked before anything is allocated)."""
    shape, n, _ = tensor_cost(proto)
    np_type, field = _DT[proto.dtype]
    if n > max_elements:
        raise ValueError(f"shape {shape} has {n} elements, over the limit of {max_elements}")
    if proto.tensor_content and proto.dtype != 7:
        flat = np.frombuffer(proto.tensor_content, dtype=np.dtype(np_type).newbyteorder("<"))
        if flat.size != n:
            raise ValueError(f"tensor_content holds {flat.size} values but shape {shape} "
                             f"needs {n}")
        return flat.astype(np_type).reshape(shape)
    values = getattr(proto, field)
    if proto.dtype == 7:
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    elif proto.dtype == 19:
        flat = np.asarray(values, dtype=np.uint16).view(np.float16)
    else:
        flat = np.asarray(values, dtype=np_type)
    if flat.size == n:
        return flat.reshape(shape)
    if flat.size == 1 and n > 1:
        return np.full(shape, flat[0], dtype=flat.dtype)
    if flat.size == 0 and n > 0 and proto.dtype != 7:
        return np.zeros(shape, dtype=np_type)
    raise ValueError(f"tensor proto has {flat.size} values but shape {shape} needs {n}")


def from_ndarray(array) -> object:
    """numpy array (or tf.Tensor .numpy()) -> TensorProto with values in the typed field."""
    apis = load_apis()
    array = np.asarray(array)
    proto = apis.tensor_pb2.TensorProto()
    for d in array.shape:
        proto.tensor_shape.dim.add().size = int(d)
    flat = array.ravel()
    if array.dtype == object or array.dtype.kind in "SU":
        proto.dtype = 7
        proto.string_val.extend(v.encode() if isinstance(v, str) else bytes(v) for v in flat)
        return proto
    dt = _NP_TO_DT.get(array.dtype)
    if dt is None:
        raise ValueError(f"cannot convert numpy dtype {array.dtype} to a TensorProto")
    proto.dtype = dt
    field = _DT[dt][1]
    if dt == 19:
        getattr(proto, field).extend(flat.view(np.uint16).tolist())
    else:
        getattr(proto, field).extend(flat.tolist())
    return proto
