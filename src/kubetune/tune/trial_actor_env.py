"""Trial actors without Tune's runtime environment on the embedded Ray, where it would change nothing.

Tune gives every trial actor a runtime environment (`env_vars`: its `PL_DISABLE_FORK=1` and the
driver's AWS and Ray Train variables, ray.tune.execution.class_cache). Ray then starts a worker
process with that environment for each trial actor, which took 0.3 s longer than one without, and
cannot give it the idle workers it started with itself (one per CPU, without it).

The workers of the embedded Ray that kubetune starts inherit the environment the driver had at
`ray.init`. While that environment already holds every variable Tune would send, trial actors are
registered without a runtime environment (`trial_actors_without_runtime_env`). `./dev bench` (16 trials
on 2 CPUs), the actor start in wall-equivalent seconds: 1.04 instead of 1.38 on a Ray that has no idle
workers left, 0.71 instead of 1.47 on a fresh one, whose first trials mostly get the workers Ray
started (11 runs of 11 alone; once in a loaded test session Ray started new ones anyway).
Connected to a cluster, Tune's way is kept.

(Importing Tune into Ray's workers as it starts them, `preload_python_modules`, saved 0.6 s more in
9 runs of 11; in the other 2 Ray started new workers for the trials (probably because its own were
still importing Tune), which left two idle workers holding Tune (about 114 MB each).)
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

# Tune sets it in every trial actor (it keeps PyTorch Lightning from forking); set before Ray starts,
# the workers Ray starts have it already.
ENV_DEFAULTS = {"PL_DISABLE_FORK": "1"}

# The embedded Ray this process started: (its node id, the environment its workers inherited).
_started: tuple[str, dict[str, str]] | None = None


def remember_started_ray() -> None:
    """Call right after `ray.init` started the embedded Ray: its workers inherit this environment."""
    import ray

    global _started
    _started = (ray.get_runtime_context().get_node_id(), dict(os.environ))


def _tune_env_vars() -> dict[str, str]:
    """The env_vars Tune gives a trial actor now (as ray.tune.execution.class_cache of the pinned Ray
    2.60.0 computes them)."""
    from ray.tune.execution.class_cache import DEFAULT_ENV_VARS, ENV_VARS_TO_PROPAGATE

    env = dict(DEFAULT_ENV_VARS)
    env.update({key: os.environ[key] for key in ENV_VARS_TO_PROPAGATE if key in os.environ})
    return env


def workers_have_tunes_env() -> bool:
    """True on the embedded Ray this process started while its workers' environment holds every
    variable Tune would give a trial actor."""
    import ray

    if _started is None or _started[0] != ray.get_runtime_context().get_node_id():
        return False
    inherited = _started[1]
    return all(inherited.get(key) == value for key, value in _tune_env_vars().items())


@contextlib.contextmanager
def trial_actors_without_runtime_env() -> Iterator[None]:
    """For the block: trial actor classes registered without Tune's runtime environment when it would
    change nothing (workers_have_tunes_env), so that Ray can give them the workers it started."""
    import ray

    try:
        from ray.tune.execution.class_cache import DEFAULT_ENV_VARS, ENV_VARS_TO_PROPAGATE, _ActorClassCache  # noqa: F401
    except ImportError:  # another Ray than the pinned one: Tune's own way
        yield
        return
    tunes_get = _ActorClassCache.get

    def get(cache: _ActorClassCache, trainable_cls: type):
        if trainable_cls not in cache._cache and workers_have_tunes_env():
            cache._cache[trainable_cls] = ray.remote(trainable_cls)
        return tunes_get(cache, trainable_cls)  # Tune's registration when it is not there yet

    _ActorClassCache.get = get
    try:
        yield
    finally:
        _ActorClassCache.get = tunes_get
