"""The dataset catalogue: dataset classes by name (the values of ``DataConfig.dataset``).

Not to be confused with the MLflow model registry (``pdml_ray.service.registry``)."""

from __future__ import annotations

from .ade20k import ADE20KDataset
from .base import SegmentationDataset
from .pascal_context import PascalContextDataset
from .synthetic import SyntheticDataset, SyntheticV2Dataset

DATASETS: dict[str, type[SegmentationDataset]] = {
    cls.name: cls for cls in (SyntheticDataset, SyntheticV2Dataset, ADE20KDataset,
                             PascalContextDataset)
}


def dataset_class(name: str) -> type[SegmentationDataset]:
    """The dataset class for ``name``, to read ``classes``/``palette``/``num_classes``
    without building a dataset."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
