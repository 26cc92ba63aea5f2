"""What the webui's entry (scripts/dct_class_tokens.py) registers: the tab, the API routes, DATE's per-step
callback; and one log line naming any internal this webui lacks (the features that need it say so when used)."""

from __future__ import annotations

import logging

from . import host

log = logging.getLogger(__name__)
_registered: list[str] = []


def register() -> None:
    from . import api, date_guidance, tab

    callbacks = host.require("script_callbacks")
    callbacks.on_cfg_denoiser(date_guidance.on_cfg_denoiser)
    callbacks.on_ui_tabs(tab.on_ui_tabs)
    callbacks.on_app_started(api.on_app_started)
    _registered[:] = ["on_cfg_denoiser", "on_ui_tabs", "on_app_started"]
    gaps = host.missing()
    if gaps:
        log.warning("[DCT] %s lacks %s; the features using them will say so. Supported: %s", host.version(),
                    "; ".join(gaps), host.SUPPORTED)
