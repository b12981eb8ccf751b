"""Crash-safe checkpoint directories: write, swap into place, and recover after a kill at any instant.

A checkpoint ``D`` (e.g. ``runs/RUN/latest``) is replaced in four moves:

1. everything is written to ``D.tmp``, each file fsynced, then the marker ``COMPLETE`` (holding the step) last;
2. the current ``D`` is renamed to ``D.old``;
3. ``D.tmp`` is renamed to ``D``;
4. ``D.old`` is discarded: its marker is removed first, then the rest.

A process killed between any two of those instructions leaves at least one *complete* checkpoint among ``D``,
``D.tmp`` and ``D.old`` (complete = the marker is there; it is written after everything else and removed before
anything else). :func:`recover` — called before a checkpoint is read — puts the newest complete one back at ``D``
and removes the others, so a resume never falls back to the base model while a complete checkpoint exists, and no
half-deleted directory outlives the next resume or save.

Directories written before the marker existed are recognised by their files (``trainer_state.json``, optimizer,
RNG, weights), so a run saved by an older version still resumes.

Tests inject a pause at each named point of the swap with ``AGENTRFT_TEST_CHECKPOINT_PAUSE=<point>`` (and
``AGENTRFT_TEST_CHECKPOINT_PAUSE_FILE``, a file created when the pause starts): the process then waits there
until it is killed (``AGENTRFT_TEST_CHECKPOINT_PAUSE_STEP``: only in the save of that step). Points: ``writing``
(in 1, the files written but not the marker), ``written`` (after 1), ``moved_old`` (after 2), ``replaced``
(after 3), ``discarding`` (in 4, after the marker of ``D.old`` is gone and half of its files are deleted).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

MARKER = "COMPLETE"
PAUSE_ENV = "AGENTRFT_TEST_CHECKPOINT_PAUSE"
PAUSE_FILE_ENV = "AGENTRFT_TEST_CHECKPOINT_PAUSE_FILE"
PAUSE_STEP_ENV = "AGENTRFT_TEST_CHECKPOINT_PAUSE_STEP"
POINTS = ("writing", "written", "moved_old", "replaced", "discarding")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (the previous one at that path is intact)."""

    def __str__(self) -> str:
        return str(self.args[1]) if len(self.args) > 1 else super().__str__()


def _pause_wanted(point: str, step: int | None) -> bool:
    want = os.environ.get(PAUSE_STEP_ENV)
    return os.environ.get(PAUSE_ENV) == point and (want is None or str(step) == want)


def _pause(point: str, step: int | None = None) -> None:
    """Test hook: wait here forever (until killed) when the environment asks for a pause at ``point`` (and, with
    ``AGENTRFT_TEST_CHECKPOINT_PAUSE_STEP``, only while saving that step)."""
    if not _pause_wanted(point, step):
        return
    flag = os.environ.get(PAUSE_FILE_ENV)
    if flag:
        Path(flag).write_text(point)
    while True:
        time.sleep(3600)


def _fsync_path(p: Path) -> None:
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            _fsync_path(Path(dirpath) / f)
        _fsync_path(Path(dirpath))


def _legacy_complete(d: Path) -> bool:
    """A directory from before the marker: complete when every file a resume reads is there."""
    need = ["trainer_state.json", "optimizer.pt", "rng.pt"]
    if not all((d / n).is_file() for n in need):
        return False
    if (d / "adapter_config.json").is_file():
        return (d / "adapter_model.safetensors").is_file()
    if not (d / "config.json").is_file():
        return False
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        return all((d / s).is_file() for s in shards)
    return (d / "model.safetensors").is_file()


def is_complete(d: Path) -> bool:
    """Whether ``d`` holds a whole checkpoint (its marker, or all the files of a pre-marker checkpoint)."""
    d = Path(d)
    if not d.is_dir():
        return False
    if (d / MARKER).is_file():
        return True
    # a new-style directory without its marker is unfinished or being deleted; a legacy one never had one
    return not (d / ".agentrft-checkpoint").exists() and _legacy_complete(d)


def checkpoint_step(d: Path) -> int:
    """The step a complete checkpoint holds (-1 when it does not say)."""
    for name in (MARKER, "trainer_state.json"):
        try:
            v = json.loads((Path(d) / name).read_text()).get("step")
            if isinstance(v, int):
                return v
        except (OSError, ValueError, AttributeError):
            continue
    return -1


def discard(d: Path, step: int | None = None) -> None:
    """Delete a checkpoint directory so that a kill half-way never leaves something that looks complete: the
    marker goes first (and legacy directories lose ``trainer_state.json`` first)."""
    d = Path(d)
    if not d.exists() and not d.is_symlink():
        return
    if d.is_dir() and not d.is_symlink():
        (d / ".agentrft-checkpoint").touch(exist_ok=True)  # no longer "legacy complete" either
        for name in (MARKER, "trainer_state.json"):
            try:
                (d / name).unlink()
            except FileNotFoundError:
                pass
        if _pause_wanted("discarding", step):
            files = sorted(p for p in d.iterdir() if p.is_file() and p.name != ".agentrft-checkpoint")
            for p in files[: len(files) // 2]:
                p.unlink()
            _pause("discarding", step)
        shutil.rmtree(d, ignore_errors=True)
        if d.exists():  # something in it could not be removed: say so
            shutil.rmtree(d)
    else:
        d.unlink()


def _siblings(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")


def recover(path: str | os.PathLike) -> Path | None:
    """Make ``path`` the newest complete checkpoint among ``path``, ``path.tmp`` and ``path.old`` (whatever a kill
    mid-swap left), discard the rest, and return ``path`` — or None when there is no complete one."""
    path = Path(path)
    tmp, old = _siblings(path)
    # on equal steps prefer the one already in place, then the finished new one, then the old one
    ranked = [(checkpoint_step(p), -i, p) for i, p in enumerate((path, tmp, old)) if is_complete(p)]
    if not ranked:
        for p in (tmp, old):  # never complete: debris of a killed write or delete (`path` is left as it is)
            if p.exists():
                discard(p)
        return None
    best = max(ranked)[2]
    if best != path:
        if path.exists():
            discard(path)
        os.replace(best, path)
        _fsync_path(path.parent)
    for p in (tmp, old):
        if p.exists():
            discard(p)
    return path


def write_atomically(path: str | os.PathLike, write: Callable[[Path], Any], *, step: int | None = None) -> Path:
    """Write a checkpoint directory at ``path`` with ``write(tmp_dir)`` and swap it into place crash-safely (see the
    module docstring). ``step`` is recorded in the marker so :func:`recover` can pick the newest."""
    path = Path(path)
    tmp, old = _siblings(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # leftovers of a killed swap: keep the newest complete checkpoint at `path` before touching anything
    if tmp.exists() or old.exists():
        recover(path)
    try:
        tmp.mkdir()
        (tmp / ".agentrft-checkpoint").touch()
        write(tmp)
        _fsync_tree(tmp)
        _pause("writing", step)
        marker = tmp / MARKER
        with open(marker, "w") as f:
            json.dump({"step": step}, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(tmp)
    except Exception as e:  # a full disk (safetensors raises its own error type for it), no permission, …
        discard(tmp)  # the partial copy goes: it would only hold the disk full; `path` is untouched
        raise CheckpointWriteError(getattr(e, "errno", None) or 0,
                                   f"cannot write checkpoint {path}: {type(e).__name__}: {e}") from e
    _pause("written", step)
    if path.exists():
        os.replace(path, old)
        _pause("moved_old", step)
    os.replace(tmp, path)
    _fsync_path(path.parent)
    _pause("replaced", step)
    if old.exists():
        discard(old, step)
    return path
