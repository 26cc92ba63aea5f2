class DCTError(Exception):
    """A user-facing error: the message says what was wrong and what to do."""
