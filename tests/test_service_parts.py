"""The parts of the service, each alone: the breaker, warm-up states, the registry."""

from __future__ import annotations

import pytest

from hw.synthetic import random_artifact
from service.breaker import Breaker
from service.errors import ApiError
from service.registry import PENDING, WARM, ModelEntry, ModelRegistry, WarmState, WarmUp


def test_breaker_skips_the_primary_only_while_a_fallback_can_answer():
    b = Breaker(retry_s=3600.0)
    assert b.lets_primary_try(can_fall_back=True) and not b.is_open and not b.tripped
    b.open("primary timed out")
    assert b.is_open and b.tripped and b.reason == "primary timed out"
    assert not b.lets_primary_try(can_fall_back=True)
    assert b.lets_primary_try(can_fall_back=False)  # nobody else to ask
    b.close()
    assert not b.tripped and b.reason is None and b.lets_primary_try(can_fall_back=True)


def test_an_expired_breaker_lets_the_primary_try_again_and_stays_tripped_until_success():
    b = Breaker(retry_s=0.0)
    b.open("failed")
    assert b.lets_primary_try(can_fall_back=True) and not b.is_open and b.tripped


def test_warm_up_states_read_as_readyz_shows_them():
    assert str(PENDING) == "pending" and str(WARM) == "warm"
    failed = WarmState(WarmUp.FAILED, "load: BackendError: no board")
    assert str(failed) == "failed: load: BackendError: no board"


def test_registry_serves_by_name_and_reloads_only_safe_names(tmp_path):
    reg = ModelRegistry(tmp_path)
    art = random_artifact(seed=1, name="m")
    reg.add(ModelEntry.make(art, tmp_path / "m.s2l", 1e-3), {"primary": PENDING})
    assert reg.entry("m").ticks == art.ticks and reg.path_for("m") == tmp_path / "m.s2l"
    reg.mark("m", "primary", WARM)
    assert reg.report() == {"m": {"primary": "warm"}}
    for name in ("nope", "../etc/passwd"):
        with pytest.raises(ApiError) as err:
            reg.path_for(name)
        assert err.value.status == 404 and err.value.kind == "unknown_model"
    with pytest.raises(ApiError, match="served models: \\['m'\\]"):
        reg.entry("other")
