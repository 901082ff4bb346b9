"""Command lines generated from typed configs: each option comes from its field."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

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


GENERATED = [
    (["bench", "emulator"], "bench.emulator:EmulatorBenchConfig"),
    (["bench", "suite"], "bench.suite:SuiteConfig"),
    (["bench", "all"], "bench.suite:SuiteConfig"),
    (["bench", "record"], "bench.record:RecordBenchConfig"),
    (["bench", "trace"], "bench.trace:TraceBenchConfig"),
    (["bench", "fleet"], "bench.fleet:FleetConfig"),
    (["bench", "training"], "bench.training:TrainingBenchConfig"),
    (["bench", "recipes"], "bench.recipes:RecipesConfig"),
    (["bench", "tcp-floor"], "bench.tcp_floor:TcpFloorConfig"),
    (["model-card"], "agent.cli:ModelCardArgs"),
    (["ship"], "agent.cli:ShipArgs"),
    (["emulate"], "hw.options:EmulateOptions"),
    (["make-random-model"], "hw.options:RandomModelOptions"),
    (["map"], "hw.options:MapOptions"),
    (["infer"], "hw.options:InferOptions"),
    (["export-nir"], "agent.nir_cli:ExportNirOptions"),
    (["replay"], "service.cli:ReplayOptions"),
    (["demo"], "clients.demo:DemoConfig"),
    (["sweep"], "agent.sweep:SweepConfig"),
]


def _config_type(spec: str) -> type:
    import importlib

    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize(
    ("command", "spec"), GENERATED, ids=lambda x: " ".join(x) if isinstance(x, list) else ""
)
def test_every_field_of_a_commands_config_is_an_option(command, spec):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for f in dataclasses.fields(_config_type(spec)):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if not required:  # required fields are positional (s2loop model-card MODEL)
            assert f"--{f.name.replace('_', '-')}" in result.output, f.name


def test_quick_picks_the_quick_presets_defaults_and_options_stay_typed():
    from bench.emulator import EmulatorBenchConfig

    quick = EmulatorBenchConfig.make(quick=True)
    assert quick.single_calls != EmulatorBenchConfig().single_calls
    result = CliRunner().invoke(
        app, ["bench", "emulator", "--quick", "--help"], env={"COLUMNS": "200"}
    )
    text = " ".join(result.output.replace("│", " ").split())
    assert (
        f"--single-calls INT single-observation calls per repeat (default: {quick.single_calls})"
        in text
    )
    result = CliRunner().invoke(app, ["bench", "emulator", "--quick", "--repeats", "x"])
    assert result.exit_code == 2 and "--repeats" in result.output  # typed: an int


def test_model_card_takes_the_model_as_its_argument(tmp_path):
    out = tmp_path / "card.md"
    result = CliRunner().invoke(app, ["model-card", "cartpole", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("# ")


def test_ship_serves_an_artifact_under_its_name_and_says_how_it_was_chosen(tmp_path):
    """A sweep's trial artifact is named after its file (``model``); shipping it names it,
    keeps its weights and provenance, and its card says how it was chosen."""
    from hw.artifact import load_artifact, save_artifact
    from hw.synthetic import random_artifact

    src = save_artifact(random_artifact(seed=4, name="model"), tmp_path / "trial" / "model.s2l")
    shipped = tmp_path / "models"
    why = "best of sweep seeds 0-9 on 500 validation episodes: -73.1 (runner-up -73.7)"
    args = ["ship", str(src), "acrobot", "--chosen-by", why, "--models-dir", str(shipped)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    got, before = load_artifact(shipped / "acrobot.s2l"), load_artifact(src)
    assert got.name == "acrobot" and got.sha256 == before.sha256
    assert got.provenance == {**before.provenance, "chosen_by": why}
    assert f"Chosen to ship: {why}" in (shipped / "acrobot.md").read_text()
    bad = CliRunner().invoke(app, ["ship", str(src), "../x", "--chosen-by", why,
                                   "--models-dir", str(shipped)])  # fmt: skip
    assert bad.exit_code == 2 and "model name" in bad.output
    unsaid = CliRunner().invoke(app, ["ship", str(src), "other", "--models-dir", str(shipped)])
    assert unsaid.exit_code == 2 and "--chosen-by" in unsaid.output
    assert sorted(p.name for p in shipped.iterdir()) == ["acrobot.md", "acrobot.s2l"]


@pytest.mark.parametrize("command", [["eval"], ["model-card"], ["ship", "--chosen-by", "x"]])
def test_a_missing_model_file_is_one_line_and_exit_2(command, tmp_path, monkeypatch, capsys):
    from s2loop.cli import main

    missing = str(tmp_path / "nope.s2l")
    argv = ["s2loop", command[0], missing, *(["x"] if command[0] == "ship" else []), *command[1:]]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no model artifact at") and "Traceback" not in err


def test_infer_takes_a_negative_observation_after_the_double_dash_options_anywhere():
    """The README's form: options after the observation, which follows ``--``."""
    import json

    args = ["infer", "cartpole", "--", "0", "0.1", "0.05", "-0.2", "--backend", "emulator"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["backend"] == "emulator" and answer["action"] in (0, 1)


def test_sweep_lists_may_be_written_with_commas_and_all_means_every_setting():
    from agent.sweep import SETTINGS_BY_KEY
    from agent.sweep_cli import comma_lists

    args = ["--seeds", "0,1", "2", "--settings", "all", "--out", "a,b", "--env", "X"]
    assert comma_lists(args) == [
        "--seeds", "0", "1", "2", "--settings", *SETTINGS_BY_KEY, "--out", "a,b", "--env", "X"
    ]  # fmt: skip
