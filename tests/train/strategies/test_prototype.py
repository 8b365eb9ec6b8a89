"""The memory model as a continual learner: writing a new task's classes leaves every old
class's prototype untouched, and a frozen backbone's prototypes classify."""

import torch

from python_models import create_model
from train.strategies import prototype_learner

TINY = {"embed_dim": 16, "depth": 1, "num_heads": 2, "img_size": 8}


def test_new_classes_are_added_without_touching_the_old_ones():
    torch.manual_seed(0)
    backbone = create_model("vit_micro_patch4_32", num_classes=4, **TINY)
    model = prototype_learner("vit_micro_patch4_32", backbone.state_dict(), 4, backbone_args=TINY)
    assert all(not p.requires_grad for p in model.parameters())
    torch.testing.assert_close(
        model.backbone.blocks[0].norm1.weight, backbone.blocks[0].norm1.weight
    )
    templates = 2 * torch.randn(4, 1, 3, 8, 8)  # one pattern per class, plus noise
    images = templates + 0.1 * torch.randn(4, 6, 3, 8, 8)
    labels = torch.arange(4).repeat_interleave(6).view(4, 6)
    memory = model.hopfield["0"]
    model.write_memory(images[:2].flatten(0, 1), labels[:2].flatten())
    first_task = memory.patterns[:, :2].clone()
    assert memory.usage.tolist() == [6, 6, 0, 0]
    probabilities = model(images[:2].flatten(0, 1)).exp()
    assert probabilities[:, 2:].max() < 1e-6  # classes not written yet get nothing
    model.write_memory(images[2:].flatten(0, 1), labels[2:].flatten())
    assert torch.equal(memory.patterns[:, :2], first_task)
    predictions = model(images.flatten(0, 1)).argmax(-1)
    assert (predictions == labels.flatten()).all()
