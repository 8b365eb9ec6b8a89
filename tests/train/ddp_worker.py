"""Run under ``torchrun --nproc_per_node=2``: two training steps of a tiny classifier on each
process, then each process saves its parameters for the test to compare."""

import sys

import torch

from train import classify
from train.engine import distributed
from train.engine.config import load_config
from train.engine.trainer import Trainer

out_dir = sys.argv[1]
flags = [
    "--shapes-train-size",
    "128",
    "--shapes-test-size",
    "30",
    "--batch-size",
    "32",
    "--epochs",
    "1",
    "--model-args",
    "{embed_dim: 16, depth: 1}",
    "--num-workers",
    "0",
    "--threads",
    "1",
    "--device",
    "cpu",
    "--no-linear-baseline",
    "--out-dir",
    out_dir,
]
config = load_config(classify.ClassifyConfig, flags, "ddp_worker", "")
fitted = []  # the trainer classify.run builds, for its replica's parameters
fit = Trainer.fit
Trainer.fit = lambda trainer: (fitted.append(trainer), fit(trainer))[1]
summary = classify.run(config)
trainer = fitted[0]
parameters = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
torch.save(
    {
        "parameters": parameters,
        "steps": trainer.scheduler.last_epoch,
        "summary": summary,
        "world": distributed.world_size(),
    },
    f"{out_dir}/rank{distributed.rank()}.pt",
)
distributed.cleanup()
