"""Progress reports that suit where they are shown: tqdm's bar on a terminal, a few plain lines anywhere else.

A bar redrawn in place needs a terminal. Written to a log file, a CI log or a notebook cell, each redraw is one
more line; :func:`progress` then reports with :class:`LineProgress` instead, one line at every tenth of the
run. Every progress report of the harness, the benchmarks and the adapters goes through :func:`progress`.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, Protocol, TextIO

__all__ = ["LINES", "LineProgress", "Progress", "progress"]

LINES = 10  # lines a LineProgress writes over a whole run: one at every tenth


class Progress(Protocol):
    """What :func:`progress` returns: the part of tqdm's bar that the harness uses."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> Any: ...


class LineProgress:
    """One line on ``stream`` each time the count passes another tenth of ``total``: at most :data:`LINES` lines.

    Args:
        total: the count at which the run is done (``<= 0``: one line when it is closed).
        desc: what is counted, the start of every line.
        unit: the unit of the count (default: ``'step'``).
        initial: the count already done, e.g. by a resumed run (default: ``0``).
        stream: where the lines go (default: ``sys.stderr``).
    """

    def __init__(
        self, total: int, desc: str, *, unit: str = "step", initial: int = 0, stream: TextIO | None = None
    ) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.stream = stream
        self.postfix = ""
        self._shown = self._tenths()
        self._started = time.perf_counter()
        self._closed = False

    def _tenths(self) -> int:
        return LINES * self.n // self.total if self.total > 0 else 0

    def _write(self) -> None:
        seconds = time.perf_counter() - self._started
        note = f", {self.postfix}" if self.postfix else ""
        done = f"{self.n}/{self.total}" if self.total > 0 else f"{self.n}"
        print(f"{self.desc}: {done} {self.unit}s, {seconds:.0f} s{note}", file=self.stream or sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more; write a line if the count passed another tenth."""
        self.n += n
        tenths = self._tenths()
        if tenths > self._shown:
            self._shown = tenths
            self._write()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """The note the next line ends with."""
        self.postfix = s

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        """The note the next line ends with, as ``key=value`` pairs."""
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        """Write the last line if the run ended short of a tenth not yet reported (or has no total)."""
        if not self._closed and (self.total <= 0 or (self.n > 0 and self._shown < LINES and self.n < self.total)):
            self._write()
        self._closed = True

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class _Silent:
    """The report of a run that shows none."""

    def update(self, n: int = 1) -> None:
        return None

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        return None

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def progress(
    total: int,
    desc: str,
    *,
    unit: str = "step",
    enabled: bool = True,
    initial: int = 0,
    leave: bool = True,
    stream: TextIO | None = None,
) -> Progress:
    """A progress report of ``total`` units: tqdm's bar where ``stream`` is a terminal, else a :class:`LineProgress`.

    Use it as a context manager and call ``update(n)`` as the run advances.

    Args:
        total: the count at which the run is done.
        desc: the report's label.
        unit: the unit of the count (default: ``'step'``).
        enabled: ``False`` reports nothing (default: ``True``).
        initial: the count already done (default: ``0``).
        leave: whether tqdm's bar stays on the terminal once closed (default: ``True``).
        stream: where the report goes (default: ``sys.stderr``).
    """
    if not enabled:
        return _Silent()
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if not (callable(isatty) and isatty()):
        return LineProgress(total, desc, unit=unit, initial=initial, stream=stream)
    from tqdm.auto import tqdm

    bar: Progress = tqdm(
        total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=stream, dynamic_ncols=True
    )
    return bar
