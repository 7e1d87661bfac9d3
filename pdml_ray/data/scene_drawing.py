"""What every version of the synthetic scene generator does last: paint the things that
stay visible over the stuff, light the scene, and number its instances."""

from __future__ import annotations

import numpy as np


def finish_scene(rng: np.random.Generator, image: np.ndarray, label: np.ndarray,
                 instances: np.ndarray, owners: np.ndarray,
                 layers: list[tuple[np.ndarray, np.ndarray]], y: np.ndarray,
                 x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``image (S, S, 3)`` float RGB of the stuff; ``layers`` each thing's ``(shape mask,
    colours of its pixels)`` in placing order, ``owners`` the thing (1..n, 0 = stuff) that
    each pixel shows. Returns the scene as uint8 image, label and instances (1..n)."""
    size = image.shape[0]
    for number, (shape, colours) in enumerate(layers, start=1):
        visible = owners == number
        shown = colours[visible[shape]]  # the thing's own pixels that stay visible
        image[visible] = shown * rng.uniform(0.85, 1.15) + rng.normal(0, 0.03, shown.shape)

    # Scene-wide lighting: a brightness gradient in a random direction, and sensor noise.
    direction = rng.uniform(0, 2 * np.pi)
    gradient = ((x - size / 2) * np.cos(direction) + (y - size / 2) * np.sin(direction)) / size
    image = (image * (1 + rng.uniform(0, 0.3) * gradient)[..., None]
             + rng.normal(0, 0.02, image.shape))
    image = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    # A band may end up hidden (crossing borders, covered by things): renumber the visible
    # instances to 1..n, keeping their order.
    _, instances = np.unique(instances, return_inverse=True)
    return image, label.astype(np.uint8), (instances.reshape(size, size) + 1).astype(np.uint8)
