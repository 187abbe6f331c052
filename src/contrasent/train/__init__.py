"""Training: ONE loop for every method (loop.py: the steps), its configuration, model
selection (evaluation, best/, patience, final/, card), stages, the gradient cache,
checkpoints and exact resume, run folders, optimizer and signals."""
