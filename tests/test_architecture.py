"""The layering the README's "Architecture" section draws, held against the code: no module of the engine imports
one from a layer above it (imports inside functions included), the engine never imports a host, and a training
setting is code only where it is declared and used."""

import ast
import io
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Bottom up; a module may import its own layer and the ones before it.
LAYERS = ["errors", "settings", "config", "formats", "registry", "classifiers", "method", "backends", "world",
          "testing", "jobs", "cli"]


def _imports(path: Path, package: str):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            yield node.lineno, names
        elif isinstance(node, ast.Import):
            yield node.lineno, [a.name for a in node.names]


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "dct_core" and len(parts) > 1 else None


def test_no_engine_module_imports_upward_or_a_host():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward, host = [], []
    for path in (ROOT / "dct_core").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if parts[-1] == "__init__" else module.rpartition(".")[0]
        mine = _layer(module)
        for line, targets in _imports(path, package):
            for target in targets:
                if target.split(".")[0] in ("comfy", "nodes", "folder_paths", "server", "comfy_api"):
                    host.append(f"{path.relative_to(ROOT)}:{line} {target}")
                theirs = _layer(target)
                if mine in rank and theirs in rank and rank[theirs] > rank[mine]:
                    upward.append(f"{path.relative_to(ROOT)}:{line} {mine} -> {theirs} ({target})")
    assert not upward, upward
    assert not host, host


def test_every_engine_module_is_in_a_layer():
    stray = [p.name for p in (ROOT / "dct_core").glob("*.py") if p.stem not in LAYERS + ["__init__", "__main__"]]
    assert not stray, f"{stray}: put them in a layer package (README, Architecture)"


def _names_as_code(path: Path) -> set[str]:
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return {t.string for t in tokens if t.type == tokenize.NAME}


def test_a_training_setting_is_code_in_at_most_three_files():
    sources = [p for d in ("dct_core", "nodes", "bench") for p in (ROOT / d).rglob("*.py")]
    for setting in ("patience", "accuracy_threshold", "enough_prob", "threshold_window"):
        files = sorted(str(p.relative_to(ROOT)) for p in sources if setting in _names_as_code(p))
        assert len(files) <= 3, (setting, files)


def _top_imports(folder: Path) -> list[tuple[str, str]]:
    found = []
    for path in folder.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if parts[-1] == "__init__" else module.rpartition(".")[0]
        for line, targets in _imports(path, package):
            found += [(f"{path.relative_to(ROOT)}:{line}", t.split(".")[0]) for t in targets]
    return found


def test_the_two_hosts_never_import_each_other():
    """The webui side (dct_webui, scripts/) and the ComfyUI side (nodes/, the root __init__) share only the engine;
    the engine imports neither (the webui's modules.* / ldm_patched / backend included)."""
    webui = [(w, t) for w, t in _top_imports(ROOT / "dct_webui") + _top_imports(ROOT / "scripts")
             if t in ("nodes", "comfy", "folder_paths", "server", "comfy_api")]
    comfy = [(w, t) for w, t in _top_imports(ROOT / "nodes") if t == "dct_webui"]
    root = [n for _, names in _imports(ROOT / "__init__.py", "") for n in names if n.split(".")[0] == "dct_webui"]
    engine = [(w, t) for w, t in _top_imports(ROOT / "dct_core") if t in ("dct_webui", "modules", "ldm_patched",
                                                                          "modules_forge", "backend", "gradio")]
    assert not webui and not comfy and not root and not engine, (webui, comfy, root, engine)
