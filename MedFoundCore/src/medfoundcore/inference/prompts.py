"""Prompt bookkeeping shared by every segmentation model: which label each prompt gets, and which
prompts must be refused before any inference.

One label map gives each voxel one label, so three things would otherwise give silent wrong answers:
the same structure prompted twice (the second copy loses every vote and reads "not found"), a structure
prompted with one of its parts ("kidney" with "left kidney": the parts steal the whole's voxels), and a
structure the model never saw (its empty result reads as a negative finding).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import InputError, shorten
from ..vocabulary import Structure, Vocabulary, ancestors

MAX_LABELS = 255


@dataclass(frozen=True)
class PromptPlan:
    """``structures[i]`` gets label ``i + 1``; ``label_of[j]`` is the label of the j-th original prompt;
    ``prompts_of[i]`` lists the prompts merged into structure i; ``untrained`` holds the keys segmented
    only as a best effort (the model was not trained on them)."""

    structures: list[Structure]
    label_of: list[int]
    prompts_of: list[list[str]]
    warnings: list[str] = field(default_factory=list)
    untrained: frozenset[str] = frozenset()


def plan_prompts(
    prompts: Sequence[str], vocab: Vocabulary, known_keys: set[str] | None, best_effort: bool = False, model_name: str = "the model"
) -> PromptPlan:
    """Resolve ``prompts`` to distinct structures (duplicates merged, with a warning), refusing
    overlapping structures and, unless ``best_effort``, structures outside ``known_keys`` (None or
    empty: the model's card does not say, so every structure is accepted)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise InputError("no prompt given: name at least one structure, e.g. -p liver")
    resolved = [vocab.normalize_prompt(p) for p in prompts]
    structures, label_of, prompts_of = _merge(prompts, resolved)
    if len(structures) > MAX_LABELS:
        raise InputError(f"{len(structures)} structures prompted; at most {MAX_LABELS} fit one label map")
    _refuse_overlaps(structures, vocab)
    warnings = _duplicate_warnings(structures, prompts_of)
    untrained = [s for s in structures if known_keys and s.key not in known_keys]
    if untrained and not best_effort:
        raise InputError(_untrained_message(untrained, vocab, known_keys or set(), model_name))
    warnings += [
        f"{model_name} was not trained on '{s.name}': the result is a best-effort guess from the text embedding, "
        "and an empty result does not mean it is absent"
        for s in untrained
    ]
    return PromptPlan(structures, label_of, prompts_of, warnings, frozenset(s.key for s in untrained))


def _merge(prompts: Sequence[str], resolved: list[Structure]) -> tuple[list[Structure], list[int], list[list[str]]]:
    """Distinct structures in first-prompted order, the label of every prompt, the prompts per label."""
    index: dict[str, int] = {}
    structures: list[Structure] = []
    prompts_of: list[list[str]] = []
    label_of: list[int] = []
    for prompt, structure in zip(prompts, resolved):
        if structure.key not in index:
            index[structure.key] = len(structures)
            structures.append(structure)
            prompts_of.append([])
        prompts_of[index[structure.key]].append(str(prompt))
        label_of.append(index[structure.key] + 1)
    return structures, label_of, prompts_of


def _duplicate_warnings(structures: list[Structure], prompts_of: list[list[str]]) -> list[str]:
    return [
        f"prompts {', '.join(repr(shorten(p)) for p in group)} all name '{s.name}': segmented once, as label {i + 1}"
        for i, (s, group) in enumerate(zip(structures, prompts_of))
        if len(group) > 1
    ]


def _refuse_overlaps(structures: list[Structure], vocab: Vocabulary) -> None:
    """A whole and its part cannot share one label map: the part would take the whole's voxels."""
    keys = {s.key for s in structures}
    for s in structures:
        whole = next((a for a in ancestors(s.key, vocab) if a in keys), None)
        if whole is not None:
            raise InputError(
                f"'{vocab.get(whole).name}' and '{s.name}' overlap ('{s.name}' is part of '{vocab.get(whole).name}'): "
                "one label map gives each voxel one label, so one of them would be cut short. "
                "Prompt them in separate runs."
            )


def _untrained_message(untrained: list[Structure], vocab: Vocabulary, known: set[str], model_name: str) -> str:
    names = ", ".join(f"'{s.name}'" for s in untrained)
    nearest = nearest_known(untrained, vocab, known)
    return (
        f"{model_name} was not trained on {names}: it cannot tell whether it is present. "
        f"Nearest structures it knows: {', '.join(nearest)} ({len(known)} in all: medfound models show NAME). "
        "Choose one of these, another model, or pass --best-effort (best_effort=True) for an untrained guess."
    )


def nearest_known(untrained: list[Structure], vocab: Vocabulary, known: set[str], n: int = 8) -> list[str]:
    """Names of known structures nearest to the untrained ones: same body region first, then by spelling."""
    names = {vocab.get(k).name: vocab.get(k) for k in known if k in vocab}
    regions = {r for s in untrained for r in s.regions}
    target = " ".join(s.name for s in untrained)

    def rank(name: str) -> tuple[int, float]:
        same = bool(regions & set(names[name].regions))
        return (0 if same else 1, -difflib.SequenceMatcher(None, target, name).ratio())

    return sorted(names, key=rank)[:n]
