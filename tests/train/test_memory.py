"""``python -m train.memory`` end to end on tiny settings: pretraining on the base classes
(cached), then every method on the same few-shot episodes of the novel classes."""

import json

import pytest

from train import memory

TINY = [
    "--shapes-train-size",
    "600",
    "--shapes-test-size",
    "1500",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--model-args",
    "{embed_dim: 12, depth: 2, num_heads: 2}",
    "--episodes",
    "2",
    "--n-query",
    "3",
    "--adapt-steps",
    "2",
    "--mem-size",
    "20",
]


def test_pretraining_is_cached_and_every_method_meets_the_same_episodes(tmp_path, capsys):
    out = ["--out-dir", str(tmp_path)]
    summary = memory.main([*TINY, *out, "--n-shot", "2"])
    methods = {
        "linear_probe",
        "vpt_shallow",
        "vpt_deep",
        "ncm",
        *(f"memory_vit ({mode})" for mode in ("class_prototype", "associative", "learned")),
    }
    assert set(summary["results"]) == methods
    for row in summary["results"].values():
        assert set(row) == {"2-shot"}
        assert 0 <= row["2-shot"]["accuracy"] <= 1 and row["2-shot"]["episodes"] == 2
    checkpoints = list(tmp_path.glob("backbone-*/last.pt"))
    assert len(checkpoints) == 1 and "pretraining" in capsys.readouterr().out
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["novel_classes"] == summary["novel_classes"]

    modified = checkpoints[0].stat().st_mtime_ns
    summary = memory.main([*TINY, *out, "--model", "memory_vit", "--memory-modes", "associative"])
    assert checkpoints[0].stat().st_mtime_ns == modified
    assert "cached" in capsys.readouterr().out
    assert set(summary["results"]) == {"memory_vit (associative)"}
    assert set(summary["results"]["memory_vit (associative)"]) == {"1-shot", "5-shot"}


def test_yaml_sections_and_pretraining_only(tmp_path):
    (tmp_path / "job.yaml").write_text(
        "model:\n  name: ncm\n  backbone: vit_micro_patch4_32\n"
        "training:\n  epochs: 1\n"
        f"data:\n  few_shot: false\n  out_dir: {tmp_path / 'run'}\n"
    )
    summary = memory.main(["--config", str(tmp_path / "job.yaml"), *TINY[:4], *TINY[8:10]])
    assert "results" not in summary
    assert list((tmp_path / "run").glob("backbone-*/last.pt"))


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="model: expected one of"):
        memory.main(["--model", "knn"])
    with pytest.raises(ValueError, match=r"n_shot \+ n_query: class .* has \d+ images"):
        memory.main([*TINY, "--out-dir", str(tmp_path), "--n-shot", "60", "--model", "ncm"])
