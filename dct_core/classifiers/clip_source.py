"""Zero-shot CLIP: any label as free text ("a photo of a {label}"), from local transformers CLIP weights."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DCTError
from .base import ImageClassifier
from .hf_source import preprocess_from_folder
from .labels import display_name, imagenet_labels, read_labels

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_TEMPLATE = "a photo of a {label}"


def _features(out) -> torch.Tensor:
    """transformers 4 returns a tensor, 5 an output object carrying it as pooler_output."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ZeroShotLogits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, text_features: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("text_features", text_features)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        image = _features(self.model.get_image_features(pixel_values=pixel_values))
        image = image / image.norm(dim=-1, keepdim=True)
        return self.model.logit_scale.exp() * image @ self.text_features.T


def load_clip_classifier(folder: str | Path, labels=None, *, template: str = DEFAULT_TEMPLATE) -> ImageClassifier:
    from transformers import CLIPModel, CLIPTokenizer

    folder = Path(folder)
    if "{label}" not in template:
        raise DCTError(f"the CLIP prompt template {template!r} must contain {{label}}.")
    try:
        model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval().requires_grad_(False)
    except (OSError, ValueError, KeyError) as exc:
        raise DCTError(f"{folder} is not a transformers CLIP folder (CLIPModel): {str(exc).splitlines()[0]}") from exc
    if (folder / "vocab.json").is_file():
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    else:
        from ..model_loading import clip_tokenizer  # the CLIP BPE vocabulary shipped with the package

        tokenizer = clip_tokenizer()
    names = imagenet_labels() if labels is None else labels if isinstance(labels, list) else read_labels(labels)
    prompts = [template.format(label=display_name(n)) for n in names]
    with torch.no_grad():
        tokens = tokenizer(prompts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        text = _features(model.get_text_features(input_ids=ids, attention_mask=mask))
        text = text / text.norm(dim=-1, keepdim=True)
    size = model.config.vision_config.image_size
    preprocess = preprocess_from_folder(folder, size, OPENAI_MEAN, OPENAI_STD)
    return ImageClassifier(ZeroShotLogits(model, text).eval(), list(names), preprocess, name=f"clip:{folder.name}")
