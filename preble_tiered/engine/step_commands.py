"""Work other threads hand to the engine's step thread (vLLM is not thread-safe): callables
run between steps, each with an optional Future for its result."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_STOPPED = "the engine stopped"


class StepCommands:
    """A queue of commands for one step thread; `wake` is set on every submit so an idle
    step loop runs them at once."""

    def __init__(self, wake: threading.Event) -> None:
        self._lock = threading.Lock()
        self._queue: deque[tuple[Callable[[], Any], Future | None]] = deque()
        self._closed = False
        self._wake = wake

    def submit(self, fn: Callable[[], Any], fut: Future | None = None) -> None:
        """Queue `fn`; its result (or exception) goes to `fut`. After close(), `fut` fails
        at once with RuntimeError and `fn` never runs."""
        with self._lock:
            if not self._closed:
                self._queue.append((fn, fut))
                fut = None
        if fut is not None:
            fut.set_exception(RuntimeError(_STOPPED))
        self._wake.set()

    def call(self, fn: Callable[[], Any], timeout: float) -> Any:
        """Run `fn` on the step thread and return its result (from any other thread)."""
        fut: Future = Future()
        self.submit(fn, fut)
        return fut.result(timeout)

    def run(self) -> int:
        """Run what is queued (on the step thread); returns how many ran."""
        with self._lock:
            commands, self._queue = self._queue, deque()
        for fn, fut in commands:
            if fut is None:
                fn()
                continue
            try:
                fut.set_result(fn())
            except Exception as exc:
                fut.set_exception(exc)
        return len(commands)

    def close(self) -> None:
        """Refuse new commands and fail the queued ones' futures (the step thread stopped)."""
        with self._lock:
            self._closed = True
            commands, self._queue = self._queue, deque()
        for _fn, fut in commands:
            if fut is not None:
                fut.set_exception(RuntimeError(_STOPPED))
