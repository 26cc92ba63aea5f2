"""The engine's backend on ComfyUI's own loaded MODEL, CLIP and VAE.

Sampling goes through the host's CFGGuider, so the user's LoRAs, model patches, sampler and scheduler all
apply. The steps without gradient run the host's sampler unchanged; the last K steps (the paper: K = 1) run
as Euler steps of the same CFG'd model with gradient; the final one to sigma 0 is the model's x0.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from dct_core.config import SamplingConfig
from dct_core.errors import DCTError
from dct_core.method.backend import Conditioning, NegativeCache, Trajectory, Vectors, init_rows
from dct_core.method.prompts import TOKEN_MARK

from . import host_internals as host
from .autograd import gradient_checkpointing, trainable_weights
from .static_models import require_static_vae, static_clip, static_model
from .tokenizer_hook import sub_tokenizers, text_models, token_registered

TRIGGER = "dct-class-token"  # the name the learned vectors answer to while the engine encodes prompts


def to_host(cond: Conditioning) -> list:
    """The engine's conditioning as a host CONDITIONING (one entry holding the whole batch)."""
    extra = {} if cond.pooled is None else {"pooled_output": cond.pooled}
    return [[cond.hidden, extra]]


def _embedding_positions(tokens: dict) -> torch.Tensor:
    """Where the host splices an embedding (any non-integer token entry), over the first encoder's rows."""
    rows = next(iter(tokens.values()))
    return torch.tensor([not isinstance(t[0], int) for row in rows for t in row])


def _grad_tail_sampler(checkpoint: bool, patcher=None):
    """A host Sampler taking its steps with gradient: Euler steps of the guider's CFG'd model; the last one,
    to sigma 0, is exactly the model's x0 prediction (the paper's gradient-skipping step when K = 1).

    The weights autograd saves are aliases of the host's (no copy). With ``checkpoint`` each UNet block keeps
    only its input and is recomputed during backward (the models stay where the guider loaded them; each block
    re-aliases its weights for the recompute), so K steps cost K blocks' inputs, not K UNets' activations."""
    base: Any = host.require("Sampler")
    x0_inpaint = host.require("KSamplerX0Inpaint")

    class GradTail(base):
        def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                   disable_pbar=False):
            extra_args["denoise_mask"] = denoise_mask
            model = x0_inpaint(model_wrap, sigmas)
            inner = model_wrap.inner_model
            model_sampling = inner.model_sampling
            x = model_sampling.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas))
            reload = (lambda: host.load_models([patcher])) if patcher is not None else None
            blocks = gradient_checkpointing(inner.diffusion_model, ensure_loaded=reload) if checkpoint \
                else nullcontext()
            with trainable_weights([inner]), blocks:
                for i in range(len(sigmas) - 1):
                    denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]), **extra_args)
                    nxt = sigmas[i + 1]
                    x = denoised if nxt == 0 else x + (x - denoised) / sigmas[i] * (nxt - sigmas[i])
            return model_sampling.inverse_noise_scaling(sigmas[-1], x)

    return GradTail()


class ComfyBackend:
    """Implements dct_core.method.backend.Backend. Call inside ``autograd_enabled()`` and ``out_of_place_clip()``.

    A MODEL or text encoder loaded with dynamic VRAM (2026 hosts) trains through a static copy; a dynamic VAE may
    not give the training signal (the Train node picks an installed TAESD instead): static_models.py."""

    def __init__(self, model, clip, vae, *, sampler_name: str = "euler", scheduler: str = "normal",
                 decoder: torch.nn.Module | None = None, checkpointing: bool = True):
        self._negatives = NegativeCache()
        if sampler_name not in host.sampler_names():
            raise DCTError(f"unknown sampler {sampler_name!r}; pick one of the host's samplers.")
        if scheduler not in host.scheduler_names():
            raise DCTError(f"unknown scheduler {scheduler!r}; pick one of the host's schedulers.")
        if decoder is None:
            require_static_vae(vae)
        # On a dynamic-VRAM host: static copies of the MODEL and text encoder (static_models.py); else themselves.
        self.model, self.clip, self.vae = static_model(model), static_clip(clip), vae
        clip = self.clip
        self.sampler_name, self.scheduler = sampler_name, scheduler
        self.sampler = f"{sampler_name}/{scheduler}"  # as token metadata records it
        self.decoder = decoder  # optional differentiable decoder for the training signal (TAESD)
        self.checkpointing = checkpointing  # in the text encoder (the engine asks per UNet step and decode)
        layer = host.clip_layer_class()  # the text encoder's checkpoint units: one per transformer layer
        self._encoder_layers = [m for m in clip.cond_stage_model.modules() if isinstance(m, layer)]
        self.device = host.torch_device()
        self.dtype = torch.float32
        self.encoders = {
            key: m.transformer.get_input_embeddings().weight.shape[1] for key, m in text_models(clip).items()
        }
        self.latent_channels = model.get_model_object("latent_format").latent_channels
        self.downscale = vae.downscale_ratio if isinstance(vae.downscale_ratio, int) else 8

    def modules(self) -> list[torch.nn.Module]:
        mods = [self.model.model, self.clip.cond_stage_model, self.vae.first_stage_model]
        return mods + ([self.decoder] if self.decoder is not None else [])

    def init_vectors(self, word: str, num_vectors: int) -> dict[str, torch.Tensor]:
        out = {}
        tokenizers = sub_tokenizers(self.clip.tokenizer)
        for key, model in text_models(self.clip).items():
            ids = tokenizers[key].tokenizer(word)["input_ids"][1:-1]
            out[key] = init_rows(model.transformer.get_input_embeddings().weight, ids, word, num_vectors)
        return out

    def encode(self, prompts: Sequence[str], vectors: Vectors | None) -> Conditioning:
        """The prompts' conditioning ([B, L, D], pooled [B, P] where the model has one), with the class-token
        positions marked; ``to_host`` turns it into a host CONDITIONING."""
        conds, pooled, masks = [], [], []
        unique = list(dict.fromkeys(prompts))  # each distinct prompt encoded once (a batch often repeats one)
        self.clip.load_model()
        grad = torch.is_grad_enabled()
        encoder = self.clip.cond_stage_model
        ckpt = gradient_checkpointing(encoder, self._encoder_layers, self.clip.load_model) \
            if grad and self.checkpointing else nullcontext()
        with trainable_weights([encoder]) if grad else nullcontext(), ckpt:
            with token_registered(self.clip.tokenizer, TRIGGER, dict(vectors or {})):
                for prompt in unique:
                    text = prompt.replace(TOKEN_MARK, f" embedding:{TRIGGER} ") if vectors else prompt
                    tokens = self.clip.tokenize(text)
                    out = self.clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
                    conds.append(out.pop("cond"))
                    pooled.append(out.get("pooled_output"))
                    masks.append(_embedding_positions(tokens))
        rows = [unique.index(p) for p in prompts]
        conds, pooled, masks = [conds[i] for i in rows], [pooled[i] for i in rows], [masks[i] for i in rows]
        hidden = torch.cat(conds)
        mask = torch.stack(masks) if len({m.shape[0] for m in masks}) == 1 else None
        if mask is not None and mask.shape[1] != hidden.shape[1]:
            mask = None  # the host padded or chunked the prompt differently: no reliable positions
        pooled_batch = torch.cat(pooled) if all(p is not None for p in pooled) else None
        return Conditioning(hidden, pooled_batch, mask)

    def negative(self, prompt: str, batch: int) -> Conditioning:
        return self._negatives.get(prompt, batch, self.encode)

    def start(self, seeds: Sequence[int], sampling: SamplingConfig) -> Trajectory:
        size = sampling.resolution // self.downscale
        latent = torch.zeros([1, self.latent_channels, size, size])
        prepare_noise = host.require("prepare_noise")
        noise = torch.cat([prepare_noise(latent, int(s)) for s in seeds])
        sampler = host.require("KSampler")(self.model, steps=sampling.sampling_steps, device=self.device,
                                           sampler=self.sampler_name, scheduler=self.scheduler)
        sigmas = sampler.sigmas.cpu()
        state = {"sigmas": sigmas, "noise": noise, "guidance": sampling.guidance, "seed": int(seeds[0])}
        return Trajectory(torch.zeros_like(noise), total_steps=len(sigmas) - 1, state=state)

    def denoise(self, traj: Trajectory, cond: Conditioning, uncond: Conditioning, num_steps: int, *,
                checkpoint: bool = False) -> torch.Tensor:
        if num_steps <= 0:
            return traj.latents
        latents = self._sample(traj, cond, uncond, traj.state["sigmas"][traj.done : traj.done + num_steps + 1],
                               checkpoint=checkpoint)
        traj.latents, traj.done = latents, traj.done + num_steps
        return latents

    def predict_x0(self, traj: Trajectory, cond: Conditioning, uncond: Conditioning, *,
                   checkpoint: bool = False) -> torch.Tensor:
        """One gradient-carrying step from the current sigma straight to 0 is the guided model's x0; the
        trajectory does not move."""
        sigmas = traj.state["sigmas"]
        with torch.enable_grad():
            return self._sample(traj, cond, uncond, torch.stack([sigmas[traj.done], sigmas.new_zeros(())]),
                                checkpoint=checkpoint)

    def _sample(self, traj: Trajectory, cond: Conditioning, uncond: Conditioning, sigmas: torch.Tensor, *,
                checkpoint: bool = False):
        guider = host.require("CFGGuider")(self.model)
        guider.set_conds(to_host(cond), to_host(uncond))
        guider.set_cfg(traj.state["guidance"])
        if torch.is_grad_enabled():
            sampler: Any = _grad_tail_sampler(checkpoint, self.model)
        else:
            sampler = host.require("sampler_object")(self.sampler_name)
        noise = traj.state["noise"] if traj.done == 0 else torch.zeros_like(traj.state["noise"])
        return guider.sample(noise, traj.latents, sampler, sigmas, disable_pbar=True, seed=traj.state["seed"])

    def decode(self, latents: torch.Tensor, *, checkpoint: bool = False) -> torch.Tensor:
        """With gradient (the training signal): the chosen decoder (TAESD when given); without (previews,
        before/after images): always the checkpoint's VAE."""
        if self.decoder is not None and torch.is_grad_enabled():
            decoder = self.decoder
        else:
            host.load_models([self.vae.patcher])
            decoder = self.vae.first_stage_model
        param = next(decoder.parameters())
        z = latents.to(param.device, param.dtype)
        decoder_any: Any = decoder
        grad = torch.is_grad_enabled()
        # TAESD keeps its layers under .taesd_decoder, the KL VAE under .decoder
        blocks = getattr(decoder, "decoder", None)
        blocks = getattr(decoder, "taesd_decoder", None) if blocks is None else blocks
        reload = (lambda: host.load_models([self.vae.patcher])) if decoder is not self.decoder else None
        ckpt = gradient_checkpointing(blocks, ensure_loaded=reload) if grad and checkpoint and blocks is not None \
            else nullcontext()
        with trainable_weights([decoder]) if grad else nullcontext(), ckpt:
            images = decoder_any.decode(z)
        return ((images.float() + 1) / 2).clamp(0, 1).to(self.device)

