"""Markdown model card of an artifact, from its provenance and the chip mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hw.artifact import ModelArtifact


def _ret(r: dict[str, Any] | None) -> str:
    if not r:
        return "n/a | n/a | n/a"
    return f"{r['mean']:.2f} | {r['std']:.2f} | {r['min']:.0f}"


def _neurons(artifact: ModelArtifact) -> str:
    hidden = artifact.layers[:-1]
    if not hidden:
        return "no hidden layer"
    parts = [
        f"{lay.name}: {lay.neuron}"
        + (f" (alpha_decay {lay.alpha_decay:.4g})" if lay.neuron == "LIF" else " (no leak)")
        + f", float threshold {lay.float_threshold:.4g}"
        for lay in hidden
    ]
    return "; ".join(parts) + f"; {hidden[0].reset}"


_FORMS = (
    ("emulator, 8-bit (`hw.emulator`)", "emulator"),
    ("torch fake-quant 8-bit", "torch"),
    ("float spiking network (reference backend)", "float"),
)


def _evaluation_lines(ev: dict[str, Any]) -> list[str]:
    seeds = ev.get("seeds", ["?", "?"])
    emu = ev.get("emulator", {})
    repeats = emu.get("repeats")
    lines = [
        f"## Evaluation ({ev.get('episodes')} greedy episodes, env seeds "
        f"{seeds[0]}..{seeds[1]}, none used in training)",
        "",
    ]
    if repeats:
        lines += [
            f"Poisson input spikes are drawn fresh at every step; each form ran the "
            f"{ev.get('episodes')} episodes {repeats} times with different draws. Mean, std and "
            "min pool all episodes; 'std of repeat means' is the spread between repeats.",
            "",
            "| form | mean | std | min | std of repeat means |",
            "|---|---|---|---|---|",
        ]
        for label, key in _FORMS:
            r = ev.get(key) or {}
            if r.get("repeats", repeats) == repeats:
                lines.append(f"| {label} | {_ret(r)} | {r.get('repeat_std', float('nan')):.2f} |")
            else:  # torch: the first draw only, a check against the emulator's
                same = {True: "equal", False: "NOT equal"}.get(r.get("equal_to_emulator"), "?")
                lines.append(
                    f"| {label}, first draw only | {_ret(r)} | "
                    f"{same} to the emulator's first draw, episode by episode |"
                )
    else:
        lines += [
            "| form | mean | std | min |",
            "|---|---|---|---|",
            *(f"| {label} | {_ret(ev.get(key))} |" for label, key in _FORMS),
        ]
    teacher_name = ev.get("teacher_name", "float MLP teacher")
    if ev.get("teacher_float_mlp"):
        lines.append(f"| {teacher_name} (not shipped) | {_ret(ev.get('teacher_float_mlp'))} |")
    lines.append("")
    agree = ev.get("agreement_float_vs_8bit")
    if agree is not None:
        lines += [
            f"Decision agreement float vs 8-bit: **{100 * agree:.2f}%** of "
            f"{emu.get('agreement_states')} states visited by the emulator policy (same action "
            "from the float reference on the same input spikes).",
            "",
        ]
    margin = ev.get("decision_margin")
    if margin and margin.get("median_margin") is not None:
        lines += [
            f"Decision margin: the median gap between the best and second-best Q-value is "
            f"**{margin['median_margin']:.2f}x** the std of that gap across Poisson draws "
            f"(gap {margin['median_gap']:.3f}, noise std {margin['median_noise_std']:.3f}; "
            f"10th percentile {margin['p10_margin']:.2f}x; "
            f"{100 * margin['flip_rate']:.1f}% of single draws pick another action than the "
            f"mean Q-values), over {margin['states']} states the 8-bit policy visits, "
            f"{margin['draws']} draws each.",
            "",
        ]
    elif margin:
        lines += [
            f"Decision margin: deterministic input spikes, no draw noise; median gap between "
            f"the best and second-best Q-value {margin['median_gap']:.3f} over "
            f"{margin['states']} visited states.",
            "",
        ]
    teacher = ev.get("agreement_teacher_vs_8bit")
    if teacher is not None:
        lines += [
            f"Agreement with the {teacher_name} on the same states: {100 * teacher:.2f}% "
            "(ANN-to-SNN conversion agreement in the sense of arXiv 2009.14456).",
            "",
        ]
    return lines


def card_text(artifact: ModelArtifact) -> str:
    p = artifact.provenance
    enc = artifact.encoder
    recipe = p.get("recipe", "n/a")
    ft = p.get("finetune", {})
    stages = [f"train {p.get('train_seconds')} s"]
    if p.get("teacher"):
        stages.append(f"(teacher {p['teacher'].get('seconds', 0):.0f} s included)")
    stages.append(f"+ finetune {p.get('finetune_seconds')} s")
    lines = [
        f"# Model card: `{artifact.name}` ({artifact.env_id})",
        "",
        "A spiking Q-network of `lif_no_delay` populations with 8-bit weights, for SpiNNaker2 "
        "or its emulator. Greedy policy: the action with the highest Q-value.",
        "",
        "## Network",
        "",
        f"- layers: {artifact.input_size} inputs -> "
        + " -> ".join(str(s) for s in artifact.layer_sizes)
        + f" (output layer a non-spiking integrator, readout `{artifact.readout.kind}`)",
        f"- hidden neurons: {_neurons(artifact)}",
        f"- encoder: `{enc.kind}`"
        + (" (fresh input spikes on every inference)" if enc.kind == "poisson" else "")
        + f", `{enc.channels}` channels, {enc.bins} bins per dimension, "
        f"{enc.input_ticks} input ticks (T); {artifact.ticks} ticks per inference "
        "(input ticks + one per hop)",
        "- observation normalisation `clip(obs / obs_scale, -1, 1)`, obs_scale = "
        + ", ".join(f"{x:.4g}" for x in artifact.obs_scale),
        f"- weights sha256: `{artifact.sha256}`",
        "",
        "## How it was made",
        "",
        f"Recipe: **{recipe}**: {p.get('recipe_description', '')}.",
        "",
    ]
    if ft.get("chosen"):
        tried = ", ".join(
            f"{k} {v.get('select_mean', float('nan')):.1f}"
            + (
                f" ± {v['select_se']:.1f}, agreement {100 * v['select_agreement']:.1f}%"
                if "select_agreement" in v
                else ""
            )
            for k, v in ft.get("pipelines", {}).items()
        )
        lines += [
            f"8-bit fine-tuning: pipeline **{ft['chosen']}** chosen by greedy emulator return over "
            f"{ft.get('select_episodes')} training-range episodes, the float-vs-8-bit agreement "
            f"breaking ties within one standard error of the difference (candidates: {tried}).",
            "",
        ]
    if p.get("chosen_by"):
        lines += [f"Chosen to ship: {p['chosen_by']}", ""]
    if p.get("found_by"):
        lines += [
            f"Found by the sweep `{p['found_by']['sweep']}` (its trial {p['found_by']['trial']}), "
            "which ran these two commands in its own process:",
            "",
        ]
    lines += [
        "```",
        *p.get("commands", []),
        "```",
        "",
        f"- seed: {p.get('seed')}; git commit: `{p.get('git_commit')}`"
        + (
            f" (the float network was trained at `{p['train_git_commit']}`)"
            if p.get("train_git_commit") not in (None, p.get("git_commit"))
            else ""
        ),
        f"- training time on this machine: {' '.join(stages)}",
        f"- machine: {p.get('machine', {}).get('platform')}, "
        f"torch {p.get('machine', {}).get('torch')}, "
        f"{p.get('machine', {}).get('torch_threads')} torch threads, "
        f"{p.get('machine', {}).get('cpu_count', '?')} CPU cores (shared with other work)",
        "",
    ]
    if p.get("evaluation"):
        lines += _evaluation_lines(p["evaluation"])
    rms = p.get("float_master_grid_rms_lsb")
    if rms:
        lines += [
            "The fine-tuning pulls the float master weights toward the 8-bit grid (RMS "
            "distance per layer, in LSBs: " + ", ".join(f"{x:.3f}" for x in rms) + "), "
            "so float vs 8-bit agreement measures what rounding to 8 bits still changes, not "
            "the gap to an independently trained float network.",
            "",
        ]
    lines += _mapping_lines(artifact)
    lines += [
        "Re-check: `s2loop eval "
        f"{artifact.name} --episodes 100 --backend emulator` and `s2loop map {artifact.name}`.",
        "",
    ]
    return "\n".join(lines)


def _mapping_lines(artifact: ModelArtifact) -> list[str]:
    try:
        from hw.mapping import map_network
    except ImportError:
        return []
    rep = map_network(artifact)
    d = rep.to_dict()
    return [
        "## On the chip (estimates, `hw.mapping`)",
        "",
        f"- PEs used: {d['pes_used']} of {d['usable_pes']} "
        f"({d['copies_per_chip']} copies per chip); synapses: {d['synapses']}",
        f"- ticks: {d['ticks']}; chip time per inference: {1e3 * d['chip_time_s']:.1f} ms "
        f"at {1e3 * d['chip']['sys_tick_s']:.0f} ms per tick",
        f"- energy per inference: {1e3 * d['energy_j']:.3f} mJ alone on the chip, "
        f"{1e3 * d['energy_batched_j']:.3f} mJ with every copy busy, "
        f"{1e3 * d['energy_dynamic_j']:.3f} mJ above idle (secondary power figures)",
        "",
    ]


def write_card(artifact: ModelArtifact, path: Path) -> Path:
    path.write_text(card_text(artifact))
    return path
