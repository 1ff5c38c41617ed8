"""The deployment files run the same service: docker-compose, Kubernetes and SLURM.

What is pinned here:

1. ``docker-compose.yml`` is a valid Compose file (``docker-compose config -q``), needs
   POSTGRES_PASSWORD from ``.env`` and never holds it, and keeps the scalable services
   scalable (no container_name, no fixed host port).
2. The Kubernetes base and overlays, rendered here in Python the way kustomize does for
   the features they use, validate against the Kubernetes JSON schemas in strict mode
   (``kubernetes-validate``); the DSN only ever comes from the Secret.
3. Every ``calabaria`` / ``dask`` command line in the compose file, the manifests, the
   Dockerfile and the SLURM scripts is parsed (not run) by the real CLI parsers, so a
   renamed or unknown command or option fails here rather than in a pod.
4. The compose topology (a Dask scheduler, 2 workers, one ``calabaria calibrate`` and one
   ``calabaria worker`` on PostgreSQL, with the compose services' commands and
   environment) runs without Docker and spends exactly the job's trial budget.

A check whose tool is missing (docker-compose) fails under CI=true and skips elsewhere.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import pytest
import typer
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
K8S = REPO / "deploy" / "k8s"
SLURM = REPO / "deploy" / "slurm"
EXAMPLE = REPO / "examples" / "seir"
BIN = Path(sys.executable).parent  # the venv's console scripts: calabaria, dask

# Variables the compose file reads from the shell / .env: removed from the environment of
# every docker-compose run so that the developer's own values cannot mask a problem.
COMPOSE_VARS = ("POSTGRES_PASSWORD", "PARALLEL_TRIALS", "DASK_WORKER_THREADS", "DASK_WORKER_MEMORY", "CALABARIA_TAG")

# Values for variables a command line refers to without a default (${VAR:-default} uses
# its default). A new variable must be added here: an unknown one fails the test, so that
# every command line is parsed with realistic, correctly typed values.
PLACEHOLDERS = {
    "POSTGRES_PASSWORD": "placeholder-password",
    "POD_NAME": "pod-0",
    "JOB_FILE": "examples/seir/job.yaml",
    "STUDY": "seir-demo",
    "RUN_DIR": "runs/seir-demo",
    "SLURM_CPUS_PER_TASK": "8",
    "SLURM_ARRAY_TASK_ID": "1",
    "CALABARIA_STORAGE": "postgresql://calabaria:placeholder-password@postgres:5432/calabaria",
}

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing_tool(message: str) -> None:
    if CI:
        pytest.fail(message)
    pytest.skip(message)


# ----------------------------------------------------------------------------------------
# Variable expansion (placeholders instead of real values)
# ----------------------------------------------------------------------------------------

_SHELL_VAR = re.compile(r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")
_K8S_VAR = re.compile(r"\$\$|\$\((?P<name>[A-Za-z_][A-Za-z0-9_]*)\)")


def _lookup(name: str, values: Mapping[str, str], where: str) -> str:
    if name in values:
        return values[name]
    if name in PLACEHOLDERS:
        return PLACEHOLDERS[name]
    pytest.fail(f"{where}: no placeholder for ${name}: add one to PLACEHOLDERS in {Path(__file__).name}")


def expand_shell(text: str, where: str, values: Mapping[str, str] | None = None) -> str:
    """Expand Compose / POSIX shell references: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR:?msg}."""
    values = values or {}

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        if op in (":-", "-") and name not in values:
            return expand_shell(arg, where, values)
        return _lookup(name, values, where)

    return _SHELL_VAR.sub(sub, text)


def expand_k8s(text: str, where: str, env: Mapping[str, str]) -> str:
    """Expand Kubernetes $(VAR) references the way the kubelet does for command and args."""
    return _K8S_VAR.sub(lambda m: "$" if m.group(0) == "$$" else _lookup(m.group("name"), env, where), text)


# ----------------------------------------------------------------------------------------
# Command-line parsing with the real parsers
# ----------------------------------------------------------------------------------------

class CommandLineError(Exception):
    """A command line that the program it names would reject."""


def parse_command(argv: Sequence[str]) -> dict[str, Any]:
    """Parse (never run) a ``calabaria`` or ``dask`` command line with the program's own parser.

    Returns:
        The parsed parameters of the subcommand.

    Raises:
        CommandLineError: unknown program, subcommand or option, a bad value, or a
            missing required parameter.
    """
    argv = list(argv)
    if len(argv) < 2:
        raise CommandLineError(f"no subcommand in {argv}")
    program, name, args = Path(argv[0]).name, argv[1], argv[2:]
    if program == "calabaria":
        from modelops_calabaria.cli import app

        group = typer.main.get_command(app)
        command = getattr(group, "commands", {}).get(name)
    elif program == "dask":
        from distributed.cli import dask_scheduler, dask_worker

        command = {"scheduler": dask_scheduler.main, "worker": dask_worker.main}.get(name)
    else:
        raise CommandLineError(f"not a calabaria or dask command line: {argv}")
    if command is None:
        raise CommandLineError(f"{program}: no such command {name!r}")
    try:
        ctx = command.make_context(name, args, resilient_parsing=False)
    except (typer.TyperException, click.ClickException) as e:  # typer vendors its own click
        raise CommandLineError(f"{shlex.join(argv)}: {e}") from e
    with ctx:
        return dict(ctx.params)


def _is_parsed_program(argv: Sequence[str]) -> bool:
    return bool(argv) and Path(argv[0]).name in ("calabaria", "dask")


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment a container has: `calabaria worker` reads --storage from CALABARIA_STORAGE."""
    monkeypatch.setenv("CALABARIA_STORAGE", PLACEHOLDERS["CALABARIA_STORAGE"])


# ----------------------------------------------------------------------------------------
# docker-compose
# ----------------------------------------------------------------------------------------

def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def compose_commands(compose: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """(service, argv) of every calabaria/dask command in a compose file, variables expanded."""
    found = []
    for name, service in compose["services"].items():
        command = service.get("command")
        if command is None:
            continue
        argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
        argv = [expand_shell(a, f"compose service {name}") for a in argv]
        if _is_parsed_program(argv):
            found.append((name, argv))
    return found


def _docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        _missing_tool("docker-compose is not installed (scripts/test.sh installs Debian's docker-compose)")
    return exe


def compose_config(compose_file: Path, env_file: Path) -> subprocess.CompletedProcess[str]:
    """`docker-compose config -q` on a file, relative paths resolved against the repository."""
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARS and not k.startswith("COMPOSE_")}
    return subprocess.run(
        [_docker_compose(), "-f", str(compose_file), "--project-directory", str(REPO), "--env-file", str(env_file),
         "config", "-q"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )


def test_compose_file_is_valid_with_the_example_env_file():
    result = compose_config(COMPOSE_FILE, REPO / ".env.example")
    assert result.returncode == 0, result.stderr


def test_compose_validation_fails_on_a_typo(tmp_path: Path):
    text = COMPOSE_FILE.read_text()
    good, bad = tmp_path / "good.yml", tmp_path / "bad.yml"
    good.write_text(text)
    bad.write_text(text.replace("healthcheck:", "healthchek:", 1))
    assert compose_config(good, REPO / ".env.example").returncode == 0  # the copy itself is fine
    result = compose_config(bad, REPO / ".env.example")
    assert result.returncode != 0
    assert "healthchek" in result.stderr


def test_compose_requires_the_postgres_password(tmp_path: Path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = compose_config(COMPOSE_FILE, empty)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_compose_topology_and_secrets():
    compose = load_compose()
    services = compose["services"]
    assert {"postgres", "dask-scheduler", "dask-worker", "calibration", "coordinator", "optuna-dashboard"} <= set(services)

    # Scalable with --scale: a fixed container name or host port would collide.
    for name in ("dask-worker", "coordinator"):
        assert "container_name" not in services[name], name
        assert "ports" not in services[name], name
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
    assert any(str(p).endswith(":8787") for p in services["dask-scheduler"]["ports"])

    pg = services["postgres"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    volume = pg["volumes"][0].split(":")[0]
    assert volume in compose["volumes"], "the database needs a named volume"
    assert pg["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")

    for name in ("calibration", "coordinator"):
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert "dask-scheduler" in deps, name
        env = services[name]["environment"]
        assert env["CALABARIA_STORAGE"].startswith("postgresql://calabaria:${POSTGRES_PASSWORD"), name
        assert expand_shell(env["PARALLEL_TRIALS"], name) == "true"  # the default when .env says nothing
    assert "./examples/seir:/jobs:ro" in services["calibration"]["volumes"]
    # Every calabaria/dask container runs the one image built from deploy/Dockerfile.
    for name, _argv in compose_commands(compose):
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile", name

    # Secrets: a placeholder in the example, the real file ignored by git and by docker build.
    example = dict(line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
    assert "placeholder" in example["POSTGRES_PASSWORD"]
    assert re.search(r"^/?\.env$", (REPO / ".gitignore").read_text(), re.M)
    dockerignore = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    assert "*" in dockerignore, ".dockerignore is a whitelist"
    assert not any(line.startswith("!.env") or line == "!*" for line in dockerignore)


def test_dockerfile_contract():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^RUN pip install \.", text, re.M)
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert re.search(r'^HEALTHCHECK .*CMD \["calabaria", "version"\]', text, re.M)


# ----------------------------------------------------------------------------------------
# Kubernetes: a small kustomize for the features the manifests use
# ----------------------------------------------------------------------------------------

_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "components", "patches", "labels"}
_POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def _load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _apply_json6902(doc: dict[str, Any], ops: list[dict[str, Any]], where: str) -> None:
    for op in ops:
        *parents, last = _pointer(op["path"])
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if op["op"] == "replace":
            if isinstance(node, list):
                node[int(last)] = op["value"]
            else:
                if last not in node:
                    raise KeyError(f"{where}: replace of missing path {op['path']}")
                node[last] = op["value"]
        elif op["op"] == "add":
            if isinstance(node, list):
                node.insert(len(node) if last == "-" else int(last), op["value"])
            else:
                node[last] = op["value"]
        elif op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise NotImplementedError(f"{where}: JSON patch op {op['op']!r}")


def kustomize(directory: Path, inherited: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Render a kustomization (or apply a Component to ``inherited``) like ``kubectl kustomize``.

    Supports resources (files and directories), components, JSON 6902 patches with a kind/name
    target and labels on metadata; anything else raises, so a manifest never silently uses a
    feature this rendering ignores.
    """
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - _KUSTOMIZATION_KEYS
    if unknown:
        raise NotImplementedError(f"{directory}: kustomization fields {sorted(unknown)} are not rendered by this test")
    docs = list(inherited or [])
    for resource in k.get("resources", []):
        path = (directory / resource).resolve()
        docs += kustomize(path) if path.is_dir() else _load_yaml_docs(path)
    for component in k.get("components", []):
        docs = kustomize((directory / component).resolve(), docs)
    for label in k.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise NotImplementedError(f"{directory}: labels on selectors/templates")
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    for patch in k.get("patches", []):
        target = patch["target"]
        if set(target) - {"kind", "name"}:
            raise NotImplementedError(f"{directory}: patch target selectors {sorted(target)}")
        body = yaml.safe_load(patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text())
        if not isinstance(body, list):
            raise NotImplementedError(f"{directory}: only JSON 6902 patches are rendered")
        matches = [d for d in docs if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        if not matches:  # stricter than kustomize: a patch that matches nothing is a typo
            raise LookupError(f"{directory}: patch target {target} matches no resource")
        for doc in matches:
            _apply_json6902(doc, body, f"{directory} patch {target}")
    return docs


def _k8s_schema_version() -> str:
    import kubernetes_validate.utils

    return kubernetes_validate.utils.latest_version()


def validate_k8s(docs: list[dict[str, Any]]) -> None:
    """Validate every resource against the Kubernetes schemas; unknown fields are errors."""
    import kubernetes_validate

    version = _k8s_schema_version()
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), f"duplicate resources: {names}"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


RENDERED = ["base", "overlays/small"]


def pod_containers(doc: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    if doc["kind"] not in _POD_TEMPLATE_KINDS:
        return
    spec = doc["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def k8s_commands(docs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(resource/container, argv) of every calabaria/dask command line, $(VAR) expanded."""
    found = []
    for doc in docs:
        for c in pod_containers(doc):
            where = f"{doc['kind']}/{doc['metadata']['name']}/{c['name']}"
            env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
            argv = [expand_k8s(str(a), where, env) for a in [*c.get("command", []), *c.get("args", [])]]
            if _is_parsed_program(argv):
                found.append((where, argv))
    return found


@pytest.mark.parametrize("kustomization", RENDERED)
def test_k8s_manifests_validate_against_the_kubernetes_schemas(kustomization: str):
    docs = kustomize(K8S / kustomization)
    validate_k8s(docs)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("StatefulSet", "postgres"), ("Service", "postgres"), ("Deployment", "dask-scheduler"),
            ("Service", "dask-scheduler"), ("Deployment", "dask-worker"), ("ConfigMap", "calabaria-job"),
            ("ConfigMap", "calabaria-settings"), ("Job", "calabaria-calibrate"), ("Job", "calabaria-coordinators")} <= kinds
    # The Secret is created with kubectl, never applied from the repository.
    assert not any(d["kind"] == "Secret" for d in docs)


def test_k8s_rendering_matches_kubectl_kustomize():
    """Cross-check the rendering above against the real kustomize, where kubectl is installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the Python rendering is checked on its own")
    def key(d: dict[str, Any]) -> tuple[str, str]:
        return (d["kind"], d["metadata"]["name"])
    for kustomization in RENDERED:
        result = subprocess.run([kubectl, "kustomize", str(K8S / kustomization)], capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        theirs = sorted((d for d in yaml.safe_load_all(result.stdout) if d), key=key)
        ours = sorted(kustomize(K8S / kustomization), key=key)
        assert ours == theirs, kustomization


def test_k8s_small_overlay_shrinks_the_base():
    base = {(d["kind"], d["metadata"]["name"]): d for d in kustomize(K8S / "base")}
    small = {(d["kind"], d["metadata"]["name"]): d for d in kustomize(K8S / "overlays/small")}
    assert small["Deployment", "dask-worker"]["spec"]["replicas"] < base["Deployment", "dask-worker"]["spec"]["replicas"]
    assert small["Job", "calabaria-coordinators"]["spec"]["parallelism"] < base["Job", "calabaria-coordinators"]["spec"]["parallelism"]
    assert ("Deployment", "optuna-dashboard") in small


@pytest.mark.parametrize("typo", [
    ("dask.yaml", "        - name: worker\n", "        - nmae: worker\n"),  # unknown field
    ("calibration-jobs.yaml", "  backoffLimit: 6\n", "  backoffLimit: six\n"),  # wrong type
])
def test_k8s_validation_fails_on_a_typo(tmp_path: Path, typo: tuple[str, str, str]):
    import kubernetes_validate

    shutil.copytree(K8S, tmp_path / "k8s")
    validate_k8s(kustomize(tmp_path / "k8s" / "base"))  # the copy itself is valid
    file, good, bad = typo
    path = tmp_path / "k8s" / "base" / file
    assert good in path.read_text()
    path.write_text(path.read_text().replace(good, bad, 1))
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(kustomize(tmp_path / "k8s" / "base"))


def test_k8s_secret_handling():
    import kubernetes_validate

    template = K8S / "base" / "secret.example.yaml"
    (secret,) = _load_yaml_docs(template)
    kubernetes_validate.validate(secret, _k8s_schema_version(), strict=True)
    assert all("placeholder" in v for v in secret["stringData"].values())
    assert "kubectl" in template.read_text() and "create secret" in template.read_text()
    assert "secret.example.yaml" not in (K8S / "base" / "kustomization.yaml").read_text().split("resources:")[1]

    secret_keys = set(secret["stringData"])
    for kustomization in RENDERED:
        for doc in kustomize(K8S / kustomization):
            for c in pod_containers(doc):
                for e in c.get("env", []):
                    if e["name"] in ("CALABARIA_STORAGE", "POSTGRES_PASSWORD"):
                        ref = e.get("valueFrom", {}).get("secretKeyRef")
                        assert ref and "value" not in e, f"{doc['metadata']['name']}: {e['name']} must come from the Secret"
                        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret_keys
            if doc["kind"] == "ConfigMap":
                assert not {"CALABARIA_STORAGE", "POSTGRES_PASSWORD"} & set(doc["data"])


def test_k8s_jobs_are_bounded_and_sized():
    docs = kustomize(K8S / "base")
    jobs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Job"}
    for name, job in jobs.items():
        assert job["spec"]["backoffLimit"] >= 1, name
        assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never"), name
    for doc in docs:
        for c in pod_containers(doc):
            assert c.get("resources", {}).get("requests"), f"{doc['metadata']['name']}/{c['name']} has no resource requests"
            assert c["resources"].get("limits", {}).get("memory"), f"{doc['metadata']['name']}/{c['name']} has no memory limit"


def _study_option(argv: Sequence[str]) -> str:
    return argv[list(argv).index("--study") + 1]


def test_k8s_job_configmap_is_a_valid_job_for_the_coordinators(tmp_path: Path):
    """The embedded job passes `calabaria validate`, and the coordinators join its study."""
    docs = kustomize(K8S / "base")
    (job_cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "calabaria-job"]
    for key, content in job_cm["data"].items():  # the volume: one file per key under /jobs
        (tmp_path / key).write_text(content)
    result = subprocess.run([str(BIN / "calabaria"), "validate", str(tmp_path / "job.yaml")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    study = yaml.safe_load(job_cm["data"]["job.yaml"])["study"]
    workers = [argv for _where, argv in k8s_commands(docs) if argv[:2] == ["calabaria", "worker"]]
    assert workers and all(_study_option(argv) == study for argv in workers)
    settings = next(d for d in docs if d["metadata"]["name"] == "calabaria-settings")
    assert settings["data"]["PARALLEL_TRIALS"] in ("true", "false")


def test_compose_coordinators_join_the_mounted_jobs_study():
    study = yaml.safe_load((EXAMPLE / "job.yaml").read_text())["study"]
    workers = [argv for _name, argv in compose_commands(load_compose()) if argv[:2] == ["calabaria", "worker"]]
    assert workers and all(_study_option(argv) == study for argv in workers)


# ----------------------------------------------------------------------------------------
# SLURM
# ----------------------------------------------------------------------------------------

def _load_dask_slurm_script() -> Any:
    spec = importlib.util.spec_from_file_location("dask_slurm_cluster", SLURM / "dask_slurm_cluster.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports dask_jobqueue only when a cluster is made
    return module


def slurm_commands() -> list[tuple[str, list[str]]]:
    """(file, argv) of the lines marked `srun calabaria ...` in the sbatch scripts, and the
    command dask_slurm_cluster.py runs."""
    found = []
    for script in sorted(SLURM.glob("*.sbatch")):
        for number, line in enumerate(script.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith(("srun calabaria", "calabaria ")):
                argv = shlex.split(stripped)
                argv = argv[1:] if argv[0] == "srun" else argv
                where = f"{script.name}:{number}"
                found.append((where, [expand_shell(a, where) for a in argv]))
    module = _load_dask_slurm_script()
    args = module.parse_args(["examples/seir/job.yaml", "--jobs", "2", "--", "--max-trials", "50"])
    found.append(("dask_slurm_cluster.py", module.build_calabaria_command(args.job_file, "tcp://10.0.0.1:8786",
                                                                          args.calibrate_args)))
    return found


def test_sbatch_scripts_are_valid_bash():
    for script in [*SLURM.glob("*.sbatch"), *SLURM.glob("*.sh")]:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"
        assert "#SBATCH" in script.read_text() or script.suffix == ".sh"


# ----------------------------------------------------------------------------------------
# 3. Every command line, everywhere, parses with the real CLI
# ----------------------------------------------------------------------------------------

def _dockerfile_commands() -> list[tuple[str, list[str]]]:
    found = []
    for instruction, body in re.findall(r"^(HEALTHCHECK|CMD|ENTRYPOINT)\b(.*)$", DOCKERFILE.read_text(), re.M):
        exec_form = re.search(r"(?:^|CMD\s+)(\[.*\])\s*$", body.strip())
        if exec_form:
            argv = json.loads(exec_form.group(1))
            if _is_parsed_program(argv):
                found.append((f"Dockerfile {instruction}", argv))
    return found


def all_command_lines() -> dict[str, list[tuple[str, list[str]]]]:
    return {
        "compose": compose_commands(load_compose()),
        "k8s": [c for k in RENDERED for c in k8s_commands(kustomize(K8S / k))],
        "slurm": slurm_commands(),
        "docker": _dockerfile_commands(),
    }


def _subcommands(found: list[tuple[str, list[str]]]) -> set[str]:
    return {f"{Path(argv[0]).name} {argv[1]}" for _where, argv in found}


@pytest.mark.usefixtures("cli_env")
def test_every_command_line_parses_with_the_cli():
    found = all_command_lines()
    # Each deployment path really starts what it claims to (the scan found the lines).
    assert {"calabaria calibrate", "calabaria worker", "dask scheduler", "dask worker"} <= _subcommands(found["compose"])
    assert {"calabaria calibrate", "calabaria worker", "dask scheduler", "dask worker"} <= _subcommands(found["k8s"])
    assert {"calabaria calibrate", "calabaria worker"} <= _subcommands(found["slurm"])
    assert {"calabaria version"} <= _subcommands(found["docker"])
    for path, commands in found.items():
        for where, argv in commands:
            try:
                parse_command(argv)
            except CommandLineError as e:
                pytest.fail(f"{path} {where}: {e}")


@pytest.mark.usefixtures("cli_env")
@pytest.mark.parametrize("argv", [
    ["calabaria", "calibrat", "job.yaml"],  # unknown command
    ["calabaria", "calibrate", "job.yaml", "--parallel-trials"],  # unknown option
    ["calabaria", "worker", "--study", "s", "--wiat", "300"],  # misspelt option
    ["calabaria", "worker", "--study", "s", "--workers", "many"],  # wrong type
    ["calabaria", "status", "--json", "--study"],  # --study without its value (status itself takes a run directory or --study)
    ["dask", "worker", "tcp://dask-scheduler:8786", "--nthread", "2"],
    ["dask", "scheduler", "--prot", "8786"],
    ["python", "-m", "modelops_calabaria"],
])
def test_the_command_line_check_rejects_bad_commands(argv: list[str]):
    with pytest.raises(CommandLineError):
        parse_command(argv)


@pytest.mark.usefixtures("cli_env")
def test_a_misspelt_option_in_the_compose_file_fails_the_check():
    compose = load_compose()
    broken = copy.deepcopy(compose)
    command = broken["services"]["coordinator"]["command"]
    command[command.index("--wait")] = "--wiat"
    with pytest.raises(CommandLineError, match="--wiat"):
        for _where, argv in compose_commands(broken):
            parse_command(argv)


def test_unknown_variables_in_command_lines_fail_the_check():
    with pytest.raises(pytest.fail.Exception, match="NO_SUCH_VAR"):
        expand_shell("--output ${NO_SUCH_VAR}", "here")
    assert expand_shell("${X:-3}", "here") == "3" and expand_shell("$${X}", "here") == "${X}"
    assert expand_k8s("$(POD_NAME)", "here", {"POD_NAME": "p-1"}) == "p-1"


# ----------------------------------------------------------------------------------------
# 4. The compose topology without Docker
# ----------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return f"--- {path.name}\n" + "\n".join(text.splitlines()[-lines:])


def _wait_for_workers(dashboard: str, n: int, deadline: float, logs: list[Path]) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{dashboard}/json/counts.json", timeout=2) as r:
                if json.load(r)["workers"] >= n:
                    return
        except OSError:
            pass  # the scheduler is still starting
        time.sleep(0.3)
    pytest.fail(f"{n} Dask workers did not connect in time\n" + "\n".join(_tail(p) for p in logs))


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """End the process groups this test started (dask nannies have children): SIGTERM, then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for p in processes:
            try:
                os.killpg(p.pid, sig)  # the group of a process started with start_new_session
            except ProcessLookupError:
                pass  # already gone, children included
        deadline = time.monotonic() + grace
        for p in processes:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(150)
def test_compose_topology_runs_without_docker(pg_url: str, tmp_path: Path):
    compose = load_compose()
    services = compose["services"]
    budget = 30
    study = f"deploy-{uuid.uuid4().hex[:10]}"
    job = yaml.safe_load((EXAMPLE / "job.yaml").read_text())
    job.update(study=study, max_trials=budget, n_replicates=2)
    jobs_dir = tmp_path / "jobs"  # plays the compose mount ./examples/seir:/jobs
    jobs_dir.mkdir()
    (jobs_dir / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    shutil.copy(EXAMPLE / "cases.csv", jobs_dir / "cases.csv")

    port, dashboard_port = _free_port(), _free_port()
    address = f"tcp://127.0.0.1:{port}"
    # Container names and paths of the compose file, as they are on this machine.
    translate = {"tcp://dask-scheduler:8786": address, "8786": str(port), ":8787": f"127.0.0.1:{dashboard_port}",
                 "/jobs/job.yaml": str(jobs_dir / "job.yaml"), "seir-demo": study}

    def command(service: str) -> list[str]:
        (argv,) = [a for name, a in compose_commands(compose) if name == service]
        argv = [translate.get(a, a) for a in argv]
        return [str(BIN / argv[0]), *argv[1:]]

    # The calabaria services' environment, with the database URL of this machine.
    compose_env = services["calibration"]["environment"]
    assert compose_env == services["coordinator"]["environment"]
    service_env = {k: expand_shell(str(v), "compose environment") for k, v in compose_env.items()}
    service_env.update(CALABARIA_STORAGE=pg_url, CALABARIA_SCHEDULER=address)
    assert service_env["PARALLEL_TRIALS"] == "true"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CALABARIA_") and k != "PARALLEL_TRIALS"}
    env = {**base_env, **service_env}

    processes: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []

    def start(name: str, argv: list[str], extra: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        log = tmp_path / f"{name}.log"
        logs.append(log)
        with log.open("wb") as out:  # the child keeps its own descriptor
            p = subprocess.Popen([*argv, *extra], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        processes.append(p)
        return p

    deadline = time.monotonic() + 120
    try:
        start("dask-scheduler", command("dask-scheduler"), ["--host", "127.0.0.1"])
        for i in range(2):  # docker-compose up --scale dask-worker=2
            start(f"dask-worker-{i}", command("dask-worker"), ["--host", "127.0.0.1"])
        _wait_for_workers(f"http://127.0.0.1:{dashboard_port}", 2, time.monotonic() + 45, logs)

        coordinators = [start("calibration", command("calibration")), start("coordinator", command("coordinator"))]
        for p in coordinators:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail("the calibration did not finish in time\n" + "\n".join(_tail(log) for log in logs))
        assert [p.returncode for p in coordinators] == [0, 0], "\n".join(_tail(log) for log in logs)

        status = subprocess.run([str(BIN / "calabaria"), "status", "--study", study, "--storage", pg_url, "--json"],
                                env=base_env, capture_output=True, text=True, timeout=60, check=False)
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        trials = info["trials"]
        assert trials["total"] == budget, trials
        assert trials["RUNNING"] == 0 and trials.get("WAITING", 0) == 0, trials
        assert trials["COMPLETE"] + trials["FAIL"] + trials["PRUNED"] == budget, trials
        assert info["budget"]["max_trials"] == budget
    finally:
        _stop(processes)
