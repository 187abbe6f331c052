"""Training: ONE loop for every method (loop.py: the steps), its configuration, model
selection (evaluation, best/, patience, final/, card), stages, the gradient cache,
checkpoints and exact resume, run folders, optimizer and signals."""

import sys as _sys
import types as _types


class _CallableModule(_types.ModuleType):
    """``contrasent.train(config, data=...)`` calls :func:`contrasent.train.python_api.train`
    while ``contrasent.train`` stays this package (its submodules import as before)."""

    def __call__(self, config, data=None, **kwargs):
        from contrasent.train.python_api import train

        return train(config, data, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
