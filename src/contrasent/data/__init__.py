"""Training data: typed batches, readers, exactly resumable streams, and the data kinds a recipe
names (``data.kind``; :mod:`contrasent.data.registry`, one module per kind under ``kinds/``);
also the SentEval folder's readers shared with evaluation (:mod:`contrasent.data.senteval`)."""

# Every data kind is registered as soon as any part of the package is imported.
from contrasent.data import kinds as _kinds  # noqa: F401
