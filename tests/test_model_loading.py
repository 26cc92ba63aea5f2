"""load_pipeline: diffusers folders, original-layout single files (built here from tiny models), errors."""

import json
import logging
import os
import pickle
import random
import re
import shutil

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

from dct_core.backends.model_loading import (  # noqa: E402
    CONFIGS_DIR,
    KINDS,
    TOKENIZER_DIR,
    clip_tokenizer,
    detect_kind,
    load_pipeline,
    read_checkpoint_shapes,
)
from dct_core.errors import DCTError  # noqa: E402

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


# ---------------------------------------------------------------- tiny pipelines


def _clip(width: int, projection: int | None, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        hidden_size=width, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=49408,
        max_position_embeddings=77, projection_dim=projection or width, hidden_act="gelu",
    )
    return (CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)).eval()


def _tokenizer(pad: str):
    from transformers import CLIPTokenizer

    # The CLIP BPE files as shipped (a copy of the SD tokenizers' vocab.json / merges.txt).
    vocab, merges = str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt")
    return CLIPTokenizer(vocab, merges, model_max_length=77, pad_token=pad)


UNET_KWARGS = dict(
    block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )


def tiny_sd(pad: str = "<|endoftext|>"):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=32, **UNET_KWARGS)
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=_vae(), text_encoder=_clip(32, None, 1), tokenizer=_tokenizer(pad), unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def tiny_sdxl():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    # Two encoders of different widths (32 + 48 = 80), as in real SDXL (768 + 1280): the single-file
    # loader tells their weights apart by width.
    unet = UNet2DConditionModel(
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=32 + 48, **UNET_KWARGS,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(), unet=unet, scheduler=EulerDiscreteScheduler(), text_encoder=_clip(32, None, 1),
        tokenizer=_tokenizer("<|endoftext|>"), text_encoder_2=_clip(48, 32, 2), tokenizer_2=_tokenizer("!"),
    )


@pytest.fixture(scope="module")
def sd1():
    return tiny_sd()


@pytest.fixture(scope="module")
def sdxl():
    return tiny_sdxl()


def assert_same_weights(expected, actual):
    for name in COMPONENTS:
        a, b = getattr(expected, name, None), getattr(actual, name, None)
        assert (a is None) == (b is None), name
        if a is None:
            continue
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys(), name
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{name}.{key} differs"


def assert_same_tokenizers(expected, actual):
    prompt = ["a photo of a tabby cat"]
    for name in ("tokenizer", "tokenizer_2"):
        a, b = getattr(expected, name, None), getattr(actual, name, None)
        if a is None:
            continue
        assert a.pad_token == b.pad_token and a.model_max_length == b.model_max_length == 77
        assert a(prompt, padding="max_length").input_ids == b(prompt, padding="max_length").input_ids


# ---------------------------------------------------------------- diffusers -> original (LDM) layout
# The inverse of diffusers' single-file key conversion (diffusers.loaders.single_file_utils), for tests only.

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}


def _rename_first(rest: str, table: dict) -> str:
    head, _, tail = rest.partition(".")
    return f"{table.get(head, head)}.{tail}"


def ldm_unet(sd: dict, config) -> dict:
    step = config["layers_per_block"] + 1
    up_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    out = {}
    for key, value in sd.items():
        top = next((t for t in _UNET_TOP if key.startswith(t + ".")), None)
        if top:
            new = _UNET_TOP[top] + key[len(top):]
        elif m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(\w+)\.(\d+)\.(.+)", key):
            side, b, part, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
            if part == "downsamplers":
                new = f"input_blocks.{step * (b + 1)}.0.op.{rest.removeprefix('conv.')}"
            elif part == "upsamplers":
                new = f"output_blocks.{step * b + step - 1}.{2 if up_attn[b] else 1}.{rest}"
            else:
                down = side == "down"
                blocks, idx = ("input_blocks", step * b + j + 1) if down else ("output_blocks", step * b + j)
                if part == "attentions":
                    new = f"{blocks}.{idx}.1.{rest}"
                else:
                    new = f"{blocks}.{idx}.0.{_rename_first(rest, _RESNET)}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_rename_first(m[2], _RESNET)}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        else:
            raise AssertionError(f"unmapped UNet key {key}")
        out["model.diffusion_model." + new] = value
    return out


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}


def ldm_vae(sd: dict, config) -> dict:
    n_up = len(config["up_block_types"])
    out = {}
    for key, value in sd.items():
        new = key.replace("conv_norm_out", "norm_out")
        if m := re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(\w+)\.(\d+)\.(.+)", key):
            coder, side, b, part, j, rest = m.groups()
            b = int(b) if side == "down" else n_up - 1 - int(b)  # LDM numbers decoder blocks from the bottom
            if part == "resnets":
                new = f"{coder}.{side}.{b}.block.{j}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            else:
                new = f"{coder}.{side}.{b}.{side}sample.{rest}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
            rest = _rename_first(m[2], _VAE_ATTN).replace("proj_out.0.", "proj_out.")
            new = f"{m[1]}.mid.attn_1.{rest}"
            if value.ndim == 2:
                value = value[:, :, None, None]  # LDM stores these as 1x1 convolutions
        out["first_stage_model." + new] = value
    return out


def ldm_clip(sd: dict, prefix: str) -> dict:
    out = {prefix + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in sd.items()}
    out[prefix + "text_model.embeddings.position_ids"] = torch.arange(77)[None]  # present in most real files
    return out


_OPENCLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}


def ldm_openclip(sd: dict, prefix: str) -> dict:
    sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    out = {prefix + "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
           prefix + "token_embedding.weight": sd.pop("embeddings.token_embedding.weight")}
    if "text_projection.weight" in sd:
        out[prefix + "text_projection"] = sd.pop("text_projection.weight").T
    for key, value in sd.items():
        if key.startswith("final_layer_norm."):
            out[prefix + "ln_final." + key.split(".")[-1]] = value
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        block = f"{prefix}transformer.resblocks.{m[1]}."
        if m[2].startswith("self_attn.") and m[2] != "self_attn.out_proj":
            if m[2] == "self_attn.q_proj":  # q, k, v are one packed in_proj in OpenCLIP
                qkv = [sd[f"encoder.layers.{m[1]}.self_attn.{x}_proj.{m[3]}"] for x in "qkv"]
                out[f"{block}attn.in_proj_{m[3]}"] = torch.cat(qkv)
            continue
        out[f"{block}{_OPENCLIP[m[2]]}.{m[3]}"] = value
    return out


def ldm_checkpoint(pipe, text_layout: str) -> dict:
    """An original-layout state dict of ``pipe``: text_layout "sd1" (CLIP-L), "sd2" (OpenCLIP) or "sdxl"."""
    sd = ldm_unet(pipe.unet.state_dict(), pipe.unet.config)
    sd.update(ldm_vae(pipe.vae.state_dict(), pipe.vae.config))
    te = pipe.text_encoder.state_dict()
    if text_layout == "sd1":
        sd.update(ldm_clip(te, "cond_stage_model.transformer."))
    elif text_layout == "sd2":
        sd.update(ldm_openclip(te, "cond_stage_model.model."))
    else:
        sd.update(ldm_clip(te, "conditioner.embedders.0.transformer."))
        sd.update(ldm_openclip(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def save_configs(pipe, folder, shipped: str):
    """A config folder like dct_core/configs/<shipped> (no weights, no tokenizer), with the model_index and
    scheduler shipped there and the tiny model's component configs."""
    folder.mkdir()
    shutil.copy(CONFIGS_DIR / shipped / "model_index.json", folder)
    shutil.copytree(CONFIGS_DIR / shipped / "scheduler", folder / "scheduler")
    for name in ("unet", "vae"):
        getattr(pipe, name).save_config(folder / name)
    for name in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).config.save_pretrained(folder / name)
    return folder


def save_safetensors(sd: dict, file):
    from safetensors.torch import save_file

    save_file(sd, str(file))
    return file


# ---------------------------------------------------------------- diffusers folders


def test_sd1_folder_round_trip(sd1, tmp_path):
    from diffusers import StableDiffusionPipeline

    sd1.save_pretrained(tmp_path / "sd1")
    pipe = load_pipeline(tmp_path / "sd1")
    assert type(pipe) is StableDiffusionPipeline and pipe.safety_checker is None
    assert_same_weights(sd1, pipe)
    assert_same_tokenizers(sd1, pipe)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert type(pipe.scheduler) is type(sd1.scheduler)
    assert public(pipe.scheduler.config) == public(sd1.scheduler.config)
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"


def test_sdxl_folder_round_trip(sdxl, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    sdxl.save_pretrained(tmp_path / "sdxl")
    pipe = load_pipeline(str(tmp_path / "sdxl"), dtype=torch.bfloat16)
    assert type(pipe) is StableDiffusionXLPipeline
    assert pipe.unet.dtype == pipe.text_encoder_2.dtype == torch.bfloat16
    assert_same_weights(sdxl.to(dtype=torch.bfloat16), pipe)
    sdxl.to(dtype=torch.float32)
    assert_same_tokenizers(sdxl, pipe)


# ---------------------------------------------------------------- single-file checkpoints


def test_sd1_single_file_safetensors(sd1, tmp_path):
    file = save_safetensors(ldm_checkpoint(sd1, "sd1"), tmp_path / "tiny-sd1.safetensors")
    pipe = load_pipeline(file, config=save_configs(sd1, tmp_path / "cfg", "sd1"))
    assert type(pipe).__name__ == "StableDiffusionPipeline" and pipe.safety_checker is None
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"  # as shipped for SD1.5
    assert_same_weights(sd1, pipe)
    assert_same_tokenizers(sd1, pipe)  # built from the shipped vocabulary


def test_sd1_single_file_weights_only_ckpt(sd1, tmp_path):
    file = tmp_path / "tiny-sd1.ckpt"
    torch.save({"state_dict": ldm_checkpoint(sd1, "sd1"), "global_step": 1}, file)  # A1111-era nesting
    assert_same_weights(sd1, load_pipeline(file, config=save_configs(sd1, tmp_path / "cfg", "sd1")))


def test_sd2_single_file_openclip_layout(tmp_path):
    sd2 = tiny_sd(pad="!")  # SD2 differs from SD1 in sizes and in the file layout (OpenCLIP), tested here
    file = save_safetensors(ldm_checkpoint(sd2, "sd2"), tmp_path / "tiny-v2-768.safetensors")
    assert detect_kind(read_checkpoint_shapes(file), name=file.name, check_dims=False) == "sd2-v"
    pipe = load_pipeline(file, config=save_configs(sd2, tmp_path / "cfg", "sd2-v"))
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert_same_weights(sd2, pipe)
    assert_same_tokenizers(sd2, pipe)


def test_sdxl_single_file(sdxl, tmp_path):
    file = save_safetensors(ldm_checkpoint(sdxl, "sdxl"), tmp_path / "tiny-xl.safetensors")
    pipe = load_pipeline(file, config=save_configs(sdxl, tmp_path / "cfg", "sdxl"), kind="sdxl")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler" and pipe.watermark is None
    assert_same_weights(sdxl, pipe)
    assert_same_tokenizers(sdxl, pipe)


# ---------------------------------------------------------------- family detection on full-size key sets


def _meta_models(kind: str) -> dict:
    """The full-size models of a shipped config, on the meta device (shapes only, no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = CONFIGS_DIR / kind
    with torch.device("meta"):
        models = {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
        }
        if kind == "sdxl":
            config = CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
            models["text_encoder_2"] = CLIPTextModelWithProjection(config)
    return models


@pytest.fixture(scope="module")
def full_shapes():
    """Tensor shapes of original-layout SD1.5 / SD2.1 / SDXL-base checkpoints, from the shipped configs."""

    class Pipe:
        def __init__(self, models):
            self.__dict__.update(models)

    shapes = {}
    for kind, layout in (("sd1", "sd1"), ("sd2-v", "sd2"), ("sdxl", "sdxl")):
        sd = ldm_checkpoint(Pipe(_meta_models(kind)), layout)
        shapes[kind] = {k: tuple(v.shape) for k, v in sd.items()}
    return shapes


# Official parameter counts; SD2's text encoder is OpenCLIP-H without its last layer (as diffusers has it).
_VAE, _CLIP_L, _SD2_UNET, _OPENCLIP_H = 83_653_863, 123_060_480, 865_910_724, 340_387_840
OFFICIAL_SIZES = {
    "sd1": {"unet": 859_520_964, "vae": _VAE, "text_encoder": _CLIP_L},
    "sd2": {"unet": _SD2_UNET, "vae": _VAE, "text_encoder": _OPENCLIP_H},
    "sd2-v": {"unet": _SD2_UNET, "vae": _VAE, "text_encoder": _OPENCLIP_H},
    "sdxl": {"unet": 2_567_463_684, "vae": _VAE, "text_encoder": _CLIP_L, "text_encoder_2": 694_659_840},
}


@pytest.mark.parametrize("kind", KINDS)
def test_shipped_config_folder_is_complete(kind):
    import diffusers

    folder = CONFIGS_DIR / kind
    index = json.loads((folder / "model_index.json").read_text())
    cls = getattr(diffusers, index["_class_name"])
    assert (cls is diffusers.StableDiffusionXLPipeline) == (kind == "sdxl")
    sizes = {name: sum(p.numel() for p in m.parameters()) for name, m in _meta_models(kind).items()}
    assert sizes == OFFICIAL_SIZES[kind]
    scheduler = getattr(diffusers, index["scheduler"][1]).from_pretrained(folder, subfolder="scheduler")
    assert scheduler.config.prediction_type == ("v_prediction" if kind == "sd2-v" else "epsilon")
    for name, (library, _) in ((k, v) for k, v in index.items() if isinstance(v, list)):
        if library is not None and not name.startswith("tokenizer"):
            assert (folder / name).is_dir(), f"{kind}: {name} config missing"


def test_tokenizer_is_shipped_once():
    shipped = sorted(p.relative_to(CONFIGS_DIR).as_posix() for p in CONFIGS_DIR.rglob("*") if p.is_file())
    assert [p for p in shipped if p.endswith(("vocab.json", "merges.txt"))] == [
        "clip_tokenizer/merges.txt", "clip_tokenizer/vocab.json"
    ]
    assert (TOKENIZER_DIR / "vocab.json").stat().st_size > 1_000_000
    assert clip_tokenizer("!")(["a cat"], padding="max_length").input_ids[0][:4] == [49406, 320, 2368, 49407]
    assert clip_tokenizer("!").pad_token_id == 0 and clip_tokenizer().pad_token_id == 49407


def test_detects_each_family(full_shapes):
    assert detect_kind(full_shapes["sd1"]) == "sd1"
    assert detect_kind(full_shapes["sdxl"]) == "sdxl"
    sd2 = full_shapes["sd2-v"]
    assert detect_kind(sd2, name="v2-1_768-ema-pruned.safetensors") == "sd2-v"
    assert detect_kind(sd2, name="v2-1_512-ema-pruned.safetensors") == "sd2"
    assert detect_kind({**sd2, "v_pred": (0,)}, name="merged.safetensors") == "sd2-v"
    assert detect_kind(sd2, name="merged.safetensors", kind="sd2") == "sd2"


def test_sd2_prediction_from_companion_yaml(full_shapes, tmp_path, caplog):
    sd2 = full_shapes["sd2-v"]
    yaml = tmp_path / "model.yaml"
    yaml.write_text("model:\n  params:\n    parameterization: \"v\"\n")
    assert detect_kind(sd2, name="model.safetensors", yaml=yaml) == "sd2-v"
    yaml.write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert detect_kind(sd2, name="model.safetensors", yaml=yaml) == "sd2"
    with caplog.at_level(logging.WARNING, logger="dct_core.backends.model_loading"):
        assert detect_kind(sd2, name="model.safetensors") == "sd2-v"
    assert "kind='sd2'" in caplog.text


def test_detection_refuses_what_it_cannot_load(full_shapes):
    sd1, sdxl = full_shapes["sd1"], full_shapes["sdxl"]
    cases = {
        "does not match": ({**sd1}, {"kind": "sdxl"}),
        "no text encoder": ({k: v for k, v in sd1.items() if not k.startswith("cond_stage_model.")}, {}),
        "no VAE": ({k: v for k, v in sd1.items() if not k.startswith("first_stage_model.")}, {}),
        "input channels": ({**sd1, "model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}, {}),
        "no Stable Diffusion UNet": ({"lora_unet_down_blocks_0.alpha": ()}, {}),
        "diffusers component": ({"conv_in.weight": (320, 4, 3, 3)}, {}),
        "v-prediction or EDM variant of sdxl": ({**sdxl, "v_pred": (0,)}, {}),
        "refiner": ({k.replace("embedders.1.", "embedders.0."): v for k, v in sdxl.items()
                     if not k.startswith("conditioner.embedders.0.")}, {}),
        "cross-attention width": ({k: (v[0], 1280) if k.endswith("attn2.to_k.weight") else v
                                   for k, v in sd1.items()}, {}),
    }
    for message, (shapes, kwargs) in cases.items():
        with pytest.raises(DCTError, match=message):
            detect_kind(shapes, **kwargs)


# ---------------------------------------------------------------- user errors


def test_missing_path_and_bad_kind(tmp_path):
    with pytest.raises(DCTError, match="model not found"):
        load_pipeline(tmp_path / "nope.safetensors")
    with pytest.raises(DCTError, match="unknown model kind"):
        load_pipeline(tmp_path, kind="sd3")


def test_unsupported_folders(tmp_path):
    with pytest.raises(DCTError, match="no model_index.json"):
        load_pipeline(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(DCTError, match="FluxPipeline.*only text-to-image"):
        load_pipeline(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(DCTError, match="kind='sdxl' does not match"):
        load_pipeline(tmp_path, kind="sdxl")
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(DCTError, match="not valid JSON"):
        load_pipeline(tmp_path)


def test_incomplete_folder(sd1, tmp_path):
    sd1.save_pretrained(tmp_path)
    for file in (tmp_path / "unet").iterdir():
        file.unlink()
    with pytest.raises(DCTError, match="could not load the diffusers folder"):
        load_pipeline(tmp_path)


def test_garbage_and_unknown_files(tmp_path):
    # Random bytes reach torch.load's unpickler in different states (it may refuse an opcode or fail on
    # structure): either way the user gets one clear line. Fixed bytes keep the test deterministic.
    garbage = random.Random(0).randbytes(4096)
    for name, message in (("model.safetensors", "not a readable .safetensors"),
                          ("model.ckpt", "refusing to load model.ckpt.*damaged|model.ckpt is not a readable"),
                          ("model.bin", "unsupported model file type")):
        (tmp_path / name).write_bytes(garbage)
        with pytest.raises(DCTError, match=message):
            load_pipeline(tmp_path / name)
    # A valid safetensors file that is not a Stable Diffusion model (e.g. a LoRA).
    save_safetensors({"lora_unet_down_blocks_0.alpha": torch.ones(())}, tmp_path / "lora.safetensors")
    with pytest.raises(DCTError, match="no Stable Diffusion UNet"):
        load_pipeline(tmp_path / "lora.safetensors")


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.mark.parametrize("layout", ["raw-pickle", "torch-zip"])
def test_code_carrying_pickle_is_refused_unrun(tmp_path, layout):
    marker = tmp_path / "marker"
    file = tmp_path / "evil.ckpt"
    state = {"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": _Payload(marker)}}
    if layout == "raw-pickle":
        file.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, file)
    with pytest.raises(DCTError, match="refusing to load evil.ckpt.*arbitrary Python code.*safetensors"):
        load_pipeline(file)
    assert not marker.exists()
    # The payload is live: an unrestricted unpickle would have run it.
    pickle.loads(pickle.dumps(_Payload(tmp_path / "control")))
    assert (tmp_path / "control").exists()


@pytest.mark.parametrize("legacy", [False, True])
def test_a_truncated_ckpt_is_damaged_not_code(tmp_path, legacy):
    state = {"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.ones(8, 4, 3, 3)}}
    torch.save(state, tmp_path / "full.ckpt", _use_new_zipfile_serialization=not legacy)
    data = (tmp_path / "full.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 3])  # legacy: torch says "Unsupported global"
    with pytest.raises(DCTError, match=r"^cut\.ckpt is not a readable checkpoint: damaged or truncated") as caught:
        read_checkpoint_shapes(tmp_path / "cut.ckpt")
    assert "code" not in str(caught.value)


def test_checkpoint_folder_missing_file_and_non_dict_are_told_apart(tmp_path):
    (tmp_path / "dir.ckpt").mkdir()
    with pytest.raises(DCTError, match=r"^dir\.ckpt is a folder, not a file"):
        read_checkpoint_shapes(tmp_path / "dir.ckpt")
    with pytest.raises(DCTError, match=r"^checkpoint nope\.ckpt does not exist"):
        read_checkpoint_shapes(tmp_path / "nope.ckpt")
    torch.save([torch.ones(2)], tmp_path / "list.ckpt")
    with pytest.raises(DCTError, match=r"^list\.ckpt holds a list, not a dict of tensors"):
        read_checkpoint_shapes(tmp_path / "list.ckpt")
