"""The two training commands end to end.

``train`` (:class:`~agent.options.TrainConfig`), by recipe:

- ``dsqn``: DQN directly on the spiking network (:mod:`agent.dsqn`);
- ``distill``: a float MLP Double-DQN teacher, then DAgger distillation into the
  spiking network through the exact tick semantics (:mod:`agent.distill`).

It writes ``student.s2l`` (the trained network as an artifact: float masters and a
plain 8-bit export), ``teacher.pt`` (distill), CSV logs and ``train.json``.

``finetune`` (:class:`~agent.options.FinetuneConfig`): the hardware-aware 8-bit
pipelines of :mod:`agent.quantize` driven by the run's recipe, export of the best
candidate, then an evaluation on unseen seeds (emulator, torch fake-quant, float
reference, and the teacher where there is one) written into the provenance.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from agent.evaluate import DEFAULT_EVAL_SEED, decision_margin, evaluate
from agent.export import from_artifact, to_artifact
from agent.options import FinetuneConfig, TrainConfig
from agent.rollout import run_episodes
from agent.snn import keep_freed_memory, quant_scale
from agent.teacher import TRAIN_SEED_BASE, load_teacher, seed_everything, train_teacher
from hw.artifact import load_artifact, save_artifact

RECIPES = {
    "dsqn": "deep spiking Q-network trained directly by Double-DQN through the exact tick "
    "semantics (surrogate gradients, no float network), checkpoint chosen on the 8-bit "
    "emulator, then 8-bit hardware-aware fine-tuning that distils the network into its own "
    "8-bit version",
    "distill": "float MLP Double-DQN teacher -> DAgger distillation into the SNN through the "
    "exact tick semantics -> 8-bit hardware-aware fine-tuning driven by distillation; "
    "checkpoint chosen on the emulator",
}


def git_commit() -> str:
    if os.environ.get("S2LOOP_GIT_COMMIT"):
        return os.environ["S2LOOP_GIT_COMMIT"]
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def _jsonable(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def set_threads(n: int) -> None:
    """Torch's threads (the fast forward's kernels are single-threaded: a numba thread
    pool would tie every later compilation to the NUMBA_NUM_THREADS it started with),
    and freed tensor memory kept for reuse (:func:`agent.snn.keep_freed_memory`)."""
    torch.set_num_threads(n)
    keep_freed_memory()


def train_run(cfg: TrainConfig, command: str | None = None) -> dict[str, Any]:
    """Train by ``cfg.recipe``; returns (and writes) ``train.json``."""
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary: dict[str, Any] = {
        "command": command or " ".join(sys.argv),
        "recipe": cfg.recipe,
        "env_id": cfg.env,
        "seed": cfg.seed,
        "snn": _jsonable(cfg.snn),
    }
    if cfg.recipe == "dsqn":
        from agent.dsqn import train_dsqn

        student, info = train_dsqn(
            cfg.env,
            cfg.dsqn,
            out,
            seed=cfg.seed,
            snn=cfg.snn,
            progress=cfg.progress,
            device=cfg.device,
        )
        summary["dsqn"] = {"args": _jsonable(cfg.dsqn), **info}
    else:
        from agent.distill import distill, make_student

        teacher, tinfo = train_teacher(
            cfg.env, cfg.teacher, out, seed=cfg.seed, progress=cfg.progress, device=cfg.device
        )
        # teacher episodes fix the observation normalisation
        seeds = [TRAIN_SEED_BASE + 900_000 + 100 * (cfg.seed % 100) + i for i in range(16)]
        ep = run_episodes(cfg.env, teacher.act, seeds, keep_states=True)
        student = make_student(cfg.env, teacher, ep.all_states(), cfg.seed, cfg.snn)
        student, dinfo = distill(
            student, teacher, cfg.env, cfg.distill, out, seed=cfg.seed, progress=cfg.progress
        )
        summary["teacher"] = {"args": _jsonable(cfg.teacher), **tinfo}
        summary["distill"] = {"args": _jsonable(cfg.distill), **dinfo}
    summary["train_seconds"] = time.perf_counter() - start
    summary["git_commit"] = git_commit()
    summary["machine"] = machine()
    save_artifact(to_artifact(student, "student", {"train": summary}), out / "student.s2l")
    (out / "train.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def finetune_run(
    cfg: FinetuneConfig, command: str | None = None, found_by: dict[str, str] | None = None
) -> dict[str, Any]:
    """Hardware-aware fine-tuning of ``cfg.run``, export to ``cfg.out``, evaluation.
    ``found_by``: the sweep and trial that ran these commands (``s2loop sweep``)."""
    from agent.quantize import finetune

    set_threads(cfg.threads)
    train = json.loads((cfg.run / "train.json").read_text())
    seed = int(train["seed"]) if cfg.seed is None else cfg.seed
    seed_everything(seed)
    env_id, recipe = train["env_id"], train["recipe"]
    student = from_artifact(load_artifact(cfg.run / "student.s2l"), seed=seed)
    teacher = load_teacher(cfg.run / "teacher.pt") if recipe == "distill" else None
    start = time.perf_counter()
    student, qreport = finetune(
        student,
        recipe,
        env_id,
        cfg.qat,
        distill=cfg.distill,
        teacher=teacher,
        out_dir=cfg.run,
        seed=seed,
        progress=cfg.progress,
    )
    ft_seconds = time.perf_counter() - start
    grid_rms = []
    with torch.no_grad():
        for w in student.weights:
            ws = w * quant_scale(w, student.scale_percentile)
            grid_rms.append(round(float((ws - torch.round(ws)).pow(2).mean().sqrt()), 5))
    name = cfg.name or cfg.out.stem
    provenance: dict[str, Any] = {
        "recipe": recipe,
        "recipe_description": RECIPES[recipe],
        "commands": [train["command"], command or " ".join(sys.argv)],
        "seed": seed,
        "env_id": env_id,
        "train_seconds": round(float(train["train_seconds"]), 1),
        "finetune_seconds": round(ft_seconds, 1),
        "finetune": {**qreport, "args": _jsonable(cfg)},
        "float_master_grid_rms_lsb": grid_rms,
        "git_commit": git_commit(),
        "train_git_commit": train.get("git_commit"),
        "machine": machine(),
    }
    if found_by:
        provenance["found_by"] = dict(found_by)
    if "teacher" in train:
        provenance["teacher"] = {
            k: train["teacher"][k] for k in ("eval_mean", "eval_min", "step", "seconds")
        }
    if "dsqn" in train:
        provenance["dsqn"] = {
            k: train["dsqn"].get(k)
            for k in ("eval_mean", "eval_min", "step", "seconds", "selection")
        }
    artifact = to_artifact(student, name, provenance)
    if cfg.eval_episodes > 0:
        provenance["evaluation"] = evaluation_block(
            artifact,
            teacher,
            episodes=cfg.eval_episodes,
            seed=DEFAULT_EVAL_SEED,
            repeats=cfg.eval_repeats,
        )
        artifact = to_artifact(student, name, provenance)
    save_artifact(artifact, cfg.out)
    (cfg.run / "finetune.json").write_text(json.dumps(artifact.provenance, indent=2, default=float))
    return artifact.provenance


def evaluation_block(
    artifact, teacher, *, episodes: int, seed: int, repeats: int = 1
) -> dict[str, Any]:
    """Greedy returns of every form of the model on the same unseen seeds."""
    result: dict[str, Any] = {"episodes": episodes, "seeds": [seed, seed + episodes - 1]}
    first_draw: list[float] = []
    for backend in ("emulator", "torch", "float"):
        compare = (
            {"teacher_float_mlp": teacher.act} if teacher is not None and backend == "emulator"
            else None
        )  # fmt: skip
        r = evaluate(
            artifact,
            episodes=episodes,
            seed=seed,
            backend=backend,
            # the torch fake-quant network is the emulator's, bit for bit: its agreement
            # would be the emulator's again (one more float run of every episode), and
            # its further draws the emulator's again; it runs the first draw, a check
            # that its returns are the emulator's (a fifth of `s2loop finetune`'s
            # evaluation time at 5 draws)
            agreement=backend != "torch",
            compare=compare,
            repeats=1 if backend == "torch" else repeats,
        )
        returns = r.pop("returns")
        if backend == "emulator":
            first_draw = returns[:episodes]
        elif backend == "torch":
            r["equal_to_emulator"] = returns == first_draw
        result[backend] = {k: v for k, v in r.items() if k not in ("backend", "seed")}
    result["agreement_float_vs_8bit"] = result["emulator"].get("agreement")
    result["decision_margin"] = decision_margin(artifact, episodes=min(episodes, 10), seed=seed)
    if teacher is not None:
        ev = run_episodes(artifact.env_id, teacher.act, list(range(seed, seed + episodes)))
        result["teacher_float_mlp"] = ev.summary()
        result["teacher_name"] = teacher.name
        result["agreement_teacher_vs_8bit"] = result["emulator"]["agreement_with"][
            "teacher_float_mlp"
        ]
    return result
