"""Several training runs in one torchrun launch, in order, in one process group:

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m tests.reliability.ranks RUNS.json

RUNS.json is a list of override lists, each what `optbench train` would be given. Starting processes and joining
the group is most of a tiny run's cost under torchrun, so the distributed tests share one launch for all their
DDP runs and one for their FSDP runs; a run that needs an earlier one's checkpoint comes after it in the list.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from optbench.training import distributed, train


def main(runs_file: str) -> int:
    world = distributed.from_environment()
    with distributed.process_group(world):
        distributed.init(world, "cpu")  # joined here, so each run below leaves the group open for the next
        for overrides in json.loads(Path(runs_file).read_text()):
            summary = train(overrides)
            if summary["status"] != "completed":
                print(f"rank {world.rank}: {overrides} ended {summary['status']}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
