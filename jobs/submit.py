"""Submit an `eain` command to a Ray cluster as a Ray job.

    python jobs/submit.py [--address URL] [--no-pip] [--follow] {prepare,train,tune,compare} [eain arguments]
    python jobs/submit.py --address http://head:8265 --follow train --config configs/amazon2023.yaml

Needs only `ray[default]` where it runs (not this package). The job gets:
- working_dir: this checkout, without environments, caches, outputs and benchmark data;
- pip: the package's dependencies from pyproject.toml except Ray (the cluster's own Ray must
  serve the job), installed by Ray on each node once and cached. `--no-pip` ships the code only,
  for clusters that already have the dependencies (cluster/aws.yaml installs them; a local head
  shares this virtual environment);
- env_vars: the W&B and AWS variables set here (WANDB_API_KEY, AWS_*, ...), so a job logs to W&B
  and reads S3 with the submitter's credentials; on AWS prefer the nodes' instance profile, and
  then no AWS key is passed. Secret values are never printed (`<redacted>`).
The address is `--address`, else RAY_ADDRESS, else the local dashboard. With Ray's token
authentication the token is read like Ray does (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH,
~/.ray/auth_token; or `--token-file`) and sent as a bearer header; it is never printed either.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("prepare", "train", "tune", "compare")
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Never uploaded: environments, caches, outputs and benchmark data (Ray's working_dir limit is
# a few hundred MiB, and none of it is code).
EXCLUDES = [".venv", ".cache", "runs", "benchmarks/work", ".git", "wandb", "__pycache__", "*.egg-info",
            ".pytest_cache", "build", "dist"]
# Passed to the job when set here.
PASSED_ENV = ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_MODE", "WANDB_BASE_URL",
              "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
              "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
SECRET_MARKERS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL")
REDACTED = "<redacted>"
# A job that pip-installed another Ray would not speak to the cluster's.
NOT_FROM_PIP = ("ray",)


@dataclass
class JobSpec:
    address: str
    entrypoint: str
    runtime_env: dict
    submission_id: str | None = None


def job_spec(command: str, args: list[str], *, address: str | None = None, pip: bool = True,
             extra_env: tuple[str, ...] = (), environ: Mapping[str, str] = os.environ,
             submission_id: str | None = None) -> JobSpec:
    """What to submit: `python jobs/<command>.py <args>` with this checkout and the passed env."""
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {', '.join(COMMANDS)}, got {command!r}")
    env = {name: environ[name] for name in (*PASSED_ENV, *extra_env) if environ.get(name)}
    runtime_env = {"working_dir": str(REPO), "excludes": EXCLUDES, "env_vars": env}
    if pip:
        runtime_env["pip"] = project_requirements(REPO / "pyproject.toml")
    return JobSpec(address=address or environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS,
                   entrypoint=shlex.join(["python", f"jobs/{command}.py", *args]),
                   runtime_env=runtime_env, submission_id=submission_id)


def project_requirements(pyproject: Path) -> list[str]:
    """[project].dependencies of pyproject.toml, without the packages the cluster provides."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise SystemExit("submit: reading pyproject.toml needs Python 3.11+ or `pip install tomli`; "
                             "or pass --no-pip when the cluster has the dependencies") from None
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [spec for spec in dependencies if _package_name(spec) not in NOT_FROM_PIP]


def _package_name(spec: str) -> str:
    for stop in "[<>=!~; ":
        spec = spec.split(stop, 1)[0]
    return spec.strip().lower()


def is_secret(name: str) -> bool:
    return any(marker in name.upper() for marker in SECRET_MARKERS)


def describe(spec: JobSpec) -> str:
    """The job as it will be submitted, for the terminal and logs: secret values redacted."""
    env = spec.runtime_env["env_vars"]
    shown = [f"{name}={REDACTED if is_secret(name) else value}" for name, value in sorted(env.items())]
    pip = spec.runtime_env.get("pip")
    return "\n".join([
        f"address:     {spec.address}",
        f"entrypoint:  {spec.entrypoint}",
        f"working_dir: {spec.runtime_env['working_dir']} (without {', '.join(EXCLUDES)})",
        f"pip:         {', '.join(pip) if pip else 'none (the cluster has the dependencies)'}",
        f"env_vars:    {', '.join(shown) if shown else 'none'}",
    ])


def auth_headers(environ: Mapping[str, str] = os.environ, token_file: str | None = None) -> dict[str, str]:
    """A bearer header with the cluster's token, found where Ray looks for it; {} without one."""
    token = environ.get("RAY_AUTH_TOKEN", "").strip() if token_file is None else ""
    if not token:
        path = token_file or environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
        token = Path(path).read_text().strip() if Path(path).is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def submit(spec: JobSpec, headers: dict[str, str]):
    """Submit; returns (client, job id)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(spec.address, headers=headers)
    job_id = client.submit_job(entrypoint=spec.entrypoint, runtime_env=spec.runtime_env,
                               submission_id=spec.submission_id)
    return client, job_id


def follow(client, job_id: str):
    """Stream the job's logs until it ends; returns its final status."""
    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    return client.get_job_status(job_id)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    spec = job_spec(args.command, args.args, address=args.address, pip=not args.no_pip,
                    extra_env=tuple(args.env), submission_id=args.job_id)
    print(describe(spec), flush=True)
    if args.dry_run:
        return 0
    client, job_id = submit(spec, auth_headers(token_file=args.token_file))
    print(f"submitted: {job_id}\n"
          f"  follow:  ray job logs --address {spec.address} --follow {job_id}\n"
          f"  status:  ray job status --address {spec.address} {job_id}\n"
          f"  stop:    ray job stop --address {spec.address} {job_id}", flush=True)
    if not args.follow:
        return 0
    status = follow(client, job_id)
    print(f"job {job_id}: {status}")
    return 0 if str(status) == "SUCCEEDED" else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobs/submit.py", description="Submit an eain command as a Ray job.")
    parser.add_argument("--address", help=f"the cluster's dashboard (default: RAY_ADDRESS, else {DEFAULT_ADDRESS})")
    parser.add_argument("--no-pip", action="store_true", help="ship the code only: the cluster has the dependencies")
    parser.add_argument("--env", action="append", default=[], metavar="NAME",
                        help="pass another environment variable to the job (repeatable)")
    parser.add_argument("--token-file", help="the cluster's auth token (default: where Ray looks)")
    parser.add_argument("--job-id", help="the submission id (default: one Ray makes up)")
    parser.add_argument("--follow", action="store_true",
                        help="stream the logs until the job ends; exit 1 unless it succeeded")
    parser.add_argument("--dry-run", action="store_true", help="print the job and submit nothing")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of `eain <command>`")
    return parser


if __name__ == "__main__":
    sys.exit(main())
