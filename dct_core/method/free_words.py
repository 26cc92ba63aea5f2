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

from ..config import check_free_words, free_word_list
from ..errors import DCTError
from .backend import Backend

_SAME = {"gray": "grey"}  # spellings of one word


def _words(phrase: str) -> list[str]:
    return [_SAME.get(w, w) for w in re.findall(r"[^\W\d_]+", phrase.lower())]


def not_in_class_name(words: str, *names: str) -> str:
    """The free words without those the class's own name uses: a "red-throated warbler" or a "black swan" is told
    apart by that colour, so it is not free for its token."""
    used = {w for name in names for w in _words(name)}
    listed = free_word_list(words)
    kept = [w for w in listed if not (_words(w) and set(_words(w)) <= used)]
    if kept == listed:
        return words
    return ", ".join(kept) if len(kept) >= 2 else "none"  # one word left spans no direction


def _learned(norms: torch.Tensor) -> torch.Tensor:
    """Which words the model learned, by their input embeddings' norms: one it never learned keeps a small random
    embedding (the demo world knows nine colours, not "brown"); centred, it would stand for minus the others' mean."""
    return norms >= 0.35 * norms.median()


def free_directions(backend: Backend, words: str) -> dict[str, torch.Tensor]:
    """Per text encoder, an orthonormal basis [D, k] of the free words' centred embeddings (empty: none)."""
    listed = check_free_words(words)
    if not listed:
        return {}
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
        m = m[_learned(m.norm(dim=1))]
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
        self.basis: list[torch.Tensor] = []
        self.base: torch.Tensor | None = None  # set last: None = nothing to keep off (fewer than two usable words)
        self.scale = 1.0
        listed = free_word_list(words)
        if len(listed) < 2:
            return
        with torch.no_grad():
            vectors = [backend.init_vectors(w, num_vectors) for w in listed]
            norms = torch.tensor([sum(float(v.float().norm()) for v in vs.values()) for vs in vectors])
            vectors = [vs for vs, learned in zip(vectors, _learned(norms)) if learned]
            if len(vectors) < 2:
                return
            base = self._flat(init)
            rows = torch.stack([self._flat(vs) for vs in vectors])  # [W, P, F]
        # A word whose conditioning is not finite (an untrained half-precision encoder can overflow on one) spans
        # nothing usable: left out too.
        rows = rows[torch.isfinite(rows).flatten(1).all(1)]
        if rows.shape[0] < 2 or not torch.isfinite(base).all():
            return
        spread = 0.0
        for p in range(len(self.prompts)):
            m = rows[:, p].double() - rows[:, p].double().mean(0, keepdim=True)
            _, sizes, directions = torch.linalg.svd(m, full_matrices=False)  # k words centred: k - 1 directions
            self.basis.append(directions[sizes > 1e-4 * sizes.max().clamp_min(1e-30)].T.float())
            spread += float(m.pow(2).sum(1).mean())
        if spread > 1e-12:  # else the words change nothing here (e.g. the token truncated away): nothing to keep off
            self.base, self.scale = base, spread

    def _flat(self, vectors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[P, F]: each prompt's conditioning, flattened (SDXL: both encoders' hidden states and the pooled)."""
        cond = self.backend.encode(self.prompts, vectors)
        parts = [cond.hidden.float().flatten(1)] + ([] if cond.pooled is None else [cond.pooled.float().flatten(1)])
        return torch.cat(parts, 1)

    @property
    def active(self) -> bool:
        return self.base is not None

    def penalty(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.base is None:
            return torch.zeros(())
        flat = self._flat(params)  # a host may return it on its own device (ComfyUI: the CPU)
        device = flat.device
        with torch.autocast(device.type, enabled=False):  # the basis's small entries would round away in fp16
            moved = flat.float() - self.base.to(device)
            inside = torch.stack([(moved[p] @ q.to(device)).pow(2).sum() for p, q in enumerate(self.basis)]).sum()
        return inside / self.scale
