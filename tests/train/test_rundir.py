"""The run directory's metrics file survives a kill in mid-write: readers and resume skip the torn last line."""

from optbench.training.rundir import read_metrics, truncate_metrics


def test_a_torn_last_line_is_left_out_by_readers_and_by_resume(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 10, "loss": 3.0}\n{"step": 20, "loss": 2.5}\n{"step": 3')
    assert read_metrics(tmp_path) == [{"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.5}]
    truncate_metrics(tmp_path, step=10)
    assert read_metrics(tmp_path) == [{"step": 10, "loss": 3.0}]
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 10, "loss": 3.0}\n'
    assert read_metrics(tmp_path / "absent") == []
