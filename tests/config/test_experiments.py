"""`experiment=PATH`: a user's own recipe file, with its own group overrides, composes like a shipped one."""

from __future__ import annotations

import pytest

from optbench.config.compose import compose
from optbench.errors import UserError

RECIPE = """\
# a user's recipe: Llama instead of the default GPT-2, and its own settings
defaults:
  - override /model: llama
model:
  n_layer: 3
train:
  steps: 7
optim:
  lr: {lr:.0e}
"""


def test_a_users_experiment_file_composes_with_its_group_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(RECIPE.format(lr=0.004))
    cfg = compose([f"experiment={path}", "train.batch_size=3"])
    assert type(cfg.model).__name__ == "LlamaConfig" and cfg.model.n_layer == 3
    assert (cfg.train.steps, cfg.train.batch_size, cfg.optim.lr) == (7, 3, 0.004)
    assert compose([]).train.steps != 7  # nothing of it stays behind for the next composition


def test_an_edited_file_is_read_again(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(RECIPE.format(lr=0.004))
    assert compose([f"experiment={path}"]).optim.lr == 0.004
    path.write_text(RECIPE.format(lr=0.002))
    assert compose([f"experiment={path}"]).optim.lr == 0.002


@pytest.mark.parametrize("content, message", [
    (None, r"^experiment file \S+missing.yaml does not exist$"),
    ("- a\n- list\n", r"^experiment file \S+ must hold a mapping of config keys"),
    ("model: {n_layer: 3\n", r"^experiment file \S+: "),
])
def test_a_bad_experiment_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "missing.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message):
        compose([f"experiment={path}"])


def test_an_unknown_key_in_the_file_is_named(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  stepz: 7\n")
    with pytest.raises(UserError, match=r"unknown key 'train.stepz'; valid: train.steps"):
        compose([f"experiment={path}"])
