"""SIGINT and SIGTERM stop a run the same way: trials stop, the experiment state and the results are
saved (marked interrupted), and the process exits 130 / 143 (`api.exitcodes`); the next start resumes.

Ray Tune handles only SIGINT (and SIGUSR1), and `ray.init()` replaces the SIGTERM handler with one that
exits at once, which aborts the driver mid-step (no results file, exit 134). Here both signals go to one
handler; while Tune runs, the tracker then stops Tune's loop at its next step through the handler Tune
installs for SIGUSR1 (`stop_tune_loop`), and before that (Ray starting, storage being checked) the
handler raises `Interrupted`. A watchdog ends the
process with the same exit code when stopping takes longer than `grace_s`, well inside a pod's
30 s termination grace period; a second signal ends it at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

from kubetune.api import exitcodes

GRACE_ENV = "KUBETUNE_STOP_GRACE_SECONDS"
DEFAULT_GRACE_S = 20.0

EXIT_CODES = {signal.SIGINT: exitcodes.INTERRUPTED, signal.SIGTERM: exitcodes.TERMINATED}


class Interrupted(BaseException):
    """A stop signal arrived before Tune's loop was running (a BaseException, like KeyboardInterrupt)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def exit_code(signum: int) -> int:
    return EXIT_CODES.get(signum, 128 + signum)


class StopSignals:
    """Installs the handlers for SIGINT and SIGTERM (main thread only) for the duration of a run.

    `received` is the first signal's number. Call `install()` again after `ray.init()`, which
    replaces the SIGTERM handler.
    """

    def __init__(self, grace_s: float | None = None, on_signal: Any = None):
        self.grace_s = float(os.environ.get(GRACE_ENV) or DEFAULT_GRACE_S) if grace_s is None else grace_s
        self.on_signal = on_signal  # called with the signal name, e.g. to mark the tracker
        self.received: int | None = None
        # "before" Tune's loop (raise Interrupted), "tuning" (stop the loop gracefully), "after" (the
        # results are being written: let that finish; the run reports the signal)
        self.phase = "before"
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received).name if self.received else None

    def install(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in EXIT_CODES:
            current = signal.getsignal(signum)
            if current is not self._handle:
                self._previous.setdefault(signum, current)
                signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> "StopSignals":
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.restore()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # a second signal: do not wait any longer
            sys.stderr.write(f"kubetune: second {signal.Signals(signum).name}; stopping now without saving\n")
            sys.stderr.flush()
            os._exit(exit_code(self.received))
        self.received = signum
        self._start_watchdog()
        if self.on_signal is not None:
            self.on_signal(signal.Signals(signum).name)
        if self.phase == "before":
            raise Interrupted(signum)
        # While tuning, `on_signal` marks the tracker, which ends Tune's loop at its next step.

    def _start_watchdog(self) -> None:
        code = exit_code(self.received)  # type: ignore[arg-type]
        grace = self.grace_s

        def watchdog() -> None:
            time.sleep(grace)
            sys.stderr.write(f"kubetune: stopping took longer than {grace:g} s ({GRACE_ENV}); exiting\n")
            sys.stderr.flush()
            _kill_embedded_ray()
            os._exit(code)

        threading.Thread(target=watchdog, name="kubetune-stop-watchdog", daemon=True).start()


def _kill_embedded_ray() -> None:
    """Kill the Ray processes this process started (an embedded Ray), so none outlive a forced exit."""
    try:
        from ray._private import worker

        node = getattr(worker, "_global_node", None)
        if node is not None and getattr(node, "head", False):
            node.kill_all_processes(check_alive=False, allow_graceful=False)
    except Exception:  # best effort on the way out
        pass


def stop_tune_loop() -> bool:
    """Ask a running `Tuner.fit()` to stop after this step and save its state, as Ctrl-C would.

    Tune installs this handler for SIGUSR1 while its loop runs (main thread only); it sets the event
    its loop checks. Returns False when no such handler is installed.
    """
    handler = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
    if not callable(handler):
        return False
    handler(signal.SIGUSR1, None)
    return True
