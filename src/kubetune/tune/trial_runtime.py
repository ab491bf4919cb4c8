"""What runs inside a trial's actor: the user's entrypoint in a clean, reusable process.

Ray Tune starts a fresh actor per trial by default, which costs about 1.4 s a trial on a small
machine. kubetune reuses actors (`reuse_actors=True`) and instead makes each trial start clean:
the user's modules are imported afresh (so module globals start over), and the environment,
working directory, sys.path, root logging handlers, RNG seeds and torch's global switches are
restored after every trial.

Every new actor imports this module to run its first trial, so it imports only the standard
library and `kubetune.trial`: not the spec model (pydantic), which added ~0.4 s to each actor's start
(`bench/run.py` attributes the time). The driver-side builder is kubetune.tune.trainable.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib
import logging
import os
import sys
import sysconfig
import threading
from dataclasses import replace
from typing import Any, Callable, Iterator

from kubetune import trial

_LIBRARY_ROOTS = tuple(
    {p for p in (sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")) if p}
)


class MissingEntrypoint(Exception):
    """The entrypoint's module imported, but has no such attribute."""


def load_entrypoint(entrypoint: str) -> Any:
    """"pkg.module:function" -> the attribute (the module's import errors, or MissingEntrypoint)."""
    module_name, _, attr = entrypoint.partition(":")
    module = importlib.import_module(module_name)
    fn = getattr(module, attr, None)
    if fn is None:
        raise MissingEntrypoint(f"module {module_name!r} has no function {attr!r}")
    return fn


def _is_user_module(module: Any, user_package: str) -> bool:
    """User code is re-imported per trial; libraries (stdlib, site-packages, kubetune) are kept."""
    name = getattr(module, "__name__", "") or ""
    if name.split(".")[0] == user_package:
        return True
    if name == "kubetune" or name.startswith("kubetune."):
        return False
    file = getattr(module, "__file__", None)
    if not file:
        return False
    file = os.path.abspath(file)
    return not any(file.startswith(root) for root in _LIBRARY_ROOTS)


# Modules found to be libraries, by name: a library module stays loaded, so each trial's end looks only
# at the modules it has not seen (classifying all ~1,700 of an actor's modules by path took 3-4 ms a trial).
_KNOWN_LIBRARIES: dict[str, Any] = {}


def _forget_user_modules(user_package: str) -> None:
    prefix = user_package + "."
    for name, module in list(sys.modules.items()):
        if _KNOWN_LIBRARIES.get(name) is module and not (name == user_package or name.startswith(prefix)):
            continue
        if _is_user_module(module, user_package):
            del sys.modules[name]
        else:
            _KNOWN_LIBRARIES[name] = module


def _restore_environ(saved: dict[str, str]) -> None:
    """Put os.environ back as `saved`, touching only what changed (each change is a putenv/unsetenv)."""
    for key in [k for k in os.environ if k not in saved]:
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


@contextlib.contextmanager
def isolated(user_package: str) -> Iterator[None]:
    """Run one trial so that nothing it changes at process level reaches the next trial."""
    environ = dict(os.environ)
    cwd = os.getcwd()
    path = list(sys.path)
    root_handlers = list(logging.getLogger().handlers)
    torch_state = _torch_globals()
    try:
        yield
    finally:
        _restore_environ(environ)
        with contextlib.suppress(OSError):
            os.chdir(cwd)
        sys.path[:] = path
        logging.getLogger().handlers[:] = root_handlers
        _forget_user_modules(user_package)
        _restore_torch_globals(torch_state)


def _torch_globals() -> dict[str, Any] | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return {
        "threads": torch.get_num_threads(),
        "dtype": torch.get_default_dtype(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


def _restore_torch_globals(state: dict[str, Any] | None) -> None:
    torch = sys.modules.get("torch")
    if torch is None:
        return
    # Each switch only when the trial changed it: the first use_deterministic_algorithms() call imports
    # ~900 of torch's modules (1.7 s), which a trial that never touched it should not pay for.
    if state is not None:
        if torch.get_num_threads() != state["threads"]:
            torch.set_num_threads(state["threads"])
        if torch.get_default_dtype() != state["dtype"]:
            torch.set_default_dtype(state["dtype"])
        if torch.are_deterministic_algorithms_enabled() != state["deterministic"]:
            torch.use_deterministic_algorithms(state["deterministic"])
    if torch.cuda.is_available():
        # A full collection takes ~60 ms (too much per CPU trial), but on a GPU it returns the memory
        # a previous trial's reference cycles still hold before the next trial allocates.
        gc.collect()
        torch.cuda.empty_cache()


def trial_seed(experiment_seed: int | None, trial_id: str) -> int:
    """A per-trial seed: derived from the experiment seed (reproducible) or fresh entropy."""
    if experiment_seed is None:
        return int.from_bytes(os.urandom(4), "little")
    digest = hashlib.sha256(f"{experiment_seed}:{trial_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


# Entries into Ray's _TrainSession.get_next (the driver asking a trial for its next result), counted
# per trial (a reused actor's session gets a new result queue for each trial) from the very first
# one: the class is wrapped when a trial's actor loads this module, before any session exists.
_ASKED = threading.Condition()


def _count_requests() -> None:
    try:
        from ray.train._internal.session import _TrainSession
    except ImportError:
        return
    original = getattr(_TrainSession, "get_next", None)
    if original is None or getattr(original, "kubetune_counts", False):
        return

    def get_next(self: Any) -> Any:
        with _ASKED:
            queue, asked = self.__dict__.get("_kubetune_asked", (None, 0))
            self.__dict__["_kubetune_asked"] = (self.result_queue, asked + 1 if queue is self.result_queue else 1)
            _ASKED.notify_all()
        return original(self)

    get_next.kubetune_counts = True  # type: ignore[attr-defined]
    _TrainSession.get_next = get_next


def _requests(session: Any) -> int:
    queue, asked = session.__dict__.get("_kubetune_asked", (None, 0))
    return asked if queue is session.result_queue else 0


def pipeline_results(ctx: trial.TrialContext, session: Any = None) -> None:
    """Let this trial compute its next iteration while the driver handles its last result.

    Tune's function trainables report synchronously: after each result the training thread waits
    until the driver has run its callbacks and the scheduler, and asked for the next result (two Ray
    messages and the driver's work, idle time for the trial on every iteration). Ray's session also
    has an asynchronous mode, where the thread goes on as soon as the actor has handed its result to
    the driver. kubetune uses it when the experiment says where a decision can come
    (kubetune.tune.space.result_pipelining): after a result in `ctx.hold_at` or from `ctx.hold_from`
    on, the thread waits for the driver's next request, as Tune's would, or for the stop. Called in
    the training thread before the trainable runs; changes nothing when Ray's session lacks a part.
    """
    if session is None:
        try:
            from ray.train._internal.session import get_session
        except ImportError:
            return
        session = get_session()
    needed = ("synchronous_result_reporting", "_report_training_result", "stop_event", "result_queue")
    if session is None or not all(hasattr(session, n) for n in needed) or \
            not getattr(type(session).get_next, "kubetune_counts", False):
        return
    # A reused actor keeps its session object: wrap Ray's own method once, not the last trial's wrapper.
    report = session.__dict__.setdefault("_kubetune_report", session._report_training_result)
    reported = {"queue": session.result_queue, "count": 0}

    def report_then_maybe_hold(result: Any) -> None:  # the training thread
        report(result)  # returns once the actor has handed this result to the driver
        if reported["queue"] is not session.result_queue:  # a later trial on this actor
            reported.update(queue=session.result_queue, count=0)
        reported["count"] += 1
        if _is_function_end(result) or not _holds_after(ctx, max(trial.iteration(), reported["count"])):
            return
        with _ASKED:  # wait for the driver's next request, which comes only if the trial goes on
            while _requests(session) <= reported["count"]:
                if session.stop_event.is_set():  # the driver stopped the trial at this result
                    session.stop_event.clear()
                    sys.exit(0)  # how Ray's own session ends a stopped trial's thread
                _ASKED.wait(0.05)

    session._report_training_result = report_then_maybe_hold
    session.synchronous_result_reporting = False


def _holds_after(ctx: trial.TrialContext, iteration: int) -> bool:
    return iteration in ctx.hold_at or (ctx.hold_from is not None and iteration >= ctx.hold_from)


def _is_function_end(result: Any) -> bool:
    """Tune's last result of a function that returned (RESULT_DUPLICATE): nothing follows it."""
    return "__duplicate__" in (getattr(result, "metrics", None) or {})


def trial_function(entrypoint: str, base_context: trial.TrialContext,
                   parameter_names: list[str]) -> Callable[[dict[str, Any]], None]:
    """The function Tune runs for every trial: the entrypoint, isolated, with the trial's context bound.

    The driver has imported and checked the entrypoint (kubetune.tune.trainable.import_entrypoint).
    """
    user_package = entrypoint.split(":")[0].split(".")[0]

    def run_trial(config: dict[str, Any]) -> None:
        from ray import tune

        trial_id = tune.get_context().get_trial_id() or ""
        with isolated(user_package):
            ctx = replace(base_context, trial_id=trial_id, seed=trial_seed(base_context.seed, trial_id))
            trial.bind(ctx)
            if ctx.pipelined:
                pipeline_results(ctx)
            trial.seed_everything()
            fn = load_entrypoint(entrypoint)
            tracked = trial.ReadTrackingConfig(config)
            trial.watch_config(tracked, parameter_names)
            try:
                fn(tracked)
            finally:
                trial.watch_config(None)

    # Trial names read "train_<id>" rather than "run_trial_<id>".
    run_trial.__name__ = run_trial.__qualname__ = entrypoint.split(":")[1]
    return run_trial


# In a trial's actor Ray's session module is loaded before this one (the trainable's class, which
# refers to this module, derives from Tune's FunctionTrainable); elsewhere nothing needs the count.
if "ray.train._internal.session" in sys.modules:
    _count_requests()
