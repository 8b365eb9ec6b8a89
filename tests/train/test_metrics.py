import json

import pytest

from train.metrics import MetricsLogger, read_jsonl


def write_log(path, *lines: str) -> None:
    path.write_text("".join(lines))


def test_a_cut_last_line_is_dropped_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_log(path, json.dumps({"epoch": 1}) + "\n", '{"epoch": 2, "lo')
    with pytest.warns(UserWarning, match=r"metrics.jsonl: its last line is cut short"):
        assert read_jsonl(path) == [{"epoch": 1}]


def test_a_damaged_line_before_the_last_is_an_error_naming_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_log(path, '{"epoch": 1, "lo\n', json.dumps({"epoch": 2}) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 1: not a JSON record"):
        read_jsonl(path)


def test_a_resumed_log_keeps_the_records_up_to_the_checkpoint(tmp_path):
    lines = [json.dumps({"epoch": epoch, "loss": 1.0 / epoch}) + "\n" for epoch in (1, 2, 3)]
    write_log(tmp_path / "metrics.jsonl", *lines, '{"epoch": 4, "lo')
    with pytest.warns(UserWarning, match="cut short"):
        logger = MetricsLogger(tmp_path, resume_epoch=2)
    logger.close()
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
