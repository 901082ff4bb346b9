"""Property-based requests generated from the OpenAPI schema (schemathesis): whatever
the body, path or headers, the server never answers 5xx."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from hw.artifact import save_artifact
from hw.synthetic import random_artifact
from service.app import create_app
from service.settings import Settings

schemathesis = pytest.importorskip("schemathesis")

_MODELS = Path(tempfile.mkdtemp(prefix="s2loop-schema-"))
atexit.register(shutil.rmtree, _MODELS, ignore_errors=True)
save_artifact(random_artifact(seed=1, name="cartpole"), _MODELS / "cartpole.s2l")
save_artifact(
    random_artifact(seed=2, name="acrobot", obs_scale=[1, 1, 1, 1, 12.6, 28.3], actions=3),
    _MODELS / "acrobot.s2l",
)
APP = create_app(Settings(models=_MODELS, reload_token="schema-token", log_json=False))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors(case):
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, case.body, response.text)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["kind"] and error["message"]
