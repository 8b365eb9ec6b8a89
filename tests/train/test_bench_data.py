import pytest

from train import bench_data
from train.data.moving_shapes import ensure_moving_shapes, write_mp4
from train.data.video import decord_available

from .data.conftest import frames_with_moving_bar, one_thread  # noqa: F401  (autouse)


def test_bench_data_times_each_backend_and_worker_count(tmp_path):
    for name in ("a", "b"):
        write_mp4(tmp_path / f"{name}.mp4", frames_with_moving_bar(), 8)
    (tmp_path / "list.txt").write_text("a.mp4 0\nb.mp4 1\n")
    summary = bench_data.main(
        [
            "--data",
            str(tmp_path / "list.txt"),
            "--workers",
            "0",
            "--clips",
            "4",
            "--batch-size",
            "2",
        ]
    )
    rows = summary["results"]
    assert {row["backend"] for row in rows} == (
        {"decord", "opencv"} if decord_available() else {"opencv"}
    )
    assert all(row["frames_per_s"] == 8 * row["clips_per_s"] > 0 for row in rows)


def test_frame_baselines_fit_linear_classifiers(tmp_path):
    from train.data import read_json_split

    sizes = {"training": 12, "validation": 2, "test": 6}
    root = ensure_moving_shapes(tmp_path, sizes, frame_size=16)
    accuracies = bench_data.frame_baselines(
        read_json_split(root, "training"), read_json_split(root, "test")
    )
    assert set(accuracies) == {"middle_frame", "mean_frame"}
    assert all(0 <= a <= 1 for a in accuracies.values())


def test_bench_data_needs_a_batch_of_videos(tmp_path):
    write_mp4(tmp_path / "a.mp4", frames_with_moving_bar(), 8)
    (tmp_path / "list.txt").write_text("a.mp4 0\n")
    with pytest.raises(ValueError, match="--batch-size 2 is more than the 1 videos"):
        bench_data.main(["--data", str(tmp_path / "list.txt"), "--batch-size", "2"])
