"""Is `python3 dev.py test --setup-only` idempotent and quick the second time, on a fresh copy of this repository?

Copies the working tree (tracked and untracked-but-not-ignored files, `git ls-files -co --exclude-standard`, so
uncommitted changes count; no .venv, no .ci-frontend) into a temporary folder, runs the set-up there twice, and
reports each run's wall time, whether the second run called pip, and what the second run changed in .venv: the
installed distributions (`pip freeze`) and the file list with sizes and mtimes. Not a test: the first run installs
torch from the package registry (minutes; a few GB of disk in the temporary folder, removed afterwards unless
--keep). With a ComfyUI host on this machine ($COMFYUI_PATH or ~/comfy/ComfyUI) the host's set-up runs too.

    python bench/dev_idempotence.py                 # prints a summary, writes bench/results/dev_idempotence.json
    python bench/dev_idempotence.py --keep          # keep the copy (its path is printed)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copy_tree(dest: Path) -> int:
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    count = 0
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the working tree is listed but absent
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
            count += 1
    return count


def snapshot(venv: Path) -> dict[str, tuple[int, int]]:
    """Every path under the venv -> (size, mtime_ns); folders too (a removed file changes its folder's mtime)."""
    out = {}
    for folder, dirs, files in os.walk(venv):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            out[str(path.relative_to(venv))] = (st.st_size if name in files else 0, st.st_mtime_ns)
    return out


def freeze(venv: Path) -> list[str]:
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    return subprocess.run([str(python), "-m", "pip", "freeze", "--all"], check=True, capture_output=True,
                          text=True).stdout.splitlines()


def run_setup(repo: Path, log: Path) -> tuple[float, int, str]:
    start = time.monotonic()
    with log.open("w") as out:
        rc = subprocess.call([sys.executable, "dev.py", "test", "--setup-only"], cwd=repo, stdout=out,
                             stderr=subprocess.STDOUT)
    return time.monotonic() - start, rc, log.read_text()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", action="store_true", help="keep the temporary copy")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "dev_idempotence.json"))
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="dct-dev-idempotence-"))
    repo = tmp / "repo"
    repo.mkdir()
    try:
        print(f"copied {copy_tree(repo)} files to {repo}", flush=True)
        first, rc1, out1 = run_setup(repo, tmp / "run1.log")
        print(f"run 1: {first:.1f} s, exit {rc1}\n" + "\n".join(line for line in out1.splitlines()
                                                                 if line.startswith("[dev]")), flush=True)
        if rc1:
            print(out1[-4000:])
            return 1
        venv = repo / ".venv"
        freeze1 = freeze(venv)  # before the snapshot: whatever pip itself writes is not the second run's doing
        files1 = snapshot(venv)
        second, rc2, out2 = run_setup(repo, tmp / "run2.log")
        files2 = snapshot(venv)
        freeze2 = freeze(venv)
        print(f"run 2: {second:.1f} s, exit {rc2}\n" + "\n".join(out2.splitlines()), flush=True)

        added = sorted(set(files2) - set(files1))
        removed = sorted(set(files1) - set(files2))
        modified = sorted(k for k in set(files1) & set(files2) if files1[k] != files2[k])
        result = {
            "first_run_s": round(first, 1), "second_run_s": round(second, 1), "second_exit": rc2,
            "second_run_called_pip": "pip install" in out2,
            "freeze_changed": freeze1 != freeze2, "freeze_diff": sorted(set(freeze1) ^ set(freeze2)),
            "venv_paths": len(files2), "added": added[:50], "removed": removed[:50], "modified": modified[:50],
            "n_added": len(added), "n_removed": len(removed), "n_modified": len(modified),
        }
        print(json.dumps({k: v for k, v in result.items()}, indent=1))
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        unchanged = not (added or removed or modified or result["freeze_changed"] or result["second_run_called_pip"])
        print(f"second run changed .venv: {'no' if unchanged else 'YES'}; first {first:.1f} s, second {second:.1f} s")
        return 0 if unchanged and rc2 == 0 else 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
