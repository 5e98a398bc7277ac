"""The frozen MiniLM text encoder gives real, normalised, cached sentence embeddings offline."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from medfoundcore.errors import InputError
from medfoundcore.text import TEXT_DIM, TextEncoder
from medfoundcore.vocabulary import load_vocabulary


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder("cpu")


def test_embeddings_are_unit_vectors_with_medical_semantics(encoder):
    e = encoder.encode(["liver", "hepatic", "femur"])
    assert e.shape == (3, TEXT_DIM) and e.dtype == torch.float32 and not e.requires_grad
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    liver, hepatic, femur = e
    assert float(liver @ hepatic) > float(liver @ femur) + 0.2


def test_cache_returns_identical_vectors_without_reencoding(encoder):
    first = encoder.encode(["left kidney in abdominal CT"])
    encoder._model = None  # a cache hit must not need the model again
    try:
        again = encoder.encode(["left kidney in abdominal CT"])
    finally:
        encoder._model = None
    assert torch.equal(first, again)


def test_empty_text_is_rejected(encoder):
    with pytest.raises(InputError, match="empty"):
        encoder.encode(["liver", "  "])


def test_embedding_match_for_out_of_vocabulary_prompts(encoder):
    vocab = load_vocabulary()
    match = vocab.embedding_match("hepatic parenchyma", encoder, threshold=0.6)
    assert match is not None and match.structure.key == "liver" and match.similarity > 0.8
    assert vocab.embedding_match("pancreatic gland tissue", encoder).structure.key == "pancreas"
    assert vocab.embedding_match("banana", encoder, threshold=0.6) is None


def test_importing_medfoundcore_does_not_load_the_text_model():
    code = (
        "import sys, medfoundcore, medfoundcore.text, medfoundcore.vocabulary;"
        "assert 'sentence_transformers' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
