"""The kubetune operator (kopf): TuneExperiment -> spec ConfigMap, RayCluster, driver Job, status.

Named `controller` so that it never shadows the standard library's `operator` module.

* `settings`  - one settings object from `KUBETUNE_*` environment variables;
* `builders`  - pure functions spec -> manifest dicts (no API calls);
* `phases`    - pure phase/condition logic: what the observed children mean for the status;
* `kube`      - the one adapter module that talks to the Kubernetes API;
* `reconcile` - one idempotent pass: observe (adapter) -> decide (phases) -> apply (adapter);
* `handlers`  - thin kopf handlers that call `reconcile`;
* `main`      - `kubetune operator`: runs kopf with the settings, a liveness probe and metrics.
"""
