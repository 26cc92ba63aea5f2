"""Load Classifier: every classifier form the engine supports, from models/classifiers."""

from __future__ import annotations

from pathlib import Path

from dct_core.classifiers import load_classifier
from dct_core.errors import DCTError
from dct_core.registry import AUTO_KIND, node_kinds, node_spec

from .adapters import model_folders as folders
from .adapters.node_api import io, schema_fields, ui
from .adapters.sockets import CATEGORY, ClassifierSocket


class LoadClassifier(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DCTLoadClassifier",
            **schema_fields(search_aliases=["classifier", "imagenet", "timm", "CLIP zero-shot", "DCT"]),
            display_name="Load Classifier (DCT)",
            category=CATEGORY,
            description="Loads the image classifier that teaches a class token, offline, from models/classifiers.",
            inputs=[
                io.Combo.Input("classifier", options=folders.classifier_choices(),
                               tooltip="A weights file, a timm/transformers model folder, a TorchScript file, or a "
                                       "CLIP folder (with kind = zero-shot CLIP), under models/classifiers."),
                io.Combo.Input("kind", options=node_kinds(), default=AUTO_KIND,
                               tooltip="auto: detect the form; zero-shot CLIP: the labels become text prompts."),
                io.String.Input("timm_architecture", default="",
                                tooltip="For a plain weights file: the timm architecture it belongs to, "
                                        "e.g. vit_large_patch16_224 or resnet50."),
                io.String.Input("labels", default="", multiline=True,
                                tooltip="Class names, one per line, or the name of a .txt/.json labels file in "
                                        "models/classifiers. Empty: from the model (ImageNet for 1000 classes)."),
                io.Combo.Input("pooling", options=["cls", "mean"], default="cls",
                               tooltip="transformers ViT only: mean = mean-pooled patch tokens (ViT-MAE fine-tunes "
                                       "such as the paper's CUB/iNat classifiers)."),
                io.Boolean.Input("multi_label", default=False,
                                 tooltip="Sigmoid outputs (attributes such as CelebA 'Bald'): binary cross-entropy."),
                io.Boolean.Input("allow_torchscript_code", display_name="allow TorchScript code", default=False,
                                 optional=True,
                                 tooltip="TorchScript files are programs: loading one runs the code inside it, "
                                         "which can read and write files. Off: TorchScript is refused. "
                                         "Turn on only for a file you trust."),
            ],
            outputs=[ClassifierSocket.Output("CLASSIFIER", display_name="classifier")],
        )

    @classmethod
    def execute(cls, classifier, kind, timm_architecture, labels, pooling, multi_label,
                allow_torchscript_code=False) -> io.NodeOutput:
        path = folders.classifier_path(classifier)
        spec = node_spec(kind, path, timm_architecture.strip())  # the kind's source (or, auto, the file) decides
        try:
            model = load_classifier(spec, labels=_labels(labels), pooling=pooling, multi_label=multi_label or None,
                                    trust_code=allow_torchscript_code)
        except DCTError as exc:
            raise ValueError(str(exc)) from exc
        size = model.preprocess.input_size
        text = f"{model.num_classes} classes, input {size[0]}x{size[1]}, {Path(path).name}"
        return io.NodeOutput(model, ui=ui.PreviewText(text))


def _labels(text: str):
    text = text.strip()
    if not text:
        return None
    if "\n" not in text and Path(text).suffix in (".txt", ".json"):
        return folders.label_path(text)  # only files inside the classifiers folders, as the picker route
    return [line.strip() for line in text.splitlines() if line.strip()]
