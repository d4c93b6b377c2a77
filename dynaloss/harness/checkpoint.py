"""Crash-safe checkpoints of a training run: everything that decides what happens next, written atomically.

A run killed at any moment and resumed from its checkpoint ends where the uninterrupted run ends: the file
holds the student, the teacher (DLN, teacher model, its optimizer and LSTM memory), the training optimizer,
the data stream's position, every random generator and the results so far. It is written to a temporary
file in the same folder, flushed to disk and then renamed over the old one, so the file on disk is always
either the previous complete checkpoint or the new complete one, never half of one.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dynaloss._state import check_finite_state

__all__ = ["RunCheckpoint", "Stateful", "load_saved", "restore_rng_state", "rng_state", "save_atomic"]


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


def load_saved(path: str | Path, what: str) -> Any:
    """``torch.load`` of a file the user named, with a one-line ``ValueError`` if it is not ``what`` (truncated,
    empty, another format) instead of torch's or pickle's traceback."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError, KeyError, IndexError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} is not {what} (torch.load failed: {reason[:200]})") from None


def save_atomic(payload: Any, path: str | Path) -> Path:
    """``torch.save(payload, path)`` such that ``path`` never holds a partial file, even after a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    # the rename itself must reach the disk too, or a power loss could bring back the old directory entry
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def rng_state() -> dict[str, Any]:
    """torch's (CPU and every CUDA device's), numpy's and Python's global generators, as plain values and tensors."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), position, has_gauss, cached],
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class RunCheckpoint:
    """Where a training run saves itself, how often, and whether it resumes from what is there.

    Args:
        path: the checkpoint file.
        every: save after every ``every``-th round (teacher round, or CE step) that changed something; a round
            that was skipped is never saved, so the file keeps the last good state (default: ``1``).
        resume: start from ``path`` if it exists (default: ``False``).
        write: whether this process writes (only rank 0 does in a distributed run; default: ``True``).
        config: the run's settings; resuming a checkpoint written with other settings raises ``ValueError``.
    """

    def __init__(
        self,
        path: str | Path,
        every: int = 1,
        *,
        resume: bool = False,
        write: bool = True,
        config: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        self.path, self.every, self.resume, self.write = Path(path), every, resume, write
        self.config = json.dumps(config or {}, sort_keys=True, default=str)
        self.rounds = 0  # rounds run so far, the resumed ones included

    def restore(self, parts: dict[str, Stateful]) -> dict[str, Any] | None:
        """Load ``parts`` and the RNGs from the file when resuming; returns the run's own saved values, or ``None``."""
        if not (self.resume and self.path.is_file()):
            return None
        payload = load_saved(self.path, "a dynaloss train checkpoint")
        if not isinstance(payload, dict) or not {"config", "parts", "rng", "rounds", "run"} <= payload.keys():
            raise ValueError(f"{self.path} is not a dynaloss train checkpoint (it holds {type(payload).__name__})")
        check_finite_state(payload["parts"], f"checkpoint {self.path}")
        if payload["config"] != self.config:
            raise ValueError(
                f"{self.path} was written by a run with other settings; resume with the same arguments.\n"
                f"  saved: {payload['config']}\n  now:   {self.config}"
            )
        for name, part in parts.items():
            part.load_state_dict(payload["parts"][name])
        restore_rng_state(payload["rng"])
        self.rounds = payload["rounds"]
        return payload["run"]

    def after_round(self, parts: dict[str, Stateful], run: dict[str, Any], changed: bool) -> bool:
        """Count a round and save on every ``every``-th one that ``changed`` the run; returns whether it saved."""
        self.rounds += 1
        if not (changed and self.write and self.rounds % self.every == 0):
            return False
        payload = {
            "config": self.config,
            "rounds": self.rounds,
            "parts": {name: part.state_dict() for name, part in parts.items()},
            "rng": rng_state(),
            "run": run,
        }
        save_atomic(payload, self.path)
        return True
