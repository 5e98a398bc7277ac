"""What the decoder training loops of ``ct-v1``, ``interactive-v1`` and ``mri-v1`` share: a seeded start,
the base model of a fine-tune, resuming from the newest checkpoint, one clipped optimiser step, a smoothed loss recorded every
``LOG_EVERY`` steps, and a resumable checkpoint."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint

LOG_EVERY = 25
SMOOTHING = 0.98


def start_run(workdir: str | Path, seed: int) -> tuple[Path, random.Random]:
    """The run's work directory (created) and its seeded data-order RNG; torch is seeded too."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    return workdir, random.Random(seed)


def save_loop_checkpoint(workdir: Path, step: int, net: torch.nn.Module, opt: torch.optim.Optimizer, history: dict,
                         rng: random.Random, *, keep: int | None = None, **extra: Any) -> None:
    """Everything :func:`resume` restores (weights, optimiser, data order, history), plus ``extra``;
    ``keep`` prunes to the newest checkpoints."""
    save_checkpoint(checkpoint_path(workdir, step), model=net.state_dict(), optimizer=opt.state_dict(), step=step,
                    history=json.dumps(history), cases=history["cases"], rng=json.dumps(rng.getstate()), **extra)  # fmt: skip
    if keep is not None:
        prune_checkpoints(workdir, keep=keep)


def load_base_model(name: str, kind: str, family: str, example: str) -> tuple[dict[str, torch.Tensor], Any]:
    """Weights and card of ``--base-model NAME`` for ``train-seg --model FAMILY``; a model of another
    kind is refused, naming ``example`` (e.g. "an MRI model such as mri-v1")."""
    from ..registry import load_model

    state, card = load_model(name)
    if card.kind != kind:
        raise InputError(f"--base-model {name!r} is a {card.kind!r} model; fine-tuning --model {family} needs {example}")
    return state, card


def optimiser_step(net: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, clip: float = 1.0) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    opt.step()


def log_loss(history: dict, step: int, smooth: float | None, loss: float, parts: dict[str, float]) -> float:
    """The new smoothed loss; appended to ``history["loss"]`` as [step, smoothed, parts] every LOG_EVERY steps."""
    smooth = loss if smooth is None else SMOOTHING * smooth + (1 - SMOOTHING) * loss
    if step % LOG_EVERY == 0:
        history["loss"].append([step, round(smooth, 4), {k: round(v, 4) for k, v in parts.items()}])
    return smooth


def python_rng_state(text: str) -> tuple:
    """``random.Random.getstate()`` back from its JSON form in a checkpoint."""
    version, state, gauss = json.loads(text)
    return version, tuple(state), gauss


def resume(workdir: Path, net: torch.nn.Module, opt: torch.optim.Optimizer, rng: random.Random, history: dict) -> tuple[int, dict, dict[str, Any] | None]:
    """Restore weights, optimiser and data order from ``workdir``'s newest checkpoint: (step, history,
    the checkpoint), or (0, ``history``, None) when there is none. A checkpoint of a run on other
    cases is refused."""
    latest = latest_checkpoint(workdir)
    if latest is None:
        return 0, history, None
    state = load_checkpoint(latest)
    if state.get("cases") != history["cases"]:
        raise InputError(f"{workdir}: holds a checkpoint of a run on other cases; use a new work directory")
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    rng.setstate(python_rng_state(state["rng"]))
    return int(state["step"]), json.loads(state["history"]), state
