"""Property-based requests generated from the OpenAPI schema (schemathesis): whatever
the body, path or headers, the server never answers 5xx, and every answer (status,
content type, body) conforms to the schema the server publishes."""

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
checks = schemathesis.checks

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
def test_no_server_errors_and_answers_match_the_published_schema(case):
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, case.body, response.text)
    # what the server sends, checked against what it publishes (whether a request the
    # schema allows may still be refused, e.g. an observation of the wrong size for the
    # model, is for the route tests: the schema cannot know a model's sizes)
    case.validate_response(
        response,
        checks=[
            checks.not_a_server_error,
            checks.status_code_conformance,
            checks.content_type_conformance,
            checks.response_headers_conformance,
            checks.response_schema_conformance,
        ],
    )
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["kind"] and error["message"]
