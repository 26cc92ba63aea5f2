import pytest

from dct_core.backends.model_loading import clip_tokenizer
from dct_core.errors import DCTError
from dct_core.method.prompts import check_templates, prompts_for_batch, strip_token, tokenize_with_slots


def test_prompt_without_marker_tokenizes_like_the_tokenizer():
    tok = clip_tokenizer()
    prompt = "A high-resolution realistic image of a tiger cat"
    ids, slots = tokenize_with_slots(tok, [prompt], 1)
    expected = tok(prompt, padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert ids[0].tolist() == expected
    assert (slots == -1).all()


def test_marker_takes_one_slot_per_vector_and_the_rest_matches():
    tok = clip_tokenizer()
    ids, slots = tokenize_with_slots(tok, ["A photo of {token} tiger cat"], 3)
    plain = tok("A photo of tiger cat", padding="max_length", max_length=77)["input_ids"]
    row, slot = ids[0].tolist(), slots[0].tolist()
    assert [i for i, s in enumerate(slot) if s >= 0] == [4, 5, 6]  # <bos> a photo of | v0 v1 v2 | tiger cat
    assert [s for s in slot if s >= 0] == [0, 1, 2]
    kept = [t for t, s in zip(row, slot) if s < 0]
    assert kept[: len(plain) - 3] == plain[: len(plain) - 3]
    assert len(row) == 77


def test_template_checks_and_batch_pairs():
    with pytest.raises(DCTError, match="must contain \\{token\\}"):
        check_templates(["A photo of a {label}"])
    with pytest.raises(DCTError):
        check_templates([])
    prompts = prompts_for_batch(["a {token} {label}", "b {token} {label}"], "kite", 5)
    assert prompts == ["a {token} kite", "b {token} kite"] * 2 + ["a {token} kite"]
    assert strip_token("a {token} kite") == "a kite"


def test_class_token_past_the_context_window_is_an_error():
    tok = clip_tokenizer()
    with pytest.raises(DCTError, match="too long"):
        tokenize_with_slots(tok, ["word " * 80 + "{token}"], 1)
