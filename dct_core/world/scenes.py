"""Procedural 32x32 scenes with fine-grained classes and coarse captions.

Ten classes of parametric objects on varied backgrounds. Two kinds of difficulty mirror the paper's:
- a word shared by two classes: "kite" is a diamond toy kite or a kite, the bird of prey (a V of wings);
- classes that differ only in a small detail: two perched birds whose only difference is the colour of a
  small throat patch (red: "warbler", yellow: "finch"), like the paper's bird species.
Captions mostly use the coarse noun ("a blue kite", "a photo of a bird"); a minority name the sub-class the
way some web captions do ("a toy kite", "a warbler"), which is what lets the text-to-image model know the
sub-classes exist without the coarse prompt choosing one. Everything is drawn with torch, vectorized over
the batch, and fixed by a ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

RESOLUTION = 32


@dataclass(frozen=True)
class SceneClass:
    label: str  # the classifiers' name for the class
    noun: str  # the coarse caption word
    fine: str  # how the minority of captions names the sub-class


CLASSES: tuple[SceneClass, ...] = (
    SceneClass("toy kite", "kite", "toy kite"),
    SceneClass("kite, bird of prey", "kite", "kite hawk"),
    SceneClass("red-throated warbler", "bird", "warbler"),
    SceneClass("yellow-throated finch", "bird", "finch"),
    SceneClass("ball", "ball", "ball"),
    SceneClass("box", "box", "box"),
    SceneClass("ring", "ring", "ring"),
    SceneClass("cross", "cross", "cross"),
    SceneClass("moon", "moon", "moon"),
    SceneClass("house", "house", "house"),
)
LABELS: list[str] = [c.label for c in CLASSES]
AMBIGUOUS = ("toy kite", "kite, bird of prey")  # one caption word, two classes
FINE_DETAIL = ("red-throated warbler", "yellow-throated finch")  # differ only in the throat colour

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.15, 0.12), "orange": (0.95, 0.55, 0.10), "yellow": (0.95, 0.88, 0.15),
    "green": (0.20, 0.75, 0.25), "cyan": (0.20, 0.80, 0.85), "blue": (0.20, 0.35, 0.95),
    "purple": (0.60, 0.25, 0.85), "white": (0.92, 0.92, 0.92), "pink": (0.95, 0.55, 0.75),
}
BIRD_COLORS = ("green", "cyan", "blue", "purple", "white")  # never the throat colours
THROAT = {"red-throated warbler": COLORS["red"], "yellow-throated finch": COLORS["yellow"]}
TEMPLATES = ("a {}", "a photo of a {}", "an image of a {}", "{}")


def _grid(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ax = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    v, u = torch.meshgrid(ax, ax, indexing="ij")
    return u.expand(n, size, size), v.expand(n, size, size)


def _soft(sdf: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
    """Anti-aliased coverage of a signed distance (negative inside), ``edge`` in shape units per pixel."""
    return torch.sigmoid(-sdf / edge)


def _segment(x, y, ax, ay, bx, by):
    px, py, dx, dy = x - ax, y - ay, bx - ax, by - ay
    h = ((px * dx + py * dy) / (dx * dx + dy * dy)).clamp(0, 1)
    return torch.sqrt((px - h * dx) ** 2 + (py - h * dy) ** 2)


def _shape_sdf(name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Signed distance of each class's silhouette in its unit frame (object about [-1, 1]^2)."""
    if name == "toy kite":
        return (x.abs() / 0.65 + y.abs() / 1.0 - 1) * 0.55
    if name == "kite, bird of prey":
        wings = torch.minimum(_segment(x, y, -1.0, -0.35, 0.0, 0.25), _segment(x, y, 0.0, 0.25, 1.0, -0.35))
        return torch.minimum(wings - 0.17, _segment(x, y, 0.0, -0.1, 0.0, 0.55) - 0.14)
    if name in THROAT:
        body = torch.sqrt(((x + 0.1) / 0.62) ** 2 + ((y - 0.2) / 0.42) ** 2) - 1
        head = torch.sqrt((x - 0.45) ** 2 + (y + 0.38) ** 2) - 0.3
        tail = _segment(x, y, -0.6, 0.35, -1.0, 0.7) - 0.12
        return torch.minimum(torch.minimum(body * 0.4, head), tail)
    if name == "ball":
        return torch.sqrt(x * x + y * y) - 0.8
    if name == "box":
        return torch.maximum(x.abs(), y.abs()) - 0.68
    if name == "ring":
        return (torch.sqrt(x * x + y * y) - 0.65).abs() - 0.2
    if name == "cross":
        bar_h = torch.maximum(x.abs() - 0.85, y.abs() - 0.22)
        bar_v = torch.maximum(x.abs() - 0.22, y.abs() - 0.85)
        return torch.minimum(bar_h, bar_v)
    if name == "moon":
        outer = torch.sqrt(x * x + y * y) - 0.8
        inner = torch.sqrt((x - 0.38) ** 2 + (y + 0.2) ** 2) - 0.68
        return torch.maximum(outer, -inner)
    if name == "house":
        walls = torch.maximum(x.abs() - 0.6, (y - 0.35).abs() - 0.45)
        roof = torch.maximum(torch.maximum(y + 0.1, -(y + 0.85)), (x.abs() - 0.85 * (y + 0.85) / 0.75) * 0.6)
        return torch.minimum(walls, roof)
    raise KeyError(name)


def _throat_sdf(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(((x - 0.33) / 0.24) ** 2 + ((y + 0.08) / 0.2) ** 2) - 1


@dataclass
class SceneBatch:
    images: torch.Tensor  # [N, 3, H, W] in [0, 1]
    labels: torch.Tensor  # [N] class indices
    captions: list[str]


def _background(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Dim, low-saturation backgrounds with a gentle gradient: the range the model learns to draw."""
    base = torch.rand(n, 1, 1, 1, generator=g) * 0.45 + 0.05
    tint = (torch.rand(n, 3, 1, 1, generator=g) - 0.5) * 0.15
    u, v = _grid(n, size)
    angle = torch.rand(n, 1, 1, generator=g) * 2 * math.pi
    ramp = (u * torch.cos(angle) + v * torch.sin(angle)) * (torch.rand(n, 1, 1, generator=g) * 0.12)
    return (base + tint + ramp.unsqueeze(1)).clamp(0, 1)


COLOR_NAMES: tuple[str, ...] = tuple(COLORS)  # index order of the "color" attribute


def render_with_attributes(labels: torch.Tensor, g: torch.Generator, size: int = RESOLUTION, *,
                           color: str | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Images [N, 3, size, size] of the given classes and the free attributes drawn for each, [N] tensors:
    "color" (index into COLOR_NAMES), "flip" (-1.0: mirrored left-right, 1.0: not), "scale" (uniform in
    [0.5, 0.75)), "cx" and "cy" (object centre in [-1, 1] image units, uniform in [-0.25, 0.25); negative is
    left / up) and "angle" (radians). ``color`` paints every object that colour; all random draws are made
    as without it, so the images differ from the unforced ones only in the objects' colour."""
    n = labels.shape[0]
    images = _background(n, size, g)
    u, v = _grid(n, size)
    cx, cy = ((torch.rand(2, n, 1, 1, generator=g) - 0.5) * 0.5).unbind(0)
    scale = torch.rand(n, 1, 1, generator=g) * 0.25 + 0.5
    angle = (torch.rand(n, 1, 1, generator=g) - 0.5) * math.radians(24)
    flip = torch.where(torch.rand(n, 1, 1, generator=g) < 0.5, -1.0, 1.0)  # mirror left-right
    du, dv = u - cx, v - cy
    x = (du * torch.cos(angle) + dv * torch.sin(angle)) / scale * flip
    y = (-du * torch.sin(angle) + dv * torch.cos(angle)) / scale
    edge = 2.0 / size / scale  # one pixel in shape units
    color_idx = []
    for i, idx in enumerate(labels.tolist()):
        cls = CLASSES[idx]
        palette = BIRD_COLORS if cls.label in THROAT else COLOR_NAMES
        name = palette[int(torch.randint(len(palette), (1,), generator=g))]
        if color is not None:
            if color not in palette:
                raise ValueError(f"{cls.label!r} is never drawn {color!r}; its colours: {', '.join(palette)}")
            name = color
        color_idx.append(COLOR_NAMES.index(name))
        paint = torch.tensor(COLORS[name]).view(3, 1, 1) * (0.85 + 0.15 * torch.rand(1, generator=g))
        cover = _soft(_shape_sdf(cls.label, x[i], y[i]), edge[i])
        images[i] = images[i] * (1 - cover) + paint * cover
        if cls.label in THROAT:
            patch = _soft(_throat_sdf(x[i], y[i]), edge[i] * 2.5) * cover
            images[i] = images[i] * (1 - patch) + torch.tensor(THROAT[cls.label]).view(3, 1, 1) * patch
    noise = torch.randn(images.shape, generator=g) * 0.02
    attributes = {
        "color": torch.tensor(color_idx, dtype=torch.long), "flip": flip.view(n), "scale": scale.view(n),
        "cx": cx.reshape(n), "cy": cy.reshape(n), "angle": angle.view(n),
    }
    return (images + noise).clamp(0, 1), attributes


def render(labels: torch.Tensor, g: torch.Generator, size: int = RESOLUTION) -> tuple[torch.Tensor, list[str]]:
    """Images [N, 3, size, size] of the given classes, and each image's object colour name."""
    images, attributes = render_with_attributes(labels, g, size)
    return images, [COLOR_NAMES[i] for i in attributes["color"].tolist()]


def caption(idx: int, color: str, g: torch.Generator, *, fine_rate: float = 0.2) -> str:
    cls = CLASSES[idx]
    r = torch.rand(3, generator=g).tolist()
    noun = cls.fine if r[0] < fine_rate else cls.noun
    desc = f"{color} {noun}" if r[1] < 0.5 else noun
    template = TEMPLATES[int(r[2] * len(TEMPLATES))]
    return template.format(desc)


def sample_scenes(n: int, g: torch.Generator, *, size: int = RESOLUTION, fine_rate: float = 0.2) -> SceneBatch:
    labels = torch.randint(len(CLASSES), (n,), generator=g)
    images, colors = render(labels, g, size)
    captions = [caption(i, c, g, fine_rate=fine_rate) for i, c in zip(labels.tolist(), colors)]
    return SceneBatch(images, labels, captions)
