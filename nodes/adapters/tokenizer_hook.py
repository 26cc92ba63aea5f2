"""Teaching the host's tokenizers a class token, in memory, without any file.

ComfyUI's tokenizer splices a tensor in wherever a prompt says ``embedding:NAME`` and its lookup finds one;
we answer that lookup for our trigger name with the learned vectors (per text encoder: clip_l, clip_g,
clip_h). A bare trigger word is rewritten to ``embedding:NAME`` first, so both spellings work.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from . import host_internals as host


def sub_tokenizers(tokenizer) -> dict[str, Any]:
    """The per-encoder tokenizers by embedding key ("clip_l", "clip_g", "clip_h")."""
    kind = host.require("SDTokenizer")
    return {t.embedding_key: t for t in vars(tokenizer).values() if isinstance(t, kind)}


def text_models(clip) -> dict[str, Any]:
    """The per-encoder text models, keyed like their tokenizers (same attribute names in the host)."""
    kind = host.require("SDTokenizer")
    names = {attr: t.embedding_key for attr, t in vars(clip.tokenizer).items() if isinstance(t, kind)}
    return {key: getattr(clip.cond_stage_model, attr) for attr, key in names.items()}


def with_trigger(text: str, trigger: str) -> str:
    """Rewrite the bare trigger word (not already after ``embedding:``) to ``embedding:<trigger>``."""
    pattern = r"(?<![\w:-])" + re.escape(trigger) + r"(?![\w-])"
    return re.sub(pattern, f"embedding:{trigger}", text)


def _returns_name(original, sub) -> bool:
    """Whether the host's ``_try_get_embedding`` returns (embed, name, leftover), as 2026 hosts do, or
    (embed, leftover), as 0.3.64 does: asked once, of a name it cannot find, with no folder to search."""
    directory = sub.embedding_directory
    sub.embedding_directory = []
    try:
        return len(original("dct-no-such-embedding")) == 3
    finally:
        sub.embedding_directory = directory


def _install(sub, trigger: str, vectors: torch.Tensor) -> tuple:
    original = sub._try_get_embedding
    with_name = _returns_name(original, sub)

    def lookup(embedding_name: str):
        words = embedding_name.split()
        if words and words[0].rstrip(",") == trigger:
            tail = words[0][len(trigger):]  # a trailing comma belongs to the text that follows
            leftover = " ".join(([tail] if tail else []) + words[1:])
            return (vectors, trigger, leftover) if with_name else (vectors, leftover)
        return original(embedding_name)

    saved = (sub.__dict__.get("_try_get_embedding"), sub.embedding_directory)
    sub._try_get_embedding = lookup
    if sub.embedding_directory is None:  # the host only looks embeddings up when it has a directory
        sub.embedding_directory = []
    return saved


@contextmanager
def token_registered(tokenizer, trigger: str, vectors: dict[str, torch.Tensor]) -> Iterator[None]:
    """For the duration, ``embedding:<trigger>`` in a prompt resolves to ``vectors`` (gradients flow)."""
    subs = sub_tokenizers(tokenizer)
    saved = {}
    try:
        for key, sub in subs.items():
            if key in vectors:
                saved[key] = _install(sub, trigger, vectors[key])
        yield
    finally:
        for key, (method, directory) in saved.items():
            sub = subs[key]
            if method is None:
                del sub._try_get_embedding
            else:
                sub._try_get_embedding = method
            sub.embedding_directory = directory


def clip_with_token(clip, trigger: str, vectors: dict[str, torch.Tensor]):
    """A clone of ``clip`` whose (copied) tokenizer knows the trigger word; the original is untouched, so
    any stock CLIPTextEncode downstream of the clone understands it."""
    clone = clip.clone()
    tokenizer = copy.copy(clip.tokenizer)
    for attr, value in list(vars(tokenizer).items()):
        if value in sub_tokenizers(clip.tokenizer).values():
            setattr(tokenizer, attr, copy.copy(value))
    for key, sub in sub_tokenizers(tokenizer).items():
        if key in vectors:
            _install(sub, trigger, vectors[key].detach().clone())
    inner = tokenizer.tokenize_with_weights

    def tokenize_with_weights(text: str, *args, **kwargs):
        return inner(with_trigger(text, trigger), *args, **kwargs)

    tokenizer.tokenize_with_weights = tokenize_with_weights
    clone.tokenizer = tokenizer
    return clone
