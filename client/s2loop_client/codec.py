"""The two codecs of the wire contract: JSON and msgpack, with the same maps.

In msgpack, a numpy array travels as raw little-endian bytes with its dtype and shape
(as openpi's msgpack-numpy does): ``{"__ndarray__": true, "data": <bin>, "dtype":
"<f4", "shape": [4]}``; numeric dtypes only. Plain lists work too.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import msgpack
import numpy as np

from s2loop_client.contract import CODECS

NDARRAY = "__ndarray__"
#: dtypes an array may travel as (little-endian numbers)
DTYPES = frozenset({"<f4", "<f8", "<i4", "<i8", "<u4", "|u1", "|i1", "<f2", "<i2", "<u2"})


class DecodeError(ValueError):
    """Bytes that are not a message of the codec (malformed JSON or msgpack)."""


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        if arr.dtype.str not in DTYPES:
            arr = arr.astype("<f4") if arr.dtype.kind == "f" else arr.astype("<i8")
        return {NDARRAY: True, "data": arr.tobytes(), "dtype": arr.dtype.str, "shape": arr.shape}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot pack {type(obj).__name__}")


pack_default = _default  # msgpack's ``default``: numpy arrays and scalars (for a Packer)


def _hook(obj: dict[str, Any]) -> Any:
    """``obj`` as an array when it is an ndarray map, else as it is; DecodeError when
    it claims to be one and is not."""
    if obj.get(NDARRAY) is True:
        dtype, shape, data = obj.get("dtype"), obj.get("shape"), obj.get("data")
        if dtype not in DTYPES or not isinstance(data, bytes) or not isinstance(shape, list):
            raise DecodeError("an ndarray needs a numeric little-endian dtype, bytes and a shape")
        try:
            return np.frombuffer(data, dtype=dtype).reshape(shape)
        except (ValueError, TypeError) as exc:
            raise DecodeError(f"ndarray data does not fit its shape: {exc}") from None
    return obj


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, object_hook=_hook, raw=False, strict_map_key=True)
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise DecodeError(f"not valid msgpack: {exc}") from None


# array dtypes a little-endian host can read as lists without numpy (memoryview formats)
_NATIVE = {"<f4": "f", "<f8": "d", "<i4": "i", "<i8": "q"} if sys.byteorder == "little" else {}


def _as_list(obj: dict[str, Any]) -> list:
    """An ndarray map as (nested) lists, through a memoryview where it can."""
    fmt, data, shape = _NATIVE.get(obj.get("dtype")), obj.get("data"), obj.get("shape")  # type: ignore[arg-type]
    if fmt and type(data) is bytes and type(shape) is list and shape:
        try:
            return memoryview(data).cast("B").cast(fmt, shape).tolist()
        except (TypeError, ValueError):
            pass  # the general path below says what is wrong
    return _hook(obj).tolist()


_unpackb = msgpack.unpackb  # called with no keywords: parsing them costs a fifth of a call


def unpack_request(data: bytes) -> Any:
    """A request message with its top-level ndarray maps as plain (nested) lists: what a
    server validates. Arrays deeper down are not looked for (requests carry none), which
    spares a Python call per map."""
    try:
        obj = _unpackb(data)  # msgpack >= 1.0's defaults: raw=False, strict_map_key=True
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise DecodeError(f"not valid msgpack: {exc}") from None
    if isinstance(obj, dict):
        for key, value in obj.items():
            if type(value) is dict and value.get(NDARRAY) is True:
                obj[key] = _as_list(value)
    return obj


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic):
        return obj.tolist()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def dumps(obj: Any, codec: str) -> bytes:
    if codec == "msgpack":
        return pack(obj)
    return json.dumps(obj, default=_plain, separators=(",", ":"), allow_nan=False).encode()


def loads(data: bytes | str, codec: str) -> Any:
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    if codec == "msgpack":
        return unpack(data if isinstance(data, bytes) else data.encode())
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not valid JSON: {exc}") from None
