"""Scheduling of model work: one model lock with prompt priority, time limits, cancellation.

All model work of a server process runs under one :class:`ModelLock` (one model copy, one
computation at a time, which is also the fastest on a CPU). Prompts (``POST /sam/``, a fraction
of a second each) must not wait behind an automask (seconds to minutes), so:

* a prompt waiting for the lock goes before every waiting automask;
* an automask runs in chunks (AIS: a batch of tiles; AMG: a batch of grid points) and between
  two chunks calls :meth:`Job.checkpoint`, which hands the lock to waiting prompts, stops the
  work when the request's time limit (``--max-request-seconds``) is over (503) and when its
  client has disconnected (:class:`ClientGone`, nothing is answered).

A prompt thus waits for at most one chunk of an automask. While a prompt runs, the paused
automask keeps its own reference to its model, so a prompt for another model may load that
one (briefly two models in memory) without disturbing it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import RequestError

__all__ = ["ClientGone", "Job", "ModelLock"]

#: Seconds between checks of a waiting request's deadline and client.
POLL_SECONDS = 0.05


class ClientGone(RequestError):
    """The client closed the connection: the work was stopped and nobody reads the answer
    (logged; answered 499, nginx's "client closed request", if anyone still listens)."""

    def __init__(self, what: str) -> None:
        super().__init__(499, f"client disconnected; {what} stopped")


class Job:
    """One request's model work: its time limit and whether its client is still there.

    Parameters
    ----------
    what : str
        Shown in messages (``"automask"``, ``"prompt"``).
    max_seconds : float or None
        Time limit from the start of the request (None or <= 0: none).
    """

    def __init__(self, what: str, max_seconds: float | None = None) -> None:
        self.what = what
        self.max_seconds = max_seconds if max_seconds and max_seconds > 0 else None
        self.started = time.monotonic()
        self.deadline = None if self.max_seconds is None else self.started + self.max_seconds
        self.gone = threading.Event()
        self.chunks = 0
        self._lock: ModelLock | None = None

    def check(self) -> None:
        """Raise :class:`ClientGone` or a 503 :class:`RequestError` when the work must stop."""
        if self.gone.is_set():
            raise ClientGone(self.what)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise RequestError(
                503, f"{self.what} stopped: it took longer than this server's limit of {self.max_seconds:g} s "
                f"(pathosam serve --max-request-seconds); send a smaller image region or ask the operator to "
                f"raise the limit")

    def checkpoint(self, *_args) -> None:
        """Between two chunks of work (holding the model lock): let waiting prompts run, then
        :meth:`check`. Accepts and ignores the arguments of the library's chunk callbacks."""
        self.chunks += 1
        self.check()
        if self._lock is not None:
            self._lock.yield_to_prompts()
        self.check()


class ModelLock:
    """A lock for model work where prompts go first (see the module docstring)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._prompts_waiting = 0

    @contextmanager
    def hold(self, job: Job | None = None, priority: bool = False) -> Iterator[None]:
        """Hold the lock for ``job`` (``priority``: a prompt). While waiting, the job's deadline and
        client are checked (:meth:`Job.check`); ``job.checkpoint`` may then yield to prompts."""
        self._acquire(job, priority)
        if job is not None and not priority:
            job._lock = self
        try:
            yield
        finally:
            if job is not None:
                job._lock = None
            self._release()

    def _acquire(self, job: Job | None, priority: bool) -> None:
        with self._cond:
            if priority:
                self._prompts_waiting += 1
            try:
                while self._busy or (not priority and self._prompts_waiting):
                    if job is not None:
                        job.check()
                    self._cond.wait(POLL_SECONDS)
                self._busy = True
            finally:
                if priority:
                    self._prompts_waiting -= 1
                    self._cond.notify_all()

    def _release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def yield_to_prompts(self) -> None:
        """Called by the holder between chunks: release the lock while prompts are waiting and
        take it back after them (never raises, so the holder still holds it afterwards)."""
        with self._cond:
            if not self._prompts_waiting:
                return
            self._busy = False
            self._cond.notify_all()
            while self._busy or self._prompts_waiting:
                self._cond.wait(POLL_SECONDS)
            self._busy = True
