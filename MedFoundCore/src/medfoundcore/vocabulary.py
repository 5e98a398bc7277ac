"""Structure vocabulary: names, synonyms, laterality, SNOMED CT codes and colours, and the prompt normaliser.

``structures.json`` (next to this file) is the single source of truth; the CLI, the training data
loaders, the inference engine and the Slicer module all resolve names through :func:`load_vocabulary`
so that "IVC", "inferior vena cava in abdominal CT" and the TotalSegmentator label
``inferior_vena_cava`` end up as the same :class:`Structure`, with the same code and colour.

Lateral entries in the JSON (``"lateral": true``) expand into three structures: ``<key>`` (both
sides), ``<key>_left`` and ``<key>_right``, so "kidney" means both kidneys and "L kidney" the left one.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Iterator, Literal, NamedTuple

from medfoundcore.errors import InputError, shorten

if TYPE_CHECKING:  # pragma: no cover - typing only
    from medfoundcore.text import TextEncoder

__all__ = [
    "Structure",
    "Vocabulary",
    "EmbeddingMatch",
    "UnknownStructureError",
    "load_vocabulary",
    "normalize_prompt",
    "label_name_to_structure",
    "prompt_text",
    "structure_values",
]

Laterality = Literal["left", "right", "both"] | None

# Body regions from head to feet. Two regions at least two steps apart never share an axial slice,
# nor a field of view that covers only them (a brain MRI shows no liver); regions not listed (spine,
# limb, breast) span or border several.
_CRANIOCAUDAL = ("brain", "head-neck", "thorax", "abdomen", "pelvis")


def _region_steps(a: str, b: str) -> int | None:
    """How many regions apart ``a`` and ``b`` are from head to feet (None: one of them is not ordered)."""
    if a not in _CRANIOCAUDAL or b not in _CRANIOCAUDAL:
        return None
    return abs(_CRANIOCAUDAL.index(a) - _CRANIOCAUDAL.index(b))


def _regions_apart(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """True when every region of ``a`` is at least two steps from every region of ``b`` (all ordered)."""
    steps = [_region_steps(x, y) for x in a for y in b]
    return bool(steps) and all(s is not None and s >= 2 for s in steps)


_SIDES = ("left", "right")


class UnknownStructureError(InputError):
    """A prompt that names no structure of the vocabulary; ``suggestions`` holds the nearest names."""

    def __init__(self, prompt: str, suggestions: list[str]):
        self.prompt = prompt
        self.suggestions = suggestions
        hint = f" Did you mean: {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(
            f"prompt {shorten(prompt)!r}: unknown structure.{hint} "
            "Every known name: medfoundcore.vocabulary.load_vocabulary().names()."
        )


@dataclass(frozen=True)
class Structure:
    """One segmentable structure.

    ``snomed`` is (category, type, modifier) as DICOM code triplets ``"SCT^<code>^<meaning>"``
    (modifier None when the structure has no laterality), the form Slicer's terminology uses.
    ``part_of`` names the key of the enclosing structure (lobe -> lung side, L1 -> vertebrae).
    """

    key: str
    name: str
    synonyms: tuple[str, ...]
    laterality: Laterality
    snomed: tuple[str, str, str | None]
    color: tuple[int, int, int]
    modalities: tuple[str, ...]
    region: str
    part_of: str | None = None
    spans: tuple[str, ...] = ()  # every region a long structure runs through (aorta: thorax, abdomen)
    connected: bool = False  # one piece of tissue (per side): islands far smaller than the main body are errors

    @property
    def regions(self) -> tuple[str, ...]:
        """The body regions the structure occupies: ``spans`` when given, else its one ``region``."""
        return self.spans or (self.region,)

    @property
    def slicer_terminology_entry(self) -> str:
        """Slicer's serialized terminology entry (``vtkSlicerTerminologiesModuleLogic`` string format).

        Lets the Slicer module set a segment's terminology tag so that DICOM SEG export and the
        segment editor show the standard codes.
        """
        category, type_, modifier = self.snomed
        return (
            f"Segmentation category and type - 3D Slicer General Anatomy list~{category}~{type_}~{modifier or '^^'}"
            "~Anatomic codes - DICOM master list~^^~^^"
        )

    @property
    def color_float(self) -> tuple[float, float, float]:
        """Colour as 0..1 floats (what Slicer segment colours use)."""
        return tuple(c / 255.0 for c in self.color)  # type: ignore[return-value]


class EmbeddingMatch(NamedTuple):
    """Result of :meth:`Vocabulary.embedding_match`: the nearest structure and its cosine similarity."""

    structure: Structure
    similarity: float
    matched_text: str


# ----------------------------------------------------------------------------- text normalisation

_SPELLING = {
    "tumour": "tumor", "tumours": "tumor", "tumors": "tumor", "oedema": "edema", "oesophagus": "esophagus",
    "grey": "gray", "haemorrhage": "hemorrhage", "vertebrae": "vertebra", "coeliac": "celiac",
    "lt": "left", "l": "left", "rt": "right", "r": "right", "sinister": "left", "dexter": "right",
    "bilateral": "both",
}
_LEADING = {
    "segment", "segmentation", "segmented", "segmenting", "delineate", "contour", "outline", "find", "show", "label",
    "mask", "highlight", "locate", "detect", "please", "me", "all", "of", "the", "a", "an", "whole", "entire",
}
_ARTICLES = {"the", "a", "an"}
_PREPOSITIONS = {"in", "on", "from", "within", "at", "of", "for", "inside", "using", "with"}
_IMAGING = {
    "ct", "cta", "cect", "ncct", "mri", "mr", "mra", "t1", "t1w", "t1c", "t1ce", "t2", "t2w", "flair", "pet", "dwi",
    "adc", "scan", "scans", "image", "images", "imaging", "volume", "slice", "slices", "series", "study", "exam",
    "patient", "patients", "subject", "case", "weighted", "contrast", "enhanced", "tomography", "resonance",
    "computed", "magnetic", "ultrasound", "us", "radiograph",
}
_CONTEXT = {
    "abdominal", "abdomen", "chest", "thoracic", "thorax", "brain", "head", "neck", "pelvic", "pelvis", "spine",
    "spinal", "cervical", "lumbar", "cardiac", "whole", "body", "axial", "coronal", "sagittal", "this", "that",
    "these", "my", "his", "her", "their", "s", "upper", "lower", "breast", "cranial", "and", "native", "portal",
    "venous", "arterial", "phase", "planning", "radiotherapy", "3d", "2d", "given", "current",
}


def _split_camel(text: str) -> str:
    """'SpinalCord' -> 'Spinal Cord', 'RightParotid' -> 'Right Parotid' (dataset label style)."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text)


def _singular(token: str) -> str:
    """Crude plural folding applied identically to names and prompts so they meet in the middle."""
    if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


def _tokens(text: str) -> list[str]:
    """Lowercase word tokens with spelling variants and laterality abbreviations folded."""
    text = _split_camel(text).lower().replace("'s", " ")
    words = re.findall(r"[a-z0-9]+", text)
    return [_singular(_SPELLING.get(w, w)) for w in words]


def _strip_leading(tokens: list[str]) -> list[str]:
    i = 0
    while i < len(tokens) - 1 and tokens[i] in _LEADING:
        i += 1
    return tokens[i:]


def _strip_trailing_clause(tokens: list[str]) -> list[str] | None:
    """Drop a trailing "in abdominal CT" / "on MRI" / "of the patient" clause; None if there is none."""
    noise = _IMAGING | _CONTEXT | _ARTICLES | _PREPOSITIONS
    for i, tok in enumerate(tokens):
        if i > 0 and tok in _PREPOSITIONS and all(t in noise for t in tokens[i + 1 :]):
            return tokens[:i]
    tail = len(tokens)  # bare trailing modality words: "liver ct", "spleen mri"
    while tail > 1 and tokens[tail - 1] in _IMAGING:
        tail -= 1
    return tokens[:tail] if tail < len(tokens) else None


def _candidates(text: str) -> Iterator[list[str]]:
    """Progressively cleaned token lists for one prompt, most literal first."""
    tokens = _tokens(text)
    yield tokens
    tokens = _strip_leading(tokens)
    yield tokens
    stripped = _strip_trailing_clause(tokens)
    if stripped:
        yield stripped
        tokens = stripped
    yield [t for t in tokens if t not in _ARTICLES]


def _key(tokens: list[str]) -> tuple[str, ...]:
    return tuple(sorted(tokens))


def _split_laterality(tokens: list[str]) -> tuple[list[str], Laterality]:
    sides = {t for t in tokens if t in (*_SIDES, "both")}
    rest = [t for t in tokens if t not in (*_SIDES, "both")]
    if len(sides) != 1:
        if sides == {"left", "right"}:
            return [t for t in rest if t != "and"], "both"
        return tokens, None
    return rest, sides.pop()  # type: ignore[return-value]


# ----------------------------------------------------------------------------- the vocabulary


class Vocabulary:
    """All known structures plus the indices that resolve free text and dataset label names."""

    def __init__(self, doc: dict):
        self._modifiers: dict[str, str] = doc["laterality_modifiers"]
        self._structures: dict[str, Structure] = {}
        self._index: dict[tuple[str, ...], str] = {}
        self._aliases: dict[str, list[str]] = {}
        for entry in doc["structures"]:
            for structure, aliases in self._expand(entry):
                self._add(structure, aliases)
        self._label_aliases: dict[str, str] = doc.get("label_aliases", {})
        self._unmapped = [(re.compile(u["pattern"]), u["reason"]) for u in doc.get("unmapped_labels", [])]
        for label, key in self._label_aliases.items():
            if key not in self._structures:
                raise ValueError(f"structures.json: label alias {label!r} points to unknown key {key!r}")
        self._embeddings: dict[int, tuple[list[str], list[str], object]] = {}

    # -- construction -------------------------------------------------------------------------
    def _expand(self, e: dict) -> Iterator[tuple[Structure, list[str]]]:
        common = dict(color=tuple(e["color"]), modalities=tuple(e["modalities"]), region=e["region"],
                      spans=tuple(e.get("spans", ())), connected=bool(e.get("connected")))
        names = [e["name"], *e["synonyms"], e["key"].replace("_", " ")]
        if not e.get("lateral"):
            side = e.get("laterality")
            snomed = (e["category"], e["type"], self._modifiers[side] if side else None)
            yield Structure(e["key"], e["name"], tuple(e["synonyms"]), side, snomed,
                            part_of=e.get("part_of"), **common), names
            return
        both = (e["category"], e["type"], self._modifiers["both"])
        yield Structure(e["key"], e["name"], tuple(e["synonyms"]), "both", both,
                        part_of=e.get("part_of") or e.get("part_of_lateral"),
                        **common), [*names, *(f"both {n}" for n in names)]
        for side in _SIDES:
            parent = f"{e['part_of_lateral']}_{side}" if e.get("part_of_lateral") else e["key"]
            side_names = [f"{side} {n}" for n in names]
            yield Structure(
                f"{e['key']}_{side}", f"{side} {e['name']}", tuple(side_names[1:]), side,
                (e["category"], e["type"], self._modifiers[side]), part_of=parent, **common,
            ), side_names

    def _add(self, structure: Structure, aliases: list[str]) -> None:
        if structure.key in self._structures:
            raise ValueError(f"structures.json: duplicate key {structure.key!r}")
        self._structures[structure.key] = structure
        self._aliases[structure.key] = aliases
        for alias in aliases:
            k = _key(_tokens(alias))
            owner = self._index.setdefault(k, structure.key)
            if owner != structure.key:
                raise ValueError(f"structures.json: {alias!r} names both {owner!r} and {structure.key!r}")

    # -- lookup -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._structures)

    def __iter__(self) -> Iterator[Structure]:
        return iter(self._structures.values())

    def __contains__(self, key: object) -> bool:
        return key in self._structures

    def get(self, key: str) -> Structure:
        """The structure with this exact key (raises InputError naming the key otherwise)."""
        try:
            return self._structures[key]
        except KeyError:
            raise InputError(f"structure key {key!r} is not in the vocabulary") from None

    def names(self, *, synonyms: bool = False) -> list[str]:
        """Sorted display names (plus synonyms if asked) for completion lists and help texts."""
        out = {s.name for s in self}
        if synonyms:
            out.update(a for aliases in self._aliases.values() for a in aliases)
        return sorted(out)

    def parts(self, key: str) -> list[Structure]:
        """Structures directly ``part_of`` this key (lateral sides, lobes, vertebral levels...)."""
        return [s for s in self if s.part_of == key]

    def _lookup(self, tokens: list[str]) -> Structure | None:
        if not tokens:
            return None
        key = self._index.get(_key(tokens))
        if key is None:  # "left lower lobe lung" style orders and redundant side words
            rest, side = _split_laterality(tokens)
            base = self._index.get(_key(rest)) if rest and side else None
            if base is not None:
                key = base if side == "both" else self._side_of(base, side)
        return self._structures.get(key) if key else None

    def _side_of(self, key: str, side: str) -> str | None:
        structure = self._structures[key]
        if structure.laterality == side:
            return key
        candidate = f"{key}_{side}"
        return candidate if candidate in self._structures else None

    # -- public resolution --------------------------------------------------------------------
    def normalize_prompt(self, text: str) -> Structure:
        """Resolve a free-text prompt ("segment the L kidney in abdominal CT") to one structure.

        Raises InputError for an empty prompt and UnknownStructureError (an InputError) listing the
        nearest known names when nothing matches.
        """
        if text is None or not str(text).strip():
            raise InputError("empty prompt: type the structure to segment, e.g. 'liver' or 'left kidney'")
        seen: set[tuple[str, ...]] = set()
        for tokens in _candidates(str(text)):
            if tuple(tokens) in seen:
                continue
            seen.add(tuple(tokens))
            found = self._lookup(tokens)
            if found is not None:
                return found
        raise UnknownStructureError(str(text).strip(), self.suggest(str(text)))

    def suggest(self, text: str, n: int = 5) -> list[str]:
        """Nearest display names to ``text`` (difflib over names and synonyms)."""
        cleaned = " ".join(list(_candidates(text))[-1]) or text.lower()
        alias_to_name: dict[str, str] = {}
        for key, aliases in self._aliases.items():
            for alias in aliases:
                alias_to_name.setdefault(" ".join(_tokens(alias)), self._structures[key].name)
        # 0.6, not difflib's 0.5: below it a suggestion shares letters, not meaning ("foie" -> "lien" -> spleen)
        matches = difflib.get_close_matches(cleaned, list(alias_to_name), n=4 * n, cutoff=0.6)
        names: list[str] = []
        for m in matches:
            if alias_to_name[m] not in names:
                names.append(alias_to_name[m])
        return names[:n]

    def try_normalize(self, text: str) -> Structure | None:
        """Like :meth:`normalize_prompt` but returns None instead of raising."""
        try:
            return self.normalize_prompt(text)
        except InputError:
            return None

    def unmapped_reason(self, label_name: str) -> str | None:
        """Why a dataset label is deliberately not in the vocabulary (None if it is not listed)."""
        for pattern, reason in self._unmapped:
            if pattern.search(label_name):
                return reason
        return None

    def label_name_to_structure(self, name: str) -> Structure | None:
        """Map a dataset label name ("kidney_left", "SpinalCord", "Hippocampus_L") to a structure or None."""
        if name in self._label_aliases:
            return self._structures[self._label_aliases[name]]
        if self.unmapped_reason(name) or not name.strip():
            return None
        found = self.try_normalize(name)
        if found is None and "(" in name:  # "hippocampus_anterior (head)" -> "hippocampus_anterior"
            found = self.try_normalize(re.sub(r"\(.*?\)", " ", name))
        return found

    def distant_from(self, regions: set[str]) -> list[Structure]:
        """Structures that cannot be in an image covering ``regions`` (e.g. abdominal organs for a brain MRI)."""
        ordered = tuple(r for r in regions if r in _CRANIOCAUDAL)
        if not ordered:
            return []
        return [s for s in self if _regions_apart(s.regions, ordered)]

    @staticmethod
    def never_in_one_axial_slice(a: Structure, b: Structure) -> bool:
        """True when no axial slice can show both ``a`` and ``b``: their body regions are at least two
        steps apart head to feet (brain and liver; not liver and lung, whose bases share slices)."""
        return _regions_apart(a.regions, b.regions)

    def modality_mismatch(self, structure: Structure, modality: str | None) -> str | None:
        """A warning when ``structure`` is not normally segmented on ``modality`` ("CT"/"MRI"), else None."""
        if not modality:
            return None
        modality = "MRI" if modality.upper() in {"MR", "MRI"} else modality.upper()
        if modality in structure.modalities:
            return None
        return (
            f"'{structure.name}' is normally segmented on {'/'.join(structure.modalities)}, "
            f"but the image looks like {modality}: expect an empty or unreliable result"
        )

    def embedding_match(
        self, text: str, text_encoder: TextEncoder, threshold: float = 0.6
    ) -> EmbeddingMatch | None:
        """Nearest structure to ``text`` by sentence-embedding cosine similarity (for out-of-vocabulary prompts).

        Compares against every name and synonym; returns None when the best similarity is below
        ``threshold``. Embeddings of the vocabulary are computed once per encoder.
        """
        if not text or not text.strip():
            raise InputError("empty prompt: nothing to match")
        aliases, keys, matrix = self._alias_embeddings(text_encoder)
        query = text_encoder.encode([text.strip()])[0]
        sims = matrix @ query
        best = int(sims.argmax())
        score = float(sims[best])
        if score < threshold:
            return None
        return EmbeddingMatch(self._structures[keys[best]], score, aliases[best])

    def _alias_embeddings(self, text_encoder: TextEncoder) -> tuple[list[str], list[str], object]:
        cached = self._embeddings.get(id(text_encoder))
        if cached is None:
            aliases, keys = [], []
            for key, names in self._aliases.items():
                for alias in dict.fromkeys(names):
                    aliases.append(alias)
                    keys.append(key)
            cached = (aliases, keys, text_encoder.encode(aliases))
            self._embeddings[id(text_encoder)] = cached
        return cached


@functools.lru_cache(maxsize=1)
def load_vocabulary() -> Vocabulary:
    """The packaged vocabulary (parsed once per process)."""
    text = resources.files("medfoundcore").joinpath("structures.json").read_text(encoding="utf-8")
    return Vocabulary(json.loads(text))


def normalize_prompt(text: str) -> Structure:
    """Shortcut for ``load_vocabulary().normalize_prompt(text)``."""
    return load_vocabulary().normalize_prompt(text)


def label_name_to_structure(name: str) -> Structure | None:
    """Shortcut for ``load_vocabulary().label_name_to_structure(name)``."""
    return load_vocabulary().label_name_to_structure(name)


def prompt_text(structure: Structure) -> str:
    """The text the model is conditioned on for a structure: its canonical name (training = inference)."""
    return structure.name


def structure_values(names: dict[int, str], vocab: Vocabulary, allowed: set[str] | None) -> dict[str, list[int]]:
    """Map a case's label table to vocabulary structures, adding parents (left+right -> both, ribs, ...)."""
    out: dict[str, set[int]] = {}
    for value, name in names.items():
        structure = vocab.label_name_to_structure(name)
        if structure is None:
            continue
        for key in [structure.key, *ancestors(structure.key, vocab)]:
            out.setdefault(key, set()).add(int(value))
    return {k: sorted(v) for k, v in out.items() if allowed is None or k in allowed}


def ancestors(key: str, vocab: Vocabulary) -> list[str]:
    """Enclosing structures via ``part_of`` (kidney_left -> kidney, vertebra_L1 -> vertebrae)."""
    found: list[str] = []
    parent = vocab.get(key).part_of
    while parent and parent in vocab and parent not in found:
        found.append(parent)
        parent = vocab.get(parent).part_of
    return found
