"""Work that could never finish is refused before it starts: workers the cluster cannot
hold, a resume with other settings, a read-only command on a store that is not there."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdml_ray.config import ConfigError
from pdml_ray.service.train import preflight
from pdml_ray.service.train.preflight import (ClusterTooSmall, check_before_training,
                                        check_schedulable, check_same_run, check_store_readable)
from pdml_ray.service.tracking import TrackingUnavailable, start_run
from tests.helpers import tiny_config


@pytest.fixture
def cfg(tmp_path, mlflow_uri):
    return tiny_config(tmp_path, tmp_path / "synthetic", mlflow_uri)


def fixed(*nodes):
    """A fixed cluster (no autoscaler) of these nodes, each given by its resources."""
    return dict(nodes=lambda: list(nodes), maximum=None)


# -- resources ---------------------------------------------------------------------------
def test_more_cpus_than_a_fixed_cluster_has_is_refused_naming_both(cfg):
    cfg = cfg.replace(**{"ray.num_workers": 4, "train.batch_size": 4})
    with pytest.raises(ClusterTooSmall) as refused:
        check_schedulable(cfg, **fixed({"CPU": 2.0, "memory": 1e9}))
    assert str(refused.value) == (
        "ray.num_workers x ray.cpus_per_worker: the run asks for 4 workers x 1 CPU = 4 CPUs, "
        "but the Ray cluster (fixed size, no autoscaler) has 2 CPUs; lower ray.num_workers or "
        "ray.cpus_per_worker (and train.batch_size with it), or use a bigger cluster")
    check_schedulable(cfg, **fixed({"CPU": 4.0}))  # exactly enough


def test_gpus_are_counted_one_per_worker(cfg):
    cfg = cfg.replace(**{"ray.use_gpu": True})
    with pytest.raises(ClusterTooSmall, match=r"^ray\.num_workers with ray\.use_gpu: the run asks "
                                              r"for 2 workers x 1 GPU = 2 GPUs, but the Ray "
                                              r"cluster \(fixed size, no autoscaler\) has 0 GPUs"):
        check_schedulable(cfg, **fixed({"CPU": 8.0}))
    check_schedulable(cfg, **fixed({"CPU": 8.0, "GPU": 2.0}))


def test_workers_fit_node_by_node():
    """A worker's resources are all on one node; each node holds the fewest of its
    resources over what a worker asks of each, rounded down."""
    assert preflight.workers_that_fit([{"CPU": 3.0}, {"CPU": 3.0}], {"CPU": 4.0}) == 0
    assert preflight.workers_that_fit([{"CPU": 3.0}, {"CPU": 5.0}], {"CPU": 2.0}) == 3
    assert preflight.workers_that_fit([{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0}],
                                      {"CPU": 2.0, "GPU": 1.0}) == 1
    assert preflight.workers_that_fit([{"CPU": 0.9}, {"CPU": 0.3}], {"CPU": 0.3}) == 4
    assert preflight.workers_that_fit([], {"CPU": 1.0}) == 0


def test_a_worker_larger_than_every_node_is_refused_though_the_total_suffices(cfg):
    one_big = cfg.replace(**{"ray.num_workers": 1, "ray.cpus_per_worker": 4.0,
                             "train.batch_size": 4})
    with pytest.raises(ClusterTooSmall) as refused:
        check_schedulable(one_big, **fixed({"CPU": 3.0}, {"CPU": 3.0}))
    assert str(refused.value) == (
        "ray.num_workers x ray.cpus_per_worker: the run asks for 1 workers x 4 CPU, and a "
        "worker's CPUs must be on one node, but the Ray cluster (fixed size, no autoscaler) "
        "has 2 node(s) of 3, 3 CPUs, which hold 0 such worker(s); lower ray.cpus_per_worker or "
        "ray.num_workers (and train.batch_size with it), or use bigger nodes")
    check_schedulable(one_big, **fixed({"CPU": 3.0}, {"CPU": 4.0}))
    three = cfg.replace(**{"ray.num_workers": 3, "ray.cpus_per_worker": 2.0,
                           "train.batch_size": 3})
    with pytest.raises(ClusterTooSmall, match=r"has 2 node\(s\) of 3, 3 CPUs, which hold 2 "):
        check_schedulable(three, **fixed({"CPU": 3.0}, {"CPU": 3.0}))
    gpus = cfg.replace(**{"ray.use_gpu": True})
    with pytest.raises(ClusterTooSmall, match=r"a worker's CPUs and GPU must be on one node, "
                                              r"but .* has 2 node\(s\) of 8 CPUs 0 GPUs, 0 CPUs "
                                              r"2 GPUs, which hold 0 such worker"):
        check_schedulable(gpus, **fixed({"CPU": 8.0}, {"CPU": 0.0, "GPU": 2.0}))
    check_schedulable(gpus, **fixed({"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}))


def test_autoscaling_cluster_is_awaited_until_the_workers_fit_node_by_node(cfg, monkeypatch):
    monkeypatch.setattr(preflight, "_request_nodes", lambda c: None)
    one_big = cfg.replace(**{"ray.num_workers": 1, "ray.cpus_per_worker": 4.0,
                             "train.batch_size": 4})
    two_small = [{"CPU": 3.0}, {"CPU": 3.0}]
    clusters = iter([two_small, two_small, [*two_small, {"CPU": 8.0}]])
    sleeps = []
    check_schedulable(one_big, nodes=lambda: next(clusters), maximum={"CPU": 64.0},
                      sleep=sleeps.append, timeout_s=600, poll_s=5.0)
    assert sleeps == [5.0]  # 6 CPUs in two nodes were not enough; the 8-CPU node was
    assert next(clusters, None) is None


def test_autoscaler_maximum_too_small_is_refused_without_waiting(cfg):
    cfg = cfg.replace(**{"ray.cpus_per_worker": 8.0})
    with pytest.raises(ClusterTooSmall, match=r"= 16 CPUs, but the autoscaler can bring up at "
                                              r"most 12 CPUs;"):
        check_schedulable(cfg, nodes=lambda: [{"CPU": 4.0}], maximum={"CPU": 12.0},
                          sleep=pytest.fail)


def test_autoscaling_cluster_is_awaited_then_given_up_on(cfg, monkeypatch):
    requests = []
    monkeypatch.setattr(preflight, "_request_nodes", lambda c: requests.append(c is not None))
    monkeypatch.setenv(preflight.SCHEDULE_TIMEOUT_ENV, "12")
    sleeps = []
    with pytest.raises(ClusterTooSmall) as refused:
        check_schedulable(cfg, nodes=lambda: [{"CPU": 1.0}], maximum={"CPU": 64.0},
                          sleep=sleeps.append, poll_s=5.0)
    assert str(refused.value).startswith(
        "ray.num_workers x ray.cpus_per_worker: the run asks for 2 workers x 1 CPU = 2 CPUs, "
        "but after 15 s (PDML_SCHEDULE_TIMEOUT_S) the autoscaling cluster still has 1 CPUs;")
    assert sleeps == [5.0, 5.0, 5.0]
    assert requests == [True, False]  # nodes asked for, and the request withdrawn after


def test_autoscaling_cluster_that_grows_in_time_is_accepted(cfg, monkeypatch):
    monkeypatch.setattr(preflight, "_request_nodes", lambda c: None)
    sizes = iter([1.0, 1.0, 1.0, 2.0])
    check_schedulable(cfg, nodes=lambda: [{"CPU": next(sizes)}], maximum={"CPU": 64.0},
                      sleep=lambda s: None, timeout_s=600)
    assert next(sizes, None) is None


@pytest.mark.parametrize("text", ["soon", "-1", "inf"])
def test_a_bad_schedule_timeout_is_refused(text, monkeypatch):
    monkeypatch.setenv(preflight.SCHEDULE_TIMEOUT_ENV, text)
    with pytest.raises(ConfigError, match=r"^PDML_SCHEDULE_TIMEOUT_S: expected a number of "
                                          r"seconds >= 0"):
        preflight.schedule_timeout_s()


@pytest.mark.ray
def test_train_on_a_too_small_local_cluster_fails_at_once(ray_cluster, cfg, tmp_path):
    from pdml_ray.service.train.driver import run_training

    assert preflight.autoscaler_maximum() is None  # a local Ray has no autoscaler
    cfg = cfg.replace(**{"ray.num_workers": 4, "train.batch_size": 4})
    with pytest.raises(ClusterTooSmall, match=r"asks for 4 workers x 1 CPU = 4 CPUs, but the Ray "
                                              r"cluster \(fixed size, no autoscaler\) has 2 CPUs"):
        run_training(cfg)
    assert not (tmp_path / "ray_results").exists()


# -- resumes -----------------------------------------------------------------------------
def test_resuming_a_run_with_other_settings_is_refused_naming_the_keys(cfg):
    original = cfg.replace(**{"ray.run_name": "resume-me"})
    start_run(original, ray_run_name="resume-me")
    check_same_run(original)  # the same settings: a resume
    check_same_run(original.replace(**{"ray.address": "ray://elsewhere:10001"}))
    check_same_run(original.replace(**{"train.epochs": 6}))  # train on from the checkpoint
    changed = original.replace(**{"train.lr": 0.01, "loss.margin": 8})
    with pytest.raises(ConfigError) as refused:
        check_before_training(changed)  # what run_training calls before any worker starts
    assert str(refused.value) == (
        "ray.run_name: run 'resume-me' was started with other settings (loss.margin: 5.0 -> "
        "8.0; train.lr: 0.002 -> 0.01); resume it with its original settings, or give a new "
        "ray.run_name")
    check_same_run(changed.replace(**{"ray.run_name": "another-name"}))  # a new run


def test_a_changed_resume_is_refused_from_the_config_beside_the_checkpoints(cfg, tmp_path):
    """Found in the run's storage folder, where Ray resumes from, whatever MLflow store or
    experiment the job names now (the MLflow run is in another experiment here)."""
    original = cfg.replace(**{"ray.run_name": "resume-me"})
    start_run(original, ray_run_name="resume-me")
    path = preflight.record_run_config(original, "resume-me")  # what run_training does
    assert path == f"{tmp_path / 'ray_results' / 'resume-me'}/{preflight.RUN_CONFIG_FILE}"
    elsewhere = original.replace(**{"mlflow.experiment": "elsewhere"})
    check_same_run(original.replace(**{"train.epochs": 6}))  # train on from the checkpoint
    with pytest.raises(ConfigError) as refused:
        check_before_training(elsewhere.replace(**{"train.lr": 0.01}))
    assert str(refused.value) == (
        "ray.run_name: run 'resume-me' was started with other settings (mlflow.experiment: "
        "'e2e' -> 'elsewhere'; train.lr: 0.002 -> 0.01); resume it with its original "
        "settings, or give a new ray.run_name")
    # Another tracking store, where no MLflow run of that name exists at all.
    other_store = original.replace(**{
        "mlflow.tracking_uri": f"sqlite:///{tmp_path / 'other.db'}", "train.lr": 0.01})
    with pytest.raises(ConfigError, match=r"\(mlflow.tracking_uri: .*; train.lr: 0.002 -> "
                                          r"0.01\); resume it"):
        check_same_run(other_store)


def test_an_unreadable_config_beside_the_checkpoints_is_refused_not_skipped(cfg, tmp_path):
    original = cfg.replace(**{"ray.run_name": "resume-me"})
    path = Path(preflight.record_run_config(original, "resume-me"))
    path.write_text("train: [not, a, mapping\n")
    with pytest.raises(ConfigError) as refused:
        check_same_run(original.replace(**{"train.lr": 0.01}))
    assert str(refused.value).startswith(
        f"ray.run_name: run 'resume-me' has a config beside its checkpoints that cannot be "
        f"read ({path}: not valid YAML: ")
    assert str(refused.value).endswith("); a resume could not be checked against it: restore "
                                       "the file, or give a new ray.run_name")


@pytest.mark.ray
def test_jobs_train_refuses_a_changed_resume_under_another_experiment(tmp_path, job_tmpdir):
    """The issue's case: the same ray.run_name, another mlflow.experiment, train.lr=0.01
    (it trained to the end and exited 0)."""
    from pdml_ray.config import dump_config
    from tests.helpers import job_env, run_job

    cfg = tiny_config(tmp_path, tmp_path / "synthetic", f"sqlite:///{tmp_path / 'mlflow.db'}",
                      ray={"run_name": "resume-me"}, mlflow={"register": False})
    start_run(cfg, ray_run_name="resume-me")
    preflight.record_run_config(cfg, "resume-me")
    config_file = tmp_path / "job.yaml"
    config_file.write_text(dump_config(cfg))
    job = run_job("jobs.train", "--config", str(config_file), "--project-dir", str(tmp_path),
                  "--set", "mlflow.experiment=elsewhere", "--set", "train.lr=0.01",
                  env=job_env(job_tmpdir), timeout_s=600)
    assert job.returncode == 2, job.stderr[-3000:]
    assert "Traceback" not in job.stderr
    assert [line for line in job.stderr.splitlines() if line.startswith("error: ")] == [
        "error: ray.run_name: run 'resume-me' was started with other settings "
        "(mlflow.experiment: 'e2e' -> 'elsewhere'; train.lr: 0.002 -> 0.01); resume it with "
        "its original settings, or give a new ray.run_name"]
    assert [path.name for path in (tmp_path / "ray_results" / "resume-me").iterdir()] == [
        preflight.RUN_CONFIG_FILE]  # nothing trained


# -- read-only commands --------------------------------------------------------------------
def test_a_missing_sqlite_store_is_refused_not_created(tmp_path):
    missing = tmp_path / "typo" / "mlfow.db"
    with pytest.raises(TrackingUnavailable, match=rf"^MLflow store sqlite:///{missing}: no "
                                                  rf"database file at {missing};"):
        check_store_readable(f"sqlite:///{missing}")
    assert not missing.parent.exists()


def test_an_unreachable_server_is_refused_in_one_request():
    with pytest.raises(TrackingUnavailable, match=r"^MLflow tracking server http://127\.0\.0\.1:9 "
                                                  r"is unreachable: .*Connection refused"):
        check_store_readable("http://127.0.0.1:9")
