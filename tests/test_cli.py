"""Command lines generated from typed configs: each option comes from its field."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

pytest.importorskip("tyro", reason="the learning commands parse with tyro (train extra)")

from agent.cli import EvalArgs
from s2loop.cli import app


def test_eval_options_are_the_fields_of_eval_args():
    result = CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for f in dataclasses.fields(EvalArgs):
        if f.name != "model":  # positional
            assert f"--{f.name}" in result.output, f.name
    assert "emulator,torch,float" in result.output  # the backend is a Literal


def test_eval_refuses_an_unknown_backend_before_loading_anything():
    result = CliRunner().invoke(app, ["eval", "cartpole", "--backend", "gpu"])
    assert result.exit_code == 2
    assert "gpu" in result.output
