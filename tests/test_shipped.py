"""Nothing test-only or benchmark-only in the shipped packages: no module under `inferq`, `producer`, `worker` or
`server` imports the tiny-model builders, the simulated device, the tests or the benchmark, builds a model with
random weights, or reads a benchmark-only setting; and `Settings` has no such field."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferq.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

#: The packages a deployment installs and runs.
SHIPPED = ("inferq", "producer", "worker", "server")

#: Modules (and their submodules) the shipped code must never import: the tests and their tiny-model builders, the
#: benchmark (its simulated device included), and the demo's stand-in builders.
FORBIDDEN_MODULES = ("tests", "bench", "soak", "inferq_demo.stand_ins")

#: Names whose import, wherever they come from, means test or benchmark code: the builders of random-weight models
#: and the simulated engine.
FORBIDDEN_NAMES = frozenset(
    {
        "tiny_models",
        "stand_ins",
        "simulated",
        "simulated_device",
        "build_model",
        "build_tokenizer",
        "build_config",
        "build_cross_encoder",
        "build_nli_model",
        "build_sentence_transformer",
        "make_simulated",
        "SimulatedEngine",
        "simulated_engine_factory",
    }
)

#: Calls that make weights rather than load them (``AutoModel….from_config``) or train a tokenizer.
FORBIDDEN_CALLS = frozenset({"from_config", "train_from_iterator"})

#: The prefix of a benchmark-only setting.
BENCH_PREFIX = "bench_"


def shipped_files() -> Iterator[Path]:
    for package in SHIPPED:
        yield from sorted((ROOT / package).rglob("*.py"))


def offences(path: Path, root: Path = ROOT) -> list[str]:
    """What in ``path`` breaks the rule, one line each (``file:line: what``, the file relative to ``root``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    where = path.relative_to(root)
    found = []
    for node in ast.walk(tree):
        modules: list[str] = []
        names: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            names = [alias.name for alias in node.names]
        for module in modules:
            if any(module == bad or module.startswith(f"{bad}.") for bad in FORBIDDEN_MODULES):
                found.append(f"{where}:{node.lineno}: imports {module}")
            if FORBIDDEN_NAMES & set(module.split(".")):
                found.append(f"{where}:{node.lineno}: imports {module}")
        found += [f"{where}:{node.lineno}: imports {name}" for name in names if name in FORBIDDEN_NAMES]
        if isinstance(node, ast.Attribute):
            if node.attr.startswith(BENCH_PREFIX):
                found.append(f"{where}:{node.lineno}: reads {node.attr}")
            if node.attr in FORBIDDEN_CALLS:
                found.append(f"{where}:{node.lineno}: calls {node.attr}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(BENCH_PREFIX):
            found.append(f"{where}:{node.lineno}: names {node.value!r}")  # getattr(settings, "bench_…")
    return found


def test_the_shipped_packages_hold_no_test_or_benchmark_code() -> None:
    files = list(shipped_files())
    assert len(files) > 50  # the walk found the packages
    found = [line for path in files for line in offences(path)]
    assert found == []


def test_the_settings_have_no_benchmark_only_field() -> None:
    assert [name for name in Settings.model_fields if name.startswith(BENCH_PREFIX)] == []


@pytest.mark.parametrize(
    "source",
    [
        "from tests.support.tiny_models import build_model",
        "import bench.simulated_device",
        "from inferq_demo.stand_ins import corpus",
        "from inferq_demo import stand_ins",
        "x = settings.bench_simulated_device",
        "model = AutoModel.from_config(config)",
    ],
)
def test_the_walk_catches_each_kind_of_offence(source: str, tmp_path: Path) -> None:
    # A check that cannot fail proves nothing: each kind of offence, written in a module, is found
    path = tmp_path / "probe.py"
    path.write_text(source + "\n", encoding="utf-8")
    assert offences(path, tmp_path) != []
