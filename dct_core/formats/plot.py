"""A loss / accuracy chart of a training run, drawn with PIL (no plotting library needed)."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw


def training_plot(
    losses: Sequence[float], accuracies: Sequence[float], size: tuple[int, int] = (512, 256)
) -> Image.Image:
    """Loss (blue, left scale) and batch accuracy (orange, 0 to 1) per step."""
    w, h = size
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 40, w - 10, 20, h - 25
    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    n = len(losses)
    if n:
        lo, hi = min(losses), max(losses)
        span = (hi - lo) or 1.0

        def x_at(i: int) -> float:
            return left + (right - left) * (i / max(1, n - 1))

        loss_pts = [(x_at(i), bottom - (bottom - top) * (v - lo) / span) for i, v in enumerate(losses)]
        acc_pts = [(x_at(i), bottom - (bottom - top) * a) for i, a in enumerate(accuracies)]
        for pts, colour in ((loss_pts, (31, 119, 180)), (acc_pts, (255, 127, 14))):
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            for p in pts:
                draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=colour)
        draw.text((left, 4), f"loss {losses[0]:.3f} -> {losses[-1]:.3f}", fill=(31, 119, 180))
        draw.text((left + 200, 4), f"accuracy {accuracies[0]:.2f} -> {accuracies[-1]:.2f}", fill=(255, 127, 14))
        draw.text((left, bottom + 6), f"{n} steps", fill=(80, 80, 80))
    else:
        draw.text((left + 10, top + 10), "no steps yet", fill=(80, 80, 80))
    return img
