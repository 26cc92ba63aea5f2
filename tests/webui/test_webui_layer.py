"""The webui layer (dct_webui) against fakes shaped like the webui's modules: Forge Classic's (modules.*, one shared
embedding database) and Forge Neo's (one database per text engine, inference-mode decorated methods). Fast, no
webui needed; tests/webui/test_forge_*.py run the real Forge Classic when one is set up."""

from __future__ import annotations

import importlib.machinery
import sys
import threading
import time
import types
from types import SimpleNamespace

import pytest
import torch

from dct_core.errors import DCTError
from dct_core.settings import from_request
from dct_webui import api, classifiers, date_guidance, host, jobs
from dct_webui.backend import WebuiBackend, sampling_sigmas

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import TINY_SAMPLING  # noqa: E402


class FakeState:
    def __init__(self):
        self.interrupted, self.jobs, self.job_count, self.sampling_step, self.sampling_steps = False, [], 0, 0, 0

    def begin(self, job="(unknown)"):
        self.jobs.append(("begin", job))
        self.interrupted = False

    def end(self):
        self.jobs.append(("end", None))


class ClassicDatabase:
    """Forge Classic's EmbeddingDatabase, as far as the extension uses it."""

    def __init__(self):
        self.word_embeddings, self.reloads = {}, 0

    def register_embedding_by_name(self, embedding, model, name):
        if embedding is None:
            self.word_embeddings.pop(name, None)
        else:
            self.word_embeddings[name] = embedding

    def load_textual_inversion_embeddings(self, force_reload=False):
        self.reloads += 1


def _module(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__spec__ = importlib.machinery.ModuleSpec(name, None)
    m.__path__ = []  # a package, so submodules resolve
    for key, value in attrs.items():
        setattr(m, key, value)
    return m


@pytest.fixture
def webui(tmp_path, monkeypatch):
    """A Forge Classic-shaped set of modules: shared (state, cmd_opts, sd_model), call_queue, paths, the hijack."""
    state, db = FakeState(), ClassicDatabase()
    opts = SimpleNamespace(embeddings_dir=str(tmp_path / "embeddings"), api=True, nowebui=False, api_auth=None)
    fake = {
        "modules": _module("modules"),
        "modules.shared": _module("modules.shared", state=state, cmd_opts=opts, sd_model=None),
        "modules.call_queue": _module("modules.call_queue", queue_lock=threading.Lock()),
        "modules.paths_internal": _module("modules.paths_internal", models_path=str(tmp_path / "models")),
        "modules.sd_hijack": _module("modules.sd_hijack", model_hijack=SimpleNamespace(embedding_db=db)),
        "ldm_patched": _module("ldm_patched"),
    }
    for name, module in fake.items():
        monkeypatch.setitem(sys.modules, name, module)
    (tmp_path / "embeddings").mkdir()
    return SimpleNamespace(state=state, db=db, opts=opts, shared=fake["modules.shared"], tmp=tmp_path,
                           lock=fake["modules.call_queue"].queue_lock)


@pytest.fixture
def trainer_on_tiny(webui, sd1_world, monkeypatch):
    """The real Trainer and API over the engine's tiny diffusers backend standing in for the webui's model."""
    backend, classifier = sd1_world
    webui.shared.sd_model = SimpleNamespace(forge_objects=object(), is_sdxl=False, sd_model_checkpoint="tiny.ckpt")
    monkeypatch.setattr(jobs, "WebuiBackend", lambda model, **kw: backend)
    monkeypatch.setattr(classifiers, "load", lambda *a, **kw: classifier)
    trainer = jobs.Trainer()
    app = fastapi.FastAPI()
    api.mount(app, "user:pa:ss", trainer)
    return SimpleNamespace(trainer=trainer, client=TestClient(app), auth=("user", "pa:ss"), classifier=classifier)


def _body(**over):
    size = TINY_SAMPLING
    body = {"classifier": "tiny.safetensors", "target_class": "1", "steps": 2, "save_name": "tiny-token",
            "options": {"resolution": size.resolution, "sampling_steps": size.sampling_steps, "batch_size": 2,
                        "validation_images": 0}}
    body.update(over)
    return body


def test_the_api_trains_behind_the_webui_auth_and_lock_and_reloads_the_embeddings(webui, trainer_on_tiny):
    t = trainer_on_tiny
    assert t.client.post("/dct/v1/train", json=_body()).status_code == 401
    assert t.client.post("/dct/v1/train", json=_body(), auth=("user", "wrong")).status_code == 401
    done = t.client.post("/dct/v1/train", json=_body(), auth=t.auth)
    assert done.status_code == 200, done.text
    answer = done.json()
    assert answer["steps"] >= 1 and answer["name"] == "tiny-token" and answer["before_after"]
    assert (webui.tmp / "embeddings" / "tiny-token.safetensors").is_file()
    assert webui.db.reloads == 1 and webui.db.word_embeddings == {}  # reloaded; no training name left behind
    assert webui.state.jobs == [("begin", "dct_train"), ("end", None)] and not webui.lock.locked()
    status = t.client.get("/dct/v1/status", auth=t.auth).json()
    assert status["phase"] == "done" and status["step"] == answer["steps"] and not status["running"]
    again = t.client.post("/dct/v1/train", json=_body(), auth=t.auth)  # the same name again
    assert again.status_code == 400 and "Overwrite" in again.json()["error"]


@pytest.mark.parametrize("body, words", [
    ({"target_class": "1"}, "'classifier' is required"),
    (_body(steps=0), "max_steps"),
    (_body(options={"lr": "fast"}), "lr must be a number"),
    (_body(options={"sampler_name": "euler"}), "unknown option(s) sampler_name"),
    (_body(recipe="best"), "unknown recipe"),
    (_body(overwrite="yes"), "'overwrite' must be true or false"),
    (_body(colour="red"), "unknown field(s) colour"),
])
def test_bad_requests_are_one_line_400s_before_anything_runs(webui, trainer_on_tiny, body, words):
    t = trainer_on_tiny
    answer = t.client.post("/dct/v1/train", json=body, auth=t.auth)
    assert answer.status_code == 400 and words in answer.json()["error"]
    assert webui.state.jobs == []  # refused before the webui's queue was asked


def test_a_second_training_is_refused_and_a_generation_makes_it_wait(webui, trainer_on_tiny):
    t = trainer_on_tiny
    t.trainer._running.acquire()
    try:
        busy = t.client.post("/dct/v1/train", json=_body(), auth=t.auth)
    finally:
        t.trainer._running.release()
    assert busy.status_code == 409 and "already runs" in busy.json()["error"]
    webui.lock.acquire()  # a txt2img holds the webui's queue
    result = {}
    worker = threading.Thread(target=lambda: result.update(r=t.trainer.run(jobs.TrainRequest.from_json(_body()))))
    worker.start()
    time.sleep(1.0)
    assert t.trainer.status.phase == "waiting" and webui.state.jobs == []
    webui.lock.release()
    worker.join(120)
    assert result["r"]["steps"] >= 1 and webui.state.jobs[0] == ("begin", "dct_train")


def test_interrupt_keeps_the_best_token(webui, trainer_on_tiny, monkeypatch):
    t = trainer_on_tiny
    monkeypatch.setattr(jobs.Trainer, "_cancelled", lambda self: self.status.step >= 1)
    answer = t.client.post("/dct/v1/train", json=_body(steps=5, save_name="kept"), auth=t.auth).json()
    assert answer["stopped"] == "cancelled" and answer["steps"] == 1 and answer["best_step"] == 1
    assert (webui.tmp / "embeddings" / "kept.safetensors").is_file()
    assert t.client.post("/dct/v1/interrupt", auth=t.auth).json() == {"interrupted": False}  # none runs now


def test_routes_mount_only_where_the_webui_mounts_its_api(webui):
    app = SimpleNamespace(routes=[], add_api_route=lambda path, *a, **k: app.routes.append(path))
    webui.opts.api = False
    api.on_app_started(None, app)
    assert app.routes == []
    webui.opts.nowebui = True
    api.on_app_started(None, app)
    assert sorted(app.routes) == ["/dct/v1/interrupt", "/dct/v1/labels", "/dct/v1/status", "/dct/v1/train"]


def test_classifiers_come_from_the_folder_with_the_default_labels_file(webui, tmp_path):
    root = tmp_path / "models" / "classifiers"
    root.mkdir(parents=True)
    (root / "birds.safetensors").write_bytes(b"x")
    (root / "birds.labels.txt").write_text("a\nb\n")
    (root / "hf").mkdir()
    (root / "hf" / "config.json").write_text("{}")
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"x")
    (root / "linked.safetensors").symlink_to(outside)
    assert classifiers.choices() == ["hf/", "birds.safetensors"]
    assert classifiers.label_choices() == ["birds.labels.txt"]
    assert classifiers.default_labels("birds.safetensors") == "birds.labels.txt"
    with pytest.raises(DCTError, match="links outside"):
        classifiers.resolve("linked.safetensors", "classifier")
    with pytest.raises(DCTError, match="not found"):
        classifiers.resolve("../outside.safetensors", "classifier")


def test_date_arguments_checked_and_recorded_in_the_infotext(webui, sd1_world, monkeypatch):
    _, classifier = sd1_world
    monkeypatch.setattr(classifiers, "load", lambda *a, **kw: classifier)
    assert date_guidance.guidance_from_args([False, "c.safetensors", "", "", "1", 0.5, 1, "0-1"]) is None
    comments = []
    p = SimpleNamespace(extra_generation_params={}, comment=comments.append)
    assert date_guidance.start_job(p, [True, "", "", "", "1", 0.5, 1, "0-1"]) is None
    assert "no Classifier" in comments[0] and p.extra_generation_params == {}
    g = date_guidance.start_job(p, [True, "c.safetensors", "", "", "1", 0.5, 2, "0.2-0.8"])
    assert g is not None and g.config.every == 2 and g.config.interval == (0.2, 0.8)
    assert p.extra_generation_params["DCT DATE rho"] == "0.5" and "DCT DATE class" in p.extra_generation_params
    zero = date_guidance.guidance_from_args([True, "c.safetensors", "", "", "1", 0, 1, "0-1"])
    assert zero is not None and zero.chosen(20) == set()  # strength 0: no step is touched
    with pytest.raises(DCTError, match="interval"):
        date_guidance.guidance_from_args([True, "c.safetensors", "", "", "1", 0.5, 1, "0.9-0.1"])


def test_a_callback_error_is_said_under_the_image_not_swallowed(webui, sd1_world):
    _, classifier = sd1_world
    comments = []
    p = SimpleNamespace(comment=comments.append)
    guidance = date_guidance.Guidance(classifier, 1, date_guidance.AdaptiveConfig(rho=0.5), {})
    p._dct_date = guidance
    params = SimpleNamespace(denoiser=SimpleNamespace(p=p, step=0, inner_model=None), sampling_step=0,
                             total_sampling_steps=4, text_cond=torch.zeros(1, 77, 8), x=None, sigma=None)
    date_guidance.on_cfg_denoiser(params)
    assert guidance.failed and comments and "stopped at step 0" in comments[0]


def test_settings_from_requests_and_forms():
    assert from_request("lr", "0.01") == 0.01 and from_request("batch_size", 4.0) == 4
    assert from_request("x0_interval", "0.2-0.8") == (0.2, 0.8)
    assert from_request("x0_interval", [0.1, 0.5]) == (0.1, 0.5)
    assert from_request("templates", "a {token} b\n c {token} ") == ("a {token} b", "c {token}")
    assert from_request("fresh_seeds", "on") is True and from_request("seed", "") is None
    with pytest.raises(DCTError, match="batch_size must be a whole number"):
        from_request("batch_size", 1.5)


# --- Forge Neo, from its code: fakes shaped like its classes ------------------------------------------------------


class NeoDatabase:
    def __init__(self):
        self.word_embeddings, self.fixes, self.reloads = {}, None, 0

    def register_embedding_by_name(self, embedding, name):  # Neo: no model argument
        if embedding is None:
            self.word_embeddings.pop(name, None)
        else:
            self.word_embeddings[name] = embedding

    def load_textual_inversion_embeddings(self):  # Neo: no force_reload
        self.reloads += 1


class NeoEngine:
    """A text engine as Neo's ClipEngine: its own database; a registered name in a prompt splices the embedding's
    vector (torch.cat, differentiable) at its position."""

    def __init__(self, key: str, width: int):
        self.key, self.embeddings, self.table = key, NeoDatabase(), torch.nn.Embedding(16, width)

    def __call__(self, texts):
        rows = []
        for text in texts:
            base = self.table(torch.arange(4))
            for name, e in self.embeddings.word_embeddings.items():
                if name in text:
                    vec = e.vec[self.key] if isinstance(e.vec, dict) else e.vec
                    base = torch.cat([base[:1], vec, base[1 + vec.shape[0]:]])
            rows.append(base)
        return torch.stack(rows)


class NeoModel:
    def __init__(self):
        self.text_processing_engine = NeoEngine("clip_l", 8)
        self.is_sdxl = False

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt):
        return self.text_processing_engine(prompt)


@pytest.fixture
def neo(monkeypatch, webui):
    for name in ("backend", "backend.text_processing", "backend.text_processing.textual_inversion"):
        monkeypatch.setitem(sys.modules, name, _module(name))
    sys.modules["backend.text_processing.textual_inversion"].Embedding = lambda vec, name: SimpleNamespace(
        vec=vec, name=name, vectors=0, shape=None)
    assert host.fork() == "neo"
    return NeoModel()


def test_neo_tokens_register_on_each_engine_and_gradients_reach_the_vector(neo):
    backend = object.__new__(WebuiBackend)  # only the encode path: no UNet or VAE in this fake
    backend.sd_model, backend.is_sdxl = neo, False
    vec = torch.zeros(1, 8, requires_grad=True)
    with torch.enable_grad():
        hidden, pooled = None, None
        with backend._registered("dcttrainab", {"clip_l": vec}):
            assert "dcttrainab" in neo.text_processing_engine.embeddings.word_embeddings
            hidden, pooled = backend._conditioning(["a dcttrainab cat"])
        hidden.sum().backward()
    assert pooled is None and vec.grad is not None and vec.grad.abs().sum() > 0
    assert neo.text_processing_engine.embeddings.word_embeddings == {}  # as before the call
    host.reload_embeddings(neo)
    assert neo.text_processing_engine.embeddings.reloads == 1


def test_neo_inference_mode_decorators_are_lifted_for_the_duration_only():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        @torch.inference_mode()
        def forward(self, x):
            return self.lin(x)

    block = Block()
    x = torch.ones(1, 2, requires_grad=True)
    assert block(x).is_inference()
    with host.autograd_forwards(block):
        out = block(x)
        out.sum().backward()
    assert x.grad is not None and "forward" not in block.__dict__ and block(x).is_inference()


def test_sigmas_from_classic_model_sampling_or_neo_predictor():
    class Linear:
        sigma_min, sigma_max = 0.1, 10.0

        def timestep(self, sigma):
            return sigma * 100

        def sigma(self, t):
            return t / 100

    normal = sampling_sigmas(Linear(), "normal", 4)
    assert torch.allclose(normal, torch.tensor([10.0, 6.7, 3.4, 0.1, 0.0]), atol=1e-5)
    karras = sampling_sigmas(Linear(), "karras", 4)
    assert karras[0] == pytest.approx(10.0) and karras[-2] == pytest.approx(0.1) and karras[-1] == 0


def test_install_py_never_points_a_webui_at_requirements_txt(tmp_path):
    import install

    webui_dir = tmp_path / "webui"
    (webui_dir / "modules").mkdir(parents=True)
    (webui_dir / "launch.py").write_text("")
    assert install.run_by_webui({"PYTHONPATH": str(webui_dir)}) and not install.run_by_webui({})
    line = install.warning(["timm", "PIL"], webui=True)
    assert "requirements.txt" not in line and "pip install timm pillow" in line
