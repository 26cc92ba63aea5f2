"""Keeping the token off the embedding directions of words that name what the prompt leaves free (``free_words``).

Colour collapse (a token that paints every bird one colour) comes through the token itself: blocking the guide's
gradient through the images' colour does not stop it (bench/results/recipes-2026-12-06.md, fourth run), because
the token's vector moves toward what a colour word would add. Here, after every update, the token's displacement
from its init word is projected off the span of the free words' centred input embeddings (colour words by
default in the balanced recipe): the token can still move in every other direction of the embedding, at no cost.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import DCTError
from .backend import Backend

OFF = ("none", "off")  # what a front end types to turn it off (an empty node input means the recipe's)


def free_word_list(words: str) -> list[str]:
    if words.strip().lower() in OFF:
        return []
    return [w.strip() for w in words.split(",") if w.strip()]


def free_directions(backend: Backend, words: str) -> dict[str, torch.Tensor]:
    """Per text encoder, an orthonormal basis [D, k] of the free words' centred embeddings (empty: none)."""
    listed = free_word_list(words)
    if not listed:
        return {}
    if len(listed) < 2:
        raise DCTError(f"free_words {words!r}: give at least two words, comma-separated (e.g. 'red, green, blue'): "
                       "the directions kept off are their differences.")
    rows = []
    for word in listed:
        try:
            rows.append(backend.init_vectors(word, 1))
        except DCTError:
            raise DCTError(f"free word {word!r} gives no tokens; use plain words such as 'red, green, blue'.") \
                from None
    basis = {}
    for key in rows[0]:
        m = torch.cat([r[key].detach().float().cpu() for r in rows])
        # A word the model never learned keeps a small random embedding (the demo world knows nine colours, not
        # "brown"); centred, it would stand for minus the others' mean, so it is left out.
        norms = m.norm(dim=1)
        m = m[norms >= 0.35 * norms.median()]
        if m.shape[0] < 2:
            continue
        m = m - m.mean(0, keepdim=True)  # differences between the words: what choosing one over another adds
        q, r = torch.linalg.qr(m.T)
        diag = r.diagonal().abs()
        basis[key] = q[:, diag > 1e-6 * diag.max().clamp_min(1e-30)]
    return basis


@torch.no_grad()
def project_off(basis: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor],
                init: Mapping[str, torch.Tensor]) -> None:
    """Each vector's displacement from its init word, without its part in the free words' span."""
    for key, q in basis.items():
        p, start = params[key], init[key]
        q = q.to(p.device, p.dtype)
        moved = p - start
        p.copy_(start + moved - (moved @ q) @ q.T)
