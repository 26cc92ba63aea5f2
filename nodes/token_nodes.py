"""Apply Class Token, Class Token CLIP, Load Class Token, Save Class Token."""

from __future__ import annotations

import re

from dct_core.errors import DCTError
from dct_core.formats.tokens import ClassToken, load_class_token, sanitize_name, save_class_token, validate_class_token

from .adapters import model_folders as folders
from .adapters.node_api import io, schema_fields, ui
from .adapters.sockets import CATEGORY, ClassTokenSocket
from .adapters.tokenizer_hook import clip_with_token, text_models, token_registered, with_trigger

SAVE_HINT = "enable 'overwrite' or change 'name'"


def _vectors_for(clip, token: ClassToken) -> dict:
    """The token's vectors matched to this CLIP's encoders (clear error on an SD1/SD2/SDXL mismatch or a broken
    token: NaN, huge or all-zero vectors)."""
    widths = {key: m.transformer.get_input_embeddings().weight.shape[1] for key, m in text_models(clip).items()}
    try:
        return validate_class_token(token).for_encoders(widths)
    except DCTError as exc:
        raise ValueError(str(exc)) from exc


def _placed(text: str, trigger: str) -> str:
    """{token} and the bare trigger word both mean the class token."""
    return with_trigger(text.replace("{token}", f" {trigger} "), trigger)


class ApplyClassToken(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DCTApplyClassToken",
            **schema_fields(search_aliases=["embedding", "textual inversion", "class token", "DCT"]),
            display_name="Apply Class Token (DCT)",
            category=CATEGORY,
            description="Encodes a prompt with the class token spliced in at its trigger word, in memory (no "
                        "file needed). Works for SD1, SD2 and SDXL.",
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder the token was trained for."),
                ClassTokenSocket.Input("class_token", tooltip="From Train Discriminative Token or Load Class Token."),
                # no dynamic_prompts: the frontend would rewrite a lone {token} to the word "token"
                io.String.Input("text", default="a photo of {token} tiger cat", multiline=True,
                                tooltip="The prompt; write {token} or the token's trigger word where it goes."),
            ],
            outputs=[io.Conditioning.Output("CONDITIONING", display_name="conditioning")],
        )

    @classmethod
    def execute(cls, clip, class_token, text) -> io.NodeOutput:
        vectors = _vectors_for(clip, class_token)
        trigger = sanitize_name(class_token.name)
        if "{token}" not in text and not re.search(rf"(?<![\w-]){re.escape(trigger)}(?![\w-])", text):
            raise ValueError(f"the prompt has neither {{token}} nor the trigger word {trigger!r}; add one where "
                             "the class token should go.")
        with token_registered(clip.tokenizer, trigger, vectors):
            tokens = clip.tokenize(_placed(text, trigger))
            conditioning = clip.encode_from_tokens_scheduled(tokens)
        return io.NodeOutput(conditioning)


class ClassTokenClip(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DCTClassTokenClip",
            **schema_fields(search_aliases=["embedding", "class token", "DCT"]),
            display_name="Class Token CLIP (DCT)",
            category=CATEGORY,
            description="Returns a CLIP that understands the token's trigger word, for any stock CLIPTextEncode "
                        "downstream. The input CLIP is not changed.",
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder the token was trained for."),
                ClassTokenSocket.Input("class_token", tooltip="From Train Discriminative Token or Load Class Token."),
            ],
            outputs=[io.Clip.Output("CLIP", display_name="clip")],
        )

    @classmethod
    def execute(cls, clip, class_token) -> io.NodeOutput:
        trigger = sanitize_name(class_token.name)
        clone = clip_with_token(clip, trigger, _vectors_for(clip, class_token))
        return io.NodeOutput(clone, ui=ui.PreviewText(f"trigger word: {trigger}"))


class LoadClassToken(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DCTLoadClassToken",
            **schema_fields(search_aliases=["load embedding", "class token", "DCT"]),
            display_name="Load Class Token (DCT)",
            category=CATEGORY,
            description="Loads a class token (or any textual-inversion embedding) from models/embeddings: "
                        ".safetensors, A1111 .pt, diffusers .bin; pickles are read as plain tensors only.",
            inputs=[io.Combo.Input("token", options=folders.embedding_choices(),
                                   tooltip="A file under models/embeddings.")],
            outputs=[ClassTokenSocket.Output("CLASS_TOKEN", display_name="class token")],
        )

    @classmethod
    def fingerprint_inputs(cls, token=None):
        """Re-read the file when it changed on disk (a token retrained under the same name). The host passes only
        constant inputs here: a name that arrives through a link is unknown, so the node runs every time (NaN is
        never equal to itself) rather than logging a missing-argument warning."""
        import os

        import folder_paths

        if token is None:
            return float("nan")
        path = folder_paths.get_full_path("embeddings", token)
        if path is None:
            return token
        stat = os.stat(path)
        return f"{token}:{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def execute(cls, token) -> io.NodeOutput:
        import folder_paths

        path = folder_paths.get_full_path("embeddings", token)
        if path is None:
            raise ValueError(f"{token!r} not found under models/embeddings; refresh the page.")
        try:
            loaded = load_class_token(path)
        except DCTError as exc:
            raise ValueError(str(exc)) from exc
        label = loaded.metadata.get("class_label", "?")
        text = f"{loaded.name}: {loaded.num_vectors} vector(s), widths {loaded.widths()}, class {label}"
        return io.NodeOutput(loaded, ui=ui.PreviewText(text))


class SaveClassToken(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DCTSaveClassToken",
            **schema_fields(search_aliases=["save embedding", "class token", "DCT"]),
            display_name="Save Class Token (DCT)",
            category=CATEGORY,
            description="Saves a class token to models/embeddings (atomic write) in a format ComfyUI, "
                        "A1111/Forge and diffusers all load.",
            inputs=[
                ClassTokenSocket.Input("class_token", tooltip="The token to save."),
                io.String.Input("name", default="class-token",
                                tooltip="File name; use embedding:<name> in prompts."),
                io.Combo.Input("format", options=[".safetensors", ".pt"], default=".safetensors",
                               tooltip=".safetensors (every host; SDXL needs it) or A1111's .pt."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace an existing file of that name."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, class_token, name, format, overwrite) -> io.NodeOutput:
        try:
            stem = sanitize_name(name)
            path = folders.embeddings_dir() / f"{stem}{format}"
            token = ClassToken(class_token.vectors, name=stem, metadata=dict(class_token.metadata))
            saved = save_class_token(token, path, overwrite=overwrite, overwrite_hint=SAVE_HINT)
        except DCTError as exc:
            raise ValueError(str(exc)) from exc
        return io.NodeOutput(ui=ui.PreviewText(f"saved {saved.name}; use embedding:{stem}"))


