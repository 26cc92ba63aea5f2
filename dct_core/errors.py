from __future__ import annotations

from pathlib import Path


class DCTError(Exception):
    """A user-facing error: the message says what was wrong and what to do."""


class TokenSaveError(DCTError):
    """A trained token could not be saved where asked; ``fallback_path`` is where it was kept (None: nowhere)."""

    def __init__(self, message: str, fallback_path: Path | None = None):
        super().__init__(message)
        self.fallback_path = fallback_path
