"""The engine's Backend on the webui's loaded checkpoint (Forge's model objects).

Text goes through the webui's own text encoder, with the learned vectors registered in its embedding database
under a name used once per call (the database is as before after each call). Sampling is our own seeded Euler
with CFG over the UNet patcher's model (``sampling_function``: the user's LoRAs and model patches apply); its
last step to sigma 0 is the model's x0. Decoding goes through the checkpoint's VAE. The host's weights are
borrowed through plain aliases (dct_core/method/host_weights.py) and handed back untouched.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from dct_core.config import SamplingConfig
from dct_core.errors import DCTError
from dct_core.method.backend import Conditioning, NegativeCache, Trajectory, Vectors, init_rows
from dct_core.method.host_weights import gradient_checkpointing, trainable_weights
from dct_core.method.prompts import TOKEN_MARK

from . import host

ENCODER_NAMES = ("clip_l", "clip_g", "clip_h")  # Forge's CLIP keeps one attribute per text encoder
SCHEDULERS = ("normal", "karras")
POOLED_WIDTH = 1280  # SDXL: the second encoder's pooled output leads the UNet's vector conditioning


def text_encoders(clip) -> dict[str, Any]:
    """Forge's text encoders by name ("clip_l", "clip_g", "clip_h"), each with ``.transformer``."""
    inner = clip.cond_stage_model
    return {name: getattr(inner, name) for name in ENCODER_NAMES if getattr(inner, name, None) is not None}


def sub_tokenizers(clip) -> dict[str, Any]:
    return {name: getattr(clip.tokenizer, name) for name in ENCODER_NAMES
            if getattr(clip.tokenizer, name, None) is not None}


class WebuiBackend:
    """Implements dct_core.method.backend.Backend on ``shared.sd_model`` (Forge Classic layout)."""

    def __init__(self, sd_model: Any, *, scheduler: str = "normal", checkpointing: bool = True):
        if scheduler not in SCHEDULERS:
            raise DCTError(f"unknown scheduler {scheduler!r}; pick one of: {', '.join(SCHEDULERS)}.")
        self._negatives = NegativeCache()
        objects = sd_model.forge_objects
        self.sd_model = sd_model
        self.unet, self.clip, self.vae = objects.unet, objects.clip, objects.vae
        self.is_sdxl = bool(getattr(sd_model, "is_sdxl", False))
        self.scheduler = scheduler
        self.sampler = f"euler/{scheduler}"
        self.checkpointing = checkpointing
        self.device = torch.device(host.require("get_torch_device")())
        self.dtype = torch.float32
        encoders = text_encoders(self.clip)
        if not encoders:
            raise host.mismatch("forge_objects.clip.cond_stage_model.clip_l/clip_g/clip_h", "the token's vectors")
        self.encoders = {k: m.transformer.get_input_embeddings().weight.shape[1] for k, m in encoders.items()}
        self.latent_channels = int(getattr(self.unet.model.latent_format, "latent_channels", 4))

    # --- the Backend contract ------------------------------------------------------------------------------------
    def modules(self) -> list[torch.nn.Module]:
        return [self.unet.model, self.clip.cond_stage_model, self.vae.first_stage_model]

    def init_vectors(self, word: str, num_vectors: int) -> dict[str, torch.Tensor]:
        out = {}
        tokenizers = sub_tokenizers(self.clip)
        for key, model in text_encoders(self.clip).items():
            ids = tokenizers[key].tokenizer(word)["input_ids"][1:-1]
            out[key] = init_rows(model.transformer.get_input_embeddings().weight, ids, word, num_vectors)
        return out

    def encode(self, prompts: Sequence[str], vectors: Vectors | None) -> Conditioning:
        """The webui's own conditioning for ``prompts`` ([B, 77k, D]; SDXL: both encoders, and the pooled output of
        the second), the vectors where a prompt holds ``{token}``; differentiable in the vectors."""
        unique = list(dict.fromkeys(prompts))  # each distinct prompt encoded once (a batch often repeats one)
        grad = torch.is_grad_enabled()
        encoder = self.clip.cond_stage_model
        name = f"dcttrain{secrets.token_hex(4)}"  # a fresh name per call: the database keeps no stale vector
        texts = [p.replace(TOKEN_MARK, f" {name} ") if vectors else p for p in unique]
        with self._registered(name, vectors), trainable_weights([encoder]) if grad else nullcontext():
            hidden, pooled = self._conditioning(texts)
            mask = self._token_mask(texts, name) if vectors else None
        rows = torch.tensor([unique.index(p) for p in prompts], device=hidden.device)
        return Conditioning(hidden.float().index_select(0, rows),
                            None if pooled is None else pooled.float().index_select(0, rows),
                            None if mask is None else mask.index_select(0, rows.cpu()))

    def negative(self, prompt: str, batch: int) -> Conditioning:
        return self._negatives.get(prompt, batch, self.encode)

    def start(self, seeds: Sequence[int], sampling: SamplingConfig) -> Trajectory:
        size = sampling.resolution // 8
        noise = torch.cat([torch.randn([1, self.latent_channels, size, size],
                                       generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        sigmas = sampling_sigmas(host.sigma_model(self.unet), self.scheduler, sampling.sampling_steps)
        state = {"sigmas": sigmas, "guidance": sampling.guidance, "seed": int(seeds[0]),
                 "size": sampling.resolution}
        return Trajectory((noise * sigmas[0]).to(self.device), total_steps=len(sigmas) - 1, state=state)

    def denoise(self, traj: Trajectory, cond: Conditioning, uncond: Conditioning, num_steps: int, *,
                checkpoint: bool = False) -> torch.Tensor:
        sigmas = traj.state["sigmas"]
        x = traj.latents
        with self._unet_for_autograd(checkpoint):
            for i in range(traj.done, min(traj.done + num_steps, traj.total_steps)):
                denoised = self._denoised(x, sigmas[i], cond, uncond, traj.state)
                nxt = sigmas[i + 1]
                x = denoised if nxt == 0 else x + (x - denoised) / sigmas[i] * (nxt - sigmas[i])
        traj.latents, traj.done = x, min(traj.done + num_steps, traj.total_steps)
        return x

    def predict_x0(self, traj: Trajectory, cond: Conditioning, uncond: Conditioning, *,
                   checkpoint: bool = False) -> torch.Tensor:
        with torch.enable_grad(), self._unet_for_autograd(checkpoint):
            return self._denoised(traj.latents, traj.state["sigmas"][traj.done], cond, uncond, traj.state)

    def decode(self, latents: torch.Tensor, *, checkpoint: bool = False) -> torch.Tensor:
        host.require("load_models_gpu")([self.vae.patcher])
        decoder: Any = self.vae.first_stage_model
        param = next(decoder.parameters())
        z = host.process_out(self.sd_model, latents).to(param.device, param.dtype)
        grad = torch.is_grad_enabled()
        blocks = getattr(decoder, "decoder", None)
        reload = lambda: host.require("load_models_gpu")([self.vae.patcher])  # noqa: E731
        ckpt = gradient_checkpointing(blocks, ensure_loaded=reload) if grad and checkpoint and blocks is not None \
            else nullcontext()
        with trainable_weights([decoder]) if grad else nullcontext(), host.autograd_forwards(decoder), ckpt:
            images = decoder.decode(z)
        return ((images.float() + 1) / 2).clamp(0, 1).to(self.device)

    # --- the pieces ----------------------------------------------------------------------------------------------
    @contextmanager
    def _registered(self, name: str, vectors: Vectors | None) -> Iterator[None]:
        """The vectors as an embedding the webui's text encoder splices in (a Parameter stays differentiable),
        registered under ``name`` for the duration only."""
        if not vectors:
            yield
            return
        vec: Any = dict(vectors) if self.is_sdxl else next(iter(vectors.values()))
        embedding = host.require("Embedding")(vec, name)
        first = next(iter(vectors.values()))
        embedding.vectors, embedding.shape = first.shape[0], first.shape[-1]
        host.register_embedding(self.sd_model, embedding, name)
        try:
            yield
        finally:
            host.register_embedding(self.sd_model, None, name)

    def _conditioning(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = host.learned_conditioning(self.sd_model, texts)
        if isinstance(out, dict):
            return out["crossattn"], out["vector"][:, :POOLED_WIDTH]
        return out, None

    def _token_mask(self, texts: list[str], name: str) -> torch.Tensor | None:
        """[B, L] True where the registered vectors sit (single-chunk prompts; None where that is not known)."""
        engines = host.text_engines(self.sd_model)
        first = self.sd_model.cond_stage_model
        embedders = getattr(first, "embedders", None)
        engine = engines[0] if engines else embedders[0] if embedders else first
        process = getattr(engine, "process_texts", None)
        if process is None:
            return None
        chunks, _ = process(texts)
        if any(len(c) != 1 for c in chunks):
            return None
        mask = torch.zeros(len(texts), 77, dtype=torch.bool)
        for row, (chunk,) in enumerate(chunks):
            for offset, embedding in chunk.fixes:
                if getattr(embedding, "name", None) == name:
                    mask[row, offset + 1: offset + 1 + int(embedding.vectors)] = True
        return mask

    def _y(self, pooled: torch.Tensor, size: int) -> torch.Tensor:
        """SDXL's vector conditioning: pooled text plus the size embedding of a ``size`` x ``size`` image (the
        webui's six 256-wide timestep embeddings of height, width, crop top/left, target height/width)."""
        encode_adm = getattr(self.unet.model, "encode_adm", None)
        if encode_adm is not None:  # Classic
            return encode_adm(pooled_output=pooled, width=size, height=size, crop_w=0, crop_h=0,
                              target_width=size, target_height=size)
        embedder = getattr(self.sd_model, "embedder", None)  # Neo
        if embedder is None:
            raise host.mismatch("unet.model.encode_adm / sd_model.embedder", "SDXL's size conditioning")
        flat = torch.cat([embedder(torch.tensor([float(v)])) for v in (size, size, 0, 0, size, size)])
        return torch.cat([pooled, flat.flatten().unsqueeze(0).repeat(pooled.shape[0], 1).to(pooled)], dim=1)

    def _host_cond(self, cond: Conditioning, state: dict) -> list[dict]:
        model_conds: dict[str, Any] = {"c_crossattn": host.require("CONDCrossAttn")(cond.hidden)}
        if cond.pooled is not None and self.is_sdxl:
            model_conds["y"] = host.require("CONDRegular")(self._y(cond.pooled, state["size"]))
        return [{"cross_attn": cond.hidden, "model_conds": model_conds}]

    def _denoised(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, uncond: Conditioning,
                  state: dict) -> torch.Tensor:
        timestep = sigma.to(x.device).expand(x.shape[0])
        return host.require("sampling_function")(
            self.unet.model, x, timestep, self._host_cond(uncond, state), self._host_cond(cond, state),
            float(state["guidance"]), self.unet.model_options, state["seed"])

    @contextmanager
    def _unet_for_autograd(self, checkpoint: bool = True) -> Iterator[None]:
        """The UNet loaded where it computes; with gradients on, its weights as plain aliases (and block
        checkpointing when asked)."""
        load = host.require("load_models_gpu")
        load([self.unet])
        if not torch.is_grad_enabled():
            yield
            return
        # Always block-checkpointed with gradients: the webui's UNet blocks add in place (ldm_patched attention),
        # which autograd refuses unless each block is recomputed in backward.
        blocks = gradient_checkpointing(self.unet.model.diffusion_model, ensure_loaded=lambda: load([self.unet]))
        with trainable_weights([self.unet.model]), blocks:
            yield


def sampling_sigmas(sigmas_of: Any, scheduler: str, steps: int) -> torch.Tensor:
    """``steps`` + 1 sigmas ending at 0 ("normal": evenly spaced timesteps, as the webui's own; "karras": Karras et
    al.'s rho 7) from what knows the model's sigmas (``sigma_min``/``sigma_max``, ``timestep``/``sigma``)."""
    lo, hi = float(sigmas_of.sigma_min), float(sigmas_of.sigma_max)
    if scheduler == "karras":
        ramp = torch.linspace(0, 1, steps)
        rho = 7.0
        sigmas = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    else:
        start = float(sigmas_of.timestep(torch.tensor(hi)))
        end = float(sigmas_of.timestep(torch.tensor(lo)))
        sigmas = torch.stack([torch.as_tensor(sigmas_of.sigma(t)).float().reshape(())
                              for t in torch.linspace(start, end, steps)])
    return torch.cat([sigmas.float().cpu(), torch.zeros(1)])
