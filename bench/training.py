"""``s2loop bench training``: how fast the paper's recipe trains, against the float
teacher in the same run.

Two measurements:

- one dsqn gradient step (a batch of 128 transitions: online forward of s and s',
  target forward, backward, Adam) and one batch-1 acting forward, through the
  reference tick loop (``agent.snn.simulate``) and the fast forward
  (``agent.snn.simulate_fast``) on the same network and spikes, one torch thread;
- environment steps per second of whole training runs with the presets'
  settings: dsqn (``paper-cartpole``) and the float MLP teacher (``distill-cartpole``),
  ``steps`` steps each, evaluation off, at one torch thread and at two.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import BENCH_DIR


@dataclass
class TrainingBenchConfig:
    """dsqn's gradient step and acting forward (reference tick loop vs fast forward) and
    env steps/s of dsqn against the float teacher, in the same run."""

    quick: bool = False  # shorter runs (about a minute)
    out: Path = BENCH_DIR  # folder for TRAINING.md and training.json


def _ms(fn, repeats: int) -> float:
    fn()  # compile / warm up
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - t) / repeats * 1e3)
    return best


def forward_costs(repeats: int) -> dict[str, Any]:
    import torch

    from agent.network import SpikingQNet, env_spec
    from agent.options import TrainConfig, preset_defaults
    from agent.snn import simulate, simulate_fast

    cfg = preset_defaults("paper-cartpole", TrainConfig, {"out": Path("unused")})
    assert isinstance(cfg, TrainConfig)
    snn = cfg.snn
    net = SpikingQNet(snn, env_spec(cfg.env, snn), seed=0)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(3 * 128, 4)).astype(np.float32) * 0.3
    x, x1 = net.encode(obs, rng), net.encode(obs[:1], rng)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    out: dict[str, Any] = {"preset": "paper-cartpole", "ticks": snn.ticks, "rows": len(obs)}
    for name, f in (("reference", simulate), ("fast", simulate_fast)):

        def step(f=f) -> None:
            q = f(x, net.layer_params("float"), snn.ticks).q_values
            opt.zero_grad()
            q.pow(2).mean().backward()
            opt.step()

        def act(f=f) -> None:
            with torch.no_grad():
                f(x1, net.layer_params("float"), snn.ticks)

        out[name] = {"gradient_step_ms": _ms(step, repeats), "act_ms": _ms(act, 10 * repeats)}
    return out


def training_speed(steps: int) -> list[dict[str, Any]]:
    from agent.options import TrainConfig, preset_defaults
    from agent.pipeline import set_threads

    out: list[dict[str, Any]] = []
    for preset, group, threads in (
        ("paper-cartpole", "dsqn", 1),
        ("paper-cartpole", "dsqn", 2),
        ("distill-cartpole", "teacher", 1),
        ("distill-cartpole", "teacher", 2),
    ):
        set_threads(threads)
        cfg = preset_defaults(preset, TrainConfig, {"out": Path("unused")})
        args = dataclasses.replace(
            getattr(cfg, group), total_steps=steps, eval_every=10 * steps, stop_at=None
        )
        with tempfile.TemporaryDirectory() as tmp:
            if group == "dsqn":
                from agent.dsqn import train_dsqn

                _, info = train_dsqn(
                    cfg.env, args, Path(tmp), seed=0, snn=cfg.snn, validation_episodes=1,
                    progress=False,
                )  # fmt: skip
            else:
                from agent.teacher import train_teacher

                _, info = train_teacher(cfg.env, args, Path(tmp), seed=0, progress=False)
        out.append(
            {
                "recipe": group,
                "preset": preset,
                "threads": threads,
                "steps": info["steps_run"],
                "seconds": info["seconds"],
                "env_steps_per_s": info["env_steps_per_s"],
            }
        )
    set_threads(1)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    from agent.pipeline import set_threads
    from bench.common import git_info, machine_info

    set_threads(1)
    return {
        "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "git": git_info(),
        "machine": machine_info(),
        "forward": forward_costs(repeats=1 if quick else 20),
        "training": training_speed(steps=1_200 if quick else 10_000),
    }


def markdown(report: dict[str, Any]) -> str:
    from bench.common import fmt, table

    f, t = report["forward"], report["training"]
    m = report["machine"]
    lines = [
        "# Training speed: the paper's recipe (dsqn) against the float teacher",
        "",
        f"Written by `s2loop bench training` on {report['written']}, commit "
        f"`{str(report['git'].get('commit', '?'))[:12]}`, on {m['cpu_model']} ({m['cpus']} "
        "CPUs). Figures depend on the machine and its load.",
        "",
        f"## One step of the spiking network ({f['preset']}, {f['ticks']} ticks)",
        "",
        *table(
            ["forward", f"gradient step, {f['rows']} rows (ms)", "acting, batch 1 (ms)"],
            [
                [k, fmt(f[k]["gradient_step_ms"], 2), fmt(f[k]["act_ms"], 3)]
                for k in ("reference", "fast")
            ],
        ),
        "",
        "## Whole training runs (evaluation off)",
        "",
        "One torch thread is a sweep trial's setting; two, `s2loop train`'s default, where the",
        "DQN loop also makes the next gradient step's targets on a second thread.",
        "",
        *table(
            ["recipe", "preset", "threads", "env steps", "seconds", "env steps/s"],
            [
                [
                    v["recipe"],
                    v["preset"],
                    v["threads"],
                    fmt(v["steps"]),
                    fmt(v["seconds"], 1),
                    fmt(v["env_steps_per_s"]),
                ]
                for v in t
            ],
        ),
        "",
    ]
    return "\n".join(lines)


def write(report: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "training.json").write_text(json.dumps(report, indent=2, default=float))
    page = out / "TRAINING.md"
    page.write_text(markdown(report))
    return page
