"""The optimization of a discriminative class token (Schwartz et al., Sec. 3).

One step: sample a batch with the current token (no gradient) up to the last K steps, take those steps with
gradient, decode, preprocess to the classifier, cross-entropy to the target class, backprop into v_c only,
clip, AdamW. Early stopping on batch accuracy or patience; the best token seen is returned.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from ..classifiers import Classifier
from ..config import TrainConfig
from ..errors import DCTError
from ..formats.tokens import ClassToken
from .backend import Backend, Conditioning, Vectors
from .checkpointing import block_checkpointing, checkpoint_units
from .diversity import channel_statistics
from .free_words import FreeConditioning, free_directions, not_in_class_name, project_off
from .freezing import frozen
from .generation import generate_images
from .prompts import prompts_for_batch, strip_token

VALIDATION_FIRST_SEED = 1_000_000  # validation seeds: never among the training seeds


@dataclass
class StepRecord:
    step: int
    loss: float
    accuracy: float  # batch top-1 under the guiding classifier, with the token before this step's update
    target_prob: float  # mean softmax probability of the target class
    grad_norm: float
    seconds: float
    val_accuracy: float | None = None  # on the fixed validation seeds (when validation_images > 0)
    val_loss: float | None = None

    def selection_key(self) -> tuple[float, float]:
        """How the returned token is chosen and when the threshold stops: validation when measured, else the
        training batch."""
        if self.val_accuracy is not None and self.val_loss is not None:
            return self.val_accuracy, -self.val_loss
        return self.accuracy, -self.loss


@dataclass
class TrainResult:
    token: ClassToken
    history: list[StepRecord] = field(default_factory=list)
    best_step: int = -1
    stopped: str = "max_steps"  # "threshold" | "patience" | "max_steps" | "cancelled" | "non-finite"
    cancel_exception: BaseException | None = None  # the host's cancel, to raise again once the token is kept
    averaged_from: int | None = None  # keep="average": the first step whose token is in the returned mean

    @property
    def best(self) -> StepRecord | None:
        return next((r for r in self.history if r.step == self.best_step), None)

    def token_source(self) -> str:
        """For the result lines: "" when the token is one step's, else which steps' tokens were averaged (from 1)."""
        if self.averaged_from is None or not self.history:
            return ""
        first, last = self.averaged_from + 1, self.history[-1].step + 1
        return f"step {last}'s token" if first == last else f"the mean of steps {first}-{last}'s tokens"


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
    cancel_exceptions: tuple[type[BaseException], ...] = (),
) -> TrainResult:
    """Learn v_c so that images of "<template with {token} and label>" are classified as ``target``
    (for a multi-label classifier: with attribute ``target`` on, or off when ``target_on`` is False).

    ``on_step(record, images)`` gets each step's record and its decoded batch (CPU, [0, 1]);
    ``should_cancel()`` is polled before each step and micro-batch: a cancelled run returns the best token so far.
    ``cancel_exceptions``: what a host raises from inside a step to cancel (ComfyUI since 2026 raises its
    interrupt in every op); caught, the run ends as cancelled with the best token and the exception kept.
    """
    config.validate()
    if not 0 <= target < classifier.num_classes:
        raise DCTError(f"target class {target} is outside the classifier's {classifier.num_classes} classes.")
    if not target_on and not classifier.multi_label:
        raise DCTError("an 'off' target needs a multi-label (attribute) classifier.")
    device, dtype = backend.device, backend.dtype
    classifier.to(device)
    init = {k: v.detach().float().clone().to(device)
            for k, v in backend.init_vectors(config.init_word, config.num_vectors).items()}
    params = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
    optimizer = torch.optim.AdamW(params.values(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and dtype == torch.float16 else None
    batch = config.batch_size
    micro = config.micro_batch or batch
    prompts = prompts_for_batch(config.templates, label, batch)
    seeds = [config.seed + i for i in range(batch)]
    points = torch.Generator().manual_seed(config.seed)  # where the x0 gradient points fall, reproducibly
    judge = _Judge(classifier, target, target_on, config.enough_prob)
    spread = _Spread(classifier, on=config.spread > 0)
    free_words = not_in_class_name(config.free_words, classifier.class_name(target), label)
    free = free_directions(backend, free_words)

    result = TrainResult(token=_token(params, name, metadata))
    best_key, best_loss, since_better = None, float("inf"), 0
    made_with: list[Vectors] = []  # the token each step's batch was made with (keep="average")
    with frozen([*backend.modules(), classifier.module]), _autocast(device, dtype):
        negatives: dict[int, Conditioning] = {}
        free_cond = FreeConditioning(backend, free_words, prompts, init, config.num_vectors) \
            if config.free_penalty else None
        if free_cond is not None and not free_cond.active:  # no two usable words left: nothing to keep off
            free_cond = None
        try:
            for step in range(config.max_steps):
                started = time.perf_counter()
                step_seeds = [s + step * batch for s in seeds] if config.fresh_seeds else seeds
                optimizer.zero_grad(set_to_none=True)
                snapshot = {k: p.detach().clone() for k, p in params.items()}  # the token this batch is made with
                steps_at = _gradient_steps(config, points)
                loss_sum, probs, hits, images = 0.0, [], 0, []
                cancelled = False
                if free_cond is not None:  # once a step, its text-encoder graph freed before the UNet's is built
                    kept_off = config.free_penalty * free_cond.penalty(params)
                    (scaler.scale(kept_off) if scaler else kept_off).backward()
                    loss_sum += float(kept_off.detach())
                for lo in range(0, batch, micro):
                    if should_cancel is not None and should_cancel():
                        cancelled = True
                        break
                    hi = min(lo + micro, batch)
                    n = hi - lo
                    if n not in negatives:
                        with torch.no_grad():
                            negatives[n] = backend.negative(config.sampling.negative_prompt, n)
                    outs, drift, plain_outs = _images_with_gradient(backend, config, prompts[lo:hi], params,
                                                                    negatives[n], step_seeds[lo:hi], steps_at)
                    with _checkpointed(classifier, config.checkpointing), spread.features() as seen:
                        logits = [classifier(pixels) for pixels in outs]
                    loss = torch.stack([judge.loss(lg).sum() + config.preserve * d.sum()
                                        for lg, d in zip(logits, drift)]).sum() / (batch * len(outs))
                    if config.spread:
                        loss = loss + config.spread * spread.loss(seen, plain_outs) * n / batch
                    loss = loss + _regularizer(config, params, init) * n / batch
                    (scaler.scale(loss) if scaler else loss).backward()
                    loss_sum += float(loss.detach())
                    probs.append(judge.prob(logits[-1]).cpu())
                    hits += int(judge.hits(logits[-1]).sum())
                    images.append(outs[-1].detach().float().cpu())
                if cancelled:
                    result.stopped = "cancelled"
                    break
                if scaler:
                    scaler.unscale_(optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(list(params.values()), config.max_grad_norm))
                if not torch.isfinite(torch.tensor([loss_sum, grad_norm])).all():
                    result.stopped = "non-finite"
                    break
                validation = _validate(backend, judge, config, label, snapshot) \
                    if config.validation_images else None
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                _cap_norm(config, params, init)
                project_off(free, params, init)
                record = StepRecord(
                    step=step,
                    loss=loss_sum,
                    accuracy=hits / batch,
                    target_prob=float(torch.cat(probs).mean()),
                    grad_norm=grad_norm,
                    seconds=time.perf_counter() - started,
                    val_accuracy=None if validation is None else validation[0],
                    val_loss=None if validation is None else validation[1],
                )
                result.history.append(record)
                if config.keep == "average":
                    made_with.append(snapshot)
                key = record.selection_key()
                if config.keep == "last" or best_key is None or key > best_key:
                    best_key, result.best_step = key, step
                    result.token = _token(snapshot, name, metadata, record)
                if on_step is not None:
                    on_step(record, torch.cat(images))
                if record.loss < best_loss:
                    best_loss, since_better = record.loss, 0
                else:
                    since_better += 1
                window = [r.selection_key()[0] for r in result.history[-config.threshold_window:]]
                if len(window) == config.threshold_window and sum(window) / len(window) >= config.accuracy_threshold:
                    result.stopped = "threshold"
                    break
                if since_better >= config.patience:
                    result.stopped = "patience"
                    break
        except cancel_exceptions as exc:  # a host that cancels by raising mid-step: keep the best token
            result.stopped, result.cancel_exception = "cancelled", exc
    if config.keep == "average" and made_with:
        # The last half of the steps' tokens: with fresh seeds every step, each token fits its own batch's noise;
        # their mean is the direction the steps agree on (Polyak averaging). Step numbers are history indices.
        first = len(made_with) // 2
        result.token = _token(_mean(made_with[first:]), name, metadata, result.history[-1])
        result.best_step, result.averaged_from = result.history[-1].step, first
    return result


def _mean(tokens: list[Vectors]) -> Vectors:
    return {k: torch.stack([v[k] for v in tokens]).mean(0) for k in tokens[0]}


def _checkpointed(classifier: Classifier, on: bool):
    """The classifier's blocks checkpointed (a ResNet's bottlenecks, a ViT's blocks): its activations at 224 px
    are a large part of a step's memory. Models that do not split into blocks run as they are."""
    units = checkpoint_units(classifier.module) if on else []
    return block_checkpointing(units) if len(units) >= 4 else nullcontext()


class _Judge:
    """The classifier's view of the target: per-image loss, probability and hits."""

    def __init__(self, classifier: Classifier, target: int, target_on: bool, enough_prob: float = 0.0):
        self.classifier, self.target, self.on = classifier, target, target_on
        self.margin = -math.log(enough_prob) if enough_prob > 0 else None

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        loss = self.classifier.loss(logits.float(), self.target, self.on)
        return loss if self.margin is None else (loss - self.margin).clamp_min(0)

    def prob(self, logits: torch.Tensor) -> torch.Tensor:
        return self.classifier.target_prob(logits.float(), self.target, self.on)

    def hits(self, logits: torch.Tensor) -> torch.Tensor:
        return self.classifier.hits(logits, self.target, self.on)


class _Spread:
    """Keeping the batch's variety (``spread``): the token's images must look as varied as the prompt alone's on the
    same seeds, in what the guide's first layer reads (each channel's mean and spread over the image: colour and
    texture, what the class decision later discards; the variety index of method/diversity.py reads the same).
    Variety is one minus the mean cosine similarity between the batch's images; the loss is how far the token's
    falls short of the prompt alone's, as a fraction. One-sided: a token may add variety, never remove it."""

    def __init__(self, classifier: Classifier, on: bool):
        self.classifier = classifier
        self.stem: torch.nn.Module | None = None
        if not on:
            return
        module = getattr(classifier, "module", None)
        units = checkpoint_units(module) if module is not None else []
        if not units:
            raise DCTError("spread needs a classifier with layers to read (timm, transformers); set spread to 0.")
        self.stem = units[0]

    @contextmanager
    def features(self):
        """Per image, the first layer's channel statistics of the classifier calls inside (empty when off)."""
        seen: list[torch.Tensor] = []
        if self.stem is None:
            yield seen
            return

        handle = self.stem.register_forward_hook(lambda _m, _args, out: seen.append(channel_statistics(out)))
        try:
            yield seen
        finally:
            handle.remove()  # before backward: a checkpoint's recompute must not add to ``seen``

    @staticmethod
    def _variety(features: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.normalize(features, dim=1)
        n = x.shape[0]
        similarity = (x @ x.T).sum() - n  # off the diagonal
        return 1 - similarity / (n * (n - 1))

    def loss(self, seen: list[torch.Tensor], plain_images: list[torch.Tensor]) -> torch.Tensor:
        assert self.stem is not None
        total = seen[0].new_zeros(())
        for features, plain in zip(seen, plain_images):
            if features.shape[0] < 2:
                continue
            with torch.no_grad(), self.features() as reference:
                self.classifier(plain.to(features.device))
            target = self._variety(reference[0]).clamp_min(1e-12)
            total = total + (1 - self._variety(features) / target).clamp_min(0)
        return total / max(1, len(seen))


def _gradient_steps(config: TrainConfig, rng: torch.Generator) -> list[int]:
    """For the x0 gradient point: the sampling step indices (sorted) where x0 is predicted this step."""
    if config.gradient_point != "x0":
        return []
    total = config.sampling.sampling_steps
    lo, hi = config.x0_interval
    first, last = min(int(lo * total), total - 1), min(max(int(hi * total), int(lo * total)), total - 1)
    picks = torch.randint(first, last + 1, (config.x0_points,), generator=rng).tolist()
    return sorted(set(picks))


def _images_with_gradient(backend: Backend, config: TrainConfig, prompts: list[str], params: Vectors,
                          negative: Conditioning, seeds: list[int], steps_at: list[int]
                          ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Decoded images that carry the token's gradient, at the configured gradient point(s); per image how far each
    drifted from what the prompt alone makes on the same seed (mean squared latent difference; zeros unless
    ``preserve`` is set); and the prompt alone's decoded images at the same points (only with ``spread``).

    "last": the trajectory without gradient up to its last K steps, those with gradient (the paper's gradient
    skipping when K = 1). "x0": the guided model's prediction of the clean image at intermediate steps
    (the quantity DATE differentiates); the trajectory stops at the last such step, so it is also cheaper."""
    sampling = config.sampling
    traj = backend.start(seeds, sampling)
    with torch.no_grad():
        plain = backend.encode(prompts, params)
    if config.gradient_point == "x0":
        baseline = _prompt_alone(backend, config, prompts, negative, seeds, steps_at)
        out, drift = [], []
        for i, at in enumerate(steps_at):
            with torch.no_grad():
                backend.denoise(traj, plain, negative, at - traj.done)
            x0 = backend.predict_x0(traj, backend.encode(prompts, params), negative, checkpoint=config.checkpointing)
            out.append(backend.decode(x0, checkpoint=config.checkpointing))
            drift.append(_drift(x0, baseline[i] if baseline and config.preserve else None))
        with torch.no_grad():
            plain_images = [backend.decode(b) for b in baseline] if config.spread else []
        return out, drift, plain_images
    depth = config.backprop_depth
    with torch.no_grad():  # gradient skipping: the trajectory up to the last K steps
        backend.denoise(traj, plain, negative, traj.remaining - depth)
    cond = backend.encode(prompts, params)
    latents = backend.denoise(traj, cond, negative, depth, checkpoint=depth > 1 or config.checkpointing)
    return [backend.decode(latents, checkpoint=config.checkpointing)], [_drift(latents, None)], []


@torch.no_grad()
def _prompt_alone(backend: Backend, config: TrainConfig, prompts: list[str], negative: Conditioning,
                  seeds: list[int], steps_at: list[int]) -> list[torch.Tensor]:
    """The x0 predictions without the token at the same steps of the same seeds (only with ``preserve`` or
    ``spread``)."""
    if not config.preserve and not config.spread:
        return []
    traj = backend.start(seeds, config.sampling)
    cond = backend.encode([strip_token(p) for p in prompts], None)
    out = []
    for at in steps_at:
        backend.denoise(traj, cond, negative, at - traj.done)
        out.append(backend.predict_x0(traj, cond, negative))
    return out


def _drift(latents: torch.Tensor, baseline: torch.Tensor | None) -> torch.Tensor:
    if baseline is None:
        return latents.new_zeros(latents.shape[0])
    return (latents.float() - baseline.float()).square().flatten(1).mean(1)


def _regularizer(config: TrainConfig, params: Vectors, init: Vectors) -> torch.Tensor | float:
    """Optional pull of the token toward its init word, relative to that word's norm (dimensionless)."""
    if not config.init_pull:
        return 0.0
    return config.init_pull * sum(
        (params[k] - init[k]).square().sum() / init[k].square().sum().clamp_min(1e-12) for k in params
    )


@torch.no_grad()
def _cap_norm(config: TrainConfig, params: Vectors, init: Vectors) -> None:
    """Keep each vector's norm within ``norm_cap`` times its init word's (the vocabulary's scale)."""
    if not config.norm_cap:
        return
    for k, p in params.items():
        limit = config.norm_cap * init[k].norm(dim=-1, keepdim=True)
        p.mul_((limit / p.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0))


@torch.no_grad()
def _validate(backend: Backend, judge: _Judge, config: TrainConfig, label: str,
              vectors: Vectors) -> tuple[float, float]:
    """Accuracy and mean loss of fully sampled images on a fixed seed set that training never sees."""
    count = config.validation_images
    prompts = prompts_for_batch(config.templates, label, count)
    seeds = [VALIDATION_FIRST_SEED + config.seed + i for i in range(count)]
    images = generate_images(backend, prompts, seeds, config.sampling, vectors,
                             chunk=config.micro_batch or config.batch_size)
    logits = judge.classifier(images.to(backend.device))
    return int(judge.hits(logits).sum()) / count, float(judge.loss(logits).float().mean())


def _token(vectors: Mapping[str, torch.Tensor], name: str, metadata: dict[str, str] | None,
           record: StepRecord | None = None) -> ClassToken:
    meta = dict(metadata or {})
    if record is not None:
        meta.update(steps=str(record.step), accuracy=f"{record.accuracy:.4f}", loss=f"{record.loss:.6f}")
    return ClassToken(vectors={k: v.detach().cpu() for k, v in vectors.items()}, name=name, metadata=meta)
