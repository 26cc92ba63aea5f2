"""The CLIP BPE vocabulary shipped with the package (``dct_core/configs/clip_tokenizer/``), as a tokenizer: what
SD's text encoders, zero-shot CLIP classifiers and the demo world all read prompts with, offline."""

from __future__ import annotations

from pathlib import Path

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"  # shipped model configs and vocabulary (no weights)
TOKENIZER_DIR = CONFIGS_DIR / "clip_tokenizer"


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """The CLIP BPE tokenizer of SD from the shipped vocabulary; SD2 and SDXL's 2nd tokenizer pad with "!"."""
    from transformers import CLIPTokenizer

    vocab, merges = str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt")
    return CLIPTokenizer(vocab, merges, model_max_length=77, pad_token=pad_token)
