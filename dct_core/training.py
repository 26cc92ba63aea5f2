"""The optimization of a discriminative class token (Schwartz et al., Sec. 3).

One step: sample a batch with the current token (no gradient) up to the last K steps, take those steps with
gradient, decode, preprocess to the classifier, cross-entropy to the target class, backprop into v_c only,
clip, AdamW. Early stopping on batch accuracy or patience; the best token seen is returned.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from .backend import Backend
from .classifiers import Classifier
from .config import TrainConfig
from .errors import DCTError
from .freezing import frozen
from .prompts import prompts_for_batch
from .tokens import ClassToken


@dataclass
class StepRecord:
    step: int
    loss: float
    accuracy: float  # batch top-1 under the guiding classifier, with the token before this step's update
    target_prob: float  # mean softmax probability of the target class
    grad_norm: float
    seconds: float


@dataclass
class TrainResult:
    token: ClassToken
    history: list[StepRecord] = field(default_factory=list)
    best_step: int = -1
    stopped: str = "max_steps"  # "threshold" | "patience" | "max_steps" | "cancelled" | "non-finite"

    @property
    def best(self) -> StepRecord | None:
        return next((r for r in self.history if r.step == self.best_step), None)


def _autocast(device: torch.device, dtype: torch.dtype):
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=dtype)
    return nullcontext()


def train_class_token(
    backend: Backend,
    classifier: Classifier,
    target: int,
    label: str,
    config: TrainConfig = TrainConfig(),
    *,
    name: str = "class-token",
    on_step: Callable[[StepRecord, torch.Tensor], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    metadata: dict[str, str] | None = None,
    target_on: bool = True,
) -> TrainResult:
    """Learn v_c so that images of "<template with {token} and label>" are classified as ``target``
    (for a multi-label classifier: with attribute ``target`` on, or off when ``target_on`` is False).

    ``on_step(record, images)`` gets each step's record and its decoded batch (CPU, [0, 1]);
    ``should_cancel()`` is polled before each step and micro-batch: a cancelled run returns the best token so far.
    """
    config.validate()
    if not 0 <= target < classifier.num_classes:
        raise DCTError(f"target class {target} is outside the classifier's {classifier.num_classes} classes.")
    if not target_on and not classifier.multi_label:
        raise DCTError("an 'off' target needs a multi-label (attribute) classifier.")
    device, dtype = backend.device, backend.dtype
    classifier.to(device)
    params = {
        k: torch.nn.Parameter(v.detach().float().clone().to(device))
        for k, v in backend.init_vectors(config.init_word, config.num_vectors).items()
    }
    optimizer = torch.optim.AdamW(params.values(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and dtype == torch.float16 else None
    batch = config.batch_size
    micro = config.micro_batch or batch
    prompts = prompts_for_batch(config.templates, label, batch)
    seeds = [config.seed + i for i in range(batch)]
    depth, sampling = config.backprop_depth, config.sampling

    result = TrainResult(token=_token(params, name, metadata))
    best_key, best_loss, since_better = None, float("inf"), 0
    with frozen([*backend.modules(), classifier.module]), _autocast(device, dtype):
        negatives = {}
        for step in range(config.max_steps):
            started = time.perf_counter()
            step_seeds = [s + step * batch for s in seeds] if config.fresh_seeds else seeds
            optimizer.zero_grad(set_to_none=True)
            snapshot = {k: p.detach().clone() for k, p in params.items()}  # the token this batch is made with
            loss_sum, probs, hits, images = 0.0, [], 0, []
            cancelled = False
            for lo in range(0, batch, micro):
                if should_cancel is not None and should_cancel():
                    cancelled = True
                    break
                hi = min(lo + micro, batch)
                n = hi - lo
                if n not in negatives:
                    with torch.no_grad():
                        negatives[n] = backend.negative(sampling.negative_prompt, n)
                traj = backend.start(step_seeds[lo:hi], sampling)
                with torch.no_grad():  # gradient skipping: the trajectory up to the last K steps
                    backend.denoise(traj, backend.encode(prompts[lo:hi], params), negatives[n], traj.remaining - depth)
                cond = backend.encode(prompts[lo:hi], params)
                checkpoint = depth > 1 or config.checkpointing
                latents = backend.denoise(traj, cond, negatives[n], depth, checkpoint=checkpoint)
                pixels = backend.decode(latents, checkpoint=config.checkpointing)
                logits = classifier(pixels)
                loss = classifier.loss(logits.float(), target, target_on).sum() / batch
                (scaler.scale(loss) if scaler else loss).backward()
                loss_sum += float(loss.detach())
                probs.append(classifier.target_prob(logits.float(), target, target_on).cpu())
                hits += int(classifier.hits(logits, target, target_on).sum())
                images.append(pixels.detach().float().cpu())
            if cancelled:
                result.stopped = "cancelled"
                break
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(list(params.values()), config.max_grad_norm))
            if not torch.isfinite(torch.tensor([loss_sum, grad_norm])).all():
                result.stopped = "non-finite"
                break
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            record = StepRecord(
                step=step,
                loss=loss_sum,
                accuracy=hits / batch,
                target_prob=float(torch.cat(probs).mean()),
                grad_norm=grad_norm,
                seconds=time.perf_counter() - started,
            )
            result.history.append(record)
            key = (record.accuracy, -record.loss)
            if best_key is None or key > best_key:
                best_key, result.best_step = key, step
                result.token = _token(snapshot, name, metadata, record)
            if on_step is not None:
                on_step(record, torch.cat(images))
            if record.loss < best_loss:
                best_loss, since_better = record.loss, 0
            else:
                since_better += 1
            if record.accuracy >= config.accuracy_threshold:
                result.stopped = "threshold"
                break
            if since_better >= config.patience:
                result.stopped = "patience"
                break
    return result


def _token(vectors: Mapping[str, torch.Tensor], name: str, metadata: dict[str, str] | None,
           record: StepRecord | None = None) -> ClassToken:
    meta = dict(metadata or {})
    if record is not None:
        meta.update(steps=str(record.step), accuracy=f"{record.accuracy:.4f}", loss=f"{record.loss:.6f}")
    return ClassToken(vectors={k: v.detach().cpu() for k, v in vectors.items()}, name=name, metadata=meta)
