"""What every Ray Data actor pool of inference shares: the model each actor holds
(weights put once in the object store, built once per actor) and a quiet console."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import ray
import torch

from pdml_ray import console


@dataclass(frozen=True)
class ActorModel:
    """What each actor builds its model from: the state_dict in the object store (inside
    a list, so Ray Data hands the actor the reference rather than resolving it on the
    driver) and the JSON config the model was trained with."""

    weights: list
    config: dict

    @classmethod
    def put(cls, state_dict: Mapping[str, torch.Tensor], config: dict) -> ActorModel:
        return cls([ray.put({key: value.detach().cpu() for key, value in state_dict.items()})],
                   config)

    def parser(self, threads: int):
        """A :class:`~pdml_ray.inference.SceneParser` of the model, on a GPU when the
        actor was given one; torch uses ``threads`` CPU threads (the actor's CPUs)."""
        from pdml_ray.inference import SceneParser

        torch.set_num_threads(max(1, threads))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return SceneParser.from_state(ray.get(self.weights[0]), self.config, device=device)


def quiet_ray_data() -> None:
    """Ray Data's own progress bars and per-operator log lines stay off the console (the
    job shows one bar of its own) unless --verbose / PDML_LOG_LEVEL asks for them."""
    if console.verbose():
        return
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # also its note that bars are off


def default_actors(use_gpu: bool, cpus_per_actor: float = 1.0) -> int:
    """How many models the connected cluster holds at once: one per GPU with ``use_gpu``,
    else one per ``cpus_per_actor`` CPUs."""
    resources = ray.cluster_resources()
    if use_gpu:
        return max(1, int(resources.get("GPU", 1)))
    return max(1, int(resources.get("CPU", 1) // cpus_per_actor))
