"""The always-on "Class guidance (DATE)" script of txt2img and img2img (gradio 3.x, the webui's scripts API).

Imported only by the webui's entry (scripts/dct_class_tokens.py): it subclasses ``modules.scripts.Script``."""

from __future__ import annotations

import gradio as gr
from modules import scripts

from . import classifiers
from .date_guidance import DEFAULTS, INFOTEXT, LABELS, TITLE, start_job


def _choices(listing) -> list[str]:
    try:
        return [""] + listing()
    except Exception:  # a listing must never break the page
        return [""]


class ClassGuidanceScript(scripts.Script):
    sorting_priority = 20

    def title(self) -> str:
        return TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with gr.Accordion(TITLE, open=False):
            enable = gr.Checkbox(value=DEFAULTS[0], label=LABELS[0])
            with gr.Row():
                classifier = gr.Dropdown(choices=_choices(classifiers.choices), value="", label=LABELS[1],
                                         allow_custom_value=True)
                arch = gr.Textbox(value="", label=LABELS[2], placeholder="timm architecture, for a plain weights file")
                labels = gr.Dropdown(choices=_choices(classifiers.label_choices), value="", label=LABELS[3],
                                     allow_custom_value=True)
            target = gr.Textbox(value="", label=LABELS[4], placeholder="a class name (any synonym) or an index")
            with gr.Row():
                rho = gr.Slider(minimum=0.0, maximum=5.0, step=0.01, value=DEFAULTS[5], label=LABELS[5])
                every = gr.Slider(minimum=1, maximum=50, step=1, value=DEFAULTS[6], label=LABELS[6])
                window = gr.Textbox(value=DEFAULTS[7], label=LABELS[7],
                                    placeholder="fraction of the sampling steps, e.g. 0.2-0.8")
        controls = [enable, classifier, arch, labels, target, rho, every, window]

        def default_labels(name):
            return gr.update(value=classifiers.default_labels(name) if name else "")

        classifier.change(default_labels, inputs=[classifier], outputs=[labels])
        self.infotext_fields = [(enable, lambda d: INFOTEXT["Classifier"] in d)] + [
            (c, INFOTEXT[label]) for c, label in zip(controls[1:], LABELS[1:])]
        self.paste_field_names = [key for key in INFOTEXT.values()]
        return controls

    def process(self, p, *args):
        start_job(p, args)
