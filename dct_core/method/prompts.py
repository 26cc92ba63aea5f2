"""Prompt templates and tokenization with slots for the learned vectors.

A prompt given to a backend holds the literal marker ``{token}`` where the class token goes. The CLIP
tokenizer is run on the text around the marker, so the user's tokenizer is never modified and the
marker takes exactly ``num_vectors`` positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import DCTError
from ..settings import LABEL_MARK, TOKEN_MARK, check_templates

# The markers and the template check are the settings table's (a template is a setting users type).
__all__ = ["LABEL_MARK", "TOKEN_MARK", "check_templates"]


def fill_label(template: str, label: str) -> str:
    """Insert the class name; the token marker stays for the backend."""
    return template.replace(LABEL_MARK, label)


def strip_token(prompt: str) -> str:
    """The same prompt without the class token (the baseline)."""
    return " ".join(prompt.replace(TOKEN_MARK, " ").split())


def prompts_for_batch(templates: Sequence[str], label: str, batch_size: int) -> list[str]:
    """Image i of the batch uses template i mod len(templates), so every step sees the same pairs."""
    return [fill_label(templates[i % len(templates)], label) for i in range(batch_size)]


def tokenize_with_slots(tokenizer, prompts: Sequence[str], num_vectors: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [B, L] and slots [B, L]: the vector index at the class-token positions, -1 elsewhere.

    Prompts without the marker get no slots (e.g. the negative prompt).
    """
    length = tokenizer.model_max_length
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    all_ids, all_slots = [], []
    for prompt in prompts:
        ids, slots = [bos], [-1]
        parts = prompt.split(TOKEN_MARK)
        for k, part in enumerate(parts):
            piece = tokenizer(part, add_special_tokens=False)["input_ids"] if part.strip() else []
            ids += piece
            slots += [-1] * len(piece)
            if k < len(parts) - 1:
                ids += [bos] * num_vectors  # placeholder ids; the embedding output is replaced there
                slots += list(range(num_vectors))
        if len(ids) + 1 > length:
            if any(s >= 0 for s in slots[length - 1 :]):
                raise DCTError(
                    f"prompt {prompt!r} is too long: the class token falls past the text encoder's "
                    f"{length} tokens; shorten the prompt or move {TOKEN_MARK} earlier."
                )
            ids, slots = ids[: length - 1], slots[: length - 1]
        ids.append(eos)
        slots.append(-1)
        pad_len = length - len(ids)
        all_ids.append(ids + [pad] * pad_len)
        all_slots.append(slots + [-1] * pad_len)
    return torch.tensor(all_ids, dtype=torch.long), torch.tensor(all_slots, dtype=torch.long)
