"""CollectiveBytes counts each rank's share of the bytes a collective moves between ranks at the least.

The collectives run in one process over torch's fake process group (rank 1 of 4: every call goes through the
dispatcher as a real group's does, nothing is sent). DDP's reducer cannot run over the fake group; the count of its
gradient all-reduce is checked by benchmarks/optim_step.py against the parameter bytes, at every run.
"""

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from torch.testing._internal.distributed.fake_pg import FakeStore

from optbench.training.collective_bytes import CollectiveBytes

RANK, N = 1, 4


@pytest.fixture
def group():
    dist.init_process_group("fake", rank=RANK, world_size=N, store=FakeStore())
    yield
    dist.destroy_process_group()


def sent(collective) -> dict[str, float]:
    with CollectiveBytes() as counter:
        collective()
    return dict(counter.by_op)


@pytest.mark.filterwarnings("ignore:.*is deprecated:FutureWarning")  # all_gather_into_tensor's new name
def test_each_collective_counts_a_ranks_share_of_its_bytes(group):
    x = torch.ones(1000)  # 4000 bytes
    assert sent(lambda: dist.all_reduce(x)) == {"c10d::allreduce_": 2 * 3 / 4 * 4000}
    assert sent(lambda: dist.all_reduce(x.bfloat16())) == {"c10d::allreduce_": 2 * 3 / 4 * 2000}
    assert sent(lambda: dist.broadcast(x, src=0)) == {"c10d::broadcast_": 3 / 4 * 4000}
    assert sent(lambda: dist.broadcast(x, src=0, async_op=True).wait()) == {"c10d::broadcast_": 3 / 4 * 4000}
    gathered = torch.empty(4000)
    assert sent(lambda: dist.all_gather_into_tensor(gathered, x)) == {"c10d::_allgather_base_": 3 * 4000}
    assert sent(lambda: dist.reduce_scatter_tensor(x, gathered)) == {"c10d::_reduce_scatter_base_": 3 * 4000}
    out = torch.empty(1000)
    # rows 100, 200, 300, 400 to ranks 0..3: rank 1 keeps its 200 rows and sends 800
    assert sent(lambda: dist.all_to_all_single(out, x, [250] * 4, [100, 200, 300, 400])) == {
        "c10d::alltoall_base_": 800 * 4}
    assert sent(lambda: dist.all_to_all_single(out, x)) == {"c10d::alltoall_base_": 3 / 4 * 4000}
    pieces = [torch.ones(i + 1) for i in range(N)]  # 1, 2, 3, 4 elements to ranks 0..3: rank 1 keeps its 2
    assert sent(lambda: dist.all_to_all([torch.empty(i + 1) for i in range(N)], pieces)) == {
        "c10d::alltoall_": (1 + 3 + 4) * 4}
    assert sent(dist.barrier) == {}


def test_dtensor_redistributions_are_counted(group):
    mesh = init_device_mesh("cpu", (N,))
    sharded = distribute_tensor(torch.ones(8, 3), mesh, [Shard(0)], src_data_rank=None)  # 2 x 3 rows here: 24 bytes
    assert sent(sharded.full_tensor) == {"_c10d_functional::all_gather_into_tensor": 3 * 24}


def test_a_collective_outside_the_table_raises_and_nothing_is_counted_outside_the_mode(group):
    counter = CollectiveBytes()
    with counter:
        dist.all_reduce(torch.ones(10))
    dist.all_reduce(torch.ones(10))
    assert counter.total == 2 * 3 / 4 * 40
    with pytest.raises(NotImplementedError, match="c10d::reduce_"):
        sent(lambda: dist.reduce(torch.ones(10), dst=0))
