"""Zero-shot CLIP: any label as free text ("a photo of a {label}"), from local transformers CLIP weights.

Registers the ``clip:<folder>`` classifier source (the node's "zero-shot CLIP" kind), and one that answers a
CLIP folder named without ``clip:`` with that hint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import DCTError
from ..registry import NO_OPTIONS, ClassifierOptions, ClassifierSource, register_classifier_source
from .base import ImageClassifier
from .features import FeatureFn
from .hf_source import preprocess_from_folder
from .labels import display_name, imagenet_labels, labels_from
from .preprocess import Preprocess
from .text_files import model_config_or_none

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_TEMPLATE = "a photo of a {label}"
NODE_KIND = "zero-shot CLIP"  # the Load Classifier node's kind (saved workflows store it)


def _features(out) -> torch.Tensor:
    """transformers 4 returns a tensor, 5 an output object carrying it as pooler_output."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ZeroShotLogits(torch.nn.Module):
    """Scaled cosine similarity of the image to each label's text embedding (transformers CLIP)."""

    def __init__(self, model: torch.nn.Module, text_features: torch.Tensor):
        super().__init__()
        self.model: Any = model  # transformers or open_clip CLIP
        self.register_buffer("text_features", text_features)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixel_values))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        image = self.image_features(pixel_values)
        image = image / image.norm(dim=-1, keepdim=True)
        return self.model.logit_scale.exp() * image @ self.text_features.T


def _label_names(labels) -> list[str]:
    return imagenet_labels() if labels is None else labels_from(labels)


class OpenCLIPZeroShot(ZeroShotLogits):
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)


def clip_prompt(template: str, label: str) -> str:
    """The zero-shot prompt for ``label``: ``{label}`` replaced literally, as in the training templates (never
    str.format, which would read format specs, fields and attributes from a user's text)."""
    return template.replace("{label}", label)


def load_open_clip_classifier(weights: str | Path, arch: str, labels=None, *, template: str = DEFAULT_TEMPLATE):
    """open_clip weights (e.g. open_clip_pytorch_model.bin / .safetensors of laion/CLIP-ViT-H-14-laion2B-s32B-b79K)
    with the open_clip architecture name (e.g. ViT-H-14). Needs the optional ``open_clip_torch`` package."""
    try:
        import open_clip
    except ImportError as exc:
        raise DCTError("open_clip weights need the open_clip_torch package: pip install open_clip_torch") from exc
    from .weights import read_state_dict

    if arch not in open_clip.list_models():
        raise DCTError(f"open_clip has no architecture {arch!r}; e.g. ViT-B-32, ViT-L-14, ViT-H-14.")
    model = open_clip.create_model(arch, pretrained=None)
    state = read_state_dict(weights)  # our own safe reader: safetensors, or weights-only pickles
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DCTError(f"{Path(weights).name} does not fit open_clip {arch}: {str(exc).splitlines()[1:2]}") from exc
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(arch)
    names = _label_names(labels)
    with torch.no_grad():
        text = model.encode_text(tokenizer([clip_prompt(template, display_name(n)) for n in names]))
        text = text / text.norm(dim=-1, keepdim=True)
    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    preprocess = Preprocess(input_size=(int(size[0]), int(size[1])), crop_pct=1.0, interpolation="bicubic",
                            mean=tuple(cfg.get("mean", OPENAI_MEAN)), std=tuple(cfg.get("std", OPENAI_STD)))
    return ImageClassifier(OpenCLIPZeroShot(model, text).eval(), list(names), preprocess,
                           name=f"clip:open_clip:{arch}")


def load_clip_classifier(folder: str | Path, labels=None, *, template: str = DEFAULT_TEMPLATE,
                         arch: str | None = None) -> ImageClassifier:
    """Zero-shot CLIP from a transformers CLIP folder, or from an open_clip weights file with ``arch``."""
    from transformers import CLIPModel, CLIPTokenizer

    folder = Path(folder)
    if "{label}" not in template:
        raise DCTError(f"the CLIP prompt template {template!r} must contain {{label}}.")
    if folder.is_file():
        if not arch:
            raise DCTError(f"{folder.name} is a weights file: name its open_clip architecture, e.g. "
                           f"clip:{folder}#arch=ViT-H-14 (or give a transformers CLIP folder).")
        return load_open_clip_classifier(folder, arch, labels, template=template)
    try:
        model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval().requires_grad_(False)
    except (OSError, ValueError, KeyError) as exc:
        raise DCTError(f"{folder} is not a transformers CLIP folder (CLIPModel): {str(exc).splitlines()[0]}") from exc
    if (folder / "vocab.json").is_file():
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    else:
        from ..formats.clip_vocab import clip_tokenizer  # the CLIP BPE vocabulary shipped with the package

        tokenizer = clip_tokenizer()
    names = _label_names(labels)
    prompts = [clip_prompt(template, display_name(n)) for n in names]
    with torch.no_grad():
        tokens = tokenizer(prompts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        text = _features(model.get_text_features(input_ids=ids, attention_mask=mask))
        text = text / text.norm(dim=-1, keepdim=True)
    size = model.config.vision_config.image_size
    preprocess = preprocess_from_folder(folder, size, OPENAI_MEAN, OPENAI_STD)
    return ImageClassifier(ZeroShotLogits(model, text).eval(), list(names), preprocess, name=f"clip:{folder.name}")


def _load(target: str, options: ClassifierOptions = NO_OPTIONS) -> ImageClassifier:
    from .spec import require_existing

    return load_clip_classifier(require_existing(target), options.labels,
                                template=options.template or DEFAULT_TEMPLATE, arch=options.arch)


def _quick_labels(target: str, options: ClassifierOptions = NO_OPTIONS) -> list[str]:
    return imagenet_labels()  # the default labels, whatever the weights


def clip_features(classifier: ImageClassifier) -> FeatureFn | None:
    """The image embedding (``get_image_features`` / ``encode_image``), before the L2 normalization of the
    logits."""
    module = classifier.module
    return module.image_features if isinstance(module, ZeroShotLogits) else None


def _is_clip_folder(spec: str) -> bool:
    cfg = model_config_or_none(spec)
    return cfg is not None and cfg.get("model_type") == "clip"


def _refuse_folder(target: str, options: ClassifierOptions = NO_OPTIONS) -> ImageClassifier:
    path = Path(target).expanduser()
    raise DCTError(f"{path} is a CLIP model; use it as a zero-shot classifier with clip:{path}.")


def _refuse_folder_labels(target: str, options: ClassifierOptions = NO_OPTIONS) -> list[str]:
    raise DCTError(f"{Path(target).name} is a CLIP model; choose kind = {NODE_KIND}.")


register_classifier_source(ClassifierSource(
    "clip", _load, "zero-shot CLIP over the labels: clip:<transformers CLIP folder> or "
    "clip:<open_clip weights>#arch=<architecture>",
    quick_labels=_quick_labels, features=clip_features, node_kind=NODE_KIND, quick_labels_fixed=True,
    form="clip:<CLIP folder>", priority=40,
))
register_classifier_source(ClassifierSource(
    None, _refuse_folder, "a CLIP model folder named without clip: (says to use clip:<folder>)", name="clip folder",
    matches=_is_clip_folder, quick_labels=_refuse_folder_labels, priority=22,
))
