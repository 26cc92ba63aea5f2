"""`dct dataset --classifier C --min-prob P`: keep only the images a classifier gives their class at least P.

Why: a token can draw hybrids its guide accepts and another classifier does not (the toy-kite token's crosses,
bench/results/augmentation-2026-12-06.md); labelled as the class, they teach a classifier trained on the set the
wrong shapes. A second judge (a classifier other than the one the tokens were trained against) drops them.

How it stays resumable and split over ranks: each class's seeds are cut into a fixed sequence of units (chunks of
seeds up to ``max_draws``). The run goes in
passes; after each pass every rank reads the records of the units drawn so far (each lists every seed, the
probability and whether the image was kept) and the same rule (:func:`next_units`) picks the next units of the
classes still short. Only kept images are written. At the end the first images_per_class kept images of each class
(in seed order) are the dataset; kept images beyond that are removed (their records still say they passed, so a
larger count later uses them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..classifiers import Classifier
from ..errors import DCTError

PROB, KEPT = "filter_prob", "kept"  # a record's outcome keys (the rest is what was planned)


@dataclass(frozen=True)
class KeepFilter:
    """Which images stay: the classifier's probability of the image's class >= ``min_prob``; at most
    ``max_draws`` seeds drawn per class."""

    classifier: Classifier
    min_prob: float
    max_draws: int
    name: str  # recorded with every image (the classifier as the user named it)

    def settings(self) -> dict:
        """What every planned record carries: a rerun with another filter is not mixed into the same folder."""
        return {"classifier": self.name, "min_prob": self.min_prob}

    def class_index(self, label: str, token_file: str) -> int:
        try:
            return self.classifier.class_index(label)
        except DCTError as exc:
            raise DCTError(f"{token_file}: the filter classifier has no class {label!r} ({exc}); give a classifier "
                           "that knows the library's classes, or --labels.") from None

    @torch.no_grad()
    def probs(self, images: torch.Tensor, index: int) -> list[float]:
        device = next(self.classifier.module.parameters(), torch.empty(0)).device
        logits = self.classifier(images.to(device))
        return [float(p) for p in self.classifier.target_prob(logits.float(), index)]


def class_units(images_per_class: int, max_draws: int | None, chunk: int) -> list[tuple[int, int]]:
    """(first image index, count) of one class's units in order. Without a filter (``max_draws`` None): the
    images_per_class seeds in chunks. With one: chunks up to max_draws, on the same boundaries whatever
    images_per_class is, so a rerun with a larger count finds the records (and the dropped seeds) of the smaller."""
    end = images_per_class if max_draws is None else max_draws
    return [(s, min(chunk, end - s)) for s in range(0, end, chunk)]


def next_units(counts: Sequence[int], drawn: Sequence[Sequence[bool]], wanted: int) -> list[int]:
    """The positions of one class's next units to draw: ``counts`` = each unit's image count, ``drawn`` = the kept
    flags of the units drawn so far (a prefix of the sequence). Enough units for the kept images still wanted at
    the pass rate seen so far (all of them once nothing passes yet); none when enough are kept or the sequence
    is used up. With nothing drawn: the first ``wanted`` seeds."""
    kept = sum(sum(flags) for flags in drawn)
    seen = sum(len(flags) for flags in drawn)
    start = len(drawn)
    if kept >= wanted or start >= len(counts):
        return []
    rate = kept / seen if seen else 1.0
    need = math.ceil((wanted - kept) / rate) if rate > 0 else sum(counts[start:])
    take, total = [], 0
    for u in range(start, len(counts)):
        take.append(u)
        total += counts[u]
        if total >= need:
            break
    return take


def trim(records_by_unit: Sequence[list[dict]], wanted: int) -> tuple[list[dict], list[tuple[int, int]]]:
    """The first ``wanted`` kept records in unit order, and (unit, position) of the kept ones beyond them."""
    chosen: list[dict] = []
    beyond = []
    for u, records in enumerate(records_by_unit):
        for i, record in enumerate(records):
            if not record.get(KEPT, True):
                continue
            if len(chosen) < wanted:
                chosen.append(record)
            else:
                beyond.append((u, i))
    return chosen, beyond


def scored(records: Sequence[dict]) -> bool:
    """Records that carry every image's outcome (else damaged, or drawn without a filter: drawn and scored again)."""
    return bool(records) and all(isinstance(r.get(KEPT), bool) and isinstance(r.get(PROB), (int, float))
                                 and not isinstance(r.get(PROB), bool) for r in records)


def planned(record: dict) -> dict:
    """A record without its outcome: what a rerun plans for the same seed."""
    return {k: v for k, v in record.items() if k not in (PROB, KEPT)}


def manifest_row(record: dict) -> dict:
    """What the manifest (and the image's own text chunk) says of a kept image."""
    return {k: v for k, v in record.items() if k != KEPT}
