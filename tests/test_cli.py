"""The command line that jobs.train and tuning.sweep share (jobs/cli.py): every argument
check gives one ``error: ...`` line naming the key, file or flag, and exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.cli import (add_inference_arguments, overlap_arg, parse_config_command, positive_int,
                      ray_job, run_cli, scales_arg)
from pdml_ray.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
PROG = "python -m jobs.train"


@pytest.fixture(autouse=True)
def own_environment(monkeypatch, tmp_path):
    """Parsing sets PDML_PROJECT_DIR (and PDML_LOG_LEVEL with --verbose) for the workers it
    starts; setting them here first makes pytest restore them after each test."""
    monkeypatch.setenv("PDML_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("PDML_LOG_LEVEL", "WARNING")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def one_error_line(capsys, main) -> str:
    """What ``run_cli(main)`` tells the user: exit 2 and exactly one line on stderr."""
    with pytest.raises(SystemExit) as exited:
        run_cli(main)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# -- --config, --set, --project-dir ---------------------------------------------------------
def test_the_config_arguments_build_a_checked_config_with_paths_in_the_project_dir(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("train:\n  epochs: 3\nloss:\n  margin: 12\n")
    cfg = parse_config_command(PROG, "", ["--config", str(config), "--set", "loss.margin=8",
                                          "--set", "ray.address=ray://head:10001",
                                          "--project-dir", str(tmp_path / "project")])
    assert (cfg.train.epochs, cfg.loss.margin, cfg.ray.address) == (3, 8.0, "ray://head:10001")
    assert cfg.ray.storage_path == str(tmp_path / "project" / "ray_results")
    assert cfg.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'project' / 'mlflow.db'}"
    # Trials and workers anchor their paths the same way, through the environment.
    assert os.environ["PDML_PROJECT_DIR"] == str(tmp_path / "project")
    assert os.environ["PDML_LOG_LEVEL"] == "WARNING"


def test_verbose_asks_every_process_for_debug_lines(tmp_path):
    parse_config_command(PROG, "", ["--verbose", "--project-dir", str(tmp_path)])
    assert os.environ["PDML_LOG_LEVEL"] == "DEBUG"


BAD_CONFIG_ARGUMENTS = {
    "set-without-equals": (["--set", "train.lr"],
                           "error: --set 'train.lr': expected KEY=VALUE such as train.lr=0.01"),
    "unknown-key": (["--set", "train.lrr=0.1"],
                    "error: train.lrr: unknown key; train accepts supervision, epochs, max_steps, "
                    "batch_size, optimizer, lr, head_lr_mult, momentum, weight_decay, "
                    "poly_power, seed, amp, log_every_steps, eval_every_epochs"),
    "unknown-section": (["--set", "trian.lr=0.1"],
                        "error: trian.lr: unknown key; use SECTION.KEY with a section among "
                        "data, model, loss, extension, train, ray, mlflow, sweep"),
    "no-key": (["--set", "train=3"], "error: train: unknown key; use SECTION.KEY with a section "
                                     "among data, model, loss, extension, train, ray, mlflow, "
                                     "sweep"),
    "wrong-type": (["--set", "train.epochs=2.5"], "error: train.epochs: expected int, got 2.5"),
    "not-a-choice": (["--set", "train.supervision=points"],
                     "error: train.supervision: expected one of 'full', 'point', 'point+pdml', "
                     "'point+ext', 'point+pdml+ext', got 'points'"),
    "ray-address-not-text": (["--set", "ray.address=[1]"],
                             "error: ray.address: expected str or null, got [1]"),
    "list-item": (["--set", "sweep.margins=[8, x]"],
                  "error: sweep.margins[1]: expected float, got 'x'"),
    "out-of-range": (["--set", "loss.margin=-1"], "error: loss.margin: must be >= 0, got -1.0"),
    "not-finite": (["--set", "train.lr=.nan"], "error: train.lr: must be a finite number, got nan"),
    "same-key-twice": (["--set", "train.lr={a: 1, a: 2}"],
                       "error: train.lr.a: given twice (lines 1 and 1); YAML would keep the "
                       "last value only: keep one"),
}


@pytest.mark.parametrize("argv, line", BAD_CONFIG_ARGUMENTS.values(), ids=BAD_CONFIG_ARGUMENTS)
def test_a_bad_override_is_one_line_naming_the_key(argv, line, capsys, tmp_path):
    argv = [*argv, "--project-dir", str(tmp_path)]
    with pytest.raises(ConfigError):
        parse_config_command(PROG, "", argv)
    assert one_error_line(capsys, lambda: parse_config_command(PROG, "", argv)) == line


def test_an_override_yaml_cannot_read_is_one_line_naming_the_key(capsys, tmp_path):
    argv = ["--set", "train.lr=[0.1", "--project-dir", str(tmp_path)]
    line = one_error_line(capsys, lambda: parse_config_command(PROG, "", argv))
    # The reason after the value is PyYAML's own (several lines), joined into one.
    assert re.fullmatch(r"error: train\.lr: cannot parse value '\[0\.1': .*flow sequence.*", line)


@pytest.mark.parametrize("text, reason", [
    (None, "config file not found"),
    ("train: [1, 2\n", "not valid YAML: .*"),
    ("train:\n  epochs: 0\n", "train.epochs: must be >= 1"),
    ("trainer:\n  epochs: 2\n", "trainer: unknown section; sections are data, model, loss, "
                                "extension, train, ray, mlflow, sweep"),
    ("train: 3\n", "train: expected a mapping of keys, got 3"),
    ("- train\n", "config: expected a mapping of sections, got list"),
], ids=["missing", "not-yaml", "bad-value", "unknown-section", "section-not-a-mapping",
        "not-a-mapping"])
def test_a_bad_config_file_is_one_line_naming_the_file(text, reason, capsys, tmp_path):
    config = tmp_path / "train.yaml"
    if text is not None:
        config.write_text(text)
    argv = ["--config", str(config), "--project-dir", str(tmp_path)]
    line = one_error_line(capsys, lambda: parse_config_command(PROG, "", argv))
    assert re.fullmatch(rf"error: {re.escape(str(config))}: {reason}", line), line


def test_a_config_file_that_is_not_utf8_names_the_file(capsys, tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("train:\n  lr: 0.1  # r\u00e9glage\n".encode("latin-1"))
    argv = ["--config", str(config), "--project-dir", str(tmp_path)]
    assert one_error_line(capsys, lambda: parse_config_command(PROG, "", argv)) == (
        f"error: {config}: not UTF-8 text (invalid continuation byte at byte 21); save the "
        "config as UTF-8")


def test_an_unknown_flag_is_refused_by_argparse_naming_it(capsys):
    with pytest.raises(SystemExit) as exited:
        parse_config_command(PROG, "", ["--sett", "train.lr=0.1"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"{PROG}: error: unrecognized arguments: --sett train.lr=0.1")


# -- argparse types of predict, evaluate, check_data and prepare_points -----------------------
@pytest.mark.parametrize("check, text, value", [
    (positive_int, "3", 3), (overlap_arg, "0", 0.0), (overlap_arg, "0.25", 0.25),
    (scales_arg, "0.75,1,1.25", (0.75, 1.0, 1.25)), (scales_arg, "1,", (1.0,)),
])
def test_argument_types_accept_good_values(check, text, value):
    assert check(text) == value


@pytest.mark.parametrize("check, text, message", [
    (positive_int, "0", "must be >= 1, got 0"),
    (positive_int, "-2", "must be >= 1, got -2"),
    (positive_int, "2.5", "expected a whole number, got '2.5'"),
    (positive_int, "many", "expected a whole number, got 'many'"),
    (overlap_arg, "1", r"overlap is a fraction in \[0, 1\), got 1"),
    (overlap_arg, "-0.1", r"overlap is a fraction in \[0, 1\), got -0.1"),
    (overlap_arg, "nan", r"overlap is a fraction in \[0, 1\), got nan"),
    (overlap_arg, "half", "expected a number, got 'half'"),
    (scales_arg, "1,x", "expected comma-separated numbers, got '1,x'"),
    (scales_arg, "0,1", "scales must be positive, got '0,1'"),
    (scales_arg, "1,inf", "scales must be positive, got '1,inf'"),
    (scales_arg, ",", "scales must be positive, got ','"),
])
def test_argument_types_refuse_bad_values_saying_why(check, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=rf"^{message}$"):
        check(text)


@pytest.mark.parametrize("argv, line", [
    (["--tile", "x"], "error: argument --tile: expected a whole number, got 'x'"),
    (["--tile", "0"], "error: argument --tile: must be >= 1, got 0"),
    (["--overlap", "1.5"], r"error: argument --overlap: overlap is a fraction in \[0, 1\), got 1.5"),
    (["--scales", "1,-1"], "error: argument --scales: scales must be positive, got '1,-1'"),
])
def test_inference_flags_name_the_flag(argv, line, capsys):
    parser = argparse.ArgumentParser(prog="python -m jobs.predict")
    add_inference_arguments(parser)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(argv)
    assert exited.value.code == 2
    assert re.fullmatch(rf"python -m jobs\.predict: {line}", capsys.readouterr().err.splitlines()[-1])


# -- the start of a Ray job --------------------------------------------------------------------
def test_ray_job_checks_the_tracking_store_before_ray_starts(tmp_path, monkeypatch, capsys):
    import pdml_ray.service.runtime as runtime

    def no_ray(address=None, **_):
        raise AssertionError("Ray started although the tracking store was unreachable")

    monkeypatch.setattr(runtime, "ray_session", no_ray)
    monkeypatch.setattr(runtime, "configure_logging", lambda: None)
    argv = ["--set", "mlflow.tracking_uri=http://127.0.0.1:9", "--project-dir", str(tmp_path)]

    def main() -> int:
        with ray_job(parse_config_command(PROG, "", argv)):
            raise AssertionError("the job ran")

    line = one_error_line(capsys, main)
    assert line.startswith("error: MLflow tracking server http://127.0.0.1:9 is unreachable: ")


def test_ray_job_prints_the_changed_settings_then_opens_ray_at_the_configured_address(
        tmp_path, monkeypatch, capsys):
    import pdml_ray.service.runtime as runtime

    events = []

    @contextlib.contextmanager
    def session(address=None, **_):
        events.append(("ray", address, capsys.readouterr().out))
        yield

    monkeypatch.setattr(runtime, "ray_session", session)
    monkeypatch.setattr(runtime, "configure_logging", lambda: events.append(("logging",)))
    for include_sweep, argv in [(False, ["--set", "train.epochs=3"]),
                                (True, ["--set", "sweep.num_samples=2"])]:
        cfg = parse_config_command(PROG, "", [*argv, "--set", "ray.address=ray://head:10001",
                                              "--project-dir", str(tmp_path)])
        with ray_job(cfg, include_sweep=include_sweep):
            events.append(("job",))
    assert [event[0] for event in events] == ["logging", "ray", "job"] * 2
    train_out, sweep_out = events[1][2], events[4][2]
    assert events[1][1] == events[4][1] == "ray://head:10001"
    assert "train.epochs" in train_out and "ray.address" in train_out
    assert "sweep.num_samples" in sweep_out
    assert (tmp_path / "mlflow.db").is_file()  # the store was opened (and checked) first


# -- end to end: the sweep's command line ------------------------------------------------------
def test_the_sweep_command_refuses_a_bad_override_in_one_line(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    result = subprocess.run([sys.executable, "-m", "tuning.sweep", "--project-dir", str(tmp_path),
                             "--set", "sweep.margins=[8, x]"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == ["error: sweep.margins[1]: expected float, got 'x'"]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()
