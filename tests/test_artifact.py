import dataclasses
import io
import json
import zipfile

import numpy as np
import pytest

from hw.artifact import ArtifactError, Encoder, from_bytes, load_artifact, save_artifact, to_bytes
from hw.synthetic import random_artifact


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


def test_encoder_copies_draw_independent_spikes_at_the_same_rate():
    """copies=k: every channel k times side by side, each with its own Poisson draws;
    the artifact round-trips the setting and runs on the emulator."""
    from hw.emulator import EmulatorBackend
    from hw.encoding import encode, intensities

    art = random_artifact(seed=2, name="cp", encoder=Encoder(kind="poisson", bins=5))
    enc = dataclasses.replace(art.encoder, copies=3)
    z = np.array([[0.3, -0.7, 0.0, 1.0]], np.float32)
    p1, p3 = intensities(art.encoder, z), intensities(enc, z)
    assert p3.shape[1] == 3 * p1.shape[1]
    np.testing.assert_array_equal(p3.reshape(1, -1, 3), np.repeat(p1[:, :, None], 3, axis=2))
    layers = list(art.layers)
    w0 = np.repeat(layers[0].weight, 3, axis=1)  # the first projection hears every copy
    layers[0] = dataclasses.replace(layers[0], weight=w0, float_weight=None)
    copied = dataclasses.replace(art, encoder=enc, layers=tuple(layers))
    copied.validate()
    again = from_bytes(to_bytes(copied))
    assert again.encoder.copies == 3 and again.input_size == 3 * art.input_size
    obs = np.full((2000, art.observation_size), 0.05, np.float32)
    raster = encode(again, obs, seeds=np.arange(2000))
    per_copy = raster.reshape(2000, enc.input_ticks, -1, 3).mean(axis=(0, 1))
    np.testing.assert_allclose(per_copy[:, 0], per_copy[:, 1], atol=0.02)
    # independent draws: the copies of one channel do not fire together every time
    busy = per_copy[:, 0] > 0.2
    r = raster.reshape(2000, enc.input_ticks, -1, 3)[:, :, busy]
    assert (r[..., 0] != r[..., 1]).mean() > 0.1
    with EmulatorBackend() as emu:
        emu.load(again)
        assert emu.infer("cp", obs[:4], np.arange(4)).q_values.shape == (4, len(art.action_names))
