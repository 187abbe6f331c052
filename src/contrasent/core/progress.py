"""Progress for train, eval, embed and compare: a tqdm bar on a terminal, plain lines in a file.

Under Slurm, nohup or CI stderr is a file: a tqdm bar there writes one carriage-return update
per step, and a long run leaves a single line of tens of kilobytes. :func:`progress` returns
the bar when stderr is a terminal, else a :class:`PlainProgress` with the same small interface
(``update``, ``set_postfix``, ``write``, ``close``, a context manager) that prints one ordinary
line every :func:`interval` seconds (``CONTRASENT_PROGRESS_S``, default 30): done/total, the
postfix numbers (loss, lr, ...), the rate and the ETA. A task shorter than one interval prints
nothing.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

DEFAULT_INTERVAL_S = 30.0


def interval() -> float:
    """Seconds between plain progress lines (``CONTRASENT_PROGRESS_S``)."""
    try:
        return max(0.0, float(os.environ.get("CONTRASENT_PROGRESS_S", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``12s``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class PlainProgress:
    """A progress report of plain lines, at most one per ``every`` seconds (see the module)."""

    def __init__(
        self,
        total: int | None,
        initial: int = 0,
        desc: str = "",
        unit: str = "it",
        every: float | None = None,
        stream: TextIO | None = None,
        disable: bool = False,
    ) -> None:
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.initial, self.disable = initial, disable
        self.every = interval() if every is None else every
        self.stream = stream
        self.postfix: dict[str, Any] = {}
        self.start = self.last = time.perf_counter()
        self.lines = 0
        self._printed_at: int | None = None  # the count of the last progress line

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = values

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if not self.disable and now - self.last >= self.every:
            self.last = now
            self._print(self.line(now))
            self._printed_at = self.n

    def line(self, now: float | None = None) -> str:
        """``train: step 40/150 (27%), loss 0.12, lr 2.0e-05, 1.3 step/s, elapsed 30s, ETA 1m25s``."""
        now = time.perf_counter() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = (self.n - self.initial) / elapsed
        done = (
            f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)"
            if self.total
            else str(self.n)
        )
        parts = [f"{self.desc}: {self.unit} {done}" if self.desc else f"{self.unit} {done}"]
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        parts.append(f"{rate:.3g} {self.unit}/s")
        parts.append(f"elapsed {duration(elapsed)}")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {duration((self.total - self.n) / rate)}")
        return ", ".join(parts)

    def write(self, text: str) -> None:
        self._print(text)

    def _print(self, text: str) -> None:
        stream = self.stream or sys.stderr
        print(text, file=stream, flush=True)
        self.lines += 1

    def close(self) -> None:
        """A last line, when the task was long enough to print any before."""
        if not self.disable and self.lines and self.n != self._printed_at:
            self._printed_at = self.n
            self._print(self.line())


def progress(
    total: int | None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    disable: bool = False,
    **tqdm_options: Any,
) -> Any:
    """A tqdm bar on a terminal, else :class:`PlainProgress` (same calls)."""
    if is_terminal():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable,
                    dynamic_ncols=True, **tqdm_options)  # fmt: skip
    return PlainProgress(total, initial, desc, unit, disable=disable)
