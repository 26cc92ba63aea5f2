"""Jobs that run the method for a user: the one run path every front end trains through (``run``: plan, execute,
one policy for saved / kept elsewhere / cancelled / diverged), token libraries and datasets split over torchrun
ranks, and the demo on the built-in world. Jobs take plain values and never import the CLI or a host."""
