import copy
import errno
import os
import pickle
import re
import tempfile
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

import dct_core.formats.files as files
import dct_core.formats.tokens as tokens
from conftest import EvilPickle
from dct_core.backends.diffusers_backend import DiffusersBackend
from dct_core.errors import DCTError, TokenSaveError
from dct_core.formats.tokens import (
    ClassToken,
    check_save_target,
    load_class_token,
    sanitize_name,
    save_class_token,
    token_path,
    validate_class_token,
)
from dct_core.testing.tiny import tiny_pipeline

CLI_HINT = "pass --overwrite to replace it or choose another --out"
NODE_HINT = "enable 'overwrite' or change save_name"


def _token(**widths):
    g = torch.Generator().manual_seed(0)
    return ClassToken({k: torch.randn(1, w, generator=g) for k, w in widths.items()}, name="tiger-cat",
                      metadata={"class_index": "282", "class_label": "tiger cat", "accuracy": "0.8"})


def test_sd1_file_is_a_lone_emb_params_tensor_and_round_trips(tmp_path):
    token = _token(clip_l=768)
    path = save_class_token(token, tmp_path / "tiger-cat.safetensors")
    raw = load_file(str(path))
    assert list(raw) == ["emb_params"] and raw["emb_params"].shape == (1, 768)  # what A1111/ComfyUI read
    back = load_class_token(path)
    assert torch.equal(back.vectors["clip_l"], token.vectors["clip_l"])
    assert back.metadata["class_label"] == "tiger cat" and back.name == "tiger-cat"


def test_sdxl_file_has_clip_l_and_clip_g(tmp_path):
    token = _token(clip_l=768, clip_g=1280)
    path = save_class_token(token, tmp_path / "x.safetensors")
    assert {k: v.shape for k, v in load_file(str(path)).items()} == {"clip_l": (1, 768), "clip_g": (1, 1280)}
    back = load_class_token(path)
    assert all(torch.equal(back.vectors[k], token.vectors[k]) for k in ("clip_l", "clip_g"))


def test_sd2_width_maps_to_clip_h_in_a_foreign_file(tmp_path):
    save_file({"emb_params": torch.ones(2, 1024)}, str(tmp_path / "foreign.safetensors"))  # no dct metadata
    back = load_class_token(tmp_path / "foreign.safetensors")
    assert list(back.vectors) == ["clip_h"] and back.num_vectors == 2 and back.name == "foreign"


def test_a1111_pt_and_diffusers_bin_are_read_with_weights_only(tmp_path):
    vec = torch.randn(2, 768)
    save_class_token(ClassToken({"clip_l": vec}, name="a1111"), tmp_path / "a1111.pt")
    raw = torch.load(tmp_path / "a1111.pt", weights_only=True)
    assert torch.equal(raw["string_to_param"]["*"], vec) and raw["name"] == "a1111"
    assert torch.equal(load_class_token(tmp_path / "a1111.pt").vectors["clip_l"], vec)
    torch.save({"<cat>": vec[0]}, tmp_path / "learned_embeds.bin")  # diffusers' textual inversion output
    assert torch.equal(load_class_token(tmp_path / "learned_embeds.bin").vectors["clip_l"], vec[:1])


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"string_to_param": {"*": EvilPickle(str(marker))}}, f)
    with pytest.raises(DCTError, match="re-save it as .safetensors"):
        load_class_token(tmp_path / "evil.pt")
    assert not marker.exists()


def test_writes_are_atomic_and_never_overwrite_silently(tmp_path):
    path = tmp_path / "t.safetensors"
    save_class_token(_token(clip_l=8), path)
    before = path.read_bytes()
    with pytest.raises(DCTError, match="already exists"):
        save_class_token(_token(clip_l=8), path)
    assert path.read_bytes() == before
    save_class_token(ClassToken({"clip_l": torch.ones(1, 8)}), path, overwrite=True)
    assert torch.equal(load_class_token(path).vectors["clip_l"], torch.ones(1, 8))
    assert sorted(os.listdir(tmp_path)) == ["t.safetensors"]  # no temp files left behind


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import dct_core.formats.tokens as tokens

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(tokens, "save_file", broken)
    with pytest.raises(TokenSaveError, match="could not save .*t.safetensors: disk full") as caught:
        save_class_token(_token(clip_l=8), tmp_path / "t.safetensors")
    assert caught.value.fallback_path is None
    assert os.listdir(tmp_path) == []


def test_names_are_sanitized_and_cannot_escape_the_folder(tmp_path):
    assert sanitize_name("../../etc/passwd") == "passwd"
    assert sanitize_name("tiger cat!.safetensors") == "tiger-cat"
    assert token_path(tmp_path, "../x").parent == tmp_path.resolve()
    with pytest.raises(DCTError):
        sanitize_name("../..")


def test_width_mismatch_is_a_clear_error():
    with pytest.raises(DCTError, match="SD1: 768"):
        _token(clip_l=768).for_encoders({"clip_h": 1024})
    with pytest.raises(DCTError):
        _token(clip_l=768).for_encoders({"clip_l": 768, "clip_g": 1280})


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_diffusers_load_textual_inversion_gives_the_same_conditioning(tmp_path, kind):
    """Our file, loaded by diffusers' own loader, conditions the model exactly as our in-memory splice does."""
    pipe = tiny_pipeline(kind)
    backend = DiffusersBackend(pipe)
    g = torch.Generator().manual_seed(3)
    token = ClassToken({k: torch.randn(1, w, generator=g) for k, w in backend.encoders.items()}, name="dct-x")
    path = save_class_token(token, tmp_path / "dct-x.safetensors")
    ours = backend.encode(["A photo of {token} tiger cat"], token.vectors)

    loaded = copy.deepcopy(pipe)
    state = load_file(str(path))
    if kind == "sd1":
        loaded.load_textual_inversion(str(path), token="<dct-x>")
    else:
        loaded.load_textual_inversion(state["clip_l"], token="<dct-x>", text_encoder=loaded.text_encoder,
                                      tokenizer=loaded.tokenizer)
        loaded.load_textual_inversion(state["clip_g"], token="<dct-x>", text_encoder=loaded.text_encoder_2,
                                      tokenizer=loaded.tokenizer_2)
    theirs = DiffusersBackend(loaded).encode(["A photo of <dct-x> tiger cat"], None)
    torch.testing.assert_close(theirs.hidden, ours.hidden, rtol=0, atol=1e-5)
    if kind == "sdxl":
        torch.testing.assert_close(theirs.pooled, ours.pooled, rtol=0, atol=1e-5)


# --- permissions, races -------------------------------------------------------------------------------------------


def test_token_files_get_the_umask_mode_without_touching_the_umask(tmp_path, monkeypatch):
    old = os.umask(0o022)
    try:
        monkeypatch.setattr(os, "umask", lambda *_: pytest.fail("os.umask must not be called"))
        for name in ("a.safetensors", "b.pt"):
            path = save_class_token(_token(clip_l=8), tmp_path / name)
            assert oct(path.stat().st_mode & 0o777) == "0o644"  # readable by the host's other users
    finally:
        monkeypatch.undo()
        os.umask(old)


def test_racing_saves_of_one_name_have_one_winner_and_its_whole_token(tmp_path, monkeypatch):
    barrier = threading.Barrier(4)
    real_save_file = tokens.save_file

    def slow_save_file(*args, **kwargs):
        real_save_file(*args, **kwargs)
        barrier.wait(timeout=10)  # every writer has passed the checks and written its temp

    monkeypatch.setattr(tokens, "save_file", slow_save_file)
    path, won, lost = tmp_path / "t.safetensors", [], []

    def save(i):
        token = ClassToken({"clip_l": torch.full((2, 8), float(i + 1))}, name="t")
        try:
            save_class_token(token, path, overwrite_hint=CLI_HINT)
            won.append(i)
        except DCTError as exc:
            lost.append(str(exc))

    threads = [threading.Thread(target=save, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(won) == 1 and len(lost) == 3
    assert all(msg.endswith(f"already exists; {CLI_HINT}.") for msg in lost)
    assert torch.equal(load_class_token(path).vectors["clip_l"], torch.full((2, 8), float(won[0] + 1)))
    assert os.listdir(tmp_path) == ["t.safetensors"]


# --- checking the target before training -----------------------------------------------------------------------


def test_check_save_target_normalizes_and_creates_the_folder_only(tmp_path):
    path = check_save_target(tmp_path / "new" / "tok", overwrite=False, overwrite_hint=CLI_HINT)
    assert path == tmp_path / "new" / "tok.safetensors"
    assert (tmp_path / "new").is_dir() and os.listdir(tmp_path / "new") == []  # the write probe left nothing
    assert check_save_target(tmp_path / "a.pt", overwrite=False, overwrite_hint=CLI_HINT).suffix == ".pt"


@pytest.mark.parametrize("hint", [CLI_HINT, NODE_HINT])
def test_an_existing_target_counts_with_its_suffix_and_ends_with_the_callers_hint(tmp_path, hint):
    save_class_token(_token(clip_l=8), tmp_path / "tok.safetensors")
    with pytest.raises(DCTError) as caught:
        check_save_target(tmp_path / "tok", overwrite=False, overwrite_hint=hint)  # --out tok
    message = str(caught.value)
    assert message.endswith(f"already exists; {hint}.") and "\n" not in message
    assert check_save_target(tmp_path / "tok", overwrite=True, overwrite_hint=hint) == tmp_path / "tok.safetensors"


def test_the_default_hint_speaks_no_cli(tmp_path):
    save_class_token(_token(clip_l=8), tmp_path / "t.safetensors")
    with pytest.raises(DCTError) as caught:
        save_class_token(_token(clip_l=8), tmp_path / "t.safetensors")
    assert "--" not in str(caught.value)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_in_the_way_is_named_as_such_and_overwrite_is_not_suggested(tmp_path, overwrite):
    (tmp_path / "tok.safetensors").mkdir()
    with pytest.raises(DCTError, match="is a folder") as caught:
        check_save_target(tmp_path / "tok", overwrite=overwrite, overwrite_hint=CLI_HINT)
    assert "overwrite" not in str(caught.value)


def test_names_too_long_for_the_file_or_its_temp_are_refused_before_training(tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    with pytest.raises(DCTError, match="too long: its temporary file name"):
        check_save_target(tmp_path / ("x" * (limit - 15)), overwrite=False, overwrite_hint=CLI_HINT)
    with pytest.raises(DCTError, match="too long: its file name"):
        check_save_target(tmp_path / ("x" * limit), overwrite=False, overwrite_hint=CLI_HINT)
    assert os.listdir(tmp_path) == []


def test_an_unwritable_or_uncreatable_folder_is_refused(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DCTError, match="it is a file, not a folder"):
        check_save_target(tmp_path / "file" / "tok", overwrite=False, overwrite_hint=CLI_HINT)
    with pytest.raises(DCTError, match="cannot create the folder .*Not a directory"):
        check_save_target(tmp_path / "file" / "sub" / "tok", overwrite=False, overwrite_hint=CLI_HINT)

    def read_only(folder):  # root ignores permission bits: the probe's failure is simulated
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tokens, "probe_writable", read_only)
    with pytest.raises(DCTError, match="cannot write to the folder .*Permission denied"):
        check_save_target(tmp_path / "tok", overwrite=False, overwrite_hint=CLI_HINT)


# --- keeping a token that cannot be saved --------------------------------------------------------------------------


def _no_space_for(folder, monkeypatch):
    real_publish = files._publish

    def publish(tmp, path, *args):
        if path.parent == folder:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_publish(tmp, path, *args)

    monkeypatch.setattr(files, "_publish", publish)


def test_a_failed_save_keeps_the_token_in_the_temp_dir_and_says_where(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "systmp"))
    out = tmp_path / "out"
    _no_space_for(out, monkeypatch)
    token = _token(clip_l=8)
    with pytest.raises(TokenSaveError) as caught:
        save_class_token(token, out / "tiger-cat", fallback=True)
    kept = caught.value.fallback_path
    assert kept.parent == tmp_path / "systmp" / "dct-unsaved" and re.match(r"tiger-cat-\d{8}-\d{6}-\d+\.safetensors$",
                                                                            kept.name)
    message = str(caught.value)
    assert "No space left on device" in message and str(kept) in message and "\n" not in message
    assert torch.equal(load_class_token(kept).vectors["clip_l"], token.vectors["clip_l"])
    assert os.listdir(out) == []  # neither the token nor a temp


def test_without_fallback_a_failed_save_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "systmp"))
    _no_space_for(tmp_path / "out", monkeypatch)
    with pytest.raises(TokenSaveError, match="No space left on device") as caught:
        save_class_token(_token(clip_l=8), tmp_path / "out" / "t")
    assert caught.value.fallback_path is None and not (tmp_path / "systmp").exists()


def test_a_target_under_a_regular_file_falls_back_even_as_root(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "systmp"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(TokenSaveError, match="it is a file, not a folder; the trained token was kept in") as caught:
        save_class_token(_token(clip_l=768), tmp_path / "file" / "tok.pt", fallback=True)
    assert caught.value.fallback_path.suffix == ".pt" and caught.value.fallback_path.is_file()


def test_when_no_fallback_folder_takes_it_the_error_says_so(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(tokens, "fallback_folders", lambda: [tmp_path / "file" / "spare"])
    with pytest.raises(TokenSaveError, match="keeping a copy elsewhere failed too") as caught:
        save_class_token(_token(clip_l=8), tmp_path / "file" / "tok", fallback=True)
    assert caught.value.fallback_path is None


# --- refusing broken tokens ------------------------------------------------------------------------------------------

BROKEN = {
    "NaN": (torch.tensor([[1.0, float("nan")]]), "NaN or infinite"),
    "Inf": (torch.tensor([[1.0, float("inf")]]), "NaN or infinite"),
    "huge": (torch.tensor([[1.0, 5e4]]), "beyond any real embedding"),
    "zero": (torch.tensor([[1.0, 2.0], [0.0, 0.0]]), "vector 1 is all zeros"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_tokens_are_refused_at_save_and_at_load(tmp_path, case):
    vec, message = BROKEN[case]
    token = ClassToken({"clip_l": vec}, name="bad")  # in memory it may exist (e.g. mid-training)
    with pytest.raises(DCTError, match=message):
        validate_class_token(token)  # what the Apply / CLIP nodes call
    for name in ("bad.safetensors", "bad.pt"):
        with pytest.raises(DCTError, match=message):
            save_class_token(token, tmp_path / name)
    assert os.listdir(tmp_path) == []
    save_file({"emb_params": vec}, str(tmp_path / "bad.safetensors"))
    torch.save({"string_to_param": {"*": vec}}, tmp_path / "bad.pt")
    for name in ("bad.safetensors", "bad.pt"):
        with pytest.raises(DCTError, match=f"token file .*{name} is unusable: .*{message}"):
            load_class_token(tmp_path / name)


@pytest.mark.parametrize("content, message", [
    ({"emb_params": torch.tensor(1.0)}, "a single number"),
    ({"emb_params": torch.zeros(0, 768)}, "an empty tensor"),
    ({"emb_params": torch.ones(1, 8, dtype=torch.int64)}, "torch.int64 values"),
])
def test_scalar_empty_or_integer_tensors_are_not_tokens(tmp_path, content, message):
    save_file(content, str(tmp_path / "t.safetensors"))
    torch.save(content, tmp_path / "t.bin")
    for name in ("t.safetensors", "t.bin"):
        with pytest.raises(DCTError, match=message):
            load_class_token(tmp_path / name)


@pytest.mark.parametrize("params, message", [
    ({}, "empty or malformed string_to_param"),
    ("not a dict", "empty or malformed string_to_param"),
    ({"*": [1.0, 2.0]}, "'list' data under 'string_to_param', not a tensor"),
    ({"*": "text"}, "'str' data under 'string_to_param', not a tensor"),
])
def test_a1111_files_without_a_tensor_in_string_to_param_are_refused(tmp_path, params, message):
    torch.save({"string_to_param": params, "name": "x"}, tmp_path / "x.pt")
    with pytest.raises(DCTError, match=message):
        load_class_token(tmp_path / "x.pt")


# --- reading: one message per way a file can be wrong ----------------------------------------------------------------


def test_missing_file_and_folder_are_told_apart(tmp_path):
    with pytest.raises(DCTError, match="token file .*nope.pt does not exist"):
        load_class_token(tmp_path / "nope.pt")
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(DCTError, match="dir.safetensors is a folder, not a file"):
        load_class_token(tmp_path / "dir.safetensors")


@pytest.mark.parametrize("legacy", [False, True])
def test_a_truncated_pt_is_damaged_not_code(tmp_path, legacy):
    torch.save({"string_to_param": {"*": torch.randn(4, 768)}}, tmp_path / "full.pt",
               _use_new_zipfile_serialization=not legacy)
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])  # legacy: torch itself says "Unsupported global"
    with pytest.raises(DCTError, match="cut.pt is not a readable token file: damaged or truncated") as caught:
        load_class_token(tmp_path / "cut.pt")
    assert "code" not in str(caught.value)


def test_a_truncated_safetensors_is_damaged(tmp_path):
    save_class_token(_token(clip_l=768), tmp_path / "t.safetensors")
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[:-100])
    with pytest.raises(DCTError, match="not a readable .safetensors file: damaged or truncated"):
        load_class_token(tmp_path / "t.safetensors")


def test_a_pickle_of_something_else_is_not_a_dict(tmp_path):
    torch.save([torch.ones(1, 8)], tmp_path / "list.pt")
    with pytest.raises(DCTError, match="list.pt holds a list, not a dict of tensors; it is not a token file"):
        load_class_token(tmp_path / "list.pt")


def test_code_in_a_token_pickle_is_named_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"string_to_param": {"*": EvilPickle(str(marker))}}, tmp_path / "evil.pt")  # torch's zip format
    with pytest.raises(DCTError, match="refusing to load .*evil.pt: it would run arbitrary Python code .*open"):
        load_class_token(tmp_path / "evil.pt")
    assert not marker.exists()
