"""The process group has one owner: whoever joined it leaves it, once, also when the run fails."""

import pytest

from optbench.training import distributed


class FakeGroup:
    def __init__(self, joined: bool):
        self.joined, self.left = joined, 0

    def destroy(self):
        self.joined, self.left = False, self.left + 1


@pytest.fixture
def group(monkeypatch):
    def make(joined: bool) -> FakeGroup:
        fake = FakeGroup(joined)
        monkeypatch.setattr(distributed.dist, "is_initialized", lambda: fake.joined)
        monkeypatch.setattr(distributed.dist, "destroy_process_group", fake.destroy)
        return fake
    return make


TWO_RANKS = distributed.World(rank=0, size=2)


def test_a_group_joined_inside_is_left_at_the_end_even_on_an_error(group):
    fake = group(joined=False)
    with pytest.raises(RuntimeError), distributed.process_group(TWO_RANKS):
        fake.joined = True  # the Trainer joins
        raise RuntimeError("the run failed")
    assert fake.left == 1 and not fake.joined


def test_a_group_joined_before_is_left_to_its_owner(group):
    fake = group(joined=True)
    with distributed.process_group(TWO_RANKS):
        pass
    assert fake.left == 0 and fake.joined
    with distributed.process_group(TWO_RANKS):  # the outer owner (tests/reliability/ranks.py) runs several
        pass
    assert fake.left == 0


def test_one_process_has_no_group_to_leave(group):
    fake = group(joined=False)
    with distributed.process_group(distributed.World()):
        pass
    assert fake.left == 0
