"""Start Forge Classic headless on CPU, with this repository linked in as an extension, for tests to call.

Standard library only (urllib): the tests run in the repository's venv, the webui in its own Python.

    found = find_webui()                      # (webui_path, python) or None
    ckpt = build_checkpoint(python, webui)    # the random SD1.5-layout checkpoint, built once and cached
    with ForgeServer(webui, python, ckpt) as server:
        status, models = server.get("/sdapi/v1/sd-models")
        status, result = server.post("/sdapi/v1/txt2img", {"prompt": "a cat", "steps": 2})

Stopping: Classic's ``/sdapi/v1/server-stop`` only ends the UI loop (and needs ``--api-server-stop``); its
main thread keeps running, so the server is stopped with SIGINT (the webui's own handler exits at once),
then SIGKILL for its whole process group.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
BUILD_SCRIPT = HERE / "build_checkpoint.py"
EXTENSION_NAME = "dct"
CHECKPOINT_STEM = "dct-test-sd15-tiny"
DEFAULT_WEBUI = Path("~/forge/classic")
DEFAULT_PYTHON = Path("~/forge/venv/bin/python")
WEBUI_HINT = (
    "Forge Classic not found: set WEBUI_PATH to its folder (and WEBUI_PYTHON to its venv's python, default "
    "$WEBUI_PATH/../venv/bin/python), or set it up at ~/forge/classic with ~/forge/venv/bin/python "
    "(shared/tools/forge-classic-setup.sh)"
)
HEADLESS_ARGS = (
    "--skip-prepare-environment", "--skip-torch-cuda-test", "--skip-python-version-check",
    "--skip-version-check", "--always-cpu", "--no-half", "--api", "--no-download-sd-model",
)

# written to <data dir>/config.json before the start. Live previews off: while a client polls the progress
# (/sdapi/v1/progress, the UI) during a run of over 20 steps, Classic's default preview (TAESD) tries to download
# taesd_decoder.pth every few steps (offline: a failed download each time; the run itself goes on).
DEFAULT_SETTINGS = {"live_previews_enable": False}

Auth = tuple[str, str]


def find_webui() -> tuple[Path, Path] | None:
    """(webui_path, python): ``$WEBUI_PATH`` with ``$WEBUI_PYTHON`` (default ``<WEBUI_PATH>/../venv/bin/python``),
    else ``~/forge/classic`` with ``~/forge/venv/bin/python``; None when either is missing."""
    if os.environ.get("WEBUI_PATH"):
        webui = Path(os.environ["WEBUI_PATH"]).expanduser()
        python = Path(os.environ.get("WEBUI_PYTHON") or webui / ".." / "venv" / "bin" / "python").expanduser()
    else:
        webui, python = DEFAULT_WEBUI.expanduser(), Path(os.environ.get("WEBUI_PYTHON") or DEFAULT_PYTHON).expanduser()
    if not (webui / "launch.py").is_file() or not (webui / "ldm_patched").is_dir():
        return None
    if not (python.is_file() and os.access(python, os.X_OK)):
        return None
    return webui.resolve(), python.absolute()  # python: not resolved, a venv's python is a symlink to the base one


def cache_dir() -> Path:
    return Path(os.environ.get("DCT_TEST_CACHE") or "~/.cache/dct-tests").expanduser()


def checkpoint_version() -> str:
    """Changes whenever build_checkpoint.py changes, so a cached checkpoint from an older script is rebuilt."""
    return hashlib.sha256(BUILD_SCRIPT.read_bytes()).hexdigest()[:10]


def build_checkpoint(python: Path | str, webui: Path | str, timeout: float = 600.0) -> Path:
    """The random SD1.5-layout checkpoint, built with the webui's Python on first use and cached in
    ``$DCT_TEST_CACHE`` (default ``~/.cache/dct-tests``) as ``dct-test-sd15-tiny-<version>.safetensors``.
    Written atomically; a lock keeps two test processes from building it at once; older versions are removed."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{CHECKPOINT_STEM}-{checkpoint_version()}.safetensors"
    if out.is_file():
        return out
    with open(folder / f"{CHECKPOINT_STEM}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.is_file():  # built by another process while this one waited
            return out
        env = _child_env(Path(webui))
        proc = subprocess.run([str(python), str(BUILD_SCRIPT), str(out)], cwd=str(webui), env=env,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stdout + proc.stderr)[-4000:]
            raise RuntimeError(f"build_checkpoint.py failed (exit {proc.returncode}):\n{tail}")
        for old in folder.glob(f"{CHECKPOINT_STEM}-*.safetensors"):
            if old != out:
                old.unlink(missing_ok=True)
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env(webui: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # nothing of the calling venv may leak into the webui's Python
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS"):
        env.pop(key, None)
    env.update(
        WEBUI_PATH=str(webui),
        COMMANDLINE_ARGS="",  # the webui appends these to its argv
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        PYTHONUNBUFFERED="1",
        PYTHONNOUSERSITE="1",
    )
    env.setdefault("OMP_NUM_THREADS", str(min(2, os.cpu_count() or 1)))
    env.update(extra or {})
    return env


class ForgeError(RuntimeError):
    pass


class ForgeServer:
    """Forge Classic on CPU in a throw-away data dir, as a context manager.

    The data dir (``--data-dir``; Classic puts ``extensions/``, ``models/``, ``config.json``, ``cache/`` and
    ``output/`` under it) holds ``extensions/dct`` (a symlink to this repository, unless ``extension`` is
    False or another path), ``models/Stable-diffusion/<checkpoint>`` (a symlink), ``models/classifiers/`` and
    ``models/embeddings/``. ``ui=True`` starts the gradio UI too (the API stays on through ``--api``).
    ``auth=("user", "pass")`` adds ``--api-auth user:pass`` and is sent with every request unless a call
    passes its own ``auth`` (``auth=None`` there sends none). ``settings`` go into ``config.json`` before the
    start, over DEFAULT_SETTINGS; ``env`` over the child's environment; ``keep=True`` (or ``DCT_KEEP_WEBUI=1``)
    leaves the temp dir and its ``webui.log``.
    """

    def __init__(
        self,
        webui: Path | str,
        python: Path | str,
        checkpoint: Path | str,
        *,
        extra_args: list[str] | tuple[str, ...] = (),
        ui: bool = False,
        auth: Auth | None = None,
        extension: bool | Path | str = True,
        start_timeout: float = 120.0,
        settings: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        keep: bool = False,
    ):
        self.webui = Path(webui)
        self.python = Path(python)
        self.checkpoint = Path(checkpoint)
        self.extra_args = list(extra_args)
        self.ui = ui
        self.auth = auth
        self.extension = REPO_ROOT if extension is True else (Path(extension) if extension else None)
        self.start_timeout = start_timeout
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.env = env or {}
        self.keep = keep or os.environ.get("DCT_KEEP_WEBUI", "") not in ("", "0")
        self.port: int | None = None
        self.data_dir: Path | None = None
        self.log_path: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None
        self._log: IO[bytes] | None = None
        self._last_log = ""
        self._tmp: Path | None = None

    # paths
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ckpt_path(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / "models" / "Stable-diffusion" / self.checkpoint.name

    @property
    def models_dir(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / "models"

    # life cycle
    def __enter__(self) -> ForgeServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def command(self) -> list[str]:
        args = [str(self.python), "launch.py", *HEADLESS_ARGS,
                "--server-name", "127.0.0.1", "--port", str(self.port),
                "--ckpt", str(self.ckpt_path), "--data-dir", str(self.data_dir)]
        if not self.ui:
            args.append("--nowebui")
        if self.auth is not None:
            args += ["--api-auth", f"{self.auth[0]}:{self.auth[1]}"]
        return args + self.extra_args

    def start(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="dct-forge-"))
        self.data_dir = self._tmp / "data"
        models = self.data_dir / "models"
        for sub in ("Stable-diffusion", "classifiers", "embeddings"):
            (models / sub).mkdir(parents=True)
        (self.data_dir / "extensions").mkdir()
        (self.data_dir / "config.json").write_text(json.dumps(self.settings, indent=1))
        if self.extension is not None:
            (self.data_dir / "extensions" / EXTENSION_NAME).symlink_to(Path(self.extension).resolve(),
                                                                      target_is_directory=True)
        self.ckpt_path.symlink_to(self.checkpoint.resolve())
        self.port = free_port()
        self.log_path = self._tmp / "webui.log"
        self._log = open(self.log_path, "wb")
        started = time.monotonic()
        self.proc = subprocess.Popen(self.command(), cwd=str(self.webui), env=_child_env(self.webui, self.env),
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait_ready(started)
        self.start_seconds = time.monotonic() - started

    def _wait_ready(self, started: float) -> None:
        assert self.proc is not None
        status: int | None = None
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ForgeError(f"Forge exited with {code} before answering\n{self.log_tail()}")
            if time.monotonic() - started > self.start_timeout:
                raise ForgeError(f"Forge did not answer 200 within {self.start_timeout:.0f} s (last status "
                                 f"{status})\n{self.log_tail()}")
            try:
                status, _ = self.get("/sdapi/v1/sd-models", timeout=5)
            except (OSError, urllib.error.URLError):
                status = None
            if status == 200:
                return
            time.sleep(0.5)

    def wait_for_log(self, text: str, timeout: float = 60.0) -> float:
        """Wait until ``text`` shows in the log (e.g. "Model loaded in": the API answers before the checkpoint,
        loaded in a background thread, is ready); the seconds waited. Raises ForgeError on timeout or exit."""
        started = time.monotonic()
        while text not in self.log_text():
            if self.proc is None or self.proc.poll() is not None:
                raise ForgeError(f"Forge is not running; {text!r} not in its log\n{self.log_tail()}")
            if time.monotonic() - started > timeout:
                raise ForgeError(f"{text!r} not in the log within {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(0.25)
        return time.monotonic() - started

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGINT, 15), (signal.SIGKILL, 15)):
                try:
                    os.killpg(proc.pid, sig)  # its own session: the webui and anything it started
                except ProcessLookupError:
                    break
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if proc is not None:
            try:  # leftovers of its group (the leader is gone)
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None and not self.keep:
            if self.log_path is not None and self.log_path.is_file():
                self._last_log = self.log_path.read_text(errors="replace")
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # the log
    def log_text(self) -> str:
        if self.log_path is not None and self.log_path.is_file():
            return self.log_path.read_text(errors="replace")
        return self._last_log

    def log_tail(self, chars: int = 6000) -> str:
        text = self.log_text()
        return f"--- last {min(chars, len(text))} chars of {self.log_path} ---\n{text[-chars:]}"

    # HTTP
    def request(self, method: str, path: str, body: Any = None, *, auth: Auth | None | bool = True,
                timeout: float = 300.0) -> tuple[int, Any]:
        """(status, parsed JSON, or the text when the answer is not JSON); HTTP errors are returned, not raised.
        ``auth=True``: the server's own credentials, if any; a pair: those; None or False: none."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        creds = self.auth if auth is True else (auth or None)
        if creds:
            token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        text = raw.decode(errors="replace")
        try:
            return status, json.loads(text) if text else None
        except json.JSONDecodeError:
            return status, text

    def get(self, path: str, *, auth: Auth | None | bool = True, timeout: float = 300.0) -> tuple[int, Any]:
        return self.request("GET", path, auth=auth, timeout=timeout)

    def post(self, path: str, json: Any = None, *, auth: Auth | None | bool = True,
             timeout: float = 300.0) -> tuple[int, Any]:
        return self.request("POST", path, {} if json is None else json, auth=auth, timeout=timeout)


def decode_image(b64: str) -> bytes:
    """The bytes of an image the API returned (base64, maybe with a data: prefix)."""
    return base64.b64decode(b64.split(",", 1)[1] if b64.startswith("data:") else b64)


if __name__ == "__main__":  # manual use: start it and wait (Ctrl+C stops it)
    found = find_webui()
    if found is None:
        sys.exit(WEBUI_HINT)
    webui_dir, py = found
    with ForgeServer(webui_dir, py, build_checkpoint(py, webui_dir), ui="--ui" in sys.argv) as srv:
        print(f"Forge Classic at {srv.url} (data {srv.data_dir}, log {srv.log_path}) after {srv.start_seconds:.1f} s")
        try:
            while srv.proc is not None and srv.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
