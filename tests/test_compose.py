"""docker-compose.yml: the compose tool accepts it, and what it names is real: every ``INFERQ_*`` variable it sets
is a setting, every service a dependency names exists (with a healthcheck where the dependency waits for health),
every ``inferq`` command it runs parses as that command with its options, every probe and scrape reaches a port
and a path that is served. The values themselves (images, ports, policies) are the file's to choose, not restated.

The tool-free checks read the file with PyYAML (anchors merged). `docker compose config` (the v2 plugin) or else
the standalone `docker-compose` (1.29, Debian's package) checks that the tool accepts the file, under each profile;
neither needs a Docker engine for `config`. Those skip, saying so, where this machine has neither.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest

from inferq.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
#: The services of the file that run ``inferq worker`` (each scraped by Prometheus).
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


@pytest.fixture(scope="module")
def written() -> dict[str, Any]:
    """The file as written, anchors merged (no compose tool needed)."""
    loaded = _yaml_file(COMPOSE_FILE)
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(written: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = written["services"]
    return services


def _yaml_file(path: Path) -> Any:
    if yaml is None:
        pytest.skip("pyyaml is not installed")
    return yaml.safe_load(path.read_text())


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


# -- monitoring: Prometheus, Grafana, and what they read ---------------------------------------------------------


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
    names: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets") or []:
            for name in re.findall(r"\b(inferq_[a-z0-9_]+)", target["expr"]):
                names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return names


def mount_sources(service: dict[str, Any]) -> set[str]:
    """Named volumes the service mounts (short or long syntax; bind mounts, which start with . or /, left out)."""
    sources = {v.get("source", "") if isinstance(v, dict) else v.split(":")[0] for v in service.get("volumes") or []}
    return {s for s in sources if s and not s.startswith((".", "/", "~"))}


def profiles_of(service: dict[str, Any]) -> set[str]:
    return set(service.get("profiles") or [])


def inferq_command(args: list[str]) -> click.Command:
    """The ``inferq`` command ``args`` runs, its arguments parsed as the CLI parses them: `click.UsageError` for a
    command or an option that does not exist, or a value it refuses."""
    from inferq.cli import main

    command: click.Command = main
    path = ["inferq"]
    while isinstance(command, click.Group):
        assert args, f"{' '.join(path)} needs a command"
        name, args = args[0], args[1:]
        sub = command.get_command(click.Context(command), name)
        if sub is None:
            raise click.UsageError(f"no command {name!r} in {' '.join(path)}")
        command, path = sub, [*path, name]
    command.make_context(" ".join(path), list(args))
    return command


def inferq_commands(services: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Service → the arguments of the ``inferq`` command it runs, for every service that runs one."""
    runs = {name: full_command(spec) for name, spec in services.items()}
    return {name: command[1:] for name, command in runs.items() if command and command[0] == "inferq"}


def served_paths() -> set[str]:
    """The paths the HTTP API answers GET on."""
    from server.app import create_app

    app = create_app(Settings())
    documented = {path for path, operations in app.openapi()["paths"].items() if "get" in operations}
    # and the routes kept out of the OpenAPI document (``/metrics``)
    return documented | {route.path for route in app.routes if "GET" in (getattr(route, "methods", None) or ())}


# -- tests -----------------------------------------------------------------------------------------------------------


def test_the_compose_tool_accepts_the_file_under_every_profile(tool: tuple[str, ...]) -> None:
    # given the project's compose file and the compose tool found on this machine
    assert COMPOSE_FILE.is_file()

    # when it validates the file as a plain `up` would see it, and with each profile on
    for profiles in [(), ("gpu",), ("monitoring",), ("gpu", "monitoring")]:
        done = compose(tool, "config", "--quiet", profiles=profiles)

        # then it passes
        assert done.returncode == 0, (profiles, done.stderr)


def test_every_inferq_variable_the_file_sets_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    # given every environment variable of every service, and the settings inferq reads from the environment
    prefix = Settings.model_config.get("env_prefix", "")
    settings = {f"{prefix}{name}".upper() for name in Settings.model_fields}
    set_here = {
        (service, name)
        for service, spec in services.items()
        for name in (spec.get("environment") or {})
        if name.upper().startswith(prefix.upper())
    }

    # then the file sets some, and each is the name of a real setting (a misspelt one would be ignored silently)
    assert set_here
    assert sorted((s, n) for s, n in set_here if n.upper() not in settings) == []


def test_every_dependency_exists_and_can_be_waited_for(services: dict[str, dict[str, Any]]) -> None:
    # given every depends_on of every service
    for name, spec in services.items():
        for target, condition in dependencies(spec).items():
            # then the service it names exists, starts under the same profiles (compose refuses a plain `up`
            # whose service depends on one behind a profile), and offers what the condition waits for: a
            # healthcheck for service_healthy, a one-shot run (no restart) for service_completed_successfully
            assert target in services, f"{name} depends on {target}, which is not a service"
            assert profiles_of(services[target]) <= profiles_of(spec), f"{name} depends on {target} behind a profile"
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} waits for {target}'s health; it has no check"
            elif condition == "service_completed_successfully":
                restart = str(services[target].get("restart", "no"))
                assert restart in {"no", "False", "false"}, f"{name} waits for {target} to exit; it restarts"
            else:
                assert condition == "service_started", condition


def test_every_named_volume_a_service_mounts_is_declared(written: dict[str, Any]) -> None:
    declared = set(written.get("volumes") or {})
    used = {volume for spec in written["services"].values() for volume in mount_sources(spec)}
    assert used and used <= declared, used - declared


def test_every_inferq_command_the_file_runs_is_a_real_command_with_real_options(
    services: dict[str, dict[str, Any]],
) -> None:
    # given the inferq commands the services run (migrate, the workers, the API)
    commands = inferq_commands(services)
    assert {"migrate", "api", *WORKERS} <= set(commands)

    # then each parses as the CLI parses it: the command exists and takes those options and values
    for service, args in commands.items():
        try:
            inferq_command(args)
        except click.UsageError as exc:
            raise AssertionError(f"{service}: inferq {' '.join(args)}: {exc.format_message()}") from exc
    # (and the check can fail: an option the worker does not have is refused)
    with pytest.raises(click.UsageError):
        inferq_command(["worker", "--no-such-option", "1"])


def test_services_reach_the_broker_and_database_the_file_runs(services: dict[str, dict[str, Any]]) -> None:
    # given the database and broker URLs of the inferq services, and flower's broker
    postgres = services["postgres"]["environment"]
    for name, spec in services.items():
        env = spec.get("environment") or {}
        if "INFERQ_DATABASE_URL" in env:
            # then the database is the postgres service's, with its user, password and database
            url = urlsplit(env["INFERQ_DATABASE_URL"])
            assert url.hostname in services, f"{name}: {url.hostname} is not a service"
            assert (url.username, url.password, url.path.lstrip("/")) == (
                postgres["POSTGRES_USER"],
                postgres["POSTGRES_PASSWORD"],
                postgres["POSTGRES_DB"],
            ), name
        if "INFERQ_BROKER_URL" in env:
            assert urlsplit(env["INFERQ_BROKER_URL"]).hostname in services, name
    # and flower watches the broker the workers use
    brokers = {services[w]["environment"]["INFERQ_BROKER_URL"] for w in WORKERS}
    assert {option(full_command(services["flower"]), "--broker")} == brokers


def test_a_worker_reserves_a_gpu_exactly_when_it_runs_on_one(services: dict[str, dict[str, Any]]) -> None:
    for worker in WORKERS:
        device = option(full_command(services[worker]), "--device") or "cpu"
        reserved = ((services[worker].get("deploy") or {}).get("resources") or {}).get("reservations") or {}
        gpus = [d for d in reserved.get("devices") or [] if "gpu" in d.get("capabilities", [])]
        assert bool(gpus) == device.startswith("cuda"), (worker, device, gpus)
        assert (profiles_of(services[worker]) == {"gpu"}) == device.startswith("cuda"), worker


def test_the_api_publishes_the_port_it_serves_on_and_its_healthcheck_asks_a_served_path(
    services: dict[str, dict[str, Any]],
) -> None:
    # given the api's command, published ports and healthcheck
    api = services["api"]
    port = option(full_command(api), "--port")
    urls = re.findall(r"https?://[^'\"\s]+", " ".join(argv(api["healthcheck"]["test"])))

    # then it publishes the port `inferq serve` listens on, and the healthcheck asks that port for a path it serves
    assert port is not None and int(port) in published_targets(api)
    assert len(urls) == 1, urls
    probe = urlsplit(urls[0])
    assert probe.port == int(port)
    assert probe.path in served_paths()


def test_prometheus_scrapes_every_worker_on_the_port_it_serves_metrics_on(
    services: dict[str, dict[str, Any]],
) -> None:
    # given the scrape configuration and each worker's command
    config = _yaml_file(PROMETHEUS_CONFIG)
    ports = {worker: option(full_command(services[worker]), "--metrics-port") for worker in WORKERS}

    # then every worker serves metrics, on the one port Prometheus scrapes, and every worker service is a target
    assert all(ports.values()), ports
    assert {int(p) for p in ports.values() if p} == scrape_ports(config)[WORKERS_JOB]
    assert scrape_hosts(config, WORKERS_JOB) == set(WORKERS)


def test_prometheus_scrapes_the_api_on_the_port_it_serves(services: dict[str, dict[str, Any]]) -> None:
    # given the scrape configuration and the api service's command
    config = _yaml_file(PROMETHEUS_CONFIG)
    port = option(full_command(services["api"]), "--port")

    # then the API's scrape job reads a path the API serves, of the api service on the port it serves on
    job = scrape_job(config, API_JOB)
    assert job.get("metrics_path", "/metrics") in served_paths()
    assert scrape_hosts(config, API_JOB) == {"api"}
    assert port is not None and scrape_ports(config)[API_JOB] == {int(port)}


def test_the_monitoring_services_mount_files_of_the_repository(services: dict[str, dict[str, Any]]) -> None:
    # given the bind mounts of Prometheus and Grafana
    for name in ("prometheus", "grafana"):
        for volume in services[name].get("volumes") or []:
            source = volume.get("source", "") if isinstance(volume, dict) else volume.split(":")[0]
            # then each file or folder they mount from the repository exists
            if source.startswith("."):
                assert (ROOT / source).exists(), (name, source)
    # and Prometheus reads the configuration file it mounts
    config_file = option(full_command(services["prometheus"]), "--config.file")
    assert config_file in mount_targets(services["prometheus"])


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


def test_the_dashboard_reads_the_provisioned_prometheus_data_source(services: dict[str, dict[str, Any]]) -> None:
    # given the provisioned data source, the dashboard provider and the dashboard
    datasources = _yaml_file(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    provider = _yaml_file(GRAFANA / "provisioning" / "dashboards" / "inferq.yml")["providers"][0]
    dashboard = json.loads((GRAFANA / "dashboards" / "inferq.json").read_text())

    # then every panel reads the provisioned Prometheus (by uid), which is the compose service, and the provider
    # reads the folder the dashboards are mounted at
    (source,) = datasources
    assert source["type"] == "prometheus"
    assert urlsplit(source["url"]).hostname in services
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    uids |= {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert uids == {source["uid"]}
    assert provider["options"]["path"] in mount_targets(services["grafana"])
