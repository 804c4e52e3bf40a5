"""The import arrows between the repository's own modules run one way: down the layers of DESIGN.md.

Every import is read with `ast` (module level, inside functions, relative), and so is every string
that names one of our modules ("clasp_cli.main" given to importlib, runpy, pkgutil or `python -m`;
"train_accelerate.py" given to a subprocess), so a lazy import cannot hide an arrow that climbs back up.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Bottom first; each layer stands only on itself and the layers below it (DESIGN.md, "Layers").
LAYERS = [
    ("Hub files", {"configuration_clasp", "modeling_clasp", "processing_clasp"}),
    ("library", {"evaluation", "search_clasp", "data_clasp", "backbones_clasp"}),
    ("command line and trainer", {"clasp_cli", "train_accelerate"}),
    ("experiments and measurements", {"bench", "scripts"}),
]
LAYER_OF = {name: (rank, layer) for rank, (layer, names) in enumerate(LAYERS) for name in names}
# Within one layer: the trainer stands on the library, not on the command line.
FORBIDDEN_SIDEWAYS = {("train_accelerate", "clasp_cli")}


# A string that is a module path: "clasp_cli", "clasp_cli.main", "pkg.module:attr", "train_accelerate.py".
MODULE_PATH = re.compile(r"([A-Za-z_]\w*)(\.\w+)*(:[\w.]+)?")
# The start of an f-string that builds one: f"clasp_cli.{name}".
MODULE_PREFIX = re.compile(r"([A-Za-z_]\w*)\.")


def imported_names(source: str, package: str) -> list[tuple[int, str]]:
    """(line, top-level name) of every import in `source`, a module of the top-level `package`, and of
    every string that may name a module (the caller keeps the names of our own modules)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, package if node.level else node.module.split(".")[0]))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_PATH.fullmatch(node.value):
            found.append((node.lineno, MODULE_PATH.fullmatch(node.value).group(1)))
        elif (isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant)
              and MODULE_PREFIX.match(node.values[0].value)):
            found.append((node.lineno, MODULE_PREFIX.match(node.values[0].value).group(1)))
    return sorted(found)


def own_modules():
    """(path, top-level name) of every Python file of the layers."""
    for name in LAYER_OF:
        if (ROOT / f"{name}.py").is_file():
            yield ROOT / f"{name}.py", name
        else:
            yield from ((path, name) for path in sorted((ROOT / name).rglob("*.py")))


def test_the_parser_sees_lazy_relative_and_dynamic_imports():
    source = ("import os\nfrom . import sibling\n"
              "def f():\n    from clasp_cli.audio_files import load_audio\n"
              "    importlib.import_module(f'bench.{x}')\n    __import__('scripts.gpu_run')\n")
    assert imported_names(source, "evaluation") == [(1, "os"), (2, "evaluation"), (4, "clasp_cli"), (5, "bench"), (6, "scripts")]


@pytest.mark.parametrize("call", [
    "importlib.import_module(name='clasp_cli.main')",
    "importlib.import_module('.main', package='clasp_cli')",
    "import_module_alias('clasp_cli.main')",
    "runpy.run_module('clasp_cli.main')",
    "pkgutil.resolve_name('clasp_cli.main:main')",
    "subprocess.run([sys.executable, '-m', 'clasp_cli.main', 'eval'])",
    "subprocess.run(['accelerate', 'launch', 'train_accelerate.py'])",
])
def test_the_parser_sees_a_module_named_by_a_string(call):
    assert (2, "clasp_cli" if "clasp_cli" in call else "train_accelerate") in imported_names(f"x = 1\n{call}\n", "evaluation")


def test_every_package_and_top_level_module_has_a_layer():
    found = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    found |= {p.stem for p in ROOT.glob("*.py")} - {"setup"}
    assert found - set(LAYER_OF) == set(), "place it in a layer here and in DESIGN.md"
    assert all((ROOT / name).exists() or (ROOT / f"{name}.py").exists() for name in LAYER_OF)


def test_no_import_runs_back_up_the_layers():
    upward = []
    for path, package in own_modules():
        rank, layer = LAYER_OF[package]
        for line, name in imported_names(path.read_text(encoding="utf-8"), package):
            if name not in LAYER_OF or name == package:
                continue
            other_rank, other_layer = LAYER_OF[name]
            if other_rank > rank or (package, name) in FORBIDDEN_SIDEWAYS:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({layer}) imports {name} ({other_layer})")
    assert upward == [], "imports that run back up the layers:\n" + "\n".join(upward)
