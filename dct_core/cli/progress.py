"""What a long command shows and how it stops: a step printer (tqdm on a terminal) and Ctrl+C as Cancel."""

from __future__ import annotations

import signal
import sys
from pathlib import Path


class CancelOnInterrupt:
    """First Ctrl+C: finish the current step, keep the best token. Second: stop at once."""

    def __init__(self) -> None:
        self.cancelled = False

    def __enter__(self):
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_):
        if self.cancelled:
            raise KeyboardInterrupt
        self.cancelled = True
        print("\ncancelling after this step (Ctrl+C again to abort)...", file=sys.stderr)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old)

    def __call__(self) -> bool:
        return self.cancelled


def step_printer(total: int, preview_dir: Path | None = None, every: int = 0):
    """(bar, on_step): a progress bar and a line per step; a preview grid every ``every`` steps."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc="training", unit="step", file=sys.stderr, disable=not sys.stderr.isatty())

    def on_step(record, images):
        bar.update(1)
        bar.set_postfix(loss=f"{record.loss:.4f}", acc=f"{record.accuracy:.2f}")
        tqdm.write(f"step {record.step + 1:3d}  loss {record.loss:.4f}  accuracy {record.accuracy:.2f}  "
                   f"p(target) {record.target_prob:.3f}  {record.seconds:.2f}s", file=sys.stderr)
        if preview_dir is not None and every and record.step % every == 0:
            from ..formats.images import make_grid, save_image

            save_image(make_grid([images]), preview_dir / f"step-{record.step + 1:04d}.png")

    return bar, on_step
