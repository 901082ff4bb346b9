"""``s2loop`` subcommands of the learning side: train, finetune, eval, model-card.

Only typer and the standard library at module level: torch is imported inside the
commands, so ``s2loop serve`` never loads it. (``export-nir`` lives in
``agent.nir_cli``, registered on its own.)
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer


def _command_line() -> str:
    return "s2loop " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        env: str = typer.Option("CartPole-v1", "--env", help="CartPole-v1 or Acrobot-v1"),
        seed: int = typer.Option(0, help="seeds torch, numpy and the environments"),
        out: Path = typer.Option(..., help="run folder (teacher.pt, student.pt, CSV logs)"),
        teacher_steps: int = typer.Option(0, help="override the teacher's env steps (0: default)"),
        rounds: int = typer.Option(0, help="override the DAgger rounds (0: default)"),
        steps_per_round: int = typer.Option(0, help="override gradient steps per round"),
        hidden: str = typer.Option("64,64", help="hidden LIF layer sizes"),
        input_ticks: int = typer.Option(12, help="ticks the encoder emits input spikes"),
        bins: int = typer.Option(7, help="tent-coding neurons per observation dimension"),
        threads: int = typer.Option(2, help="torch threads"),
        progress: bool = typer.Option(True, help="progress bars"),
    ) -> None:
        """Train a float DQN teacher and distil it into a spiking Q-network (float weights)."""
        from agent.pipeline import train_run

        tover = {"total_steps": teacher_steps} if teacher_steps else {}
        dover = {}
        if rounds:
            dover["rounds"] = rounds
        if steps_per_round:
            dover["steps_per_round"] = steps_per_round
        snn = {
            "hidden": tuple(int(h) for h in hidden.split(",") if h),
            "input_ticks": input_ticks,
            "bins": bins,
        }
        summary = train_run(
            env,
            seed,
            out,
            teacher_overrides=tover,
            distill_overrides=dover,
            snn_overrides=snn,
            threads=threads,
            progress=progress,
            command=_command_line(),
        )
        typer.echo(
            json.dumps(
                {
                    "run": str(out),
                    "train_seconds": round(summary["train_seconds"], 1),
                    "teacher_eval_mean": summary["teacher"]["eval_mean"],
                    "student_eval_mean": summary["distill"]["eval_mean"],
                }
            )
        )

    @app.command("finetune")
    def finetune(
        run: Path = typer.Argument(..., help="run folder written by `s2loop train`"),
        out: Path = typer.Option(..., help="artifact to write, e.g. models/cartpole.s2l"),
        name: str = typer.Option("", help="model name (default: the file stem)"),
        seed: int = typer.Option(-1, help="default: the training seed"),
        rounds: int = typer.Option(0, help="override the QAT DAgger rounds (0: default)"),
        steps_per_round: int = typer.Option(0, help="override gradient steps per round"),
        lr_final: float = typer.Option(0.0, help="override the final learning rate (0: default)"),
        eval_episodes: int = typer.Option(100, help="final evaluation episodes (unseen seeds)"),
        card: bool = typer.Option(True, help="write a model card next to the artifact"),
        threads: int = typer.Option(2, help="torch threads"),
        progress: bool = typer.Option(True, help="progress bars"),
    ) -> None:
        """8-bit quantization-aware fine-tuning through the chip semantics, then export."""
        from agent.pipeline import finetune_run

        dover = {}
        if rounds:
            dover["rounds"] = rounds
        if steps_per_round:
            dover["steps_per_round"] = steps_per_round
        if lr_final:
            dover["lr_final"] = lr_final
        prov = finetune_run(
            run,
            out,
            name=name or None,
            seed=None if seed < 0 else seed,
            distill_overrides=dover,
            eval_episodes=eval_episodes,
            threads=threads,
            progress=progress,
            command=_command_line(),
        )
        if card:
            from agent.card import write_card
            from hw.artifact import load_artifact

            write_card(load_artifact(out), out.with_suffix(".md"))
        typer.echo(json.dumps({"artifact": str(out), "evaluation": prov.get("evaluation")}))

    @app.command("eval")
    def eval_model(
        model: str = typer.Argument(..., help="model name (models/NAME.s2l) or path"),
        episodes: int = typer.Option(100, help="greedy episodes"),
        backend: str = typer.Option("emulator", help="emulator | torch | float"),
        seed: int = typer.Option(2_000_000, help="first episode seed (training used others)"),
        agreement: bool = typer.Option(True, help="also measure float vs 8-bit agreement"),
        threads: int = typer.Option(2, help="torch threads"),
    ) -> None:
        """Mean/std/min greedy return over seeded episodes, and float vs 8-bit agreement."""
        import torch

        from agent.evaluate import evaluate
        from hw.artifact import load_artifact

        torch.set_num_threads(threads)
        res = evaluate(
            load_artifact(model),
            episodes=episodes,
            seed=seed,
            backend=backend,
            agreement=agreement,
        )
        res.pop("returns")
        typer.echo(json.dumps(res))

    @app.command("model-card")
    def model_card(
        model: str = typer.Argument(..., help="model name (models/NAME.s2l) or path"),
        out: Path = typer.Option(None, help="markdown file (default: next to the artifact)"),
    ) -> None:
        """(Re)write the markdown model card of an artifact from its provenance."""
        from agent.card import write_card
        from hw.artifact import load_artifact, resolve_model_path

        path = resolve_model_path(model)
        dest = out or path.with_suffix(".md")
        write_card(load_artifact(path), dest)
        typer.echo(f"wrote {dest}")
