"""The backend on a diffusers pipeline: SD1.x, SD2.x (epsilon and v-prediction) and SDXL."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from ..config import SamplingConfig
from ..errors import DCTError
from ..method.backend import Conditioning, NegativeCache, Trajectory, Vectors, init_rows
from ..method.prompts import tokenize_with_slots
from ..settings import check


@contextmanager
def spliced_vectors(embedding: torch.nn.Module, slots: torch.Tensor, vectors: torch.Tensor | None) -> Iterator[None]:
    """Replace the token-embedding output at slot positions with the learned vectors (a forward hook,
    so the model and its tokenizer are never modified and the vectors keep their gradient)."""
    if vectors is None or not bool((slots >= 0).any()):
        yield
        return

    def hook(_module, _inputs, output):
        picked = vectors.to(output.dtype)[slots.clamp(min=0)]  # [B, L, D], differentiable gather
        return torch.where((slots >= 0).unsqueeze(-1), picked, output)

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encoder_names(widths: Sequence[int]) -> list[str]:
    if len(widths) == 2:
        return ["clip_l", "clip_g"]
    return ["clip_h" if widths[0] == 1024 else "clip_l"]


class DiffusersBackend:
    def __init__(self, pipe: Any, sampler: str = "ddim"):
        check("sampler", sampler)
        self._negatives = NegativeCache()
        self.pipe = pipe
        self.sampler = sampler  # "ddim" | "euler" | "own" (the scheduler class the model folder names)
        self.unet, self.vae = pipe.unet, pipe.vae
        encoders = [pipe.text_encoder]
        tokenizers = [pipe.tokenizer]
        if getattr(pipe, "text_encoder_2", None) is not None:
            encoders.append(pipe.text_encoder_2)
            tokenizers.append(pipe.tokenizer_2)
        if encoders[0] is None:  # SDXL refiner-style pipelines have no first encoder
            raise DCTError("this pipeline has no first text encoder; use a base SD1.x, SD2.x or SDXL model.")
        self.text_encoders, self.tokenizers = encoders, tokenizers
        self.is_sdxl = len(encoders) == 2
        widths = [e.get_input_embeddings().weight.shape[1] for e in encoders]
        self.encoders = dict(zip(encoder_names(widths), widths))
        self.device = self.unet.device
        self.dtype = self.unet.dtype
        self.latent_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.zero_uncond = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False)) and self.is_sdxl

    def modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.vae, *self.text_encoders]

    def init_vectors(self, word: str, num_vectors: int) -> dict[str, torch.Tensor]:
        out = {}
        for name, enc, tok in zip(self.encoders, self.text_encoders, self.tokenizers):
            ids = tok(word, add_special_tokens=False)["input_ids"]
            out[name] = init_rows(enc.get_input_embeddings().weight, ids, word, num_vectors)
        return out

    def encode(self, prompts: Sequence[str], vectors: Vectors | None) -> Conditioning:
        hidden, pooled, mask = [], None, None
        for name, enc, tok in zip(self.encoders, self.text_encoders, self.tokenizers):
            vec = None if vectors is None else vectors[name]
            ids, slots = tokenize_with_slots(tok, prompts, 0 if vec is None else vec.shape[0])
            mask = slots >= 0
            ids, slots = ids.to(self.device), slots.to(self.device)
            with spliced_vectors(enc.get_input_embeddings(), slots, vec):
                out = enc(ids, output_hidden_states=self.is_sdxl)
            if self.is_sdxl:
                hidden.append(out.hidden_states[-2])  # SDXL conditions on the penultimate layer
                if enc is self.text_encoders[-1]:
                    pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
            else:
                hidden.append(out.last_hidden_state)
        return Conditioning(torch.cat(hidden, dim=-1).to(self.dtype), pooled,
                            None if mask is None else mask.to(self.device))

    def negative(self, prompt: str, batch: int) -> Conditioning:
        """The unconditional branch of CFG (no class token)."""
        cond = self._negatives.get(prompt, batch, self.encode)
        if self.zero_uncond and not prompt:
            pooled = None if cond.pooled is None else torch.zeros_like(cond.pooled)
            return Conditioning(torch.zeros_like(cond.hidden), pooled)
        return cond

    def _scheduler(self, kind: str):
        from diffusers import DDIMScheduler, EulerDiscreteScheduler

        config = self.pipe.scheduler.config
        cls: Any = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "own": type(self.pipe.scheduler)}[kind]
        return cls.from_config(config)

    def start(self, seeds: Sequence[int], sampling: SamplingConfig) -> Trajectory:
        sched = self._scheduler(self.sampler)
        sched.set_timesteps(sampling.sampling_steps, device=self.device)
        size = sampling.resolution // self.latent_scale
        shape = (self.unet.config.in_channels, size, size)
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        latents = torch.stack(noise).to(self.device) * sched.init_noise_sigma
        state = {"scheduler": sched, "timesteps": sched.timesteps, "guidance": sampling.guidance}
        if self.is_sdxl:
            r = sampling.resolution  # original size, crop (0, 0), target size
            state["time_ids"] = torch.tensor([[r, r, 0, 0, r, r]], device=self.device, dtype=self.dtype)
        return Trajectory(latents.to(self.dtype), total_steps=len(sched.timesteps), state=state)

    def _unet(self, x: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor, pooled, time_ids) -> torch.Tensor:
        extra = {}
        if self.is_sdxl:
            extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids.expand(x.shape[0], -1)}
        return self.unet(x, t, encoder_hidden_states=hidden, **extra).sample

    def denoise(
        self, traj: Trajectory, cond: Conditioning, uncond: Conditioning, num_steps: int, *, checkpoint: bool = False
    ) -> torch.Tensor:
        sched, guidance = traj.state["scheduler"], traj.state["guidance"]
        use_cfg = guidance > 1.0
        x = traj.latents
        with gradient_checkpointing(self.unet) if checkpoint else nullcontext():
            for _ in range(num_steps):
                t = traj.state["timesteps"][traj.done]
                out = self._guided(sched, x, t, cond, uncond if use_cfg else None, guidance, traj.state.get("time_ids"))
                x = sched.step(out, t, x).prev_sample
                traj.done += 1
        traj.latents = x
        return x

    def _guided(self, sched, x, t, cond: Conditioning, uncond: Conditioning | None, guidance: float, time_ids):
        """The CFG model output. When the latents carry no gradient (the last step with K = 1), the
        unconditional branch cannot reach the token: it runs without autograd, halving what backward stores."""
        x_in = sched.scale_model_input(x, t)
        if uncond is None:
            return self._unet(x_in, t, cond.hidden, cond.pooled, time_ids)
        if torch.is_grad_enabled() and not x.requires_grad:
            with torch.no_grad():
                out_u = self._unet(x_in, t, uncond.hidden, uncond.pooled, time_ids)
            out_c = self._unet(x_in, t, cond.hidden, cond.pooled, time_ids)
        else:
            pooled = None if cond.pooled is None or uncond.pooled is None else torch.cat([uncond.pooled, cond.pooled])
            out_u, out_c = self._unet(torch.cat([x_in, x_in]), t, torch.cat([uncond.hidden, cond.hidden]),
                                      pooled, time_ids).chunk(2)
        return out_u + guidance * (out_c - out_u)

    def predict_x0(self, traj: Trajectory, cond: Conditioning, uncond: Conditioning, *,
                   checkpoint: bool = False) -> torch.Tensor:
        """The guided model's x0 (clean latents) at the current step, without advancing the trajectory."""
        sched, guidance = traj.state["scheduler"], traj.state["guidance"]
        t = traj.state["timesteps"][traj.done]
        x = traj.latents
        with gradient_checkpointing(self.unet) if checkpoint and torch.is_grad_enabled() else nullcontext():
            out = self._guided(sched, x, t, cond, uncond if guidance > 1.0 else None, guidance,
                               traj.state.get("time_ids"))
        x_in = sched.scale_model_input(x, t)  # DDPM-space latents for DDIM and Euler alike
        a = sched.alphas_cumprod.to(x.device)[t.long() if torch.is_tensor(t) else int(t)].to(torch.float32)
        kind = sched.config.prediction_type
        if kind == "epsilon":
            x0 = (x_in.float() - (1 - a).sqrt() * out.float()) / a.sqrt()
        elif kind == "v_prediction":
            x0 = a.sqrt() * x_in.float() - (1 - a).sqrt() * out.float()
        else:
            x0 = out.float()
        return x0.to(x.dtype)

    def decode(self, latents: torch.Tensor, *, checkpoint: bool = False) -> torch.Tensor:
        cfg = self.vae.config
        z = latents / cfg.scaling_factor
        if getattr(cfg, "shift_factor", None):
            z = z + cfg.shift_factor
        with gradient_checkpointing(self.vae.decoder) if checkpoint else nullcontext():
            images = self.vae.decode(z.to(self.vae.dtype)).sample
        return ((images.float() + 1) / 2).clamp(0, 1)


@contextmanager
def gradient_checkpointing(model: torch.nn.Module) -> Iterator[None]:
    """Block-level gradient checkpointing in a diffusers model (UNet, VAE decoder), on for the duration and
    then restored exactly: only block inputs are kept for backward, each block is recomputed there."""
    saved = []
    m: Any
    for m in model.modules():
        if hasattr(m, "gradient_checkpointing"):
            saved.append((m, m.gradient_checkpointing, m.__dict__.get("_gradient_checkpointing_func", _MISSING)))
            m.gradient_checkpointing = True
            m._gradient_checkpointing_func = partial(grad_checkpoint, use_reentrant=False)
    try:
        yield
    finally:
        for m, flag, func in saved:
            m.gradient_checkpointing = flag
            if func is _MISSING:
                del m._gradient_checkpointing_func
            else:
                m._gradient_checkpointing_func = func


_MISSING = object()
