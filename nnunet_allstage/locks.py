"""One training per fold folder at a time.

Two trainings of the same fold would overwrite each other's checkpoints without a word (stock nnU-Net has the same
gap). A run takes a lock file in its fold folder, naming its process; a second run finds it and stops with one line
naming the first. A lock whose process is gone (a killed run) is taken over. Locks are per machine: the process
check cannot see another host, so a lock from another host is refused (remove it by hand once that run is over).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from nnunet_allstage.errors import AllStageError

TRAINER_LOCK = ".nnunet_allstage_training.lock"  # held by a trainer in its own fold folder
PIPELINE_LOCK = ".nnunet_allstage_train_command.lock"  # held by `nnunet-allstage train` in the final stage's fold folder


def _process_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, Linux), which tells a recycled pid from the original."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(record: dict) -> bool:
    pid = int(record.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    started = record.get("process_start")
    return started is None or _process_start(pid) in (None, started)


class FoldLock:
    """``with FoldLock(folder, TRAINER_LOCK, 'training'):`` holds the lock; or ``acquire()`` / ``release()``."""

    def __init__(self, folder: str | os.PathLike, name: str, what: str):
        self.path = Path(folder) / name
        self.what = what
        self.held = False

    def acquire(self, log=print) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "process_start": _process_start(os.getpid()), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._take_over_if_stale(log)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            self.held = True
            return
        raise AllStageError(f"could not take the lock {self.path}")

    def _take_over_if_stale(self, log) -> None:
        try:
            other = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            other = {}  # a lock cut short while it was written: its writer died there
        if other.get("host", socket.gethostname()) != socket.gethostname():
            raise AllStageError(f"{self.path}: a {self.what} of this fold runs on host {other['host']} (pid "
                                f"{other.get('pid')}, since {other.get('since')}); wait for it, or delete the lock if "
                                f"that run is over")
        if other and _alive(other):
            raise AllStageError(f"another {self.what} of this fold is running (pid {other['pid']}, since "
                                f"{other.get('since')}: {other.get('command', '?')}); wait for it or stop it, then "
                                f"run again ({self.path})")
        log(f"note: taking over {self.path}, left by a {self.what} that is gone (pid {other.get('pid', '?')})")
        self.path.unlink(missing_ok=True)

    def check_free(self, log=print) -> None:
        """Refuses, as acquire would, while a live process holds the lock; takes nothing."""
        if self.path.is_file():
            self._take_over_if_stale(log)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "FoldLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
