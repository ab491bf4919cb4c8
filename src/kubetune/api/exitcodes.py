"""Exit codes shared by `kubetune run`, the driver and the operator (which reads them off a driver pod).

They are distinct so that a Job can fail at once on an outcome that a retry cannot change (a bad spec,
a search whose every trial failed) and retry only a crash. 1 is what an uncaught Python exception gives.
"""

OK = 0
CRASHED = 1  # an uncaught error: retrying may help (a lost node, a flaky endpoint)
BAD_SPEC = 2  # the spec cannot run as written (invalid, infeasible, unknown entrypoint): never retry
ALL_TRIALS_FAILED = 3  # the search ran to its end and every trial errored: never retry
INTERRUPTED = 130  # SIGINT: state and results saved, the next start resumes
TERMINATED = 143  # SIGTERM (pod deleted, evicted, preempted): state and results saved, resumable

# Exit codes on which a retry cannot change the outcome (the driver Job's podFailurePolicy fails on them).
FINAL = (BAD_SPEC, ALL_TRIALS_FAILED)

# Where the driver writes one line saying why it stopped; Kubernetes copies it into the pod's
# terminated state (`terminationMessagePath`), and the operator puts it in the status.
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
