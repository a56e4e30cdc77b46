"""Ray jobs: `jobs/submit.py` ships this checkout and the package's requirements, passes W&B and
AWS credentials through without ever printing them, and submits `eain prepare` then `eain train`
to a Ray head started here (its own ports and temp dir, token authentication on), which is then
stopped by its own handle with nothing of it left running."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_submit():
    spec = importlib.util.spec_from_file_location("jobs_submit", ROOT / "jobs" / "submit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


submit = _load_submit()


def test_job_ships_the_checkout_and_the_requirements_but_not_ray():
    spec = submit.job_spec("train", ["--config", "configs/amazon2023.yaml", "--set", "train.run_dir=runs/x y"],
                           environ={})
    assert spec.entrypoint == "python jobs/train.py --config configs/amazon2023.yaml --set 'train.run_dir=runs/x y'"
    env = spec.runtime_env
    assert env["working_dir"] == str(ROOT) and {".venv", ".cache", "runs", "benchmarks/work"} <= set(env["excludes"])
    names = {submit._package_name(requirement) for requirement in env["pip"]}
    assert {"torch", "pyarrow", "wandb", "s3fs"} <= names and "ray" not in names
    assert "pip" not in submit.job_spec("train", [], pip=False, environ={}).runtime_env
    assert spec.address == submit.DEFAULT_ADDRESS


def test_address_comes_from_the_flag_then_ray_address():
    environ = {"RAY_ADDRESS": "http://head:8265"}
    assert submit.job_spec("prepare", [], environ=environ).address == "http://head:8265"
    assert submit.job_spec("prepare", [], address="http://other:8265", environ=environ).address == "http://other:8265"


def test_credentials_reach_the_job_but_never_the_terminal(monkeypatch, capsys):
    secret_values = {"WANDB_API_KEY": "wandb-" + secrets.token_hex(8), "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
                     "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(6), "AWS_SESSION_TOKEN": secrets.token_hex(12)}
    for name, value in {**secret_values, "AWS_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)
    assert submit.main(["--dry-run", "--no-pip", "train", "--set", "train.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert all(value not in out for value in secret_values.values())
    assert all(f"{name}=<redacted>" in out for name in secret_values) and "AWS_REGION=eu-west-1" in out
    passed = submit.job_spec("train", [], pip=False)
    assert {name: passed.runtime_env["env_vars"][name] for name in secret_values} == secret_values


def test_the_token_is_found_where_ray_looks(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert submit.auth_headers(environ={}) == {}  # no token anywhere: an unauthenticated cluster
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert submit.auth_headers(environ={}) == {"Authorization": "Bearer from-home"}
    (tmp_path / "token").write_text("from-path")
    assert submit.auth_headers(environ={"RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}) == {
        "Authorization": "Bearer from-path"}
    assert submit.auth_headers(environ={"RAY_AUTH_TOKEN": "from-env"}) == {"Authorization": "Bearer from-env"}
    assert submit.auth_headers(environ={"RAY_AUTH_TOKEN": "from-env"}, token_file=str(tmp_path / "token")) == {
        "Authorization": "Bearer from-path"}


# --- A real head -----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Head:
    """A `ray start --head --block` this test owns; every process of it carries `marker` in its env."""

    process: subprocess.Popen
    address: str
    token_file: Path
    marker: str

    def processes(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if self.marker.encode() in (entry / "environ").read_bytes():
                        found.append(int(entry.name))
                except OSError:  # gone, or not ours to read
                    continue
        return found

    def stop(self) -> list[int]:
        """SIGTERM to `ray start --block`, which stops the node; returns what outlived a grace period
        (killed then, by pid: each carries this head's marker)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        deadline = time.monotonic() + 30
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        leftovers = self.processes()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                os.kill(pid, signal.SIGKILL)
        return leftovers


@pytest.fixture
def head():
    """A Ray head on 127.0.0.1 with its job server, ports and temp dir of its own, token auth on."""
    from ray.job_submission import JobSubmissionClient

    # Short: Ray's unix sockets live under the temp dir and their paths have a length limit.
    root = Path(tempfile.mkdtemp(prefix="eainhead", dir="/tmp"))
    token_file = root / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    marker = f"EAIN_TEST_HEAD={uuid.uuid4().hex}"
    dashboard_port = _free_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token_file), "GLOO_SOCKET_IFNAME": "lo",
           # the job entrypoints' `python` is this environment's
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           marker.split("=")[0]: marker.split("=")[1]}
    env.pop("RAY_AUTH_TOKEN", None)  # it would win over the token file
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
               "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--port={_free_port()}",
               f"--dashboard-port={dashboard_port}", f"--dashboard-agent-listen-port={_free_port()}",
               f"--ray-client-server-port={_free_port()}", "--num-cpus=2", f"--temp-dir={root}/ray",
               "--disable-usage-stats"]
    log = (root / "head.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started = Head(process, f"http://127.0.0.1:{dashboard_port}", token_file, marker)
    try:
        _wait_for_job_server(started, JobSubmissionClient, root / "head.log")
        yield started
    finally:
        started.stop()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_job_server(head: Head, client_class, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    headers = submit.auth_headers(token_file=str(head.token_file))
    while True:
        assert head.process.poll() is None, f"ray start exited:\n{log.read_text()[-3000:]}"
        try:
            client_class(head.address, headers=headers)
            return
        except Exception:
            assert time.monotonic() < deadline, f"no job server at {head.address}:\n{log.read_text()[-3000:]}"
            time.sleep(1)


@pytest.mark.slow
def test_prepare_then_train_as_jobs_on_a_ray_head(head, tmp_path, monkeypatch, capsys):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    from eain_dist.data.synthetic import generate

    generate(str(tmp_path / "raw"), users=300, items=150, reviews=3000, categories=6, files=1, seed=5)
    secret = secrets.token_hex(16)
    monkeypatch.setenv("EAIN_JOB_SECRET_TOKEN", secret)
    submitted = ["--address", head.address, "--token-file", str(head.token_file), "--no-pip",
                 "--env", "EAIN_JOB_SECRET_TOKEN", "--follow"]
    prepared, run_dir = tmp_path / "prepared", tmp_path / "run"
    assert submit.main([*submitted, "prepare", "--set", f"data.source={tmp_path}/raw/reviews",
                        "--set", f"data.meta={tmp_path}/raw/meta", "--set", "data.format=amazon2023",
                        "--set", f"data.output={prepared}", "--set", "data.max_history=8"]) == 0, capsys.readouterr()
    assert submit.main([*submitted, "train", "--set", f"data.output={prepared}", "--set", "data.max_history=8",
                        "--set", "train.epochs=1", "--set", f"train.run_dir={run_dir}",
                        "--set", "wandb.mode=disabled", "--set", "model.mlp_hidden=[32]"]) == 0, capsys.readouterr()

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 < metrics["valid"]["auc"] < 1.0 and metrics["train"]["epochs"] == 1
    out = capsys.readouterr().out
    assert "train impressions" in out and "run directory:" in out  # the jobs' own logs, followed
    assert "EAIN_JOB_SECRET_TOKEN=<redacted>" in out and secret not in out
    client = JobSubmissionClient(head.address, headers=submit.auth_headers(token_file=str(head.token_file)))
    jobs = client.list_jobs()
    assert [job.runtime_env["env_vars"]["EAIN_JOB_SECRET_TOKEN"] for job in jobs] == [secret, secret]
    with pytest.raises(AuthenticationError, match="Authentication failed"):  # token authentication is on
        JobSubmissionClient(head.address, headers={"Authorization": "Bearer not-the-token"}).list_jobs()

    assert head.stop() == []  # every process of the head ended with it
