"""The video job with per-domain LoRA domain modules and the adaptive merge settings: a tiny
multi-task run trains and evaluates with the router choosing adapters, its checkpoint holds
each domain's adapters, a merging run uses the per-clip budget, and bad settings name their
key."""

from pathlib import Path

import pytest

from python_models.video import MultiTaskVLM
from train import evaluate, video
from train.engine import checkpoint
from train.tasks import video as video_task

from .video_jobs import tiny_video_job

TINY_MODEL = "{embed_dim: 16, depth: 2, num_heads: 2, patch_size: 8, tubelet_size: 2}"


def domain_modules_job(data: Path, out: Path, *extra: str) -> list[str]:
    return tiny_video_job(
        data,
        out,
        *("--config", "configs/video_multitask.yaml", "--model-args", TINY_MODEL),
        *("--text", "{head_layers: 1, head_heads: 2}"),
        *("--experts", "{num_domains: 0}"),
        *("--domain-modules", "{enabled: true, lora: {rank: 2, alpha: 4}}"),
        *extra,
    )


def test_domain_modules_train_route_and_evaluate(tiny_video_set, tmp_path):
    summary = video.main(domain_modules_job(tiny_video_set, tmp_path / "run"))
    for key in ("acc", "mAP@0.5", "qa_acc", "bleu4", "routing_acc", "expert_0_usage"):
        assert 0 <= summary["test"][key] <= 1, key
    state = checkpoint.load(tmp_path / "run" / "last.pt")
    adapters = [name for name in state["model"] if ".lora_B." in name]
    # qkv and proj of 2 blocks, for each of the 4 domains; nothing else is adapted.
    assert len(adapters) == 2 * 2 * 4
    assert all(name.startswith("backbone.blocks.") for name in adapters)
    assert not any(name.startswith("experts.") for name in state["model"])
    report = evaluate.main(["--checkpoint", str(tmp_path / "run" / "last.pt"), "--threads", "1"])
    assert report["routing_acc"] == pytest.approx(summary["test"]["routing_acc"])


def test_build_model_gives_each_domain_its_adapters():
    config = video_task.VideoConfig(
        tasks={"action": 1.0},
        experts={"num_domains": 0},
        domain_modules={"enabled": True, "num_domains": 3, "lora": {"rank": 8, "alpha": 16}},
    )
    model = video_task.build_model(config, num_classes=12)
    assert isinstance(model, MultiTaskVLM) and model.experts is None
    # hvlm_tiny: 4 blocks of qkv (96 → 288) and proj (96 → 96) at rank 8.
    assert model.domain_parameters() == {f"domain_{i}": 18_432 for i in range(3)}


def test_a_merging_run_with_the_clip_budget(tiny_video_set, tmp_path):
    merging = "{enabled: true, budget: clip, merge_at: [0, 1], colour_weight: 0.5, saliency_ramp_steps: 2}"
    job = tiny_video_job(
        tiny_video_set,
        tmp_path / "merge",
        *("--model-args", TINY_MODEL, "--attention", "{type: hierarchical}"),
        *("--token-merging", merging, "--epochs", "1"),
    )
    summary = video.main(job)
    assert 0 <= summary["test_acc"] <= 1
    state = checkpoint.load(tmp_path / "merge" / "last.pt")["model"]
    assert int(state["backbone.merge_steps"]) == 3  # 24 clips in batches of 8: 3 steps


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--domain-modules", "{enabled: true}"], "set one, got num_domains 4"),
        (["--domain-modules", "{lora: 8}"], "model.domain_modules.lora: expected a mapping"),
        (["--domain-modules", "{lora: {rank: 0}}"], "model.domain_modules.lora.rank: expected"),
        (["--domain-modules", "{lora: {dropout: 0.1}}"], "model.domain_modules.lora: unknown"),
        (["--domain-modules", "{domains: 4}"], "model.domain_modules: unknown keys"),
        (["--domain-modules", "{num_domains: 0}"], "model.domain_modules.num_domains: expected"),
        (["--token-merging", "{budget: video}"], "model.token_merging.budget: expected"),
        (["--token-merging", "{saliency_ramp_steps: -1}"], "saliency_ramp_steps: expected"),
        (
            [
                *("--experts", "{num_domains: 0}", "--domain-modules", "{enabled: true}"),
                *("--pretrained", "x.pt", "--finetune-domain", "news"),
            ],
            "--finetune lora adds a LoRA adapter beside",
        ),
    ],
)
def test_bad_domain_and_merge_settings_name_their_key(flags, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        video.main(["--config", "configs/video_multitask.yaml", "--out-dir", str(tmp_path), *flags])
