import io
import json
import zipfile

import numpy as np
import pytest

from hw.artifact import ArtifactError, from_bytes, load_artifact, save_artifact, to_bytes


def _rewrite(data: bytes, name: str, new: bytes) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for item in src.namelist():
            zf.writestr(item, new if item == name else src.read(item))
    return out.getvalue()


def test_round_trip_keeps_every_array_and_field(small_artifact, tmp_path):
    path = save_artifact(small_artifact, tmp_path / "small.s2l")
    back = load_artifact(path)
    assert back.name == "small"
    assert back.encoder == small_artifact.encoder
    assert back.ticks == small_artifact.ticks
    for a, b in zip(small_artifact.layers, back.layers, strict=True):
        assert b.weight.dtype == np.int8
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.i_offset, b.i_offset)
        np.testing.assert_array_equal(a.float_weight, b.float_weight)
        assert a.threshold == b.threshold and a.reset == b.reset
    assert len(back.sha256) == 64


def test_load_by_name_from_models_dir(small_artifact, tmp_path):
    save_artifact(small_artifact, tmp_path / "small.s2l")
    assert load_artifact("small", models_dir=tmp_path).name == "small"
    with pytest.raises(ArtifactError, match="no model artifact"):
        load_artifact("nope", models_dir=tmp_path)


def test_truncated_file_is_rejected(small_artifact):
    data = to_bytes(small_artifact)
    with pytest.raises(ArtifactError, match="truncated|corrupted"):
        from_bytes(data[: len(data) // 2])


def test_flipped_weight_byte_is_rejected_by_sha256(small_artifact):
    data = to_bytes(small_artifact)
    weights = bytearray(zipfile.ZipFile(io.BytesIO(data)).read("weights.npz"))
    weights[len(weights) // 2] ^= 0x01
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        from_bytes(_rewrite(data, "weights.npz", bytes(weights)))


def test_tampered_manifest_threshold_is_rejected(small_artifact):
    data = to_bytes(small_artifact)
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("manifest.json"))
    manifest["layers"][0]["threshold"] = 1.0
    with pytest.raises(ArtifactError, match="manifest digest mismatch"):
        from_bytes(_rewrite(data, "manifest.json", json.dumps(manifest).encode()))


def test_wrong_format_version_is_rejected(small_artifact):
    data = to_bytes(small_artifact)
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("manifest.json"))
    manifest["format_version"] = 99
    with pytest.raises(ArtifactError, match="unsupported format_version 99"):
        from_bytes(_rewrite(data, "manifest.json", json.dumps(manifest).encode()))


def test_not_a_zip_and_garbage_manifest_are_rejected(small_artifact):
    with pytest.raises(ArtifactError, match="not a zip"):
        from_bytes(b"hello world")
    data = to_bytes(small_artifact)
    with pytest.raises(ArtifactError, match="not valid JSON"):
        from_bytes(_rewrite(data, "manifest.json", b"{not json"))


def test_pickled_weights_are_never_loaded(small_artifact):
    # an npz holding an object array needs pickle; loading must refuse, not execute it
    data = to_bytes(small_artifact)
    buf = io.BytesIO()
    np.savez(buf, obs_offset=np.array([object()], dtype=object))
    evil = buf.getvalue()
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("manifest.json"))
    import hashlib

    from hw.artifact import _manifest_digest

    manifest["weights_sha256"] = hashlib.sha256(evil).hexdigest()
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    tampered = _rewrite(
        _rewrite(data, "weights.npz", evil), "manifest.json", json.dumps(manifest).encode()
    )
    with pytest.raises(ArtifactError, match="cannot be read"):
        from_bytes(tampered)


def test_inconsistent_shapes_are_rejected(small_artifact):
    import dataclasses

    bad_layer = dataclasses.replace(
        small_artifact.layers[1], weight=small_artifact.layers[1].weight[:, :10]
    )
    bad = dataclasses.replace(
        small_artifact, layers=(small_artifact.layers[0], bad_layer, small_artifact.layers[2])
    )
    with pytest.raises(ArtifactError, match="fan-in 10, expected 64"):
        to_bytes(bad)
