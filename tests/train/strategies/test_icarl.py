"""iCaRL: herding picks exemplars whose mean approaches the class mean, the memory is shared
equally by the classes seen, and the nearest-mean-of-exemplars classifier reads the class
means."""

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from python_models.contract import ClassifierMixin
from tests.python_models.test_contract import build_small
from train.strategies import herding_selection, iCaRL


def test_herding_mean_approaches_the_class_mean_and_beats_random_subsets():
    gen = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(300, 16, generator=gen) + 0.5, dim=-1)
    target = features.mean(0)
    order = herding_selection(features, 40)
    assert order.unique().numel() == 40
    gaps = [(features[order[:m]].mean(0) - target).norm().item() for m in (1, 5, 10, 20, 40)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 0.2 * gaps[0]
    random_gaps = torch.stack(
        [
            (features[torch.randperm(300, generator=gen)[:10]].mean(0) - target).norm()
            for _ in range(200)
        ]
    )
    assert gaps[2] < random_gaps.min()
    with pytest.raises(ValueError, match="count: expected 0 <= count <= 300"):
        herding_selection(features, 301)


class Embedding(ClassifierMixin, nn.Module):
    """A classifier whose features are its inputs, and logits a linear head on them."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.num_features, self.num_classes = dim, num_classes
        self.head = nn.Linear(dim, num_classes)

    def forward_features(self, x):
        return x

    def forward_head(self, x, pre_logits=False):
        return x if pre_logits else self.head(x)


def clustered(classes, per_class, gen):
    centres = torch.eye(8)[: max(classes) + 1] * 4
    labels = torch.tensor(classes).repeat_interleave(per_class)
    return centres[labels] + 0.3 * torch.randn(len(labels), 8, generator=gen), labels


def test_memory_is_shared_equally_and_nme_classifies_the_seen_classes():
    gen = torch.Generator().manual_seed(0)
    model = Embedding(8, 6)
    icarl = iCaRL(model, num_classes=6, memory_size=12)
    first = clustered([0, 1], 30, gen)
    icarl.update(*first)
    assert torch.bincount(icarl.exemplar_labels).tolist() == [6, 6]
    kept_of_class_0 = icarl.exemplar_images[icarl.exemplar_labels == 0]
    icarl.update(*clustered([2, 3], 30, gen))
    assert torch.bincount(icarl.exemplar_labels).tolist() == [3, 3, 3, 3]
    # an old class keeps the first exemplars herding picked for it
    assert torch.equal(icarl.exemplar_images[icarl.exemplar_labels == 0], kept_of_class_0[:3])
    queries, labels = clustered([0, 1, 2, 3], 10, gen)
    scores = icarl.classify(queries)
    assert (scores[:, 4:] == float("-inf")).all()
    assert (scores.argmax(-1) == labels).float().mean() == 1.0


def test_distillation_starts_after_the_first_task_and_state_loads_with_weights_only():
    gen = torch.Generator().manual_seed(1)
    model = Embedding(8, 4)
    icarl = iCaRL(model, num_classes=4, memory_size=8)
    inputs = torch.randn(5, 8, generator=gen)
    assert icarl.distillation(inputs, model(inputs)).item() == 0.0
    icarl.update(*clustered([0, 1], 10, gen))
    assert icarl.distillation(inputs, model(inputs)).item() == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        model.head.weight.add_(torch.randn(4, 8, generator=gen))
    assert icarl.distillation(inputs, model(inputs)).item() > 0
    saved = io.BytesIO()
    torch.save(icarl.state_dict(), saved)
    saved.seek(0)
    restored = iCaRL(model, num_classes=4, memory_size=8)
    restored.load_state_dict(torch.load(saved, weights_only=True))
    assert torch.equal(restored.classify(inputs), icarl.classify(inputs))
    assert restored.distillation(inputs, model(inputs)) == icarl.distillation(inputs, model(inputs))


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="expected a classifier of python_models.contract"):
        iCaRL(nn.Linear(2, 2))
    icarl = iCaRL(Embedding(8, 2), num_classes=2, memory_size=4)
    with pytest.raises(RuntimeError, match="no exemplars yet"):
        icarl.classify(torch.zeros(1, 8))
    with pytest.raises(ValueError, match=r"labels: expected classes in \[0, num_classes=2\)"):
        icarl.update(torch.zeros(3, 8), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize(
    "name", ["vit_micro_patch4_32", "vim_shapes", "hvit_cifar100", "hrm_vision_cifar10"]
)
def test_icarl_works_with_every_backbone_family(name):
    model, images = build_small(name)
    model.reset_classifier(2)
    labels = torch.arange(len(images)) % 2
    icarl = iCaRL(model, num_classes=2, memory_size=2)
    icarl.update(images, labels)
    assert icarl.class_means.shape == (2, model.num_features)
    assert icarl.classify(images).shape == (len(images), 2)
