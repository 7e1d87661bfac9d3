"""The loader module that models registered before ``service/registry/`` held it name in
their ``MLmodel`` (``loader_module: pdml_ray.service.pyfunc_model``): they still load."""

from pdml_ray.service.registry.pyfunc_model import _load_pyfunc  # noqa: F401
