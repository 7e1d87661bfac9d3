"""The logged model's pip requirements: read from the installed distribution's metadata,
so a dependency added to pyproject.toml cannot be forgotten in the model's environment."""

from __future__ import annotations

import importlib.metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pdml_ray.service.registry.pyfunc_log import requirements


def installed(name: str) -> str:
    return importlib.metadata.version(name).split("+")[0]  # torch's "2.5.1+cpu" -> "2.5.1"


def test_every_runtime_requirement_and_the_project_itself_are_pinned_to_what_is_installed():
    declared = [Requirement(text) for text in importlib.metadata.requires("pdml_ray")]
    runtime = {canonicalize_name(req.name): req for req in declared if req.marker is None}
    optional = {canonicalize_name(req.name) for req in declared if req.marker is not None}
    assert {"torch", "mlflow", "tqdm"} <= set(runtime) and "pytest" in optional  # not vacuous

    pins = {canonicalize_name(req.name): req for req in map(Requirement, requirements())}
    assert set(pins) == set(runtime) | {"pdml-ray"}  # optional extras (dev) left out
    for name, pin in pins.items():
        assert str(pin.specifier) == f"=={installed(pin.name)}", pin
        if name in runtime:
            assert pin.extras == runtime[name].extras  # ray[default,train,tune] stays whole
            assert runtime[name].specifier.contains(installed(pin.name)), pin
    assert pins["pdml-ray"].specifier.contains(importlib.metadata.version("pdml_ray"))
