"""docker-compose.yml: the compose tool accepts it, and it wires the services the way the deployment needs.

Runs `docker compose config` (the v2 plugin) or else the standalone `docker-compose` (1.29, Debian's package);
neither needs a Docker engine for `config`. Skips, saying so, where this machine has neither.
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEFAULT_SERVICES = {"redis", "postgres", "migrate", "worker-cpu", "api", "flower"}
GPU_SERVICES = {"worker-gpu"}
MONITORING_SERVICES = {"prometheus", "grafana"}
WORKERS = ("worker-cpu", "worker-gpu")
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"

yaml: Any
try:
    yaml = importlib.import_module("yaml")
except ImportError:  # pragma: no cover - pyyaml is in the dev extras
    yaml = None


# -- the compose tool ------------------------------------------------------------------------------------------------


def _clean_env() -> dict[str, str]:
    """The environment without COMPOSE_* settings (a COMPOSE_PROFILES or COMPOSE_FILE in the shell would change
    what is rendered) and without the variables the file interpolates, so that the defaults are what is checked."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "INFERQ_"))}


def _runs(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30, env=_clean_env()).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@cache
def _tool() -> tuple[str, ...] | None:
    if shutil.which("docker") and _runs(["docker", "compose", "version"]):
        return ("docker", "compose")
    standalone = shutil.which("docker-compose")
    if standalone and _runs([standalone, "version"]):
        return (standalone,)
    return None


@pytest.fixture(scope="module")
def tool() -> tuple[str, ...]:
    found = _tool()
    if found is None:
        pytest.skip("no docker compose tool on this machine (neither `docker compose` nor `docker-compose`)")
    return found


def compose(tool: tuple[str, ...], *args: str, profiles: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    profile_args = [arg for p in profiles for arg in ("--profile", p)]
    return subprocess.run(
        [*tool, "-f", str(COMPOSE_FILE), *profile_args, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
    )


def render(tool: tuple[str, ...], profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    """The file as the tool resolves it (anchors merged, variables interpolated), as a dict."""
    if yaml is not None:
        result = compose(tool, "config", profiles=profiles)
        assert result.returncode == 0, result.stderr
        loaded = yaml.safe_load(result.stdout)
    elif tool == ("docker", "compose"):
        result = compose(tool, "config", "--format", "json", profiles=profiles)
        assert result.returncode == 0, result.stderr
        loaded = json.loads(result.stdout)
    else:
        pytest.skip("pyyaml is not installed and docker-compose 1.x renders YAML only: structure not checked")
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def gpu_config(tool: tuple[str, ...]) -> dict[str, Any]:
    return render(tool, profiles=("gpu",))


@pytest.fixture(scope="module")
def services(gpu_config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return gpu_config["services"]


@pytest.fixture(scope="module")
def all_services(tool: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Every service, as rendered with both profiles on."""
    services: dict[str, dict[str, Any]] = render(tool, profiles=("gpu", "monitoring"))["services"]
    return services


# -- normalising the two tools' renderings ---------------------------------------------------------------------------


def argv(value: str | list[str] | None) -> list[str]:
    """A command as a list (a string command is split the way the shell would)."""
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def dependencies(service: dict[str, Any]) -> dict[str, str]:
    """depends_on as {service: condition}; the short (list) form means service_started."""
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return {name: "service_started" for name in depends}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in depends.items()}


def published_targets(service: dict[str, Any]) -> set[int]:
    """Container ports of the service's published ports, from the short or the long syntax."""
    targets = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            targets.add(int(port["target"]))
        else:
            targets.add(int(str(port).split("/")[0].rsplit(":", 1)[-1]))
    return targets


def mount_targets(service: dict[str, Any]) -> set[str]:
    """Container paths of the service's volumes, from the short (`src:target[:mode]`) or the long syntax."""
    return {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in service.get("volumes") or []}


def full_command(service: dict[str, Any]) -> list[str]:
    return argv(service.get("entrypoint")) + argv(service.get("command"))


def option(args: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in args."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


# -- tests -----------------------------------------------------------------------------------------------------------


def test_the_compose_tool_accepts_the_file_with_and_without_the_gpu_profile(tool: tuple[str, ...]) -> None:
    # given the project's compose file and the compose tool found on this machine
    assert COMPOSE_FILE.is_file()

    # when it validates the file, first as a plain `up` would see it, then with the gpu profile on
    plain = compose(tool, "config", "--quiet")
    with_gpu = compose(tool, "config", "--quiet", profiles=("gpu",))

    # then both pass
    assert plain.returncode == 0, plain.stderr
    assert with_gpu.returncode == 0, with_gpu.stderr


def test_every_service_is_there_and_only_the_gpu_worker_needs_the_gpu_profile(tool: tuple[str, ...]) -> None:
    # given the service lists the tool reports without and with the gpu profile
    plain = compose(tool, "config", "--services")
    with_gpu = compose(tool, "config", "--services", profiles=("gpu",))
    assert plain.returncode == 0, plain.stderr
    assert with_gpu.returncode == 0, with_gpu.stderr

    # when they are read
    plain_services = set(plain.stdout.split())
    gpu_services = set(with_gpu.stdout.split())

    # then a plain `up` has everything but the GPU worker and monitoring, and the gpu profile adds the worker
    assert plain_services >= DEFAULT_SERVICES
    assert gpu_services - MONITORING_SERVICES == DEFAULT_SERVICES | GPU_SERVICES
    # (docker-compose 1.x lists services of inactive profiles too; whatever is listed, only those are extra)
    assert plain_services - DEFAULT_SERVICES <= GPU_SERVICES | MONITORING_SERVICES


def test_the_gpu_worker_is_behind_the_gpu_profile_and_nothing_else_is(services: dict[str, dict[str, Any]]) -> None:
    # given the rendered services (gpu profile on)
    # when their profiles are read
    profiles = {name: list(spec.get("profiles") or []) for name, spec in services.items()}

    # then the GPU worker needs the gpu profile, and the rest start on a machine without a GPU
    assert profiles["worker-gpu"] == ["gpu"]
    assert all(not profiles[name] for name in DEFAULT_SERVICES), profiles
    assert all(profiles[name] == ["monitoring"] for name in MONITORING_SERVICES if name in profiles), profiles


def test_redis_keeps_queued_chunks_appendonly_and_never_evicts(services: dict[str, dict[str, Any]]) -> None:
    # given the redis service
    redis = services["redis"]

    # when its server command is read
    args = argv(redis.get("command"))

    # then it persists with an append-only file, never evicts keys, and has a healthcheck the workers wait on
    assert args[0] == "redis-server"
    assert option(args, "--appendonly") in {"yes", "True"}  # an unquoted `yes` reads as YAML 1.1's True
    assert option(args, "--maxmemory-policy") == "noeviction"
    assert "redis-cli" in argv(redis["healthcheck"]["test"])
    assert "/data" in mount_targets(redis), "the append-only file is not on a volume"


def test_postgres_has_a_healthcheck_with_pg_isready(services: dict[str, dict[str, Any]]) -> None:
    # given the postgres service
    postgres = services["postgres"]

    # when its healthcheck is read
    check = " ".join(argv(postgres["healthcheck"]["test"]))

    # then readiness is checked with pg_isready, for the database the other services use
    assert "pg_isready" in check
    assert postgres["environment"]["POSTGRES_DB"] == "inferq"


def test_migrate_is_a_one_shot_db_upgrade_after_postgres_is_healthy(services: dict[str, dict[str, Any]]) -> None:
    # given the migrate service
    migrate = services["migrate"]

    # when its command, restart policy and dependencies are read
    command = full_command(migrate)

    # then it runs `inferq db upgrade` once, after postgres is healthy
    assert " ".join(command).endswith("db upgrade"), command
    assert command[0] == "inferq"
    assert str(migrate.get("restart", "no")) in {"no", "False", "false"}
    assert dependencies(migrate).get("postgres") == "service_healthy"


@pytest.mark.parametrize("worker", WORKERS)
def test_workers_start_after_the_migration_completes_and_the_services_are_healthy(
    services: dict[str, dict[str, Any]], worker: str
) -> None:
    # given a worker service
    spec = services[worker]

    # when its dependencies are read
    depends = dependencies(spec)

    # then it waits for migrate to exit 0 and for redis and postgres to be healthy
    assert depends.get("migrate") == "service_completed_successfully"
    assert depends.get("redis") == "service_healthy"
    assert depends.get("postgres") == "service_healthy"


@pytest.mark.parametrize("service", ["migrate", "api", *WORKERS])
def test_inferq_containers_share_the_broker_database_and_model_cache_settings(
    services: dict[str, dict[str, Any]], service: str
) -> None:
    # given a service that runs inferq
    env = services[service]["environment"]

    # when its settings are read
    database, broker = env["INFERQ_DATABASE_URL"], env["INFERQ_BROKER_URL"]

    # then they point at the compose postgres and redis services
    assert database.startswith(("postgresql://", "postgresql+psycopg://")) and "@postgres:5432/" in database
    assert broker == "redis://redis:6379/0"
    assert "INFERQ_MODELS" not in env or env["INFERQ_MODELS"] in (None, "") or env["INFERQ_MODELS"].startswith("{")


@pytest.mark.parametrize("worker", WORKERS)
def test_workers_keep_the_hugging_face_cache_on_a_volume(services: dict[str, dict[str, Any]], worker: str) -> None:
    # given a worker service
    spec = services[worker]

    # when its mounts are read
    targets = mount_targets(spec)

    # then the Hugging Face cache lives on a volume, so models download once
    assert any(t.endswith("/.cache/huggingface") for t in targets), targets


def test_the_cpu_worker_runs_on_the_cpu(services: dict[str, dict[str, Any]]) -> None:
    # given the CPU worker
    command = full_command(services["worker-cpu"])

    # when its command is read
    # then it is `inferq worker --device cpu`, and it reserves no device
    assert command[:2] == ["inferq", "worker"]
    assert option(command, "--device") == "cpu"
    assert "deploy" not in services["worker-cpu"] or not services["worker-cpu"]["deploy"].get("resources")


def test_the_gpu_worker_reserves_an_nvidia_gpu_and_runs_on_cuda(services: dict[str, dict[str, Any]]) -> None:
    # given the GPU worker
    worker = services["worker-gpu"]

    # when its device reservation and command are read
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    command = full_command(worker)

    # then it reserves one NVIDIA GPU (by count or by id) and runs `inferq worker --device cuda:0 --precision auto`
    assert len(devices) == 1
    device = devices[0]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert str(device.get("count", "")) == "1" or len(device.get("device_ids") or []) == 1, device
    assert command[:2] == ["inferq", "worker"]
    assert option(command, "--device") == "cuda:0"
    assert option(command, "--precision") == "auto"


def test_the_gpu_worker_builds_a_cuda_torch_and_the_cpu_services_the_cpu_one(
    services: dict[str, dict[str, Any]],
) -> None:
    # given the build settings of the GPU worker and of the CPU services
    gpu_args = (services["worker-gpu"].get("build") or {}).get("args") or {}
    cpu_args = (services["worker-cpu"].get("build") or {}).get("args") or {}

    # when the torch index they build with is read
    gpu_index = gpu_args.get("TORCH_INDEX_URL", "")

    # then the GPU image installs torch from a CUDA index and the CPU image keeps the Dockerfile's CPU default
    assert "/whl/cu" in gpu_index, gpu_args
    assert "TORCH_INDEX_URL" not in cpu_args or cpu_args["TORCH_INDEX_URL"].endswith("/cpu")
    assert services["worker-gpu"]["image"] != services["worker-cpu"]["image"]


def test_flower_watches_the_redis_broker_on_port_5555(services: dict[str, dict[str, Any]]) -> None:
    # given the flower service
    flower = services["flower"]

    # when its command and ports are read
    command = full_command(flower)

    # then it is celery flower on the compose redis, published on 5555, started once redis is healthy
    assert "flower" in command
    assert option(command, "--broker") == "redis://redis:6379/0"
    assert 5555 in published_targets(flower)
    assert dependencies(flower).get("redis") == "service_healthy"


def test_the_api_serves_on_port_8000_after_the_migration_with_a_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    # given the api service
    api = services["api"]

    # when its command, ports, dependencies and healthcheck are read
    command = full_command(api)

    # then it is `inferq serve` on 0.0.0.0:8000, published, started once the schema is migrated, checked on /healthz
    assert command[:2] == ["inferq", "serve"]
    assert option(command, "--port") == "8000" and option(command, "--host") == "0.0.0.0"
    assert 8000 in published_targets(api)
    assert dependencies(api).get("migrate") == "service_completed_successfully"
    assert (
        dependencies(api).get("postgres") == "service_healthy" and dependencies(api).get("redis") == "service_healthy"
    )
    assert "/healthz" in " ".join(argv(api["healthcheck"]["test"]))


# -- monitoring: Prometheus, Grafana, and what they read ---------------------------------------------------------


def _yaml_file(path: Path) -> Any:
    if yaml is None:
        pytest.skip("pyyaml is not installed")
    return yaml.safe_load(path.read_text())


#: The scrape jobs of the workers and of the HTTP API.
WORKERS_JOB, API_JOB = "inferq-workers", "inferq-api"


def scrape_job(config: dict[str, Any], name: str) -> dict[str, Any]:
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == name]
    return dict(job)


def scrape_ports(config: dict[str, Any]) -> dict[str, set[int]]:
    """Per scrape job, the ports it scrapes (static ``host:port`` targets and DNS discovery's ``port``)."""
    ports: dict[str, set[int]] = {}
    for job in config["scrape_configs"]:
        found = ports.setdefault(job["job_name"], set())
        for static in job.get("static_configs") or []:
            found |= {int(target.rsplit(":", 1)[1]) for target in static["targets"]}
        for dns in job.get("dns_sd_configs") or []:
            found.add(int(dns["port"]))
    return ports


def scrape_hosts(config: dict[str, Any], name: str) -> set[str]:
    """The hosts the scrape job ``name`` scrapes."""
    hosts: set[str] = set()
    for job in [scrape_job(config, name)]:
        for static in job.get("static_configs") or []:
            hosts |= {target.rsplit(":", 1)[0] for target in static["targets"]}
        for dns in job.get("dns_sd_configs") or []:
            hosts |= set(dns["names"])
    return hosts


def dashboard_metrics(dashboard: dict[str, Any]) -> set[str]:
    """Every metric name the dashboard's queries use, without the histogram suffixes."""
    import re

    names: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets") or []:
            for name in re.findall(r"\b(inferq_[a-z0-9_]+)", target["expr"]):
                names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return names


def test_monitoring_runs_behind_its_profile_with_the_repositorys_configuration(
    all_services: dict[str, dict[str, Any]],
) -> None:
    # given Prometheus and Grafana as rendered with every profile on
    prometheus, grafana = all_services["prometheus"], all_services["grafana"]

    # then both need the monitoring profile, and mount the repository's configuration
    assert list(prometheus.get("profiles") or []) == ["monitoring"]
    assert list(grafana.get("profiles") or []) == ["monitoring"]
    assert "/etc/prometheus/prometheus.yml" in mount_targets(prometheus)
    assert {"/etc/grafana/provisioning", "/var/lib/grafana/dashboards"} <= mount_targets(grafana)
    assert option(full_command(prometheus), "--config.file") == "/etc/prometheus/prometheus.yml"
    assert 9090 in published_targets(prometheus) and 3000 in published_targets(grafana)


def test_prometheus_scrapes_every_worker_on_the_port_it_serves_metrics_on(
    all_services: dict[str, dict[str, Any]],
) -> None:
    # given the scrape configuration and each worker's command
    config = _yaml_file(PROMETHEUS_CONFIG)
    ports = {worker: option(full_command(all_services[worker]), "--metrics-port") for worker in WORKERS}

    # then every worker serves metrics, on the one port Prometheus scrapes, and every worker service is a target
    assert all(ports.values()), ports
    assert {int(p) for p in ports.values() if p} == scrape_ports(config)[WORKERS_JOB]
    assert scrape_hosts(config, WORKERS_JOB) == set(WORKERS)


def test_prometheus_scrapes_the_api_on_the_port_it_serves(all_services: dict[str, dict[str, Any]]) -> None:
    # given the scrape configuration and the api service's command
    config = _yaml_file(PROMETHEUS_CONFIG)
    port = option(full_command(all_services["api"]), "--port")

    # then the API's scrape job reads /metrics of the api service on the port it serves on
    job = scrape_job(config, API_JOB)
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert scrape_hosts(config, API_JOB) == {"api"}
    assert port is not None and scrape_ports(config)[API_JOB] == {int(port)}


def test_the_scrape_configuration_matches_the_workers_port_without_the_compose_tool() -> None:
    # given the compose file as written (no tool needed) and the scrape configuration
    compose_file = _yaml_file(COMPOSE_FILE)
    config = _yaml_file(PROMETHEUS_CONFIG)

    # when each worker's --metrics-port is read
    ports = {option(argv(compose_file["services"][w]["command"]), "--metrics-port") for w in WORKERS}

    # then it is the port Prometheus scrapes, and the monitoring services sit behind their profile
    assert ports == {str(p) for p in scrape_ports(config)[WORKERS_JOB]}
    for name in MONITORING_SERVICES:
        assert compose_file["services"][name]["profiles"] == ["monitoring"]


def test_every_metric_the_dashboard_queries_is_one_the_code_exports() -> None:
    from inferq.metrics import STATE_METRICS, WORKER_METRICS
    from server.metrics import API_METRICS

    # given the dashboard and the names the workers, the state collector and the API export
    dashboard = json.loads((GRAFANA / "dashboards" / "inferq.json").read_text())
    used = dashboard_metrics(dashboard)
    exported = set(WORKER_METRICS) | set(STATE_METRICS) | set(API_METRICS)

    # then it queries something of each, and nothing the code does not export
    assert len(used) >= 10, used
    assert used <= exported, used - exported
    assert used & set(API_METRICS) == set(API_METRICS) and "inferq_webhook_deliveries" in used


def test_the_dashboard_reads_the_provisioned_prometheus_data_source() -> None:
    # given the provisioned data source, the dashboard provider and the dashboard
    datasources = _yaml_file(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    provider = _yaml_file(GRAFANA / "provisioning" / "dashboards" / "inferq.yml")["providers"][0]
    dashboard = json.loads((GRAFANA / "dashboards" / "inferq.json").read_text())

    # then every panel reads the provisioned Prometheus (by uid), which is the compose service
    (source,) = datasources
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    uids |= {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert uids == {source["uid"]}
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
