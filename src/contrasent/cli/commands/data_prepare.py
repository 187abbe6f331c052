"""`contrasent data prepare`: raw documents -> sentences for training, a held-out file, a
documents file for DeCLUTR and a report (the work: :mod:`contrasent.data.prepare`)."""

from __future__ import annotations

from contrasent.data.prepare import PrepareConfig  # the options

__all__ = ["PrepareConfig", "run_prepare"]


def run_prepare(cfg: PrepareConfig) -> None:
    from contrasent.data.prepare import prepare, summary

    report = prepare(cfg)
    for line in summary(report):
        print(line)
