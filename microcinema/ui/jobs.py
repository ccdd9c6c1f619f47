"""One long job (a video, a tuning run) on a worker thread: its events stream back to the web handler, and a
cancel request stops it at the next sampling step or training step.

The web handler iterates :func:`run_job`; the job calls ``job.emit(kind, payload)`` for what the page shows
(progress, a key frame, a streamed frame, a loss value) and ``job.raise_if_cancelled()`` between units of work;
:meth:`Job.step_callback` is a diffusers ``callback_on_step_end`` that does both. A cancelled job raises
:class:`Cancelled` inside the worker, so nothing half-made is saved as a run.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from microcinema.core.errors import MicroCinemaError


class Cancelled(MicroCinemaError):
    """The user cancelled the job."""

    def __init__(self) -> None:
        super().__init__("cancelled")


@dataclass
class Event:
    """What a job reports: ``kind`` (``"progress"``, ``"done"``, ``"error"`` or the job's own) and its payload."""

    kind: str
    payload: Any = None


@dataclass
class Job:
    """The state shared by a running job and the handler that streams it."""

    events: "queue.Queue[Event]" = field(default_factory=queue.Queue)
    cancel_requested: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancel_requested.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_requested.is_set()

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise Cancelled()

    def emit(self, kind: str, payload: Any = None) -> None:
        self.raise_if_cancelled()
        self.events.put(Event(kind, payload))

    def progress(self, fraction: float, description: str) -> None:
        self.emit("progress", (min(max(float(fraction), 0.0), 1.0), description))

    def step_callback(self, describe: Callable[[Any, int], tuple[float, str]] | None = None) -> Callable:
        """A ``callback_on_step_end(pipe, step, t, tensors)``: stops a cancelled job; with ``describe(pipe,
        step) -> (fraction, text)`` it also reports progress. Returns the tensors unchanged."""

        def callback(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
            self.raise_if_cancelled()
            if describe is not None:
                self.progress(*describe(pipe, step))
            return tensors

        return callback


def run_job(target: Callable[[Job], Any], job: Job | None = None, poll_seconds: float = 0.1) -> Iterator[Event]:
    """Run ``target(job)`` on a worker thread and yield its events, then ``Event("done", result)`` or
    ``Event("error", exception)`` (a :class:`Cancelled` one when it was cancelled). Closing the iterator early
    (the browser went away) cancels the job."""
    job = job or Job()

    def work() -> None:
        try:
            result = target(job)
        except BaseException as error:  # noqa: BLE001 - reported to the handler, which decides what to show
            job.events.put(Event("error", error))
        else:
            job.events.put(Event("done", result))

    thread = threading.Thread(target=work, name="microcinema-ui-job", daemon=True)
    thread.start()
    try:
        while True:
            try:
                event = job.events.get(timeout=poll_seconds)
            except queue.Empty:
                if not thread.is_alive() and job.events.empty():
                    return
                continue
            yield event
            if event.kind in ("done", "error"):
                return
    finally:
        if thread.is_alive():
            job.cancel()


class JobRegistry:
    """The running job of each browser session (so its cancel button stops that job and no other)."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> Job:
        job = Job()
        with self._lock:
            self._jobs[session] = job
        return job

    def finish(self, session: str, job: Job) -> None:
        with self._lock:
            if self._jobs.get(session) is job:
                del self._jobs[session]

    def cancel(self, session: str) -> bool:
        """Cancel the session's job; False when it has none running."""
        with self._lock:
            job = self._jobs.get(session)
        if job is None:
            return False
        job.cancel()
        return True


__all__ = ["Cancelled", "Event", "Job", "JobRegistry", "run_job"]
