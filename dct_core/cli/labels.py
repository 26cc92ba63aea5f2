"""`dct labels` and `dct classifier-info`: what a classifier names and resolves to."""

from __future__ import annotations

from ..errors import DCTError
from ..formats.printable import printable
from . import options
from .loading import load_classifier


def add_parser(sub) -> None:
    lab = sub.add_parser("labels", help="list or search a classifier's class names")
    options.add_classifier(lab, target=False, many=False)
    lab.add_argument("--search", help="show only labels containing this text (case-insensitive)")
    lab.set_defaults(handler=run_labels)

    info = sub.add_parser("classifier-info", help="what a classifier resolves to: classes, input, preprocessing")
    options.add_classifier(info, target=False, many=False)
    info.set_defaults(handler=run_info)


def run_labels(args) -> int:
    from ..classifiers.labels import synonyms

    classifier = load_classifier(args)
    wanted = (args.search or "").strip().lower()
    shown = 0
    for i, label in enumerate(classifier.labels):
        if not wanted or any(wanted in s for s in synonyms(label)) or wanted in label.lower():
            print(f"{i:>6}  {printable(label)}")
            shown += 1
    if wanted and not shown:
        raise DCTError(f"no label contains {printable(args.search)!r}; run without --search to list all "
                       f"{classifier.num_classes}.")
    return 0


def run_info(args) -> int:
    classifier = load_classifier(args)
    params = sum(p.numel() for p in classifier.module.parameters())
    print(classifier.describe())
    print(f"parameters: {params / 1e6:.2f} M; first labels: {printable(', '.join(classifier.labels[:5]))}")
    return 0
