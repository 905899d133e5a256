"""The TF Serving Predict API: message definitions (.proto, written here with TensorFlow's package
names and field numbers) and their generated modules, plus the two conversions every client needs.

``make_tensor_proto`` / ``make_ndarray`` do for numeric numpy arrays what ``tf.make_tensor_proto`` /
``tf.make_ndarray`` do, so a client does not need TensorFlow installed. Regenerate the ``_pb2``
modules with ``client/tfserving/generate.sh``.

Caveat: the messages register under their real names (``tensorflow.TensorProto``...); importing
these modules and TensorFlow's own into one process makes protobuf refuse the duplicate names.
"""

from __future__ import annotations

import numpy as np

from . import model_pb2, predict_pb2, prediction_service_pb2_grpc, tensor_pb2, tensor_shape_pb2, types_pb2

__all__ = [
    "PREDICT_METHOD",
    "make_ndarray",
    "make_tensor_proto",
    "model_pb2",
    "predict_pb2",
    "prediction_service_pb2_grpc",
    "tensor_pb2",
    "tensor_shape_pb2",
    "types_pb2",
]

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"

_NP_TO_DT: dict[np.dtype, int] = {
    np.dtype(np.float32): types_pb2.DT_FLOAT,
    np.dtype(np.float64): types_pb2.DT_DOUBLE,
    np.dtype(np.int32): types_pb2.DT_INT32,
    np.dtype(np.uint8): types_pb2.DT_UINT8,
    np.dtype(np.int16): types_pb2.DT_INT16,
    np.dtype(np.int8): types_pb2.DT_INT8,
    np.dtype(np.int64): types_pb2.DT_INT64,
    np.dtype(np.bool_): types_pb2.DT_BOOL,
    np.dtype(np.uint16): types_pb2.DT_UINT16,
    np.dtype(np.float16): types_pb2.DT_HALF,
    np.dtype(np.uint32): types_pb2.DT_UINT32,
    np.dtype(np.uint64): types_pb2.DT_UINT64,
}
_DT_TO_NP = {v: k for k, v in _NP_TO_DT.items()}
#: the repeated *_val field TensorFlow uses for each type when tensor_content is empty
_VAL_FIELD = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
}


def make_tensor_proto(array: np.ndarray | list | float | int) -> tensor_pb2.TensorProto:
    """A numeric array as a TensorProto with ``tensor_content`` (little-endian row-major bytes)."""
    arr = np.asarray(array)
    if arr.dtype not in _NP_TO_DT:
        raise ValueError(f"dtype {arr.dtype} has no TensorFlow DataType here (numeric types only)")
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in arr.shape])
    content = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    return tensor_pb2.TensorProto(dtype=_NP_TO_DT[arr.dtype], tensor_shape=shape, tensor_content=content)


def make_ndarray(tensor: tensor_pb2.TensorProto) -> np.ndarray:
    """A TensorProto (``tensor_content`` or the typed ``*_val`` list, a single value broadcast) as numpy."""
    if tensor.dtype not in _DT_TO_NP:
        raise ValueError(f"TensorProto dtype {types_pb2.DataType.Name(tensor.dtype)} is not a supported numeric type")
    dtype = _DT_TO_NP[tensor.dtype]
    shape = tuple(d.size for d in tensor.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise ValueError(f"TensorProto shape {shape} is not fully defined")
    count = int(np.prod(shape, dtype=np.int64))
    if tensor.tensor_content:
        arr = np.frombuffer(tensor.tensor_content, dtype=dtype.newbyteorder("<"))
        if arr.size != count:
            raise ValueError(f"tensor_content holds {arr.size} values, shape {shape} needs {count}")
        return arr.astype(dtype).reshape(shape)
    values = getattr(tensor, _VAL_FIELD[tensor.dtype])
    arr = np.asarray(values, dtype=np.uint16).view(np.float16) if tensor.dtype == types_pb2.DT_HALF else np.asarray(values, dtype=dtype)
    if arr.size == count:
        return arr.reshape(shape)
    if arr.size == 1 or (arr.size == 0 and count == 0):
        return np.full(shape, arr[0] if arr.size else 0, dtype=dtype)
    raise ValueError(f"{_VAL_FIELD[tensor.dtype]} holds {arr.size} values, shape {shape} needs {count}")
