"""The miner each mining scope builds."""

from __future__ import annotations

from pdml_ray.config import LossConfig
from pdml_ray.mining import GlobalSubgroupMiner, InBatchMiner, StoreMiner, build_miner
from tests.mining.test_store import FakeSampler


def test_each_scope_builds_its_miner_and_the_store_is_asked_for_the_first_step():
    assert isinstance(build_miner(LossConfig(mining="in_batch"), store=None, start_step=0),
                      InBatchMiner)
    assert isinstance(build_miner(LossConfig(mining="global"), store=FakeSampler(), start_step=0),
                      GlobalSubgroupMiner)
    sampler = FakeSampler()
    miner = build_miner(LossConfig(mining="global+store"), store=sampler, start_step=17)
    assert isinstance(miner, StoreMiner) and isinstance(miner.base, GlobalSubgroupMiner)
    assert sampler.requested_steps == [17]  # ready when the resumed run's first step needs it
    # Without a store (its actor could not start), global+store mines global.
    assert isinstance(build_miner(LossConfig(mining="global+store"), store=None, start_step=0),
                      GlobalSubgroupMiner)
