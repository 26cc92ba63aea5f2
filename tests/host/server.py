"""Starting the real ComfyUI server on 127.0.0.1 with this pack installed, and posting API workflows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI process whose --base-directory (models, custom_nodes, output, temp, user) is a temp dir, so
    nothing is written into the host's own tree. The pack is linked into its custom_nodes."""

    def __init__(self, comfy_root: Path, base: Path, front_end_root: Path | None = None):
        """front_end_root: a frontend's static folder to serve (--front-end-root) instead of the host's own."""
        self.root, self.base, self.front_end_root = comfy_root, base, front_end_root
        self.models = base / "models"
        for name in ("checkpoints", "embeddings", "classifiers", "vae_approx"):
            (self.models / name).mkdir(parents=True, exist_ok=True)
        (base / "custom_nodes").mkdir(exist_ok=True)
        link = base / "custom_nodes" / "discriminative-class-tokens"
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        (base / "user").mkdir(exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = base / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--user-directory", str(self.base / "user"),
               "--disable-auto-launch"]
        if self.front_end_root is not None:
            cmd += ["--front-end-root", str(self.front_end_root)]
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited at start; log:\n{self.log.read_text()[-3000:]}")
            try:
                self.get("/object_info/CheckpointLoaderSimple")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        raise TimeoutError(f"ComfyUI did not answer in {timeout} s; log:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def run(self, workflow: dict, timeout: float = 600) -> dict:
        """POST an API-format workflow and wait for its history entry."""
        body = json.dumps({"prompt": workflow, "client_id": str(uuid.uuid4())}).encode()
        req = urllib.request.Request(self.url + "/prompt", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                prompt_id = json.loads(r.read())["prompt_id"]
        except urllib.error.HTTPError as exc:
            return {"status": {"status_str": "rejected", "messages": []}, "rejected": json.loads(exc.read())}
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:
                return history[prompt_id]
            time.sleep(0.25)
        raise TimeoutError(f"workflow did not finish in {timeout} s; log:\n{self.log.read_text()[-3000:]}")


def error_message(entry: dict) -> str:
    for kind, data in entry["status"].get("messages", []):
        if kind == "execution_error":
            return data.get("exception_message", "")
    return json.dumps(entry.get("rejected", ""))
