"""Reading the free attributes of the world's images, to measure how varied a set of generated images is.

A class token can teach its class and still erase what the prompt left free (every warbler drawn purple). The
scene generator draws, besides the class, an object colour, a left-right mirroring, a size and a position; the
attribute reader shipped with the world (``weights/attributes/``, a small timm model with one output per
attribute value, trained by ``python -m dct_core.world.train --stage attributes``) reads them back from an
image, and ``attribute_entropy`` turns a set of readings into the entropy in bits of each attribute:

    reader = load_attribute_reader()
    attribute_entropy(reader, images)   # {"color": 2.9, "facing": 0.6, "size": 1.5, "x": 1.6, "y": 1.5, "total": ...}

Attributes and their values (the bins are tertiles of the generator's uniform draws, so each is equally likely):
- color: the object's colour, one of the nine COLORS (the two perched birds use five of them);
- facing: "right" or "left" for the classes whose silhouette is not mirror-symmetric (the two birds: where the
  head is; the moon: where its opening is), "none" for the seven symmetric ones, on which mirroring is invisible;
- size: small / medium / large (``scale``);
- x: left / center / right, and y: top / middle / bottom (the object's centre).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import DCTError
from ..formats.files import atomic_write
from .classifier_training import PRETRAINED_CFG, degrade
from .scenes import CLASSES, COLOR_NAMES, render_with_attributes

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": COLOR_NAMES,
    "facing": ("right", "left", "none"),
    "size": ("small", "medium", "large"),
    "x": ("left", "center", "right"),
    "y": ("top", "middle", "bottom"),
}
ASYMMETRIC = ("red-throated warbler", "yellow-throated finch", "moon")  # the classes whose facing shows
# Tertiles of the generator's draws: scale uniform in [0.5, 0.75), cx and cy uniform in [-0.25, 0.25).
SIZE_EDGES = (0.5 + 0.25 / 3, 0.5 + 0.5 / 3)
POSITION_EDGES = (-0.5 / 6, 0.5 / 6)
ARCHITECTURE = "test_resnet"
FOLDER_NAME = "attributes"  # under the world's weights folder
# Rendered scenes are drawn in chunks of this size, in this order, for training and for the test set.
_CHUNK = 128


def attribute_targets(labels: torch.Tensor, drawn: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Value indices [N] of each attribute, from the classes and the draws of ``scenes.render_with_attributes``."""
    asymmetric = torch.tensor([c.label in ASYMMETRIC for c in CLASSES])[labels]
    facing = torch.where(drawn["flip"] > 0, 0, 1)
    return {
        "color": drawn["color"].long(),
        "facing": torch.where(asymmetric, facing, 2).long(),
        "size": torch.bucketize(drawn["scale"], torch.tensor(SIZE_EDGES)),
        "x": torch.bucketize(drawn["cx"], torch.tensor(POSITION_EDGES)),
        "y": torch.bucketize(drawn["cy"], torch.tensor(POSITION_EDGES)),
    }


def render_attribute_scenes(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` rendered scenes of all classes: images, labels and attribute targets."""
    images, labels, targets = [], [], []
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        lab = torch.randint(len(CLASSES), (m,), generator=g)
        im, drawn = render_with_attributes(lab, g)
        images.append(im)
        labels.append(lab)
        targets.append(attribute_targets(lab, drawn))
    return torch.cat(images), torch.cat(labels), {k: torch.cat([t[k] for t in targets]) for k in ATTRIBUTES}


def redrawn_attribute_scenes(pipe, n: int, g: torch.Generator, *, chunk: int = 128, log=None
                             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` scenes redrawn by the world's diffusion model (``redraw.redrawn_scenes``) with their attribute
    targets: each chunk's scenes are rendered again from the generator state it started from, so the draws,
    and hence the attributes, are those of the scenes that were redrawn."""
    from .redraw import redrawn_scenes

    images, labels, targets = [], [], []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        replay = torch.Generator()
        replay.set_state(g.get_state())
        im, lab = redrawn_scenes(pipe, m, g, chunk=m)
        replay_labels = torch.randint(len(CLASSES), (m,), generator=replay)  # as scenes.sample_scenes draws
        _, drawn = render_with_attributes(replay_labels, replay)
        if not torch.equal(replay_labels, lab):
            raise RuntimeError("replaying the redrawn scenes gave other classes; redraw.py changed its draws")
        images.append(im)
        labels.append(lab)
        targets.append(attribute_targets(lab, drawn))
        if log is not None:
            log(f"redrawn {start + m}/{n} scenes with attributes")
    return torch.cat(images), torch.cat(labels), {k: torch.cat([t[k] for t in targets]) for k in ATTRIBUTES}


def _flat_names() -> list[str]:
    return [f"{attr}: {value}" for attr, values in ATTRIBUTES.items() for value in values]


def build_reader_model(architecture: str = ARCHITECTURE, model_args: dict | None = None):
    import timm

    return timm.create_model(architecture, pretrained=False, num_classes=len(_flat_names()),
                             pretrained_cfg_overlay=PRETRAINED_CFG, **(model_args or {}))


@dataclass
class AttributeReader:
    """Reads each attribute's value from images: ``read`` gives value indices, ``values`` their names."""

    classifier: Any  # an ImageClassifier whose outputs are the heads' logits, concatenated in ``heads`` order
    heads: dict[str, list[str]]

    def values(self, attr: str) -> list[str]:
        if attr not in self.heads:
            raise DCTError(f"the attribute reader has no attribute {attr!r}; it reads {', '.join(self.heads)}.")
        return list(self.heads[attr])

    def logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each attribute's logits [N, number of values] for images [N, 3, H, W] in [0, 1]."""
        out = self.classifier(images)
        return dict(zip(self.heads, out.split([len(v) for v in self.heads.values()], dim=-1)))

    @torch.no_grad()
    def read(self, images: torch.Tensor, *, chunk: int = 256) -> dict[str, torch.Tensor]:
        """The predicted value index [N] of each attribute, for images [N, 3, H, W] in [0, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise DCTError(f"the attribute reader takes images [N, 3, H, W], not {list(images.shape)}.")
        self.classifier.module.eval()
        parts = [self.logits(images[i : i + chunk].float()) for i in range(0, images.shape[0], chunk)]
        return {attr: torch.cat([p[attr] for p in parts]).argmax(-1) if parts else torch.zeros(0, dtype=torch.long)
                for attr in self.heads}


def default_folder() -> Path:
    from . import WEIGHTS_DIR

    return WEIGHTS_DIR / FOLDER_NAME


def load_attribute_reader(folder: str | Path | None = None) -> AttributeReader:
    """The attribute reader in ``folder`` (a timm folder with "attribute_heads" in config.json); by default the
    one shipped with the world."""
    from ..classifiers.timm_source import load_timm_folder

    path = Path(folder) if folder is not None else default_folder()
    config = path / "config.json"
    if not config.is_file() or not (path / "model.safetensors").is_file():
        raise DCTError(
            f"no attribute reader in {path} (config.json and model.safetensors); rebuild the world's with "
            "'python -m dct_core.world.train --out dct_core/world/weights --stage attributes'."
        )
    try:
        heads = json.loads(config.read_text())["attribute_heads"]
        heads = {str(k): [str(v) for v in values] for k, values in heads.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DCTError(f"{config} has no valid 'attribute_heads' ({{name: [value names]}}).") from exc
    classifier = load_timm_folder(path)
    if classifier.num_classes != sum(len(v) for v in heads.values()):
        raise DCTError(f"{config}: the attribute heads have {sum(len(v) for v in heads.values())} values but the "
                       f"model has {classifier.num_classes} outputs.")
    classifier.name = f"world:{FOLDER_NAME}"
    return AttributeReader(classifier, heads)


def entropy_bits(indices: torch.Tensor, num_values: int) -> float:
    """Entropy in bits of the empirical distribution of value indices (0 for an empty set)."""
    if indices.numel() == 0:
        return 0.0
    p = torch.bincount(indices.flatten(), minlength=num_values).double() / indices.numel()
    p = p[p > 0]
    return float(-(p * p.log2()).sum()) + 0.0  # + 0.0: no -0.0


def attribute_entropy(reader: AttributeReader, images: torch.Tensor) -> dict[str, float]:
    """Entropy in bits of each attribute's distribution over ``images`` (as the reader reads them), and "total":
    their sum. log2 of an attribute's number of values is its maximum (all values equally often)."""
    read = reader.read(images)
    out = {attr: entropy_bits(read[attr], len(values)) for attr, values in reader.heads.items()}
    out["total"] = sum(out.values())
    return out


def _accuracy(reader: AttributeReader, images: torch.Tensor, labels: torch.Tensor,
              targets: dict[str, torch.Tensor]) -> dict[str, float]:
    read = reader.read(images)
    out = {attr: float((read[attr] == targets[attr]).float().mean()) for attr in ATTRIBUTES}
    shows = torch.tensor([c.label in ASYMMETRIC for c in CLASSES])[labels]  # facing where it can be seen
    out["facing_asymmetric"] = float((read["facing"] == targets["facing"])[shows].float().mean())
    return {k: round(v, 4) for k, v in out.items()}


def train_attribute_reader(folder: Path, *, steps: int, seed: int, batch: int = 128, lr: float = 3e-3,
                           architecture: str = ARCHITECTURE, model_args: dict | None = None,
                           redrawn: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]] | None = None,
                           redrawn_test: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]] | None = None,
                           log: Callable[[str], None] = print) -> dict:
    """Train the reader from scratch (a cross-entropy per attribute) on fresh renders of all classes, half of
    each batch replaced by ``redrawn`` scenes when given, all through ``classifier_training.degrade``; save it
    to ``folder`` as a timm folder and return a summary with the saved reader's accuracy per attribute."""
    torch.manual_seed(seed)
    model = build_reader_model(architecture, model_args)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    sizes = [len(v) for v in ATTRIBUTES.values()]
    g = torch.Generator().manual_seed(seed)
    started = time.time()
    for step in range(steps):
        model.train()
        fresh = batch - batch // 2 if redrawn is not None else batch
        labels = torch.randint(len(CLASSES), (fresh,), generator=g)
        images, drawn = render_with_attributes(labels, g)
        targets = attribute_targets(labels, drawn)
        if redrawn is not None:
            pick = torch.randint(len(redrawn[1]), (batch // 2,), generator=g)
            images = torch.cat([images, redrawn[0][pick]])
            targets = {k: torch.cat([targets[k], redrawn[2][k][pick]]) for k in ATTRIBUTES}
        x = (degrade(images, g) - 0.5) / 0.5
        logits = model(x).split(sizes, dim=-1)
        loss = torch.stack([F.cross_entropy(out, targets[attr], label_smoothing=0.05)
                            for attr, out in zip(ATTRIBUTES, logits)]).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 250 == 0 or step + 1 == steps:
            log(f"attribute reader step {step + 1}/{steps}  loss {loss.item():.3f}  "
                f"{(time.time() - started) / 60:.1f} min")
    minutes = (time.time() - started) / 60
    save_reader_folder(model, folder, architecture, model_args or {})
    reader = load_attribute_reader(folder)  # judge the weights as saved
    test_g = torch.Generator().manual_seed(30_000 + seed)
    test_images, test_labels, test_targets = render_attribute_scenes(2000, test_g)
    summary: dict[str, Any] = {
        "architecture": architecture, "steps": steps, "batch": batch, "lr": lr, "seed": seed, "minutes": minutes,
        "parameters": sum(p.numel() for p in model.parameters()),
        "accuracy_renders": _accuracy(reader, test_images, test_labels, test_targets),
        "accuracy_renders_degraded": _accuracy(reader, degrade(test_images, test_g), test_labels, test_targets),
    }
    if redrawn_test is not None:
        summary["accuracy_redrawn"] = _accuracy(reader, *redrawn_test)
    summary["chance"] = {attr: round(1 / len(v), 4) for attr, v in ATTRIBUTES.items()}
    log(f"attribute reader: {json.dumps(summary)}")
    return summary


def save_reader_folder(model, folder: Path, architecture: str, model_args: dict) -> None:
    """The reader as a timm hub folder: model.safetensors (float16) and config.json with "attribute_heads"."""
    from safetensors.torch import save

    config = {
        "architecture": architecture, "num_classes": len(_flat_names()), "label_names": _flat_names(),
        "attribute_heads": {attr: list(values) for attr, values in ATTRIBUTES.items()},
        "model_args": model_args, "pretrained_cfg": PRETRAINED_CFG,
    }
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / "model.safetensors", save(state))
    atomic_write(folder / "config.json", json.dumps(config, indent=2).encode())


def max_entropy(reader: AttributeReader) -> dict[str, float]:
    """log2 of each attribute's number of values: the entropy when every value is equally frequent."""
    out = {attr: math.log2(len(values)) for attr, values in reader.heads.items()}
    out["total"] = sum(out.values())
    return out

