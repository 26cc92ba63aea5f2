"""The one settings table: every setting a user types is declared once and reaches its config, the CLI, the
token metadata and the node help page under one name; bad values are one-line errors."""

from dataclasses import fields
from pathlib import Path

import pytest

from dct_core.cli import build_parser, main
from dct_core.config import SamplingConfig, TrainConfig, preset_config
from dct_core.errors import DCTError
from dct_core.jobs.run import METADATA_KEYS
from dct_core.method.adaptive import AdaptiveConfig
from dct_core.settings import BY_NAME, CLI, NODE, SETTINGS, check, metadata_names

DOCS = Path(__file__).resolve().parents[1] / "web" / "docs"
# The Options node shows these sections; max_steps is on the Train node itself.
OPTIONS_NODE = [s.name for s in SETTINGS if NODE in s.fronts and s.section != "date" and s.name != "max_steps"]


def test_names_and_flags_are_unique_and_every_config_field_is_a_setting():
    assert len(BY_NAME) == len(SETTINGS)
    flags = [f for s in SETTINGS if CLI in s.fronts for f in (s.flag, *s.flags)]
    assert len(flags) == len(set(flags))
    config_fields = {f.name for f in fields(TrainConfig) if f.name != "sampling"}
    config_fields |= {f.name for f in fields(SamplingConfig)} | {f.name for f in fields(AdaptiveConfig)}
    assert config_fields <= set(BY_NAME), config_fields - set(BY_NAME)


def test_metadata_keys_come_from_the_table():
    assert set(metadata_names()) <= set(METADATA_KEYS)
    assert {"lr", "batch_size", "max_steps", "sampling_steps", "resolution", "guidance"} <= set(metadata_names())


@pytest.mark.parametrize("name, value, message", [
    ("lr", float("nan"), "lr must be a finite number"),
    ("lr", 0.0, "lr must be > 0"),
    ("batch_size", 0, "batch_size must be >= 1"),
    ("batch_size", 2.5, "batch_size must be a whole number"),
    ("accuracy_threshold", 1.5, "accuracy_threshold must be > 0 and <= 1"),
    ("gradient_point", "middle", "unknown gradient_point 'middle'"),
    ("x0_interval", (0.8, 0.2), "start <= end"),
    ("at_steps", (3, -1), "each step must be >= 0"),
])
def test_bad_values_are_one_line_errors_naming_the_setting(name, value, message):
    with pytest.raises(DCTError, match=message.replace("(", r"\(")):
        check(name, value)
    assert "\n" not in str(pytest.raises(DCTError, check, name, value).value)


def test_configs_validate_through_the_table():
    with pytest.raises(DCTError, match="enough_prob must be >= 0 and < 1"):
        preset_config("paper", enough_prob=1.0)
    with pytest.raises(DCTError, match="rho must be >= 0"):
        AdaptiveConfig(rho=-1).validate()
    assert preset_config("paper", sampling_steps=4, lr=0.1).sampling.sampling_steps == 4  # flat generation names


def test_every_cli_setting_is_an_option_of_train_and_old_spellings_still_parse():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    dests = {a.dest for a in train._actions}
    shown = [s.name for s in SETTINGS if CLI in s.fronts and s.section in ("training", "generation")]
    assert set(shown) <= dests, set(shown) - dests
    base = ["train", "--model", "m", "--classifier", "c", "--class", "x", "--out", "o"]
    old = parser.parse_args([*base, "--steps", "3", "--scheduler", "euler", "--no-checkpointing"])
    new = parser.parse_args([*base, "--max-steps", "3", "--sampler", "euler", "--no-checkpointing"])
    assert (old.max_steps, old.sampler, old.checkpointing) == (new.max_steps, new.sampler, new.checkpointing) \
        == (3, "euler", False)


def test_a_bad_number_on_the_command_line_is_refused_before_anything_loads(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--model", "nowhere", "--classifier", "c", "--class", "x", "--out", "o", "--lr", "nan"])
    assert exit_.value.code == 2
    assert "lr must be a finite number" in capsys.readouterr().err


def test_the_options_node_help_page_names_every_input():
    page = (DOCS / "DCTTrainingOptions.md").read_text()
    missing = [name for name in OPTIONS_NODE if f"`{name}`" not in page]
    assert not missing, missing


def test_help_pages_have_a_localized_copy_that_matches():
    """The frontends ask for docs/<NodeId>/<locale>.md first, then docs/<NodeId>.md (other locales): both are
    shipped, and must say the same."""
    pages = sorted(DOCS.glob("*.md"))
    assert len(pages) >= 9
    for page in pages:
        localized = DOCS / page.stem / "en.md"
        assert localized.is_file(), f"{localized} missing (copy {page.name} there)"
        assert localized.read_text() == page.read_text(), f"{localized} and {page.name} differ: keep them identical"
        assert "\n| " not in page.read_text(), f"{page.name}: tables are clipped in the narrow side panel"


def test_the_sampler_option_reaches_a_built_in_models_backend():
    from dct_core.cli.loading import load_backend

    args = build_parser().parse_args(["generate", "--model", "world", "--prompt", "a {token} ball", "--out", "x",
                                      "--scheduler", "euler", "--device", "cpu"])
    assert load_backend(args).sampler == "euler"
