"""contrasent: turn a pretrained transformer plus text into a sentence encoder."""

from contrasent.core.errors import UserError
from contrasent.core.version import __version__

__all__ = ["Encoder", "UserError", "__version__", "train"]


def __getattr__(name: str):
    # Lazy import keeps `import contrasent` (and the CLI's --help) fast: torch loads on first use.
    if name == "Encoder":
        from contrasent.model.encoder import Encoder

        return Encoder
    if name == "train":  # contrasent.train(config, data=...): the package is callable
        import contrasent.train

        return contrasent.train
    raise AttributeError(name)
