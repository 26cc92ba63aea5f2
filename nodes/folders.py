"""Model folders the pack uses: classifiers (registered by the host with no extensions), embeddings."""

from __future__ import annotations

from pathlib import Path

CLASSIFIER_EXTENSIONS = {".safetensors", ".pt", ".pth", ".bin", ".ts", ".torchscript", ".txt", ".json"}


def register_classifier_folder() -> None:
    """Widen the host's ``classifiers`` entry to our file types, keeping every path already registered
    (extra_model_paths.yaml is read before packs load)."""
    import folder_paths

    default = str(Path(folder_paths.models_dir) / "classifiers")
    paths, extensions = folder_paths.folder_names_and_paths.get("classifiers", ([default], set()))
    folder_paths.folder_names_and_paths["classifiers"] = (list(paths), set(extensions) | CLASSIFIER_EXTENSIONS)


def classifier_choices() -> list[str]:
    """Weight files and model folders (a folder holding config.json) under models/classifiers."""
    import folder_paths

    files = folder_paths.get_filename_list("classifiers")
    folders = sorted({str(Path(f).parent) + "/" for f in files if Path(f).name == "config.json"})
    weights = [f for f in files if Path(f).suffix not in (".txt", ".json")
               and not any(f.startswith(d) for d in folders)]
    return folders + weights


def label_files() -> list[str]:
    import folder_paths

    return [f for f in folder_paths.get_filename_list("classifiers") if Path(f).suffix in (".txt", ".json")
            and Path(f).name != "config.json" and not f.endswith("preprocessor_config.json")]


def classifier_path(name: str) -> str:
    """The full path of a choice from classifier_choices (a folder ends in '/')."""
    import folder_paths

    if name.endswith("/"):
        config = folder_paths.get_full_path("classifiers", name + "config.json")
        if config is None:
            raise ValueError(f"classifier folder {name!r} not found under models/classifiers; refresh the page.")
        return str(Path(config).parent)
    path = folder_paths.get_full_path("classifiers", name)
    if path is None:
        raise ValueError(f"classifier {name!r} not found under models/classifiers; refresh the page.")
    return path


def embeddings_dir() -> Path:
    import folder_paths

    return Path(folder_paths.get_folder_paths("embeddings")[0])


def embedding_choices() -> list[str]:
    import folder_paths

    files = folder_paths.get_filename_list("embeddings")
    return [f for f in files if Path(f).suffix in (".safetensors", ".pt", ".bin")]
