"""The two training commands end to end.

``train``: (a) float MLP Double-DQN teacher, (b) DAgger distillation into the
spiking network through the exact tick semantics (float weights). Writes
``teacher.pt``, ``student.pt``, CSV logs and ``train.json`` into the run folder.

``finetune``: (c) quantization-aware DAgger distillation to 8-bit weights through
the chip semantics, checkpoint selection on the emulator, export of the artifact,
then a 100-episode evaluation on unseen seeds (emulator, torch fake-quant, float
reference, teacher) written into the artifact's provenance.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from agent.distill import DistillArgs, distill, make_student
from agent.evaluate import DEFAULT_EVAL_SEED, evaluate
from agent.rollout import run_episodes
from agent.snn import SpikingQNet, quant_scale
from agent.teacher import (
    TEACHER_DEFAULTS,
    TRAIN_SEED_BASE,
    TeacherArgs,
    load_teacher,
    seed_everything,
    train_teacher,
)
from hw.artifact import save_artifact

FINETUNE_DEFAULTS = {"rounds": 8, "lr": 5e-4, "lr_final": 2e-5}


def git_commit() -> str:
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


def train_run(
    env_id: str,
    seed: int,
    out_dir: Path,
    *,
    teacher_overrides: dict[str, Any] | None = None,
    distill_overrides: dict[str, Any] | None = None,
    snn_overrides: dict[str, Any] | None = None,
    threads: int = 2,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Teacher DQN, then float distillation; returns (and writes) ``train.json``."""
    torch.set_num_threads(threads)
    seed_everything(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    targs = TeacherArgs(env_id=env_id, seed=seed)
    targs = replace(targs, **{**TEACHER_DEFAULTS.get(env_id, {}), **(teacher_overrides or {})})
    teacher, tinfo = train_teacher(targs, out_dir, progress=progress)

    # teacher episodes fix the observation normalisation
    seeds = [TRAIN_SEED_BASE + 900_000 + 100 * (seed % 100) + i for i in range(16)]
    ep = run_episodes(env_id, teacher.act, seeds, keep_states=True)
    student = make_student(env_id, teacher, ep.all_states(), seed=seed, **(snn_overrides or {}))
    dargs = replace(DistillArgs(seed=seed), **(distill_overrides or {}))
    student, dinfo = distill(
        student, teacher, env_id, dargs, out_dir, mode="float", tag="distill", progress=progress
    )
    seconds = time.perf_counter() - start
    summary = {
        "command": command or " ".join(sys.argv),
        "env_id": env_id,
        "seed": seed,
        "teacher": {"args": asdict(targs), **tinfo},
        "distill": {"args": asdict(dargs), **dinfo},
        "snn": student.config.to_json(),
        "train_seconds": seconds,
        "git_commit": git_commit(),
        "machine": machine(),
    }
    student.save(out_dir / "student.pt", extra={"train": summary})
    (out_dir / "train.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def finetune_run(
    run_dir: Path,
    out: Path,
    *,
    name: str | None = None,
    seed: int | None = None,
    distill_overrides: dict[str, Any] | None = None,
    eval_episodes: int = 100,
    eval_seed: int = DEFAULT_EVAL_SEED,
    threads: int = 2,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """QAT distillation of ``run_dir/student.pt``, export to ``out``, evaluate."""
    torch.set_num_threads(threads)
    train = json.loads((run_dir / "train.json").read_text())
    seed = int(train["seed"]) if seed is None else seed
    seed_everything(seed)
    env_id = train["env_id"]
    teacher = load_teacher(run_dir / "teacher.pt")
    student, _ = SpikingQNet.load(run_dir / "student.pt")
    start = time.perf_counter()
    dargs = replace(DistillArgs(seed=seed), **{**FINETUNE_DEFAULTS, **(distill_overrides or {})})
    student, qinfo = distill(
        student, teacher, env_id, dargs, run_dir, mode="quant", tag="finetune", progress=progress
    )
    ft_seconds = time.perf_counter() - start
    student.save(run_dir / "student_quant.pt")
    grid_rms = []
    with torch.no_grad():
        for w in student.weights:
            ws = w * quant_scale(w)
            grid_rms.append(round(float((ws - torch.round(ws)).pow(2).mean().sqrt()), 5))
    name = name or out.stem
    provenance: dict[str, Any] = {
        "commands": [train["command"], command or " ".join(sys.argv)],
        "seed": seed,
        "env_id": env_id,
        "recipe": (
            "float MLP Double-DQN teacher -> DAgger distillation into the SNN through the "
            "exact tick semantics -> 8-bit QAT distillation, checkpoint chosen on the emulator"
        ),
        "train_seconds": round(float(train["train_seconds"]), 1),
        "finetune_seconds": round(ft_seconds, 1),
        "teacher": {k: train["teacher"][k] for k in ("eval_mean", "eval_min", "step", "seconds")},
        "finetune": {k: v for k, v in qinfo.items() if k != "score"},
        "float_master_grid_rms_lsb": grid_rms,
        "git_commit": git_commit(),
        "machine": machine(),
    }
    artifact = student.export(name, provenance=provenance)
    if eval_episodes > 0:
        provenance["evaluation"] = evaluation_block(
            artifact, teacher, episodes=eval_episodes, seed=eval_seed
        )
        artifact = student.export(name, provenance=provenance)
    save_artifact(artifact, out)
    (run_dir / "finetune.json").write_text(json.dumps(provenance, indent=2, default=float))
    return provenance


def evaluation_block(artifact, teacher, *, episodes: int, seed: int) -> dict[str, Any]:
    """Greedy returns of every form of the model on the same unseen seeds."""
    result: dict[str, Any] = {"episodes": episodes, "seeds": [seed, seed + episodes - 1]}
    for backend in ("emulator", "torch", "float"):
        compare = {"teacher_float_mlp": teacher.act} if backend == "emulator" else None
        r = evaluate(artifact, episodes=episodes, seed=seed, backend=backend, compare=compare)
        r.pop("returns")
        result[backend] = {k: v for k, v in r.items() if k not in ("backend", "seed")}
    ev = run_episodes(artifact.env_id, teacher.act, list(range(seed, seed + episodes)))
    result["teacher_float_mlp"] = ev.summary()
    result["agreement_float_vs_8bit"] = result["emulator"].get("agreement")
    result["agreement_teacher_vs_8bit"] = result["emulator"]["agreement_with"]["teacher_float_mlp"]
    return result
