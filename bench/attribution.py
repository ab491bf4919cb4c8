"""Where a Tune run's time above the minimum goes, measured by timing wrappers around Ray Tune.

`Attribution()` is a context manager the bench puts around one experiment (plain Tune or kubetune's
driver). While it is active it wraps, in this process only:

- Tune's CallbackList, so every callback method (kubetune's ExperimentTracker and TrialObserver,
  Tune's own logger and reporter callbacks) is timed per callback class and method;
- the TuneController: actor started / reused, reset requested, each training result received, the
  experiment-state saves (`save_to_dir`) and `checkpoint()` (save plus upload), and `step()`;
- the actor manager: when an actor process is requested (resources acquired), and the time its
  `ray.wait` spends waiting for the next event.

From those timestamps it accounts for every CPU slot-second of the run (`cpus` x wall): the
minimum (the workload's own sleeps) and, for the overhead above it, actor start, trial reset, trial
setup up to the first result, the per-result round trip (of which the driver's callbacks and Tune's
result processing are measured on the driver), trial finish, slots left free between trials, before
the first and after the last trial. Slot-seconds / cpus are wall-equivalent seconds; they add up to
the run's overhead exactly (the "slots free between trials" row is what is left).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

DUPLICATE = "__duplicate__"  # ray.tune.result.RESULT_DUPLICATE
CALLBACK_HOOKS = ("setup", "on_step_begin", "on_step_end", "on_trial_start", "on_trial_restore", "on_trial_save",
                  "on_trial_result", "on_trial_complete", "on_trial_recover", "on_trial_error", "on_checkpoint",
                  "on_experiment_end")


@dataclass
class _Trial:
    requested: float | None = None  # a new actor's resources acquired and the actor created
    reset_requested: float | None = None  # a cached actor assigned, reset() sent
    started: float | None = None  # on_trial_start (actor ready, or reset done)
    results: list[float] = field(default_factory=list)  # when each iteration's result reached the driver
    completed: float | None = None


class Timers:
    """name -> [calls, seconds]."""

    def __init__(self) -> None:
        self.data: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])

    def add(self, name: str, seconds: float, calls: int = 1) -> None:
        entry = self.data[name]
        entry[0] += calls
        entry[1] += seconds

    def seconds(self, prefix: str = "") -> float:
        return sum(v[1] for k, v in self.data.items() if k.startswith(prefix))

    def calls(self, name: str) -> int:
        return int(self.data[name][0]) if name in self.data else 0


class Attribution:
    def __init__(self, cpus: int, sleep_s: float) -> None:
        self.cpus, self.sleep_s = cpus, sleep_s
        self.timers = Timers()
        self.trials: dict[str, _Trial] = defaultdict(_Trial)
        self._created: dict[Any, float] = {}  # tracked actor -> when it was created
        self._undo: list[Callable[[], None]] = []
        self.t0 = self.t_end = 0.0

    # -- wrapping

    def _patch(self, owner: Any, name: str, make: Callable[[Callable], Callable]) -> None:
        original = owner.__dict__[name] if name in owner.__dict__ else getattr(owner, name)
        setattr(owner, name, make(original))
        self._undo.append(lambda: setattr(owner, name, original))

    def sink(self, fn: Callable) -> Callable:
        """A tracker sink (the progress display), timed apart from the tracker that calls it."""

        def timed(snapshot):
            start = time.perf_counter()
            try:
                return fn(snapshot)
            finally:
                self.timers.add("sink", time.perf_counter() - start)

        return timed

    def __enter__(self) -> "Attribution":
        import ray
        from ray.air.execution._internal import actor_manager as am
        from ray.tune.callback import CallbackList
        from ray.tune.execution.tune_controller import TuneController

        timers, trials, created = self.timers, self.trials, self._created
        now = time.perf_counter

        def callback_hook(hook: str):
            def make(_original):
                def run_all(cl, **info):
                    for callback in cl._callbacks:
                        start = now()
                        try:
                            getattr(callback, hook)(**info)
                        finally:
                            timers.add(f"callback:{type(callback).__name__}.{hook}", now() - start)
                    if hook == "on_trial_complete" or hook == "on_trial_error":
                        trials[info["trial"].trial_id].completed = now()
                    elif hook == "on_trial_start":
                        trials[info["trial"].trial_id].started = now()

                return run_all

            return make

        for hook in CALLBACK_HOOKS:
            self._patch(CallbackList, hook, callback_hook(hook))

        def timed(name: str):
            def make(original):
                def wrapper(*args, **kwargs):
                    start = now()
                    try:
                        return original(*args, **kwargs)
                    finally:
                        timers.add(name, now() - start)

                return wrapper

            return make

        self._patch(TuneController, "step", timed("step"))
        self._patch(TuneController, "save_to_dir", timed("state:save"))
        self._patch(TuneController, "checkpoint", timed("state:checkpoint"))

        def on_result(original):
            def wrapper(controller, trial, result):
                received = now()
                # The result a function trainable sends when it returns repeats the last one: no iteration.
                iterations = [r for r in (result if isinstance(result, list) else [result]) if DUPLICATE not in r]
                trials[trial.trial_id].results.extend([received] * len(iterations))
                try:
                    return original(controller, trial, result)
                finally:
                    timers.add("tune:result", now() - received)

            return wrapper

        self._patch(TuneController, "_on_training_result", on_result)

        def reset(original):
            def wrapper(controller, trial, *args, **kwargs):
                trials[trial.trial_id].reset_requested = now()
                return original(controller, trial, *args, **kwargs)

            return wrapper

        self._patch(TuneController, "_schedule_trial_reset", reset)

        def actor_started(original):
            def wrapper(controller, tracked_actor, *args, **kwargs):
                trial = controller._actor_to_trial.get(tracked_actor)
                if trial is not None and tracked_actor in created:
                    trials[trial.trial_id].requested = created.pop(tracked_actor)
                return original(controller, tracked_actor, *args, **kwargs)

            return wrapper

        self._patch(TuneController, "_actor_started", actor_started)

        def try_start(original):
            def wrapper(manager, *args, **kwargs):
                before = set(manager._pending_actors_to_attrs)
                try:
                    return original(manager, *args, **kwargs)
                finally:
                    at = now()
                    for tracked_actor in before - set(manager._pending_actors_to_attrs):
                        created[tracked_actor] = at

            return wrapper

        self._patch(am.RayActorManager, "_try_start_actors", try_start)

        class _TimedRay:
            """The actor manager's `ray`, with `wait` timed (its waiting for the next event)."""

            def __getattr__(self, name: str) -> Any:
                return getattr(ray, name)

            @staticmethod
            def wait(*args, **kwargs):
                start = now()
                try:
                    return ray.wait(*args, **kwargs)
                finally:
                    timers.add("wait", now() - start)

        self._patch(am, "ray", lambda _original: _TimedRay())
        self.t0 = now()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.t_end = time.perf_counter()
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    # -- accounting

    def rows(self) -> list[tuple[str, float]]:
        """(component, wall-equivalent seconds) rows that add up to the run's overhead above its minimum."""
        cpus, sleep_s = self.cpus, self.sleep_s
        wall = self.t_end - self.t0
        trials = [t for t in self.trials.values() if t.started is not None]
        slot = defaultdict(float)  # slot-seconds per component
        occupied = 0.0
        first_use, last_done = self.t_end, self.t0
        for t in trials:
            begin = t.reset_requested if t.reset_requested is not None and (
                t.requested is None or t.reset_requested > t.requested) else t.requested
            begin = t.started if begin is None else begin
            end = t.completed if t.completed is not None else (t.results[-1] if t.results else t.started)
            first_use, last_done = min(first_use, begin), max(last_done, end)
            occupied += end - begin
            if begin == t.reset_requested:
                slot["reset"] += t.started - begin
            else:
                slot["actor start"] += t.started - begin
            if t.results:
                slot["setup"] += t.results[0] - t.started - sleep_s
                gaps = [b - a for a, b in zip(t.results, t.results[1:])]
                slot["round trip"] += sum(gaps) - sleep_s * len(gaps)
                slot["finish"] += end - t.results[-1]
        slot["before"] = cpus * (first_use - self.t0)
        slot["after"] = cpus * (self.t_end - last_done)
        slot["between"] = cpus * wall - occupied - slot["before"] - slot["after"]
        # Driver-side work done while a trial waits for its next train() call (measured on the driver).
        timers = self.timers
        on_result_callbacks = sum(v[1] for k, v in timers.data.items() if k.endswith(".on_trial_result"))
        kubetune_result = sum(v[1] for k, v in timers.data.items()
                              if k.endswith(".on_trial_result") and _is_kubetune(k))
        tune_result = timers.seconds("tune:result") - on_result_callbacks
        other_result_callbacks = on_result_callbacks - kubetune_result
        rt = slot["round trip"]
        rows = [
            ("before the first trial (Tuner setup)", slot["before"]),
            ("actor start (new actor processes)", slot["actor start"]),
            ("trial reset (reused actor)", slot["reset"]),
            ("trial setup up to its first result", slot["setup"]),
            ("per-result round trip, of which:", rt),
            ("  kubetune callbacks on results", kubetune_result),
            ("  Tune's logger/reporter callbacks", other_result_callbacks),
            ("  Tune's result processing", tune_result),
            ("  Ray messaging, report(), busy loop", rt - kubetune_result - other_result_callbacks - tune_result),
            ("trial finish (last result -> complete)", slot["finish"]),
            ("slots free between trials", slot["between"]),
            ("after the last trial (end, clean-up)", slot["after"]),
        ]
        return [(name, seconds / cpus) for name, seconds in rows]

    def driver_rows(self) -> list[tuple[str, int, float]]:
        """(component, calls, seconds) of the driver thread's time inside Tune's loop (step())."""
        t = self.timers
        kubetune = sum(v[1] for k, v in t.data.items() if k.startswith("callback:") and _is_kubetune(k))
        others = sum(v[1] for k, v in t.data.items() if k.startswith("callback:") and not _is_kubetune(k))
        sink = t.seconds("sink")
        saves = t.seconds("state:checkpoint")
        rows: list[tuple[str, int, float]] = []
        for name in sorted(k for k in t.data if k.startswith("callback:") and _is_kubetune(k)):
            calls, seconds = t.data[name]
            rows.append((f"  {name[len('callback:'):]}", int(calls), seconds))
        rows = [("kubetune callbacks, of which:", 0, kubetune),
                ("  progress display (sink)", t.calls("sink"), sink), *rows]
        rows.append(("Tune's callbacks, of which:", 0, others))
        per_class: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for name, (calls, seconds) in t.data.items():
            if name.startswith("callback:") and not _is_kubetune(name):
                entry = per_class[name[len("callback:"):].split(".")[0]]
                entry[0] += calls
                entry[1] += seconds
        rows += [(f"  {cls}", int(calls), seconds) for cls, (calls, seconds) in sorted(per_class.items())]
        rows += [
            ("experiment-state saves (save_to_dir)", t.calls("state:save"), t.seconds("state:save")),
            ("  checkpoint() incl. upload/wait", t.calls("state:checkpoint"), saves),
            ("Tune's own loop (rest of step())", t.calls("step"),
             t.seconds("step") - t.seconds("wait") - kubetune - others - saves),
            ("waiting for the next event (idle)", t.calls("wait"), t.seconds("wait")),
        ]
        return rows


def _is_kubetune(key: str) -> bool:
    return any(name in key for name in ("ExperimentTracker", "TrialObserver"))


@contextlib.contextmanager
def attributed(cpus: int, sleep_s: float) -> Iterator[Attribution]:
    with Attribution(cpus, sleep_s) as attribution:
        yield attribution
