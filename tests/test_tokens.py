import copy
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import EvilPickle
from dct_core.diffusers_backend import DiffusersBackend
from dct_core.errors import DCTError
from dct_core.tiny import tiny_pipeline
from dct_core.tokens import ClassToken, load_class_token, sanitize_name, save_class_token, token_path


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
    save_class_token(ClassToken({"clip_l": torch.zeros(1, 8)}), path, overwrite=True)
    assert torch.equal(load_class_token(path).vectors["clip_l"], torch.zeros(1, 8))
    assert sorted(os.listdir(tmp_path)) == ["t.safetensors"]  # no temp files left behind


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import dct_core.tokens as tokens

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(tokens, "save_file", broken)
    with pytest.raises(OSError):
        save_class_token(_token(clip_l=8), tmp_path / "t.safetensors")
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
