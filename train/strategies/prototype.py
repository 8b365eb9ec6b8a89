"""The memory-augmented ViT as a class-incremental learner: a trained backbone, frozen, with one
``class_prototype`` Hopfield memory. Learning a task writes its classes' prototypes (no
gradient step), which leaves every old class's slot untouched."""

from torch import Tensor

from python_models.memory_vit import MemoryAugmentedViT


def prototype_learner(
    backbone_name: str,
    backbone_weights: dict[str, Tensor],
    num_classes: int,
    beta: float = 0.125,
    backbone_args: dict | None = None,
) -> MemoryAugmentedViT:
    """A ``MemoryAugmentedViT`` on ``backbone_name`` with ``backbone_weights`` (the state dict of
    a trained preset with those ``backbone_args``; its head is dropped), all frozen, and a
    ``class_prototype`` memory of ``num_classes`` slots after the last block's FFN. Teach it a
    task with ``write_memory(images, labels)``; it predicts log-probabilities over every class,
    classes not written yet having none."""
    model = MemoryAugmentedViT(
        backbone_name,
        num_classes=num_classes,
        mem_size=num_classes,
        beta=beta,
        freeze_backbone=True,
        memory_mode="class_prototype",
        backbone_args=backbone_args,
    )
    model.backbone.load_state_dict(
        {key: value for key, value in backbone_weights.items() if not key.startswith("head.")}
    )
    return model.eval().requires_grad_(False)  # learning is writing: nothing is trained
