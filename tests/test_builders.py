"""The operator's pure parts, without a cluster: settings, manifest builders, phases and conditions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kubetune.api.load import load_spec
from kubetune.api.status import Phase, Reason
from kubetune.controller import builders, phases
from kubetune.controller.settings import Settings, SettingsError, settings_table

ROOT = Path(__file__).resolve().parents[1]
NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"


def spec_of(**overrides):
    spec = {
        "trainable": {"entrypoint": "kubetune_trials.mnist:train", "config": {"dataset": "digits"}},
        "objective": {"metric": "mean_accuracy", "mode": "max"},
        "parameters": {"lr": {"loguniform": {"min": 0.001, "max": 0.1}}},
        "search": {"numSamples": 4},
    }
    spec.update(overrides)
    return load_spec(spec)


GPU_CLUSTER = {
    "head": {"cpu": "2", "memory": "8Gi", "nodeSelector": {"pool": "system"}},
    "workerGroups": [
        {"name": "gpu", "replicas": 1, "minReplicas": 0, "maxReplicas": 4, "cpu": "8", "memory": "32Gi", "gpu": 2,
         "nodeSelector": {"nvidia.com/gpu.present": "true"},
         "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        {"name": "amd", "replicas": 1, "gpu": 1, "gpuResource": "amd.com/gpu"},
    ],
    "enableAutoscaling": True,
}
S3 = {"uri": "s3://bucket/prefix", "endpoint": "http://minio:9000", "secretRef": "s3-credentials"}


# ---------------------------------------------------------------- settings


def test_settings_come_from_kubetune_variables_and_name_them_when_wrong():
    settings = Settings.from_env({"KUBETUNE_WATCH_NAMESPACES": "team-a, team-b", "KUBETUNE_DRIVER_BACKOFF_LIMIT": "5",
                                  "KUBETUNE_DELETE_RAY_CLUSTER_ON_FINISH": "false", "KUBETUNE_TRIAL_IMAGE": "me/trial:1"})
    assert settings.watch_namespaces == ("team-a", "team-b") and not settings.clusterwide
    assert settings.driver_backoff_limit == 5 and settings.delete_ray_cluster_on_finish is False
    assert settings.trial_image == "me/trial:1"
    assert Settings.from_env({}).clusterwide
    assert Settings.from_env({"KUBETUNE_WATCH_NAMESPACES": "x"}, watch_namespaces=("y",)).watch_namespaces == ("y",)
    with pytest.raises(SettingsError, match="KUBETUNE_PROBE_PORT"):
        Settings.from_env({"KUBETUNE_PROBE_PORT": "eighty"})
    with pytest.raises(SettingsError, match="KUBETUNE_DELETE_RAY_CLUSTER_ON_FINISH"):
        Settings.from_env({"KUBETUNE_DELETE_RAY_CLUSTER_ON_FINISH": "maybe"})
    with pytest.raises(SettingsError, match="KUBETUNE_RAY_AUTH_MODE"):
        Settings.from_env({"KUBETUNE_RAY_AUTH_MODE": "password"})


def test_the_operator_refuses_a_bad_setting_at_start_naming_it():
    import subprocess
    import sys

    kubetune = Path(sys.executable).parent / "kubetune"
    result = subprocess.run([str(kubetune), "operator"], env={"KUBETUNE_PROBE_PORT": "http", "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "KUBETUNE_PROBE_PORT='http'" in result.stderr


def test_every_setting_is_documented_in_the_operator_readme():
    readme = (ROOT / "operator" / "README.md").read_text()
    assert settings_table() in readme, "operator/README.md: paste the output of kubetune.controller.settings.settings_table()"
    deployment = (ROOT / "charts" / "kubetune" / "templates" / "deployment.yaml").read_text()
    for variable in re.findall(r"name: (KUBETUNE_\w+)", deployment):
        assert f"`{variable}`" in settings_table(), f"the chart's deployment.yaml sets {variable}, which is no setting"


# ---------------------------------------------------------------- names and labels


def test_names_are_derived_and_fit_kubernetes_limits():
    longest = "x" * 40  # the longest name the model accepts
    spec = spec_of()
    assert builders.ray_cluster_name(longest) == longest
    assert builders.head_service_name(longest) == f"{longest}-head-svc"
    # The Job controller names pods <job>-<5 chars> and labels them with the Job's name (<= 63).
    assert len(builders.driver_job_name(longest, spec)) + 6 <= 63
    assert builders.selector("exp", "driver") == "kubetune.io/experiment=exp,kubetune.io/component=driver"
    labels = builders.labels("exp", "head")
    assert labels["kubetune.io/experiment"] == "exp" and labels["kubetune.io/component"] == "head"
    assert labels["app.kubernetes.io/name"] == "kubetune" and labels["app.kubernetes.io/instance"] == "exp"


def test_a_run_is_the_spec_the_driver_reads():
    base = spec_of()
    same = [spec_of(suspend=True), spec_of(cleanup={"deleteRayClusterOnFinish": False}),
            spec_of(rayCluster={"workerGroups": [{"name": "more", "replicas": 3}]})]
    assert {builders.run_hash(s) for s in same} == {builders.run_hash(base)}
    assert builders.run_hash(spec_of(search={"numSamples": 8})) != builders.run_hash(base)


# ---------------------------------------------------------------- the children


def test_configmap_holds_the_normalised_spec_and_no_secret():
    spec = spec_of(storage=S3)
    cm = builders.build_configmap("exp", "ns", spec)
    assert cm["metadata"]["name"] == "exp-spec" and cm["metadata"]["labels"]["kubetune.io/component"] == "spec"
    assert json.loads(cm["data"]["spec.json"]) == {k: v for k, v in spec.dump().items() if k not in ("pods", "suspend", "cleanup")}
    assert json.loads(cm["data"]["spec.json"])["storage"]["secretRef"] == "s3-credentials"


def test_the_drivers_spec_leaves_out_what_only_the_operator_reads(tmp_path):
    """Issue #10: spec.json always carried `pods`, which a driver image from before it refused; what only
    the operator reads stays out, and the driver still gets every field it reads."""
    from kubetune.driver_main import load_driver_experiment

    spec = spec_of(storage=S3, suspend=False, cleanup={"deleteRayClusterOnFinish": False},
                   pods={"driver": {"annotations": {"team": "ml"}}},
                   rayCluster={"workerGroups": [{"name": "cpu", "replicas": 1, "cpu": "1", "memory": "3Gi"}]})
    data = json.loads(builders.spec_json(spec))
    assert not {"pods", "suspend", "cleanup"} & set(data)
    (tmp_path / "spec.json").write_text(builders.spec_json(spec))
    read = load_driver_experiment(str(tmp_path / "spec.json"), "exp", "ns").spec
    kept = ("pods", "suspend", "cleanup")
    assert {k: v for k, v in read.dump().items() if k not in kept} == {k: v for k, v in spec.dump().items() if k not in kept}
    assert read.ray_cluster.worker_groups[0].cpu == "1"  # the driver checks that trials fit the workers


def test_raycluster_has_head_worker_groups_gpus_scheduling_autoscaling_metrics_and_credentials_by_reference():
    settings = Settings(trial_image="me/trial:1", ray_metrics_port=8080)
    rc = builders.build_raycluster("exp", "ns", spec_of(rayCluster=GPU_CLUSTER, storage=S3), settings)
    assert (rc["apiVersion"], rc["kind"], rc["metadata"]["name"]) == ("ray.io/v1", "RayCluster", "exp")
    spec = rc["spec"]
    assert spec["rayVersion"] == "2.60.0" and spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == settings.autoscaler_idle_timeout_seconds
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "with workers, trials stay off the head"
    assert head["rayStartParams"]["metrics-export-port"] == "8080"
    head_pod = head["template"]["spec"]
    assert head_pod["nodeSelector"] == {"pool": "system"}
    head_container = head_pod["containers"][0]
    assert head_container["image"] == "me/trial:1"
    assert {p["name"]: p["containerPort"] for p in head_container["ports"]} == {
        "gcs-server": 6379, "dashboard": 8265, "client": 10001, "metrics": 8080}
    assert head["template"]["metadata"]["labels"]["kubetune.io/component"] == "head"

    gpu, amd = spec["workerGroupSpecs"]
    assert (gpu["groupName"], gpu["replicas"], gpu["minReplicas"], gpu["maxReplicas"]) == ("gpu", 1, 0, 4)
    resources = gpu["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "2"
    assert resources["limits"]["cpu"] == "8" and resources["limits"]["memory"] == "32Gi"
    assert gpu["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu["template"]["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert gpu["template"]["metadata"]["labels"]["kubetune.io/component"] == "worker"
    assert amd["template"]["spec"]["containers"][0]["resources"]["limits"]["amd.com/gpu"] == "1"

    for container in [head_container] + [g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]]:
        env = {e["name"]: e for e in container["env"]}
        assert env["AWS_ACCESS_KEY_ID"] == {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {
            "secretKeyRef": {"name": "s3-credentials", "key": "AWS_ACCESS_KEY_ID"}}}
        assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
        assert [e for e in container["env"] if "value" in e] == [{"name": "AWS_EC2_METADATA_DISABLED", "value": "true"}]


@pytest.mark.parametrize("storage, skipped", [
    ({"uri": "s3://bucket/x", "secretRef": "s3-credentials"}, True),  # keys from the Secret, on AWS S3 too
    ({"uri": "s3://bucket/x", "endpoint": "http://minio:9000"}, True),  # an S3-compatible store has no EC2
    ({"uri": "s3://bucket/x"}, False),  # AWS S3 without keys: the instance profile may be the only source
    ({"uri": "/tmp/results"}, False),
])
def test_every_pod_skips_the_ec2_metadata_service_unless_it_may_be_the_only_credential_source(storage, skipped):
    """Issue #10 point 3: the Ray pods build S3 clients too (trials, Ray's uploads); the driver's rule."""
    from kubetune.tune.storage import skip_instance_metadata

    spec = spec_of(rayCluster={"workerGroups": [{"name": "cpu", "replicas": 1}]}, storage=storage)
    rc = builders.build_raycluster("exp", "ns", spec, Settings())
    job = builders.build_driver_job("exp", "ns", spec, Settings())
    pods = [rc["spec"]["headGroupSpec"]["template"], rc["spec"]["workerGroupSpecs"][0]["template"], job["spec"]["template"]]
    for pod in pods:
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env.get("AWS_EC2_METADATA_DISABLED") == ("true" if skipped else None), (pod["metadata"]["labels"], env)
    # The same answer as the driver's own rule, given the environment these pods get.
    pod_env = {"AWS_ACCESS_KEY_ID": "k"} if "secretRef" in storage else {}
    assert skip_instance_metadata(spec.storage, pod_env) is skipped


def test_raycluster_without_workers_or_autoscaling_or_auth():
    rc = builders.build_raycluster("exp", "ns", spec_of(), Settings(ray_auth_mode="disabled"))
    assert "num-cpus" not in rc["spec"]["headGroupSpec"]["rayStartParams"], "no workers: trials run on the head"
    assert rc["spec"]["workerGroupSpecs"] == [] and "autoscalerOptions" not in rc["spec"]
    assert "authOptions" not in rc["spec"]
    assert rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"] == []


def test_raycluster_hash_follows_the_cluster_spec_only():
    settings = Settings()
    hash_of = lambda spec: builders.build_raycluster("exp", "ns", spec, settings)["metadata"]["annotations"]["kubetune.io/spec-hash"]
    assert hash_of(spec_of()) == hash_of(spec_of(search={"numSamples": 9}))
    assert hash_of(spec_of()) != hash_of(spec_of(rayCluster=GPU_CLUSTER))


def test_images_prefer_the_experiment_then_the_operator_default():
    settings = Settings(trial_image="default:1")
    own = spec_of(trainable={"entrypoint": "pkg.mod:fn", "image": "mine:2"})
    both = spec_of(trainable={"entrypoint": "pkg.mod:fn", "image": "mine:2"}, rayCluster={"image": "ray:3"})
    assert builders.ray_image(spec_of(), settings) == builders.driver_image(spec_of(), settings) == "default:1"
    assert builders.ray_image(own, settings) == builders.driver_image(own, settings) == "mine:2"
    assert (builders.ray_image(both, settings), builders.driver_image(both, settings)) == ("ray:3", "mine:2")


def test_driver_job_runs_kubetune_driver_on_the_mounted_spec_joining_the_head():
    settings = Settings(driver_backoff_limit=4, status_interval_seconds=2.5, trial_image="me/trial:1")
    job = builders.build_driver_job("exp", "ns", spec_of(storage=S3), settings)
    assert job["metadata"]["name"] == builders.driver_job_name("exp", spec_of(storage=S3))
    assert job["metadata"]["labels"]["kubetune.io/component"] == "driver"
    assert job["spec"]["backoffLimit"] == 4
    rules = job["spec"]["podFailurePolicy"]["rules"]
    # Bad spec (2) and every trial failed (3) fail at once; a crash (1) is retried, resuming from storage.
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "driver", "operator": "In", "values": [2, 3]}}
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "kubetune-driver"
    assert job["spec"]["template"]["metadata"]["labels"]["kubetune.io/component"] == "driver"
    container = pod["containers"][0]
    assert container["command"] + container["args"] == [
        "kubetune", "driver", "--spec", "/etc/kubetune/spec.json", "--name", "exp", "--namespace", "ns", "--patch-status"]
    assert container["volumeMounts"] == [{"name": "spec", "mountPath": "/etc/kubetune", "readOnly": True}]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert pod["volumes"] == [{"name": "spec", "configMap": {"name": "exp-spec"}}]
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_ADDRESS"]["value"] == "exp-head-svc:6379"
    assert env["KUBETUNE_JOIN_RAY_CLUSTER"]["value"] == "true"
    assert env["KUBETUNE_STATUS_INTERVAL"]["value"] == "2.5"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "exp", "key": "auth_token"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-credentials"


def test_cleanup_default_applies_only_when_the_experiment_does_not_say():
    keep = Settings(delete_ray_cluster_on_finish=False)
    assert builders.delete_ray_cluster_on_finish(spec_of(), keep) is False
    assert builders.delete_ray_cluster_on_finish(spec_of(), Settings()) is True
    assert builders.delete_ray_cluster_on_finish(spec_of(cleanup={"deleteRayClusterOnFinish": True}), keep) is True
    assert builders.delete_ray_cluster_on_finish(spec_of(cleanup={"deleteRayClusterOnFinish": False}), Settings()) is False


# ---------------------------------------------------------------- what children say


def rc_with(state=None, conditions=(), reason=None, deleting=False):
    status = {k: v for k, v in {"state": state, "reason": reason, "conditions": list(conditions)}.items() if v}
    meta = {"name": "exp", **({"deletionTimestamp": NOW} if deleting else {})}
    return {"metadata": meta, "status": status}


def cond(type_, status, reason="R", message=""):
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": NOW}


def test_raycluster_state_reads_kuberay():
    assert phases.raycluster_state(None).kind == "missing"
    assert phases.raycluster_state(rc_with(deleting=True)).kind == "deleting"
    assert phases.raycluster_state(rc_with()).kind == "pending"
    assert phases.raycluster_state(rc_with("ready")).kind == "ready"
    assert phases.raycluster_state(rc_with(None, [cond("HeadPodReady", "True")])).kind == "ready"
    # A restarted head: state stays "ready" and RayClusterProvisioned stays True, HeadPodReady says no.
    restarted = rc_with("ready", [cond("RayClusterProvisioned", "True"), cond("HeadPodReady", "False", message="head restarting")])
    assert phases.raycluster_state(restarted).kind == "pending" and "head restarting" in phases.raycluster_state(restarted).message
    failed = phases.raycluster_state(rc_with("failed", reason="exceeded quota: compute"))
    assert failed.kind == "failed" and failed.reason == "RayClusterFailed" and "exceeded quota" in failed.message
    replica = phases.raycluster_state(rc_with(None, [cond("RayClusterReplicaFailure", "True", "FailedCreateHeadPod", "forbidden")]))
    assert replica.kind == "pending" and "FailedCreateHeadPod: forbidden" in replica.message


def job_with(conditions=(), **status):
    return {"metadata": {"name": "exp-driver-1"}, "status": {**status, "conditions": list(conditions)}}


def test_job_state_reads_the_job_controller():
    assert phases.job_state(None).kind == "missing"
    assert phases.job_state(job_with([cond("Complete", "True")])).kind == "succeeded"
    failed = phases.job_state(job_with([cond("Failed", "True", "BackoffLimitExceeded", "Job has reached the specified backoff limit")]))
    assert failed.kind == "failed" and "BackoffLimitExceeded" in failed.message
    assert phases.job_state(job_with(active=1, ready=1)).kind == "running"
    starting = phases.job_state(job_with(active=1, failed=2))
    assert starting.kind == "pending" and "after 2 failed pod(s)" in starting.message


def driver_pod(phase="Running", container_state="running", job="exp-driver-1", deleting=False):
    meta = {"name": f"{job}-x", "labels": {"batch.kubernetes.io/job-name": job, "kubetune.io/component": "driver"}}
    if deleting:
        meta["deletionTimestamp"] = NOW
    return {"metadata": meta, "status": {"phase": phase, "containerStatuses": [
        {"name": "driver", "state": {container_state: {}}}]}}


def test_job_state_reads_a_running_driver_off_its_pod_before_the_job_counts_it_ready():
    """After an operator restart nothing but the cluster says what runs: the pod does, ready count or not."""
    job = job_with(active=1)
    assert phases.job_state(job, [driver_pod()]).kind == "running"
    assert phases.job_state(job, [driver_pod("Pending", "waiting")]).kind == "pending"
    assert phases.job_state(job, [driver_pod(deleting=True)]).kind == "pending"
    assert phases.job_state(job, [driver_pod(job="exp-driver-0")]).kind == "pending"  # another run's pod


def test_a_driver_that_exited_0_is_not_starting_while_the_job_completes():
    """Seen at the end of every experiment on a real cluster: the pod Succeeded, the Job is not yet Complete."""
    for job, pods in ((job_with(active=1), [driver_pod("Running", "terminated")]),
                      (job_with(active=0), [driver_pod("Succeeded", "terminated")]),
                      (job_with(active=0, succeeded=1), [])):
        for pod in pods:
            pod["status"]["containerStatuses"][0]["state"]["terminated"] = {"exitCode": 0}
        state = phases.job_state(job, pods)
        assert state.kind == "running" and "the driver finished" in state.message, (job, state)
    crashed = driver_pod("Running", "terminated")
    crashed["status"]["containerStatuses"][0]["state"]["terminated"] = {"exitCode": 1}
    assert phases.job_state(job_with(active=1), [crashed]).kind == "pending"


def test_a_condition_keeps_its_transition_time_while_its_status_holds():
    conditions = phases.set_condition([], "SpecValid", True, "Valid", "ok", NOW, 1)
    conditions = phases.set_condition(conditions, "SpecValid", True, "Valid", "still ok", LATER, 2)
    assert conditions == [{"type": "SpecValid", "status": "True", "reason": "Valid", "message": "still ok",
                           "lastTransitionTime": NOW, "observedGeneration": 2}]
    conditions = phases.set_condition(conditions, "SpecValid", False, "InvalidSpec", "bad", LATER, 3)
    assert conditions[0]["lastTransitionTime"] == LATER


def test_status_patch_carries_only_changes_and_clears_with_none():
    old = {"phase": "Succeeded", "completionTime": NOW, "trials": {"total": 2}}
    assert phases.status_patch(old, {"phase": "Succeeded", "completionTime": NOW}) == {}
    assert phases.status_patch(old, {"phase": "Provisioning", "completionTime": None}) == {
        "phase": "Provisioning", "completionTime": None}


# ---------------------------------------------------------------- plans


class World:
    """Applies a plan's actions to an in-memory namespace, as the API server would."""

    def __init__(self, spec, settings=None, **observed):
        self.spec, self.settings = spec, settings or Settings()
        self.status: dict = {}
        self.configmap = None
        self.raycluster = None
        self.jobs: dict[str, dict] = {}
        self.pods: list[dict] = observed.get("pods", [])
        self.sa = observed.get("sa", True)
        self.generation = 1

    def observation(self, now=NOW):
        jobs = list(self.jobs.values())
        current = builders.driver_job_name("exp", self.spec)
        return phases.Observation(
            name="exp", namespace="ns", uid="uid-1", generation=self.generation, status=dict(self.status), now=now,
            spec=self.spec, pods=list(self.pods),
            configmap=self.configmap, raycluster=self.raycluster, jobs=jobs,
            driver_service_account_exists=None if current in self.jobs else self.sa)

    def step(self, now=NOW):
        plan = phases.plan(self.observation(now), self.settings)
        for action in plan.actions:
            body = json.loads(json.dumps(action.body)) if action.body else None
            if action.verb.startswith("create_"):  # what kopf.adopt adds in reconcile.apply_action
                body["metadata"]["ownerReferences"] = [builders.owner_reference("exp", "uid-1")]
            if action.verb == "create_configmap":
                self.configmap = body
            elif action.verb == "patch_configmap":
                self.configmap["data"] = body["data"]
            elif action.verb == "create_raycluster":
                self.raycluster = body
            elif action.verb == "delete_raycluster":
                self.raycluster = None
            elif action.verb == "create_job":
                self.jobs[action.name] = body
            elif action.verb == "delete_job":
                self.jobs.pop(action.name)
        self.status.update({k: v for k, v in plan.status.items()})
        self.status = {k: v for k, v in self.status.items() if v is not None}
        return plan

    def verbs(self, plan):
        return [a.verb for a in plan.actions]


def condition(status, type_):
    return phases.get_condition(status, type_)


def test_plan_invalid_spec_fails_permanently_and_touches_nothing():
    from kubetune.api.errors import FieldIssue

    obs = phases.Observation(name="exp", namespace="ns", generation=1, status={}, now=NOW,
                             issues=[FieldIssue("spec.scheduler.maxT", "must be at least gracePeriod (5), got 2")])
    plan = phases.plan(obs, Settings())
    assert plan.actions == [] and plan.permanent and "spec.scheduler.maxT" in plan.permanent
    assert plan.status["phase"] == Phase.FAILED and "spec.scheduler.maxT" in plan.status["message"]
    assert condition(plan.status, "SpecValid")["reason"] == "InvalidSpec"
    assert [(t, r) for t, r, _ in plan.events] == [("Warning", "InvalidSpec")]
    # Seen again (e.g. after a restart): no second event.
    again = phases.plan(phases.Observation(name="exp", namespace="ns", generation=1, status=plan.status, now=LATER,
                                           issues=obs.issues), Settings())
    assert again.events == []


def test_plan_a_whole_life_is_idempotent_at_every_step():
    world = World(spec_of(storage=S3))
    plan = world.step()
    assert world.verbs(plan) == ["create_configmap", "create_raycluster"]
    assert condition(world.status, "StorageReady")["reason"] == "SecretReferenced"
    assert world.status["phase"] == Phase.PROVISIONING and world.status["startTime"] == NOW
    assert world.verbs(world.step()) == [], "the same observation plans nothing more"

    world.raycluster["status"] = {"state": "ready"}
    plan = world.step(LATER)
    assert world.verbs(plan) == ["create_job"] and world.status["phase"] == Phase.RUNNING
    assert world.verbs(world.step(LATER)) == []
    assert world.status["startTime"] == NOW

    job = next(iter(world.jobs.values()))
    job["status"] = {"active": 1, "ready": 1}
    world.step(LATER)
    assert condition(world.status, "DriverRunning")["status"] == "True"
    job["status"] = {"conditions": [cond("Complete", "True")], "succeeded": 1}
    plan = world.step(LATER)
    assert world.verbs(plan) == ["delete_raycluster"] and world.status["phase"] == Phase.SUCCEEDED
    assert world.status["completionTime"] == LATER
    assert condition(world.status, "Complete")["status"] == "True"
    assert world.verbs(world.step(LATER)) == [] and world.status["phase"] == Phase.SUCCEEDED


def test_plan_raised_num_samples_continues_a_finished_experiment():
    world = World(spec_of())
    world.step()
    world.raycluster["status"] = {"state": "ready"}
    world.step()
    old_job = next(iter(world.jobs))
    world.jobs[old_job]["status"] = {"conditions": [cond("Complete", "True")]}
    world.step()
    assert world.status["phase"] == Phase.SUCCEEDED and world.raycluster is None

    world.spec, world.generation = spec_of(search={"numSamples": 8}), 2
    plan = world.step(LATER)
    assert sorted(world.verbs(plan)) == ["create_raycluster", "delete_job", "patch_configmap"]
    assert world.status["phase"] == Phase.PROVISIONING and "completionTime" not in world.status
    assert [r for _, r, _ in plan.events] == ["Resumed"]
    assert json.loads(world.configmap["data"]["spec.json"])["search"]["numSamples"] == 8
    world.raycluster["status"] = {"state": "ready"}
    plan = world.step(LATER)
    assert world.verbs(plan) == ["create_job"] and old_job not in world.jobs
    assert world.status["driverJobName"] == next(iter(world.jobs))


def test_plan_the_new_driver_waits_for_the_old_one_to_stop():
    world = World(spec_of())
    world.step()
    world.raycluster["status"] = {"state": "ready"}
    world.step()
    job = next(iter(world.jobs.values()))
    world.jobs.clear()  # the Job was deleted by hand, its pod still runs
    obs = world.observation()
    obs.driver_pods = [{"metadata": {"name": "p", "labels": job["metadata"]["labels"]}, "status": {"phase": "Running"}}]
    plan = phases.plan(obs, world.settings)
    assert "create_job" not in world.verbs(plan)
    assert condition(plan.status, "DriverRunning")["reason"] == Reason.WAITING_FOR_PREVIOUS_DRIVER
    assert world.verbs(world.step()) == ["create_job"], "recreated once the pod is gone"


def test_plan_suspend_removes_cluster_and_driver_and_resume_starts_them_again():
    world = World(spec_of())
    world.step()
    world.raycluster["status"] = {"state": "ready"}
    world.step()
    world.spec = spec_of(suspend=True)
    plan = world.step()
    assert sorted(world.verbs(plan)) == ["delete_job", "delete_raycluster"] and world.status["phase"] == Phase.SUSPENDED
    assert world.configmap is not None
    world.spec = spec_of()
    plan = world.step(LATER)
    assert world.verbs(plan) == ["create_raycluster"] and [r for _, r, _ in plan.events] == ["Resumed"]
    assert world.status["startTime"] == NOW


def test_plan_failed_raycluster_and_failed_driver():
    world = World(spec_of(cleanup={"deleteRayClusterOnFinish": False}))
    world.step()
    world.raycluster["status"] = {"state": "failed", "reason": "exceeded quota"}
    plan = world.step()
    assert world.status["phase"] == Phase.FAILED and world.verbs(plan) == []
    assert condition(world.status, "RayClusterReady")["reason"] == "RayClusterFailed"
    assert [(t, r) for t, r, _ in plan.events] == [("Warning", "RayClusterFailed")]

    world = World(spec_of())
    world.step()
    world.raycluster["status"] = {"state": "ready"}
    world.step()
    next(iter(world.jobs.values()))["status"] = {"conditions": [cond("Failed", "True", "BackoffLimitExceeded")]}
    plan = world.step()
    assert world.status["phase"] == Phase.FAILED and world.verbs(plan) == ["delete_raycluster"]
    assert condition(world.status, "Complete")["reason"] == "DriverFailed"


def test_plan_goal_reached_and_missing_service_account():
    world = World(spec_of(objective={"metric": "mean_accuracy", "mode": "max", "goal": 0.9}), sa=False)
    world.step()
    world.raycluster["status"] = {"state": "ready"}
    plan = world.step()
    assert world.jobs == {} and plan.retry_after
    assert condition(world.status, "DriverRunning")["reason"] == Reason.SERVICE_ACCOUNT_NOT_FOUND
    assert ("Warning", Reason.SERVICE_ACCOUNT_NOT_FOUND) in [(t, r) for t, r, _ in plan.events]
    world.sa = True
    world.step()
    world.status["bestTrial"] = {"id": "t", "metric": 0.95}
    next(iter(world.jobs.values()))["status"] = {"conditions": [cond("Complete", "True")]}
    world.step()
    assert condition(world.status, "Complete")["reason"] == "GoalReached"


def test_plan_repairs_labels_and_owner_of_a_hand_edited_child():
    world = World(spec_of())
    world.step()
    world.raycluster["metadata"]["labels"].pop("kubetune.io/experiment")
    world.raycluster["metadata"]["ownerReferences"] = []
    world.raycluster["spec"]["workerGroupSpecs"] = [{"groupName": "scaled", "replicas": 7}]  # left alone
    plan = world.step()
    repair = [a for a in plan.actions if a.verb == "repair"]
    assert [a.kind for a in repair] == ["RayCluster"]
    rc_repair = next(a for a in repair if a.kind == "RayCluster").body["metadata"]
    assert rc_repair["labels"] == {"kubetune.io/experiment": "exp"}
    assert rc_repair["ownerReferences"][0]["uid"] == "uid-1" and rc_repair["ownerReferences"][0]["controller"] is True
    assert "patch_raycluster" not in world.verbs(plan)


def test_owner_of_a_child_prefers_its_owner_reference():
    from kubetune.controller.handlers import owner_of

    ref = builders.owner_reference("exp", "uid")
    assert owner_of({"metadata": {"ownerReferences": [ref], "labels": {"kubetune.io/experiment": "other"}}}) == "exp"
    assert owner_of({"metadata": {"labels": {"kubetune.io/experiment": "exp"}}}) == "exp"
    assert owner_of({"metadata": {}}) is None


# ---------------------------------------------------------------- issue #6: restricted pods, overlays, refusals


def _pods(rc, job):
    head = rc["spec"]["headGroupSpec"]["template"]
    workers = [g["template"] for g in rc["spec"]["workerGroupSpecs"]]
    return {"head": head, **{f"worker{i}": w for i, w in enumerate(workers)}, "driver": job["spec"]["template"]}


def test_every_pod_meets_pod_security_restricted_by_default_and_ray_pods_get_a_memory_shm():
    spec = spec_of(rayCluster={**GPU_CLUSTER, "enableAutoscaling": True})
    rc = builders.build_raycluster("exp", "ns", spec, Settings())
    job = builders.build_driver_job("exp", "ns", spec, Settings())
    for role, template in _pods(rc, job).items():
        pod = template["spec"]
        assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000,
                                          "seccompProfile": {"type": "RuntimeDefault"}}, role
        for container in pod["containers"]:
            assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                                    "capabilities": {"drop": ["ALL"]}}, role
        if role != "driver":
            assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"], role
            assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"], role
    assert rc["spec"]["autoscalerOptions"]["securityContext"]["allowPrivilegeEscalation"] is False


def test_pod_overlays_per_role_merge_over_the_defaults_and_never_replace_kubetune_labels():
    overlay = {
        "annotations": {"team": "ml"}, "labels": {"cost": "a", "kubetune.io/experiment": "hijack"},
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        "priorityClassName": "high", "imagePullSecrets": ["regcred"],
        "securityContext": {"runAsUser": 2000, "fsGroup": 2000}, "containerSecurityContext": {"readOnlyRootFilesystem": True},
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    spec = spec_of(rayCluster=GPU_CLUSTER, pods={"worker": overlay, "driver": {"priorityClassName": "low"}})
    rc = builders.build_raycluster("exp", "ns", spec, Settings())
    job = builders.build_driver_job("exp", "ns", spec, Settings())
    worker = rc["spec"]["workerGroupSpecs"][0]["template"]
    assert worker["metadata"]["annotations"] == {**builders.scrape_annotations(8080), "team": "ml"}
    assert worker["metadata"]["labels"]["cost"] == "a" and worker["metadata"]["labels"]["kubetune.io/experiment"] == "exp"
    pod = worker["spec"]
    assert pod["priorityClassName"] == "high" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["affinity"] == overlay["affinity"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 2000, "fsGroup": 2000,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert [v["name"] for v in pod["volumes"]] == ["dshm", "data"]
    assert {"name": "data", "mountPath": "/data"} in pod["containers"][0]["volumeMounts"]
    head = rc["spec"]["headGroupSpec"]["template"]
    assert "team" not in head["metadata"]["annotations"] and "priorityClassName" not in head["spec"]
    assert job["spec"]["template"]["spec"]["priorityClassName"] == "low"
    # An overlay is no change of the search: the driver keeps running.
    assert builders.run_hash(spec) == builders.run_hash(spec_of(rayCluster=GPU_CLUSTER))


def test_editing_the_ray_cluster_keeps_the_live_worker_replicas():
    world = World(spec_of(rayCluster=GPU_CLUSTER))
    world.step()
    world.raycluster["spec"]["workerGroupSpecs"][0]["replicas"] = 3  # the autoscaler (or a user) scaled it
    world.raycluster["spec"]["workerGroupSpecs"][1]["replicas"] = 9  # beyond the new bounds: clamped
    edited = json.loads(json.dumps(GPU_CLUSTER))
    edited["head"]["cpu"] = "4"
    edited["workerGroups"][1]["maxReplicas"] = 2
    edited["workerGroups"].append({"name": "new", "replicas": 2})
    world.spec = spec_of(rayCluster=edited)
    plan = world.step()
    patch = next(a for a in plan.actions if a.verb == "patch_raycluster").body["spec"]
    assert patch["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "4"
    assert [(g["groupName"], g["replicas"]) for g in patch["workerGroupSpecs"]] == [("gpu", 3), ("amd", 2), ("new", 2)]


def _pod(name, component, waiting=None, unschedulable=None, job=None, phase="Pending", terminated=None):
    labels = {"kubetune.io/experiment": "exp", "kubetune.io/component": component}
    if job:
        labels["batch.kubernetes.io/job-name"] = job
    status = {"phase": phase, "containerStatuses": []}
    if waiting:
        status["containerStatuses"].append({"name": "c", "state": {"waiting": dict(zip(("reason", "message"), waiting))}})
    if terminated:
        status["containerStatuses"].append({"name": "driver", "state": {"terminated": terminated}})
    if unschedulable:
        status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}]
    return {"metadata": {"name": name, "labels": labels, "creationTimestamp": NOW}, "status": status}


def test_a_missing_storage_secret_shows_from_the_pods_without_reading_secrets():
    world = World(spec_of(storage=S3))
    world.step()
    world.pods = [_pod("exp-head-x", "head", ("CreateContainerConfigError", 'secret "s3-credentials" not found'))]
    plan = world.step()
    storage = condition(world.status, "StorageReady")
    assert (storage["status"], storage["reason"]) == ("False", "SecretNotFound")
    assert "s3-credentials" in storage["message"] and "exp-head-x" in storage["message"]
    assert plan.retry_after and [(t, r) for t, r, _ in plan.events] == [("Warning", "SecretNotFound")]
    assert world.step().events == [], "once per cause"
    world.pods = [_pod("exp-head-x", "head"), _pod("exp-worker-y", "worker", unschedulable="0/3 nodes: Insufficient nvidia.com/gpu")]
    plan = world.step()
    assert condition(world.status, "StorageReady")["reason"] == "SecretReferenced"
    ready = condition(world.status, "RayClusterReady")
    assert ready["reason"] == "PodsNotStarting" and "Insufficient nvidia.com/gpu" in ready["message"]
    assert ("Warning", "PodsNotStarting") in [(t, r) for t, r, _ in plan.events]


def test_a_driver_pod_refused_by_the_job_controller_is_a_condition_and_one_warning():
    world = World(spec_of())
    world.step()
    world.raycluster["status"] = {"state": "ready"}
    world.step()
    job = next(iter(world.jobs))
    obs = world.observation()
    obs.job_events = [{"type": "Warning", "reason": "FailedCreate", "metadata": {"resourceVersion": "5"},
                       "message": 'Error creating: pods "x" is forbidden: violates PodSecurity "restricted:latest"'}]
    plan = phases.plan(obs, world.settings)
    driver = condition(plan.status, "DriverRunning")
    assert driver["reason"] == "PodCreateFailed" and "violates PodSecurity" in driver["message"] and job in driver["message"]
    assert plan.retry_after and [(t, r) for t, r, _ in plan.events] == [("Warning", "PodCreateFailed")]
    assert "violates PodSecurity" in plan.status["message"]
    obs.status = plan.status
    assert phases.plan(obs, world.settings).events == []


@pytest.mark.parametrize("code, reason", [(3, "AllTrialsFailed"), (2, "SpecRejectedByDriver"), (1, "DriverFailed")])
def test_a_failed_driver_reports_its_exit_code_and_last_words(code, reason):
    world = World(spec_of())
    world.step()
    world.raycluster["status"] = {"state": "ready"}
    world.step()
    job = next(iter(world.jobs))
    world.jobs[job]["status"] = {"conditions": [cond("Failed", "True", "PodFailurePolicy", "matching FailJob rule")]}
    obs = world.observation()
    obs.driver_pods = [_pod("d-1", "driver", job=job, phase="Failed",
                            terminated={"exitCode": code, "message": "all 4 trials failed:\nValueError: boom\n",
                                        "finishedAt": NOW})]
    plan = phases.plan(obs, world.settings)
    driver = condition(plan.status, "DriverRunning")
    assert plan.status["phase"] == Phase.FAILED and driver["reason"] == reason
    assert "driver said: all 4 trials failed: ValueError: boom" in driver["message"]
    assert condition(plan.status, "Complete")["reason"] == reason


def test_the_operator_refuses_long_names_and_what_its_settings_do_not_allow():
    long_name = phases.Observation(name="n" * 52, namespace="ns", generation=1, status={}, now=NOW, spec=spec_of())
    plan = phases.plan(long_name, Settings())
    valid = condition(plan.status, "SpecValid")
    assert (valid["status"], valid["reason"]) == ("False", "InvalidName") and "metadata.name" in valid["message"]
    assert plan.actions == [] and plan.permanent

    spec = spec_of(trainable={"entrypoint": "a.b:c", "image": "evil.example.com/x:1"},
                   rayCluster={"serviceAccountName": "cluster-admin-sa"})
    settings = Settings(allowed_image_prefixes=("registry.example.com/ml/",))
    plan = phases.plan(phases.Observation(name="exp", namespace="ns", generation=1, status={}, now=NOW, spec=spec), settings)
    valid = condition(plan.status, "SpecValid")
    assert valid["reason"] == "NotAllowed" and plan.actions == []
    assert "spec.rayCluster.serviceAccountName" in valid["message"] and "KUBETUNE_ALLOWED_SERVICE_ACCOUNTS" in valid["message"]
    assert "spec.trainable.image" in valid["message"] and "registry.example.com/ml/" in valid["message"]
    allowed = Settings(allowed_service_accounts=("cluster-admin-sa",), allowed_image_prefixes=("evil.example.com/",))
    plan = phases.plan(phases.Observation(name="exp", namespace="ns", generation=1, status={}, now=NOW, spec=spec), allowed)
    assert condition(plan.status, "SpecValid")["status"] == "True" and plan.actions


def test_local_storage_on_a_cluster_is_marked_and_suspend_promises_only_what_is_kept():
    world = World(spec_of())
    plan = world.step()
    storage = condition(world.status, "StorageReady")
    assert (storage["status"], storage["reason"]) == ("False", "LocalStorage") and "lost" in storage["message"]
    assert ("Warning", "LocalStorage") in [(t, r) for t, r, _ in plan.events]
    world.spec = spec_of(suspend=True)
    plan = world.step()
    [(kind, reason, message)] = plan.events
    assert reason == "Suspended" and message.startswith("Suspended: the RayCluster") and "nothing is kept" in message
    s3 = World(spec_of(storage=S3, suspend=True))
    [(_, _, message)] = s3.step().events
    assert "s3://bucket/prefix are kept" in message and "suspended: " not in message


def test_a_refused_child_becomes_a_condition_with_the_api_servers_message_once():
    world = World(spec_of())
    world.step()
    world.raycluster["status"] = {"state": "ready"}
    obs = world.observation()
    plan = phases.plan(obs, world.settings)
    refusal = phases.Refusal("Job", "exp-driver-1", "create", 422, "spec.template.labels: must be no more than 63 bytes")
    plan = phases.refused(plan, obs, [refusal], world.settings)
    driver = condition(plan.status, "DriverRunning")
    assert (driver["status"], driver["reason"]) == ("False", "CreateRefused") and "63 bytes" in driver["message"]
    assert plan.backoff and plan.retry_after == world.settings.error_backoff_seconds
    assert [(t, r) for t, r, _ in plan.events if r == "CreateRefused"] == [("Warning", "CreateRefused")]
    obs.status = plan.status
    again = phases.refused(phases.plan(obs, world.settings), obs, [refusal], world.settings)
    assert [r for _, r, _ in again.events if r == "CreateRefused"] == []


def test_kopfs_diff_base_is_a_digest_that_a_large_spec_cannot_overflow():
    import kopf

    from kubetune.controller.handlers import DigestDiffBaseStorage

    storage = DigestDiffBaseStorage(prefix="kubetune.io", key="last-handled-configuration")
    big = {"apiVersion": "kubetune.io/v1alpha1", "kind": "TuneExperiment", "metadata": {"name": "x", "annotations": {}},
           "spec": {"trainable": {"config": {"blob": "x" * 500_000}}}}
    essence = storage.build(body=kopf.Body(big))
    assert len(json.dumps(essence)) < 300
    changed = json.loads(json.dumps(big))
    changed["spec"]["trainable"]["config"]["blob"] += "y"
    assert storage.build(body=kopf.Body(changed))["spec"] != essence["spec"]


def test_trials_no_worker_group_can_hold_are_refused_before_any_pod_starts():
    spec = spec_of(trialResources={"cpu": 16, "gpu": 1},
                   rayCluster={"workerGroups": [{"name": "cpu", "replicas": 2, "cpu": "4", "memory": "8Gi"}]})
    plan = phases.plan(phases.Observation(name="exp", namespace="ns", generation=1, status={}, now=NOW, spec=spec), Settings())
    valid = condition(plan.status, "SpecValid")
    assert (valid["status"], valid["reason"]) == ("False", "Infeasible") and "spec.trialResources" in valid["message"]
    assert plan.actions == [] and plan.permanent and plan.status["phase"] == Phase.FAILED


def _unschedulable(name, component, since, job=None, message="0/1 nodes are available: 1 Insufficient cpu."):
    pod = _pod(name, component, unschedulable=message, job=job)
    pod["status"]["conditions"][0]["lastTransitionTime"] = since
    return pod


def test_a_worker_the_scheduler_cannot_place_is_in_the_status_once_it_waited_a_recheck_period():
    """Issue #10 point 5: the cluster and the driver run, a worker waits for a node: the status says so
    (which pod, the scheduler's words), not just "driver Job ... is running"; one Warning."""
    world = World(spec_of(rayCluster={"workerGroups": [{"name": "cpu", "replicas": 2, "cpu": "1", "memory": "1Gi"}]}),
                  Settings(recheck_seconds=15))
    world.step()
    world.raycluster["status"] = {"state": "ready"}
    world.step()
    job = next(iter(world.jobs))
    world.jobs[job]["status"] = {"active": 1, "ready": 1}
    world.pods = [_pod("exp-head-a", "head", phase="Running"), _pod("exp-worker-b", "worker", phase="Running"),
                  _unschedulable("exp-worker-c", "worker", since=NOW)]
    plan = world.step(now="2026-01-01T00:00:05Z")  # refused 5 s ago: maybe a node is on its way
    assert world.status["message"] == f"driver Job {job} is running" and plan.retry_after == 15
    assert condition(world.status, "RayClusterReady")["reason"] == "RayClusterReady"

    plan = world.step(now="2026-01-01T00:00:20Z")
    ready = condition(world.status, "RayClusterReady")
    waits = "worker pod exp-worker-c cannot be scheduled: 0/1 nodes are available: 1 Insufficient cpu."
    assert (ready["status"], ready["reason"]) == ("True", "PodsNotStarting") and waits in ready["message"]
    assert world.status["phase"] == "Running" and world.status["message"] == f"driver Job {job} is running; {waits}"
    assert [(t, r) for t, r, _ in plan.events] == [("Warning", "PodsNotStarting")] and plan.retry_after == 15
    assert world.step(now="2026-01-01T00:00:35Z").events == [], "once per cause"
    world.pods[2]["status"] = {"phase": "Running"}  # scheduled at last
    plan = world.step(now="2026-01-01T00:00:50Z")
    assert condition(world.status, "RayClusterReady")["reason"] == "RayClusterReady"
    assert world.status["message"] == f"driver Job {job} is running" and plan.retry_after is None


def test_a_driver_pod_the_scheduler_cannot_place_says_so_instead_of_starting():
    world = World(spec_of(), Settings(recheck_seconds=15))
    world.step()
    world.raycluster["status"] = {"state": "ready"}
    world.step()
    job = next(iter(world.jobs))
    world.jobs[job]["status"] = {"active": 1}
    obs = world.observation(now=LATER)
    obs.driver_pods = [_unschedulable(f"{job}-x", "driver", since=NOW, job=job)]
    plan = phases.plan(obs, world.settings)
    driver = condition(plan.status, "DriverRunning")
    said = f"driver pod {job}-x cannot be scheduled: 0/1 nodes are available: 1 Insufficient cpu."
    assert (driver["reason"], driver["message"]) == ("PodsNotStarting", said)
    assert plan.status["message"] == said and "is starting" not in said
    assert [(t, r) for t, r, _ in plan.events] == [("Warning", "PodsNotStarting")]


def test_driver_and_ray_pods_tell_prometheus_where_their_metrics_are():
    """Issue #10: Prometheus' pod discovery (`prometheus.io/*` annotations) finds the driver's /metrics
    (driver and trial metrics, port 9450) and each Ray node's metrics-export-port; an overlay may say no."""
    spec = spec_of(rayCluster=GPU_CLUSTER, pods={"head": {"annotations": {"prometheus.io/scrape": "false"}}})
    rc = builders.build_raycluster("exp", "ns", spec, Settings(ray_metrics_port=8081))
    job = builders.build_driver_job("exp", "ns", spec, Settings())
    driver = job["spec"]["template"]
    assert driver["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "9450", "prometheus.io/path": "/metrics"}
    assert {"containerPort": 9450, "name": "metrics"} in driver["spec"]["containers"][0]["ports"]
    for group in rc["spec"]["workerGroupSpecs"]:
        template = group["template"]
        assert template["metadata"]["annotations"]["prometheus.io/port"] == "8081"
        assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert {"containerPort": 8081, "name": "metrics"} in template["spec"]["containers"][0]["ports"]
        assert group["rayStartParams"]["metrics-export-port"] == "8081"
    head = rc["spec"]["headGroupSpec"]["template"]["metadata"]["annotations"]
    assert head == {"prometheus.io/scrape": "false", "prometheus.io/port": "8081", "prometheus.io/path": "/metrics"}
    no_port = builders.build_raycluster("exp", "ns", spec_of(), Settings(ray_metrics_port=0))
    assert "annotations" not in no_port["spec"]["headGroupSpec"]["template"]["metadata"]
