"""A mismatch between ranks becomes an error naming the rank and the step, never a hang.

Every rank of a multi-process run makes the same collective calls (see
:mod:`ragr.families.forward`); a user's own family or loss can still break that, and then each rank
waits forever in a different collective. :class:`StepWatchdog` watches each micro-step (forward +
backward) and optimizer step: one that makes no progress for ``launcher.timeout_s`` seconds writes
``error-rank<N>.txt`` beside the launch (the parent prints it once) and ends the rank, so the
launcher stops the others. It is off in one process, where nothing can wait on another rank.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager

DEFAULT_TIMEOUT_S = 300.0


class StepWatchdog:
    """``with watchdog: ... with watchdog.step(step, micro): ...`` (see the module docstring)."""

    def __init__(self, timeout_s: float | None, rank: int, world: int) -> None:
        self.timeout = float(timeout_s) if timeout_s else 0.0
        self.rank, self.enabled = rank, world > 1 and self.timeout > 0
        self._started: float | None = None
        self._where = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StepWatchdog:
        if self.enabled:
            self._thread = threading.Thread(target=self._watch, name="ragr-step-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    @contextmanager
    def step(self, step: int, micro):
        self._where = f"step {step} ({'the optimizer step' if micro == 'optimizer' else f'micro-batch {micro}'})"
        self._started = time.monotonic()
        try:
            yield
        finally:
            self._started = None

    def message(self) -> str:
        return (f"rank {self.rank} made no progress in training {self._where} for {self.timeout:.0f} s: the ranks are "
                "waiting in different collective calls (a model called a different number of times, or a tensor of "
                "another shape, on some rank). The run was stopped instead of hanging; complete checkpoints are kept. "
                "If one step really takes this long, raise launcher.timeout_s.")

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            started = self._started
            if started is not None and time.monotonic() - started > self.timeout:
                self._fail()

    def _fail(self) -> None:
        text = self.message()
        launch_dir = os.environ.get("RAGR_LAUNCH_DIR")
        if launch_dir:
            try:
                os.makedirs(launch_dir, exist_ok=True)
                with open(os.path.join(launch_dir, f"error-rank{self.rank}.txt"), "w") as f:
                    f.write(text)
            except OSError:
                pass
        print(f"error: {text}", file=sys.stderr, flush=True)
        os._exit(3)
