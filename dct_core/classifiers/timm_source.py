"""timm classifiers: an architecture name plus a local weights file, or a folder in timm's hub layout
(config.json + model.safetensors). Weights are read without running pickled code.

Registers three classifier sources: ``timm:<architecture>[@FILE]``, timm hub folders, and the catch-all for a
weights file named without an architecture (which asks for one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import DCTError
from ..registry import NO_OPTIONS, ClassifierOptions, ClassifierSource, register_classifier_source
from .base import ImageClassifier
from .features import FeatureFn
from .labels import check_label_count, imagenet_labels, labels_from, names_from_json
from .preprocess import Preprocess
from .text_files import existing_path, model_config_or_none, read_model_config
from .weights import read_state_dict


def head_width(heads, shapes: Mapping[str, Sequence[int]]) -> int | None:
    """Number of classes in a checkpoint (tensor name -> shape), from the head name(s) of a timm
    pretrained config (``pretrained_cfg["classifier"]``)."""
    for head in heads if isinstance(heads, (list, tuple)) else [heads]:
        shape = shapes.get(f"{head}.weight")
        if shape is not None:
            return int(shape[0])
    return None


def _check_name(model_name: str) -> None:
    import timm

    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('.')[0][:6]}*")[:5]
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise DCTError(f"timm has no architecture named {model_name!r}{hint}.")


def _load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, model_name: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)[:200]]
        raise DCTError(f"weights {source} do not fit timm model {model_name!r}: {first[0].strip()}") from exc


def resolve_names(labels, num_classes: int, fallback: list[str] | None, model_name: str) -> list[str]:
    """Explicit labels (list or file), else the checkpoint's own names, else ImageNet for 1000 classes, else
    numbered classes; the count must match the classifier's outputs."""
    if labels is not None:
        names = labels_from(labels)
    elif fallback:
        names = fallback
    elif num_classes == 1000:
        names = imagenet_labels()
    else:
        names = [f"class {i}" for i in range(num_classes)]
    return check_label_count(names, num_classes, model_name)


def load_timm_classifier(
    model_name: str, weights: str | Path | None = None, labels: str | Path | list[str] | None = None,
    *, multi_label: bool = False,
) -> ImageClassifier:
    import timm

    _check_name(model_name)
    state = read_state_dict(weights) if weights is not None else None
    probe: Any = timm.create_model(model_name, pretrained=False)
    shapes = {k: v.shape for k, v in state.items()} if state is not None else {}
    num_classes = head_width(probe.pretrained_cfg.get("classifier", "head"), shapes) or probe.num_classes
    if num_classes == probe.num_classes:
        model = probe
    else:
        model = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    if state is not None:
        _load_weights(model, state, str(weights), model_name)
    names = resolve_names(labels, num_classes, None, model_name)
    model.eval().requires_grad_(False)
    return ImageClassifier(model, names, Preprocess.from_timm(model), name=f"timm:{model_name}",
                           multi_label=multi_label)


def folder_num_classes(cfg: dict) -> int:
    count = cfg.get("num_classes", cfg.get("pretrained_cfg", {}).get("num_classes", 1000))
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise DCTError(f"'num_classes' in config.json must be a positive whole number, not {count!r}.")
    return count


def folder_label_names(cfg: dict) -> list[str] | None:
    """Label names a timm hub config carries; descriptions ("tabby, tabby cat") resolve better than ids."""
    names = cfg.get("label_names") or cfg.get("pretrained_cfg", {}).get("label_names")
    if not names:
        return None
    names = names_from_json(names, "label_names in config.json")
    descriptions = cfg.get("label_descriptions")
    if isinstance(descriptions, dict):
        names = [str(descriptions.get(n, n)) for n in names]
    return names


def check_folder_architecture(cfg: dict, folder: str | Path) -> str:
    arch = cfg["architecture"]
    if not isinstance(arch, str) or not arch:
        raise DCTError(f"'architecture' in {Path(folder) / 'config.json'} must be a timm architecture name.")
    return arch


def load_timm_folder(folder: str | Path, labels=None, *, multi_label: bool = False) -> ImageClassifier:
    """A folder as timm writes it for the hub: config.json (architecture, num_classes, pretrained_cfg,
    optional label_names / model_args) and model.safetensors (or pytorch_model.bin)."""
    import timm

    folder = Path(folder)
    cfg = read_model_config(folder)
    arch = check_folder_architecture(cfg, folder)
    _check_name(arch)
    num_classes = folder_num_classes(cfg)
    names = resolve_names(labels, num_classes, folder_label_names(cfg), arch)  # cheap checks before the weights
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if weights is None:
        raise DCTError(f"{folder} has a timm config.json but no model.safetensors or pytorch_model.bin.")
    model_args = {**cfg.get("model_args", {}), "num_classes": num_classes}
    model = timm.create_model(arch, pretrained=False, pretrained_cfg_overlay=cfg.get("pretrained_cfg", {}),
                              **model_args)
    _load_weights(model, read_state_dict(weights), str(weights), arch)
    model.eval().requires_grad_(False)
    return ImageClassifier(model, names, Preprocess.from_timm(model), name=f"timm:{folder.name}",
                           multi_label=multi_label)


# --- the classifier sources -------------------------------------------------------------------------------------


def header_width(weights: Path, architecture: str) -> int | None:
    """Rows of the classifier head in a .safetensors file, read from its header only."""
    if weights.suffix != ".safetensors":
        return None
    import timm
    from safetensors import safe_open

    cfg = timm.models.get_pretrained_cfg(architecture) if timm.is_model(architecture) else None
    with safe_open(str(weights), framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    return head_width(cfg.classifier if cfg is not None else "head", shapes)


def _load_named(target: str, options: ClassifierOptions = NO_OPTIONS) -> ImageClassifier:
    name, _, inline = target.partition("@")
    return load_timm_classifier(name, inline or options.weights, options.labels, multi_label=bool(options.multi_label))


def _named_labels(target: str, options: ClassifierOptions = NO_OPTIONS) -> list[str]:
    name, _, inline = target.partition("@")
    weights = inline or options.weights
    if weights and Path(weights).is_dir():  # an architecture with a model folder: the folder's own labels
        from .label_lookup import labels_for

        return labels_for(str(weights))
    width = header_width(Path(weights), name) if weights else None
    return resolve_names(None, width or 1000, None, name)


def timm_features(classifier: ImageClassifier) -> FeatureFn | None:
    """``forward_head(forward_features(x), pre_logits=True)``: the pooled vector the head reads, for any timm
    model (loaded by name, from a hub folder, or by the demo world)."""
    module: Any = classifier.module
    if callable(getattr(module, "forward_features", None)) and callable(getattr(module, "forward_head", None)):
        return lambda x: module.forward_head(module.forward_features(x), pre_logits=True)
    return None


def _is_timm_folder(spec: str) -> bool:
    cfg = model_config_or_none(spec)
    return cfg is not None and "architecture" in cfg


def _load_folder(target: str, options: ClassifierOptions = NO_OPTIONS) -> ImageClassifier:
    return load_timm_folder(Path(target).expanduser(), options.labels, multi_label=bool(options.multi_label))


def _folder_labels(target: str, options: ClassifierOptions = NO_OPTIONS) -> list[str]:
    folder = Path(target).expanduser()
    cfg = read_model_config(folder)
    arch = check_folder_architecture(cfg, folder)
    return resolve_names(None, folder_num_classes(cfg), folder_label_names(cfg), arch)


def _is_weights_file(spec: str) -> bool:
    path = existing_path(spec)
    return path is not None and not path.is_dir()


def _refuse_bare_weights(target: str, options: ClassifierOptions = NO_OPTIONS) -> ImageClassifier:
    path = Path(target).expanduser()
    raise DCTError(
        f"{path.name} is a weights file without an architecture; name one with timm:<architecture> "
        f"--classifier-weights {path}, or give a model folder or a TorchScript file."
    )


def _bare_weights_labels(target: str, options: ClassifierOptions = NO_OPTIONS) -> list[str]:
    return resolve_names(None, 1000, None, Path(target).name)  # as a 1000-class (ImageNet) head


register_classifier_source(ClassifierSource(
    "timm", _load_named, "a timm architecture and its weights: timm:<architecture>[@FILE]",
    quick_labels=_named_labels, features=timm_features,
    node_spec=lambda path, architecture: f"timm:{architecture}@{path}" if architecture else None,
    form="timm:<architecture> with --classifier-weights FILE (or timm:<architecture>@FILE)", priority=10,
))
register_classifier_source(ClassifierSource(
    None, _load_folder, "a folder in timm's hub layout (config.json with 'architecture')", name="timm folder",
    matches=_is_timm_folder, quick_labels=_folder_labels, priority=20,
))
register_classifier_source(ClassifierSource(
    None, _refuse_bare_weights, "any other file: weights without an architecture (asks for timm:<architecture>)",
    name="weights file", matches=_is_weights_file, quick_labels=_bare_weights_labels, priority=90,
))
