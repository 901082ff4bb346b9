"""The two codecs of the wire contract: JSON and msgpack, with the same maps.

In msgpack, a numpy array travels as raw little-endian bytes with its dtype and shape
(as openpi's msgpack-numpy does): ``{"__ndarray__": true, "data": <bin>, "dtype":
"<f4", "shape": [4]}``; numeric dtypes only. Plain lists work too.
"""

from __future__ import annotations

import json
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


def _hook(obj: dict[str, Any]) -> Any:
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
