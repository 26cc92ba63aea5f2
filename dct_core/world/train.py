"""Train the demo world from scratch: the text-to-image model and the two classifiers.

    python -m dct_core.world.train --out dct_core/world/weights            # everything (about 55 min, 2 CPU cores)
    python -m dct_core.world.train --out DIR --stage classifiers           # only the classifiers (a few minutes)
    python -m dct_core.world.train --out DIR --stage baseline              # re-record the no-token accuracy
    python -m dct_core.world.train --out DIR --stage attributes            # only the attribute reader (~5 min)

Everything is fixed by ``--seed``; the committed weights came from the defaults. Each stage writes its files
atomically at the end (and the diffusion stage a resumable snapshot every ``--save-every`` steps).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..formats.files import atomic_write
from .classifier_training import train_classifier
from .classifier_zoo import CLASSIFIERS
from .model import SpaceToDepthAutoencoder, build_scheduler, build_text_encoder, build_unet, load_world_pipeline
from .redraw import redrawn_scenes
from .scenes import sample_scenes


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, dtype: torch.dtype | None = None) -> None:
    from safetensors.torch import save

    data = {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in tensors.items()}
    atomic_write(path, save(data))


def _lr(step: int, total: int, peak: float, warmup: int = 200) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_diffusion(out: Path, *, steps: int, batch: int, lr: float, seed: int, ema_decay: float,
                    p_uncond: float, save_every: int, init_from: Path | None = None, log=print) -> dict:
    """Joint UNet + text encoder training with the epsilon objective; returns a summary. ``init_from``: a
    folder of earlier weights to continue from (a second stage with its own seed and schedule)."""
    torch.manual_seed(seed)
    unet, text_encoder = build_unet(), build_text_encoder()
    if init_from is not None:
        from safetensors.torch import load_file

        for module, name in ((unet, "unet"), (text_encoder, "text_encoder")):
            module.load_state_dict({k: v.float() for k, v in load_file(init_from / f"{name}.safetensors").items()})
    unet.train(), text_encoder.train()
    vae, scheduler = SpaceToDepthAutoencoder(), build_scheduler()
    from ..formats.clip_vocab import clip_tokenizer

    tokenizer = clip_tokenizer()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    # No weight decay: it would also shrink the embedding rows of the ~49k words the captions never use.
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    alphas = scheduler.alphas_cumprod
    g = torch.Generator().manual_seed(seed)
    token_cache: dict[str, list[int]] = {}
    started, losses = time.time(), []
    for step in range(steps):
        scenes = sample_scenes(batch, g)
        captions = ["" if r < p_uncond else c for r, c in zip(torch.rand(batch, generator=g).tolist(), scenes.captions)]
        for c in captions:
            if c not in token_cache:
                token_cache[c] = tokenizer(c, padding="max_length", max_length=77, truncation=True)["input_ids"]
        ids = torch.tensor([token_cache[c] for c in captions])
        latents = vae.encode_latents(scenes.images * 2 - 1)
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = (a.sqrt() * latents + (1 - a).sqrt() * noise)
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr)
        hidden = text_encoder(ids).last_hidden_state
        pred = unet(noisy, t, encoder_hidden_states=hidden).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_text, text_encoder)):
                for pe, pl in zip(ema.parameters(), live.parameters()):
                    pe.lerp_(pl, 1 - decay)
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == steps:
            rate = (step + 1) * batch / (time.time() - started)
            log(f"diffusion step {step + 1}/{steps}  loss {sum(losses[-100:]) / len(losses[-100:]):.4f}  "
                f"{rate:.0f} img/s  {(time.time() - started) / 60:.1f} min")
        if (step + 1) % save_every == 0 or step + 1 == steps:
            _save_tensors(ema_unet.state_dict(), out / "unet.safetensors")
            _save_tensors(ema_text.state_dict(), out / "text_encoder.safetensors", torch.float16)
    return {"init_from": str(init_from) if init_from else None, "steps": steps, "batch": batch, "lr": lr,
            "ema_decay": ema_decay, "p_uncond": p_uncond,
            "final_loss": sum(losses[-200:]) / len(losses[-200:]), "minutes": (time.time() - started) / 60}


def record_baseline(folder: Path, num_images: int = 32) -> dict:
    """Top-1/top-5 of the demo classes without a token (the demo's prompts and first fresh seeds), under both
    classifiers: the committed weights must reproduce these numbers."""
    from ..method.evaluation import WITHOUT, compare_with_token
    from . import SAMPLING, load_world_backend, load_world_classifier
    from .facts import DEMO_CLASSES, DEMO_TEMPLATES, EVAL_FIRST_SEED

    backend = load_world_backend(folder=folder)
    judges = {c.name: c for c in (load_world_classifier(role, folder) for role in ("guide", "held-out"))}
    seeds = list(range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + num_images))
    out: dict[str, Any] = {"num_images": num_images, "first_seed": EVAL_FIRST_SEED, "classes": {}}
    for target in DEMO_CLASSES:
        results, _ = compare_with_token(backend, judges, target.label, target.word, DEMO_TEMPLATES, None, seeds,
                                        SAMPLING, chunk=32)
        out["classes"][target.label] = {name: r[WITHOUT] for name, r in results.items()}
    return out


def train_attributes_stage(out: Path, args, log) -> None:
    """The attribute reader (``attributes.py``) in DIR/attributes/, its record in DIR/attributes/training.json."""
    from .attributes import FOLDER_NAME, redrawn_attribute_scenes, train_attribute_reader

    redrawn = redrawn_test = None
    if args.attribute_redrawn:
        pipe = load_world_pipeline(out)
        redrawn = redrawn_attribute_scenes(pipe, args.attribute_redrawn, torch.Generator().manual_seed(args.seed + 4),
                                           log=log)
        test_size = min(1024, max(64, args.attribute_redrawn // 4))
        redrawn_test = redrawn_attribute_scenes(pipe, test_size, torch.Generator().manual_seed(40_000 + args.seed))
    summary = train_attribute_reader(out / FOLDER_NAME, steps=args.attribute_steps, seed=args.seed + 3,
                                     redrawn=redrawn, redrawn_test=redrawn_test, log=log)
    summary["redrawn_scenes"] = args.attribute_redrawn
    summary["environment"] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    atomic_write(out / FOLDER_NAME / "training.json", json.dumps(summary, indent=2).encode())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dct_core.world.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the weights")
    p.add_argument("--stage", choices=["all", "diffusion", "classifiers", "baseline", "attributes"], default="all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=5000, help="diffusion training steps (default 5000)")
    p.add_argument("--batch", type=int, default=64, help="diffusion batch size (default 64)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--p-uncond", type=float, default=0.1, help="caption dropout for classifier-free guidance")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--init-from", type=Path, help="continue the diffusion model from the weights in this folder")
    p.add_argument("--classifier-steps", type=int, default=1500)
    p.add_argument("--redrawn", type=int, default=8192,
                   help="scenes redrawn by the diffusion model for the classifiers (0: renders only)")
    p.add_argument("--attribute-steps", type=int, default=1500, help="attribute reader training steps")
    p.add_argument("--attribute-redrawn", type=int, default=4096,
                   help="scenes redrawn by the diffusion model for the attribute reader (0: renders only)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "training.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record["seed"] = args.seed
    record["environment"] = {"torch": torch.__version__, "threads": torch.get_num_threads()}

    def log(msg: str) -> None:
        print(msg, flush=True, file=sys.stderr)

    if args.stage in ("all", "diffusion"):
        key = "diffusion_continued" if args.init_from else "diffusion"
        record[key] = train_diffusion(
            out, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, ema_decay=args.ema_decay,
            p_uncond=args.p_uncond, save_every=args.save_every, init_from=args.init_from, log=log,
        )
        atomic_write(record_path, json.dumps(record, indent=2).encode())
    if args.stage in ("all", "classifiers"):
        record["classifiers"] = {}
        redrawn = redrawn_test = None
        if args.redrawn:
            pipe = load_world_pipeline(out)
            g = torch.Generator().manual_seed(args.seed + 2)
            redrawn = redrawn_scenes(pipe, args.redrawn, g, log=log)
            test_size = min(1024, max(64, args.redrawn // 8))
            redrawn_test = redrawn_scenes(pipe, test_size, torch.Generator().manual_seed(20_000 + args.seed))
            record["redrawn_scenes"] = args.redrawn
        for role, spec in CLASSIFIERS.items():
            record["classifiers"][role] = train_classifier(
                spec, out / role, steps=args.classifier_steps, seed=args.seed + 1, redrawn=redrawn,
                redrawn_test=redrawn_test, log=log,
            )
            atomic_write(record_path, json.dumps(record, indent=2).encode())
    if args.stage == "attributes":  # not part of "all": it writes only DIR/attributes/
        train_attributes_stage(out, args, log)
    if args.stage in ("all", "baseline"):
        record["baseline"] = record_baseline(out)
        atomic_write(record_path, json.dumps(record, indent=2).encode())
        log(f"baseline without a token: {json.dumps(record['baseline']['classes'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
