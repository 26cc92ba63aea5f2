"""Every bad input is one line (issue: "nothing lost, every bad input one line"): numbers and sizes refused before
anything loads, with the option's name; user text never formatted or printed raw; no traceback without --debug."""

import json

import pytest
import torch

from dct_core.classifiers.clip_source import clip_prompt
from dct_core.cli import main
from dct_core.errors import DCTError
from dct_core.formats.printable import json_text, printable
from dct_core.formats.tokens import ClassToken, load_class_token, save_class_token

GENERATE = ["generate", "--model", "world", "--prompt", "a {token} ball", "--out", "unused"]


@pytest.mark.parametrize("extra, message", [
    (["--guidance", "inf"], "guidance must be a finite number"),
    (["--guidance", "nan"], "guidance must be a finite number"),
    (["--rho", "1e30"], "rho must be >= 0 and <= 100"),
    (["--adaptive-prior", "-5"], "prior must be >= 0"),
    (["--sampling-steps", "5000"], "sampling_steps must be >= 1 and <= 1000"),
    (["--resolution", "100000"], "resolution must be >= 8 and <= 4096"),
    (["--seeds", "0-100000000000"], "lists 100000000001 numbers; at most 100000"),
    (["--seeds", "99999999999999999999999"], "is outside 0 to"),
])
def test_numbers_and_sizes_are_refused_before_anything_loads(extra, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*GENERATE, *extra])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err and err.startswith("dct generate: error: argument --")


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "m", "--classifier", "c", "--class", "x", "--out", "o", "--lr", "inf"], "lr must be"),
    (["train", "--model", "m", "--classifier", "c", "--class", "x", "--out", "o", "--weight-decay", "-1"],
     "weight_decay must be >= 0"),
    (["train", "--model", "m", "--classifier", "c", "--class", "x", "--out", "o", "--preserve", "nan"],
     "preserve must be a finite number"),
    (["eval", "--model", "world", "--classifier", "world:guide", "--class", "ball", "--num-images", "0"],
     "num_images must be >= 1"),
    (["library", "--model", "world", "--classifier", "world:guide", "--out", "o", "--eval-images", "0"],
     "eval_images must be >= 1"),
])
def test_other_commands_refuse_bad_numbers_with_the_options_name(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_and_the_traceback_only_with_debug(monkeypatch, capsys):
    import dct_core.cli.labels as labels

    def boom(args):
        raise RuntimeError("something\x1b[2J broke")

    monkeypatch.setattr(labels, "load_classifier", boom)
    assert main(["labels", "world:guide"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "\x1b" not in err
    assert "RuntimeError: something\\x1b[2J broke" in err and "--debug" in err
    with pytest.raises(RuntimeError):
        main(["--debug", "labels", "world:guide"])


def test_labels_a_built_in_classifier_would_ignore_are_refused(tmp_path, capsys):
    (tmp_path / "labels.txt").write_text("a\nb\n")
    assert main(["labels", "world:guide", "--labels", str(tmp_path / "labels.txt")]) == 2
    assert "leave out --labels" in capsys.readouterr().err


def test_printed_text_escapes_control_characters_and_json_never_holds_nan():
    assert printable("kite\x1b[2J\nbird\u202e") == "kite\\x1b[2J\\x0abird\\u202e"
    assert printable("x" * 50, limit=10).endswith("(40 more characters)")
    text = json_text({"top1": float("nan"), "rows": [1.0, float("inf")]})
    assert json.loads(text) == {"top1": None, "rows": [1.0, None]}


def test_the_clip_template_is_substituted_literally_never_formatted():
    assert clip_prompt("a photo of a {label}", "cat") == "a photo of a cat"
    for hostile in ("{label:>10000000}", "{0} {x} }", "{label.__class__.__mro__}"):
        assert len(clip_prompt(hostile, "cat")) < 60  # no format spec, field or attribute is read


def test_a_token_whose_metadata_is_huge_or_damaged_is_one_line_or_ignored(tmp_path):
    from safetensors.torch import load_file, save_file

    vec = torch.randn(1, 32) * 0.02
    path = save_class_token(ClassToken({"clip_l": vec}, "t", {"prompt_label": "cat"}), tmp_path / "t.safetensors")
    tensors = load_file(str(path))
    huge = tmp_path / "huge.safetensors"
    save_file(tensors, str(huge), metadata={"dct.prompt_label": "x" * 40_000, "dct.encoders": '["clip_l"]'})
    with pytest.raises(DCTError, match="'prompt_label' is 40000 characters long") as info:
        load_class_token(huge)
    assert "\n" not in str(info.value)
    for encoders in ("{not json", '{"a": 1}', "[1, 2]", "null"):
        odd = tmp_path / "odd.safetensors"
        save_file(tensors, str(odd), metadata={"dct.encoders": encoders})
        assert set(load_class_token(odd).vectors) == {"clip_l"}  # the tensors' own keys name the encoders


@pytest.mark.parametrize("classes, message", [
    ("0-50000000", "--classes: 0-50000000 is outside 0 to 9"),
    ("0-2,\u0661", "--classes must be all, indices like 0-9"),
])
def test_library_class_ranges_are_checked_before_anything_is_listed(tmp_path, capsys, classes, message):
    argv = ["library", "--model", "world", "--classifier", "world:guide", "--out", str(tmp_path / "lib"),
            "--classes", classes]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_non_ascii_digit_is_not_a_class_index():
    from dct_core.classifiers.labels import resolve_class

    with pytest.raises(DCTError):
        resolve_class(["a", "b"], "\u0661")
    assert resolve_class(["a", "b"], "1") == 1
