"""Classifier kinds are registered sources: one registered from outside is picked up by the spec parser, the quick
label lookup, the Fréchet features and the node's kinds without editing generic code; the built-ins keep the
forms, dropdown and order they had."""

import pytest
import torch

from dct_core import registry
from dct_core.classifiers import ImageClassifier, Preprocess, load_classifier
from dct_core.classifiers.label_lookup import labels_for, quick_labels
from dct_core.errors import DCTError
from dct_core.method.frechet import classifier_features
from dct_core.registry import ClassifierOptions, ClassifierSource

TOY_LABELS = ["red", "green", "blue"]


class ToyNet(torch.nn.Module):
    """Images -> logits through an embedding that is not the input of the last linear layer (so only the toy
    source's own feature function finds it)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, 6))
        self.head = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4))

    def forward(self, x):
        return self.head(self.embed(x))[:, :3]


def _toy(name: str, options: ClassifierOptions) -> ImageClassifier:
    classifier = ImageClassifier(ToyNet().eval(), list(options.labels or TOY_LABELS),
                                 Preprocess(input_size=(8, 8), crop_pct=1.0), name=f"toy:{name}",
                                 multi_label=bool(options.multi_label))
    loads.append((name, options))
    return classifier


def _toy_features(classifier):
    module = classifier.module
    return module.embed if isinstance(module, ToyNet) else None


loads: list = []


@pytest.fixture
def toy_sources():
    """A prefix source shown in the node's dropdown, and a path source for *.toy files without quick labels."""
    loads.clear()
    prefixed = ClassifierSource("toy", _toy, "toy classifiers: toy:<name>", quick_labels=lambda name, _o: TOY_LABELS,
                                features=_toy_features, node_kind="toy kind", form="toy:<name>")
    by_path = ClassifierSource(None, lambda path, options: _toy(path, options), "a .toy file", name="toy file",
                               matches=lambda spec: spec.endswith(".toy"))
    for source in (prefixed, by_path):
        registry.register_classifier_source(source)
    yield prefixed, by_path
    for source in (prefixed, by_path):
        assert registry.unregister_classifier_source(source.name) is source


def test_a_source_registered_from_outside_is_used_everywhere(toy_sources, tmp_path):
    # The spec parser: the prefix form, with the generic options split off and passed on.
    clf = load_classifier("toy:small#multi_label=true", labels=["a", "b", "c"])
    assert clf.name == "toy:small" and clf.labels == ["a", "b", "c"] and clf.multi_label
    assert loads[-1][0] == "small" and loads[-1][1].labels == ["a", "b", "c"]
    # A matching path comes before the built-in catch-all for files (which would ask for a timm architecture).
    (tmp_path / "model.toy").write_bytes(b"weights")
    assert load_classifier(str(tmp_path / "model.toy")).name == f"toy:{tmp_path / 'model.toy'}"
    # The quick label lookup: the source's own answer without loading; a source without one is loaded.
    loads.clear()
    assert labels_for("toy:small") == TOY_LABELS and not loads
    assert quick_labels(tmp_path / "model.toy") == TOY_LABELS and len(loads) == 1
    assert quick_labels(tmp_path / "model.toy", labels=["x"]) == ["x"]
    # The node: its kind in the dropdown (by priority: 0, before the built-in 40), the spec it builds, the labels
    # its picker shows.
    assert registry.node_kinds() == ["auto", "toy kind", "zero-shot CLIP"]
    assert registry.node_spec("toy kind", "/models/a.bin", "ignored") == "toy:/models/a.bin"
    loads.clear()
    assert quick_labels("/models/a.bin", kind="toy kind") == TOY_LABELS and not loads
    assert "toy:<name>" in registry.classifier_forms()
    # The Fréchet features: the source's own function, not the generic last-linear fallback.
    images = torch.rand(4, 3, 8, 8)
    features = classifier_features(clf, images)
    with torch.no_grad():
        torch.testing.assert_close(features, clf.module.embed(clf.preprocess(images)))
    assert features.shape == (4, 6)


def test_without_the_source_its_forms_are_unknown_again(toy_sources):
    prefixed, by_path = toy_sources
    registry.unregister_classifier_source(prefixed.name)
    try:
        with pytest.raises(DCTError, match="'toy:small' is neither an existing file or folder nor a known form"):
            load_classifier("toy:small")
        assert registry.node_kinds() == ["auto", "zero-shot CLIP"]
    finally:
        registry.register_classifier_source(prefixed)


def test_builtin_sources_keep_their_forms_kinds_and_order():
    assert registry.node_kinds() == ["auto", "zero-shot CLIP"]  # saved workflows store these strings
    assert registry.classifier_forms() == (
        "timm:<architecture> with --classifier-weights FILE (or timm:<architecture>@FILE), a timm or transformers "
        "model folder, a TorchScript file, or clip:<CLIP folder>")
    names = [s.name for s in registry.classifier_sources()]
    assert names[:3] == ["world", "timm", "clip"]  # the prefix forms first
    assert names.index("timm folder") < names.index("clip folder") < names.index("transformers")
    assert names.index("torchscript") < names.index("weights file") == len(names) - 1
    assert registry.node_spec("auto", "/m/w.safetensors", "resnet50") == "timm:resnet50@/m/w.safetensors"
    assert registry.node_spec("auto", "/m/w.safetensors", "") == "/m/w.safetensors"
    assert registry.node_spec("zero-shot CLIP", "/m/clip", "resnet50") == "clip:/m/clip"
    with pytest.raises(DCTError, match="use timm:<architecture> with --classifier-weights FILE"):
        load_classifier("./no/such/classifier")


def test_generic_code_names_no_particular_kind():
    """The spec parser, the label lookup and the Fréchet features ask the registry; only the kinds' own modules
    (and their documentation) name them."""
    import inspect

    from dct_core.classifiers import label_lookup, spec
    from dct_core.method import frechet

    for module in (spec, label_lookup, frechet):
        code = "\n".join(line for line in inspect.getsource(module).splitlines()
                         if not line.lstrip().startswith(("#", "-", "``")))
        code = code.split('"""', 2)[-1]  # past the module docstring
        for private in ("ZeroShotLogits", "HFLogits", "ScriptModule", "timm_source", "clip_source", "hf_source",
                        "torchscript_source", "zero-shot CLIP", '"clip"', '"timm"'):
            assert private not in code, (module.__name__, private)
