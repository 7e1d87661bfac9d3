"""The miner of a configured mining scope."""

from __future__ import annotations

from pdml_ray.config import LossConfig
from pdml_ray.mining.base import TripletMiner
from pdml_ray.mining.global_subgroups import GlobalSubgroupMiner
from pdml_ray.mining.in_batch import InBatchMiner
from pdml_ray.mining.store import EmbeddingSampler, StoreMiner


def build_miner(loss_cfg: LossConfig, *, store: EmbeddingSampler | None,
                start_step: int) -> TripletMiner:
    """The miner of ``loss_cfg.mining``; ``global+store`` without a store mines ``global``.

    ``start_step`` is the first step the miner will see: the store miner's first sample is
    requested for it now, so that it is ready when the step needs it.
    """
    if loss_cfg.mining == "in_batch":
        return InBatchMiner(loss_cfg)
    miner: TripletMiner = GlobalSubgroupMiner(loss_cfg)
    if loss_cfg.mining == "global+store" and store is not None:
        store_miner = StoreMiner(miner, store, loss_cfg)
        store_miner.prefetch(start_step)
        miner = store_miner
    return miner
