"""Results as JSON (everything, per case) and Markdown (the table, Table I beside it, what differs)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .paper import LEADERBOARD_NOTE, SOURCE, TABLE_I
from .plot import PLOT_NAME, write_dice_boxplot
from .protocol import write_text_atomic
from .scoring import STRUCTURE_KEYS

JSON_NAME = "results.json"
MARKDOWN_NAME = "results.md"
MEDFOUND_KEYS = ("medfound-text", "3dme-s0", "3dme-s10")
REFERENCE_KEY = "swinunetr"


def write_report(summary: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write results.json, results.md and the Dice box plot into ``out_dir``."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / JSON_NAME, "markdown": out_dir / MARKDOWN_NAME}
    write_text_atomic(paths["json"], json.dumps(summary, indent=1, allow_nan=True))
    plot = write_dice_boxplot(summary, out_dir / PLOT_NAME)
    write_text_atomic(paths["markdown"], render_markdown(summary, plot_name=plot.name if plot else None))
    if plot:
        paths["plot"] = plot
    return paths


def render_markdown(summary: dict[str, Any], plot_name: str | None = PLOT_NAME) -> str:
    parts = [
        "# MSD Hippocampus benchmark",
        _protocol_text(summary),
        "## Results (mean ± sd over test cases)",
        _results_table(summary),
        _descriptions(summary),
        "## Published numbers beside ours",
        _paper_table(summary),
        _differences(summary),
        "## MedFound against SwinUNETR",
        gap_statement(summary),
    ]
    if plot_name:
        parts += ["## Per-case Dice", f"![per-case Dice per method]({plot_name})"]
    return "\n\n".join(parts) + "\n"


def _protocol_text(summary: dict[str, Any]) -> str:
    split, config, env = summary["split"], summary["config"], summary["environment"]
    return (
        f"Split `{split['sha256'][:12]}` (sha256 in `split_manifest.json`): {split['n_cases']} cases, "
        f"{split['n_folds']}-fold cross-validation by case (seed {split['seed']}); folds run: {split['folds_run']}, "
        f"{split['n_test_cases']} test cases scored per method. Every method got the same training cases, the same "
        f"per-volume intensity normalisation and a training budget of **{config['budget_minutes']:g} min wall clock per "
        f"fold** on {env['device']} ({_threads(env)}, {env['cpu_cores']} cores), model size profile "
        f"`{config['size']}`, seed {config['seed']}. torch {env['torch']}, MONAI {env['monai']}."
    )


def _threads(env: dict[str, Any]) -> str:
    n = env["torch_threads"]
    return f"{n} torch thread{'' if n == 1 else 's'}"


def _fmt(stat: dict[str, float], digits: int) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def _results_table(summary: dict[str, Any]) -> str:
    head = (
        ["Method"]
        + [f"Dice {k}" for k in STRUCTURE_KEYS]
        + ["Dice overall"]
        + [f"HD95 {k} (mm)" for k in STRUCTURE_KEYS]
        + ["HD95 overall (mm)", "train (s)", "train CPU (s)", "epochs", "infer/case (s)", "params (M)", "peak RSS (MB)", "peak GPU (MB)"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in summary["methods"].values():
        if method["status"] != "ok":
            cells = [method["title"], f"**{method['status']}**"] + [""] * (len(head) - 2)
        else:
            s = method["summary"]
            gpu = method["peak_gpu_mb"]
            cells = (
                [method["title"]]
                + [_fmt(s[k]["dice"], 3) for k in (*STRUCTURE_KEYS, "overall")]
                + [_fmt(s[k]["hd95"], 2) for k in (*STRUCTURE_KEYS, "overall")]
                + [
                    f"{method['train_seconds']:.0f}",
                    f"{method['train_cpu_seconds']:.0f}",
                    f"{method['epochs']:.1f}",
                    f"{method['infer_seconds_per_case']:.2f}",
                    f"{method['parameters'] / 1e6:.2f}",
                    f"{method['peak_rss_mb']:.0f}",
                    "—" if gpu is None else f"{gpu:.0f}",
                ]
            )
        lines.append("| " + " | ".join(cells) + " |")
    empties = {m["title"]: m["summary"]["cases_with_empty_structure"] for m in summary["methods"].values() if m["status"] == "ok"}
    note = ", ".join(f"{t}: {n}" for t, n in empties.items() if n)
    lines.append("")
    lines.append(
        "train CPU (s) = CPU seconds the method's process used while training: on a shared machine the same wall-clock "
        "budget buys different amounts of compute. Overall = mean of the two structures per case. HD95 of a structure a method left empty is set to the image "
        "diagonal (the worst distance possible on the grid)" + (f"; cases with an empty structure — {note}." if note else "; no method left a structure empty.")
    )
    return "\n".join(lines)


def _descriptions(summary: dict[str, Any]) -> str:
    lines = ["What each row ran:", ""]
    for m in summary["methods"].values():
        extra = f" ({'; '.join(m['notes'])})" if m.get("notes") else ""
        lines.append(f"- **{m['title']}** (`{m['key']}`): {m['description']}{extra}")
    return "\n".join(lines)


def _paper_table(summary: dict[str, Any]) -> str:
    ours = {m["paper_column"]: m for m in summary["methods"].values() if m.get("paper_column")}
    lines = [f"Source: {SOURCE}.", "", "| Table I column | paper Dice | paper HD95 (mm) | ours Dice | ours HD95 (mm) |", "|---|---|---|---|---|"]
    for column, (paper_dice, paper_hd) in TABLE_I.items():
        mine = ours.get(column)
        if mine is None:
            ours_cells = ["not run", "not run"]
        elif mine["status"] != "ok":
            ours_cells = [mine["status"], ""]
        else:
            ours_cells = [f"{mine['summary']['overall']['dice']['mean']:.3f}", f"{mine['summary']['overall']['hd95']['mean']:.2f}"]
        lines.append(f"| {column} | {paper_dice:.3f} | {paper_hd:.3f} | " + " | ".join(ours_cells) + " |")
    return "\n".join(lines)


def _differences(summary: dict[str, Any]) -> str:
    config, env, split = summary["config"], summary["environment"], summary["split"]
    return "\n".join(
        [
            "What differs from the paper:",
            "",
            f"- **Split**: the paper does not state its split; ours is a seeded {split['n_folds']}-fold split by case, "
            f"folds {split['folds_run']} run ({split['n_test_cases']} test cases).",
            f"- **Budget**: the paper trains to convergence (S10 = 10 fine-tuning epochs); here every method stops after "
            f"{config['budget_minutes']:g} min of training wall clock per fold (epochs reached are in the table).",
            f"- **Hardware**: paper unstated (GPU); ours {env['device']} with {_threads(env)}.",
            f"- **Models**: size profile `{config['size']}` (`standard` = the published MONAI configurations; `small`/`tiny` "
            "are narrower/shallower for CPU and CI). 3DME-S0 here trains the UNet head on a frozen encoder pretrained "
            "without these labels; the paper's 'zero-shot' S0 cannot produce anterior/posterior labels without some head training.",
            f"- {LEADERBOARD_NOTE}",
        ]
    )


def gap_statement(summary: dict[str, Any]) -> str:
    """How far MedFound's best method is from SwinUNETR in this run (overall mean Dice and HD95)."""
    methods = summary["methods"]
    reference = methods.get(REFERENCE_KEY)
    ours = [methods[k] for k in MEDFOUND_KEYS if k in methods and methods[k]["status"] == "ok"]
    if reference is None or reference["status"] != "ok":
        return "SwinUNETR has no scores in this run, so no comparison is possible."
    if not ours:
        return "No MedFound method produced scores in this run."
    best = max(ours, key=lambda m: m["summary"]["overall"]["dice"]["mean"])
    d_best, d_ref = best["summary"]["overall"]["dice"]["mean"], reference["summary"]["overall"]["dice"]["mean"]
    h_best, h_ref = best["summary"]["overall"]["hd95"]["mean"], reference["summary"]["overall"]["hd95"]["mean"]
    delta = d_best - d_ref
    verdict = "at or above" if delta >= 0 else f"{-delta:.3f} Dice below"
    hd = "" if math.isnan(h_best) else f" (HD95 {h_best:.2f} mm vs {h_ref:.2f} mm)"
    scored = [m for m in methods.values() if m["status"] == "ok"]
    top = max(scored, key=lambda m: m["summary"]["overall"]["dice"]["mean"])
    leader = "" if top is best else (
        f" The best method of the run is {top['title']} at {top['summary']['overall']['dice']['mean']:.3f}, "
        f"{top['summary']['overall']['dice']['mean'] - d_best:.3f} above MedFound's best."
    )
    return (
        f"MedFound's best method in this run, {best['title']}, reaches overall Dice {d_best:.3f} against SwinUNETR's "
        f"{d_ref:.3f}: {verdict} SwinUNETR under the same budget{hd}.{leader}"
    )
