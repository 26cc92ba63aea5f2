"""The "Class Tokens" tab (gradio 3.x): train a token on the loaded checkpoint with the same engine, recipes and
settings as the ComfyUI node; progress with the current batch, a loss/accuracy chart, Interrupt, before/after."""

from __future__ import annotations

import threading
from typing import Any

import gradio as gr

from dct_core.config import DEFAULT_PRESET, PRESETS, config_values, preset_config
from dct_core.formats.plot import training_plot
from dct_core.settings import format_value, setting

from . import classifiers
from .api import search
from .jobs import TRAINER, TrainRequest, option_names

POLL_SECONDS = 1.0
MAX_PICKER = 500  # labels offered in the class picker at once (it filters as you type)


def _safe(listing, *args) -> list[str]:
    try:
        return listing(*args)
    except Exception:  # a listing must never break the page
        return []


def _class_choices(classifier: str, arch: str, labels: str, query: str = "") -> list[str]:
    if not classifier:
        return []
    names = _safe(classifiers.labels_for, classifier, arch, labels)
    return [names[i] for i in search(names, query)[:MAX_PICKER]]


def _status_text(status) -> str:
    if status.phase == "idle":
        return "Idle."
    parts = [f"{status.phase}: {status.label}"]
    if status.steps:
        parts.append(f"step {status.step}/{status.steps}")
    if status.loss is not None:
        parts.append(f"loss {status.loss:.3f}, accuracy {status.accuracy:.2f}")
    if status.best_step:
        parts.append(f"best so far: step {status.best_step} ({status.best_accuracy:.2f})")
    if status.message:
        parts.append(status.message)
    return " · ".join(parts)


def _chart(status):
    if not status.history:
        return None
    return training_plot([h[0] for h in status.history], [h[1] for h in status.history])


def train(classifier, arch, labels, torchscript, target, recipe, steps, save_name, overwrite, *more):
    """The Train button: runs the training in a thread and streams its progress to the page."""
    options = {name: value for name, value in zip(option_names(), more) if str(value).strip()}
    request = TrainRequest(classifier=classifier or "", target_class=str(target or ""), timm_architecture=arch or "",
                           labels=labels or "", steps=int(steps) if steps else None, save_name=save_name or "",
                           overwrite=bool(overwrite), recipe=recipe or DEFAULT_PRESET, options=options,
                           allow_torchscript=bool(torchscript))
    outcome: dict[str, Any] = {}

    def run():
        try:
            outcome["result"] = TRAINER.run(request)
        except Exception as exc:  # shown on the page, never a stack trace in a pop-up
            outcome["error"] = str(exc)

    worker = threading.Thread(target=run, name="dct-train", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(POLL_SECONDS)
        status = TRAINER.status
        yield _status_text(status), status.preview, _chart(status), gr.update(), gr.update()
    status = TRAINER.status
    if "error" in outcome:
        yield f"failed: {outcome['error']}", status.preview, _chart(status), None, gr.update()
        return
    result = outcome["result"]
    text = result["summary"] + f"\n{result['diversity']}" + (
        f"\nUse it in a prompt as: {result['name']}" if result.get("name") else "")
    yield text, status.preview, result["_images"]["plot"], result["_images"]["before_after"], gr.update(
        choices=_safe(classifiers.choices))


def _more_settings(recipe: str) -> list:
    """One text box per setting the webui offers beyond the tab's own (empty: the recipe's value)."""
    values = config_values(preset_config(recipe))
    boxes = []
    for name in option_names():
        if name == "scheduler":
            boxes.append(gr.Dropdown(choices=["", "normal", "karras", "exponential", "simple", "sgm_uniform"],
                                     value="", label="scheduler", info="empty: normal"))
            continue
        s = setting(name)
        shown = format_value(values[name]) if name in values and values[name] is not None else (s.unset or "")
        lines = 3 if s.kind == "lines" else 1
        boxes.append(gr.Textbox(value="", label=name, lines=lines, placeholder=f"recipe: {shown}", info=s.help))
    return boxes


def build() -> gr.Blocks:
    with gr.Blocks(analytics_enabled=False) as tab:
        gr.Markdown("Train a class token on the loaded checkpoint: a classifier from models/classifiers teaches one "
                    "new word; it is saved to the embeddings folder and works as `<name>` in any prompt.")
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    classifier = gr.Dropdown(choices=_safe(classifiers.choices), label="Classifier",
                                             allow_custom_value=True)
                    refresh = gr.Button("Refresh lists", size="sm")
                with gr.Row():
                    arch = gr.Textbox(label="Architecture", placeholder="timm architecture, for a plain weights file")
                    labels = gr.Dropdown(choices=[""] + _safe(classifiers.label_choices), value="",
                                         label="Labels file", allow_custom_value=True)
                torchscript = gr.Checkbox(label="Allow TorchScript code (only for a file you trust)", value=False)
                target = gr.Dropdown(choices=[], label="Target class", allow_custom_value=True,
                                     info="type to search the classifier's labels; a name or an index")
                with gr.Row():
                    recipe = gr.Dropdown(choices=list(PRESETS), value=DEFAULT_PRESET, label="Recipe",
                                         info="balanced: the measured default; varied: keeps variety, 2x cost; "
                                              "paper: Schwartz et al.")
                    steps = gr.Number(value=0, precision=0, label="Steps", info="0: the recipe's")
                with gr.Row():
                    save_name = gr.Textbox(value="class-token", label="Save name",
                                           info="models/embeddings/<name>.safetensors; empty: do not save")
                    overwrite = gr.Checkbox(value=False, label="Overwrite")
                with gr.Accordion("More settings", open=False):
                    more = _more_settings(DEFAULT_PRESET)
                with gr.Row():
                    start = gr.Button("Train", variant="primary")
                    stop = gr.Button("Interrupt")
            with gr.Column():
                status = gr.Textbox(label="Status", value="Idle.", interactive=False, lines=3)
                preview = gr.Image(label="Current batch", type="pil", interactive=False)
                chart = gr.Image(label="Loss / accuracy", type="pil", interactive=False)
                before_after = gr.Image(label="Before / after (fixed seeds)", type="pil", interactive=False)

        def lists():
            return (gr.update(choices=_safe(classifiers.choices)),
                    gr.update(choices=[""] + _safe(classifiers.label_choices)))

        def picked(name, arch_name):
            default = classifiers.default_labels(name) if name else ""
            return gr.update(value=default), gr.update(choices=_class_choices(name, arch_name, default), value=None)

        def relabel(name, arch_name, labels_name):
            return gr.update(choices=_class_choices(name, arch_name, labels_name))

        refresh.click(lists, outputs=[classifier, labels])
        classifier.change(picked, inputs=[classifier, arch], outputs=[labels, target])
        labels.change(relabel, inputs=[classifier, arch, labels], outputs=[target])
        start.click(train, inputs=[classifier, arch, labels, torchscript, target, recipe, steps, save_name,
                                   overwrite, *more],
                    outputs=[status, preview, chart, before_after, classifier])
        stop.click(lambda: "interrupting: the best token so far is kept" if TRAINER.interrupt() else
                   "no training runs", outputs=[status])
    return tab


def on_ui_tabs():
    """The webui's tabs callback."""
    return [(build(), "Class Tokens", "dct_class_tokens")]


