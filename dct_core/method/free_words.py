"""Keeping the token off the embedding directions of words that name what the prompt leaves free (``free_words``).

Colour collapse (a token that paints every bird one colour) comes through the token itself: blocking the guide's
gradient through the images' colour does not stop it (bench/results/recipes-2026-12-06.md, fourth run), because
the token's vector moves toward what a colour word would add. Here, after every update, the token's displacement
from its init word is projected off the span of the free words' centred input embeddings (colour words by
default in the balanced recipe): the token can still move in every other direction of the embedding, at no cost.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..errors import DCTError
from .backend import Backend

OFF = ("none", "off")  # what a front end types to turn it off (an empty node input means the recipe's)


def free_word_list(words: str) -> list[str]:
    if words.strip().lower() in OFF:
        return []
    return [w.strip() for w in words.split(",") if w.strip()]


def not_in_class_name(words: str, *names: str) -> str:
    """The free words without those the class's own name uses: a "red-throated warbler" or a "black swan" is told
    apart by that colour, so it is not free for its token."""
    used = {w for name in names for w in re.findall(r"[a-z]+", name.lower())}
    listed = free_word_list(words)
    kept = [w for w in listed if w.lower() not in used]
    if kept == listed:
        return words
    return ", ".join(kept) if len(kept) >= 2 else "none"  # one word left spans no direction


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


class FreeConditioning:
    """The free words kept out of what the UNet reads (``free_penalty``): the projection above acts on the token's
    input vector, but the text encoder mixes the token into every position after it, so a direction off the words'
    input span can still come out as a colour. Per training template, the span of the conditioning the prompt gets
    with each free word in the token's place (centred over the words) is fixed once; the penalty is the token's
    conditioning displacement (from the init word's) inside that span, in units of the words' own spread there:
    1 = the token carries as much of the free attribute as choosing one of the words does."""

    def __init__(self, backend: Backend, words: str, prompts: list[str], init: Mapping[str, torch.Tensor],
                 num_vectors: int):
        self.backend, self.prompts = backend, sorted(set(prompts))
        listed = free_word_list(words)
        self.basis: list[torch.Tensor] = []
        self.base: torch.Tensor | None = None
        self.scale = 1.0
        if len(listed) < 2:
            return
        with torch.no_grad():
            self.base = self._flat(init)
            vectors = [backend.init_vectors(w, num_vectors) for w in listed]
            # Words the model never learned keep a small random input embedding (as in free_directions): left out.
            norms = torch.tensor([sum(float(v.float().norm()) for v in vs.values()) for vs in vectors])
            vectors = [vs for vs, norm in zip(vectors, norms) if norm >= 0.35 * norms.median()]
            if len(vectors) < 2:
                self.base = None
                return
            rows = torch.stack([self._flat(vs) for vs in vectors])  # [W, P, F]
        spread = 0.0
        for p in range(len(self.prompts)):
            m = rows[:, p].double() - rows[:, p].double().mean(0, keepdim=True)
            _, sizes, directions = torch.linalg.svd(m, full_matrices=False)  # k words centred: k - 1 directions
            self.basis.append(directions[sizes > 1e-4 * sizes.max().clamp_min(1e-30)].T.float())
            spread += float(m.pow(2).sum(1).mean())
        self.scale = spread

    def _flat(self, vectors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.backend.encode(self.prompts, vectors).hidden.float().flatten(1)  # [P, L*D]

    def penalty(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor | float:
        if self.base is None:
            return 0.0
        moved = self._flat(params) - self.base.to(params[next(iter(params))].device)
        inside = sum((moved[p] @ q.to(moved.device)).pow(2).sum() for p, q in enumerate(self.basis))
        return inside / self.scale
