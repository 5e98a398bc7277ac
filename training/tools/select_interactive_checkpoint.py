"""Pick the interactive model's checkpoint on validation patients, never on the test patients.

Training longer fits the trained classes better and the unseen ones worse (docs/interactive.md), so
the shipped model is the checkpoint with the best mean Dice after 1 and 3 simulated clicks over every
labelled structure of validation patients that are neither trained on nor held out for the evaluation
(OpenKBP validation patients; their parotid glands are a class held out of training).

    V="$(ls $D/openkbp/validation_pt_*_img.nii.gz | sort -V | head -5)"
    OMP_NUM_THREADS=1 python training/tools/select_interactive_checkpoint.py --work-dir runs/interactive-v1 \\
        --final runs/interactive-v1-model --steps 750 1500 2500 3500 4750 --validation $V \\
        --scores runs/sweep --output-dir runs/interactive-v1-selected

Scores already in ``--scores`` (one ``step-N.json`` per checkpoint, ``medfound bench click`` reports) are
reused; the chosen checkpoint ships with the final model's training record and its selection.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from medfoundcore.bench.click import quality_report
from medfoundcore.data.datasets import find_cases
from medfoundcore.models.interactive_segmenter import InteractiveConfig, build_interactive_segmenter
from medfoundcore.registry import ModelCard, read_card
from medfoundcore.train.checkpoint import checkpoint_path, load_checkpoint
from medfoundcore.train.interactive import ship_interactive

CLICKS = 3


def criterion(report: dict) -> float:
    """Mean over the validation pairs of Dice after the first click and after the third."""
    rows = report["rows"]
    return float(np.mean([(r["learned"][0] + r["learned"][CLICKS - 1]) / 2 for r in rows]))


def export(work_dir: Path, step: int, out: Path, final: ModelCard, selection: dict | None = None) -> Path:
    """Checkpoint ``step`` as a model (safetensors + card), with the run's decoder sizes and training record."""
    state = load_checkpoint(checkpoint_path(work_dir, step))
    net = build_interactive_segmenter(InteractiveConfig.from_dict(final.config["model"]))
    net.load_state_dict(state["model"])
    history = json.loads(state["history"])
    history["steps_done"] = step
    data = dict(final.training_data, **({"selection": selection} if selection else {}))
    return ship_interactive(net.eval(), history, "interactive-v1", out, training_data=data, overwrite=True)


def score(work_dir: Path, step: int, validation: list[str], scores: Path, final: ModelCard) -> dict:
    path = scores / f"step-{step}.json"
    if not path.exists():
        model = export(work_dir, step, scores / f"step-{step}", final)
        report = quality_report(find_cases(validation), str(model), arms=("learned",), clicks=CLICKS)
        path.write_text(json.dumps(report, indent=1))
    return json.loads(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, required=True, help="the training run's checkpoints")
    parser.add_argument("--final", required=True, help="the model the run shipped (its card's training record is kept)")
    parser.add_argument("--steps", type=int, nargs="+", required=True)
    parser.add_argument("--validation", nargs="+", required=True)
    parser.add_argument("--scores", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    args = parser.parse_args()
    args.scores.mkdir(parents=True, exist_ok=True)
    final = read_card(args.final)
    results = {step: criterion(score(args.work_dir, step, args.validation, args.scores, final)) for step in args.steps}
    best = max(results, key=results.get)
    for step, value in results.items():
        print(f"step {step}: validation Dice (1 and {CLICKS} clicks) {value:.3f}{'  <- chosen' if step == best else ''}")
    selection = {"step": best, "criterion": f"mean Dice after 1 and {CLICKS} clicks", "scores": {str(k): round(v, 4) for k, v in results.items()},
                 "validation": [Path(v).name.replace("_img.nii.gz", "") for v in args.validation]}
    print(export(args.work_dir, best, args.output_dir, final, selection))


if __name__ == "__main__":
    main()
