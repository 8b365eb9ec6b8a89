"""Multi-task video training: the batch format (clips with their action labels, per-frame labels,
domains, tokenised questions, answers and captions), the engine's task (the enabled heads' losses,
weighted, plus the router's), and its evaluation (accuracy, detection mAP, QA accuracy, caption
BLEU-4, routing accuracy and expert usage)."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from python_models.video.detection import IGNORE_INDEX as NO_FRAME_LABEL
from python_models.video.detection import decode_segments, detection_loss
from python_models.video.experts import (
    expert_usage,
    load_balancing_loss,
    router_z_loss,
    routing_accuracy,
    routing_loss,
)

from ..data import ClipTransform, collate_clips, readable_batches
from ..data.text import TextVocabulary, WordTokenizer
from ..engine import distributed
from ..metrics.detection import detection_map, ground_truth_segments
from ..metrics.figures import new_figure
from ..metrics.text import corpus_bleu

# The engine's batch: these tensors, in this order.
QUESTION_KIND_WORDS = 2  # a question's kind for per-kind QA accuracy: its first two words
FIELDS = ("frames", "label", "frame_labels", "domain", "questions", "answers", "captions")
IGNORE = -1  # a target that is not known (no label, no domain, a padding question)
ROUTER_LOSSES = ("balance_weight", "z_weight", "supervised_weight")


class MultiTaskCollate:
    """``VideoDataset`` items → the tensors of ``FIELDS``. Targets a clip lacks become IGNORE
    (labels, frame labels, domain, answers) or all-PAD rows (questions, captions), so one batch
    may mix clips with different annotations."""

    def __init__(
        self,
        vocabulary: TextVocabulary,
        max_questions: int,
        max_question_len: int,
        max_captions: int,
        max_caption_len: int,
    ):
        self.vocabulary = vocabulary
        self.max_questions = max_questions
        self.max_question_len = max_question_len
        self.max_captions = max_captions
        self.max_caption_len = max_caption_len

    def __call__(self, items: list[dict[str, Any] | None]) -> list[Tensor] | None:
        batch = collate_clips(items)
        if batch is None:  # every clip of the batch unreadable
            return None
        frames = batch["frames"]
        size, steps = len(frames), frames.shape[-4]
        unknown = torch.full((size,), IGNORE, dtype=torch.int64)
        return [
            frames,
            batch.get("label", unknown),
            batch.get("frame_labels", torch.full((size, steps), NO_FRAME_LABEL, dtype=torch.int64)),
            batch.get("domain", unknown),
            *self._qa(batch.get("qa", [[]] * size)),
            self._captions(batch.get("captions", [[]] * size)),
        ]

    def _qa(self, pairs: list[list[tuple[str, str]]]) -> tuple[Tensor, Tensor]:
        words, answers = self.vocabulary.words, self.vocabulary.answers
        count = self.max_questions
        questions = torch.stack(
            [
                words.encode_batch(_padded([q for q, _ in clip], count), self.max_question_len)
                for clip in pairs
            ]
        )
        targets = torch.full((len(pairs), count), IGNORE, dtype=torch.int64)
        for row, clip in enumerate(pairs):
            for column, (_, answer) in enumerate(clip[:count]):
                targets[row, column] = answers.index(answer)
        return questions, targets

    def _captions(self, captions: list[list[str]]) -> Tensor:
        words, length = self.vocabulary.words, self.max_caption_len
        return torch.stack(
            [
                words.encode_batch(_padded(clip, self.max_captions), length, bos=True, eos=True)
                for clip in captions
            ]
        )


def _padded(texts: Sequence[str], count: int) -> list[str]:
    """The first ``count`` texts, then empty ones up to ``count`` (they encode to padding)."""
    texts = list(texts[:count])
    return texts + [""] * (count - len(texts))


def masked_cross_entropy(
    logits: Tensor, targets: Tensor, ignore_index: int, label_smoothing: float = 0.0
) -> Tensor:
    """Mean cross-entropy over the known targets; 0 (with a gradient path) when none is known,
    where ``F.cross_entropy`` would give NaN."""
    logits, targets = logits.flatten(0, -2).float(), targets.flatten()
    known = targets != ignore_index
    total = F.cross_entropy(
        logits, targets.clamp_min(0), reduction="none", label_smoothing=label_smoothing
    )
    return (total * known).sum() / known.sum().clamp_min(1)


def pick_reference(captions: Tensor) -> Tensor:
    """One reference caption per clip (batch, words), drawn among its non-empty ones (a clip
    with none gives an all-PAD row, which the loss ignores)."""
    present = captions[:, :, 1:].ne(WordTokenizer.PAD).any(-1) & captions[:, :, 1].ne(
        WordTokenizer.EOS
    )
    weights = present.float() + (~present.any(-1, keepdim=True)).float()
    choice = torch.multinomial(weights, 1).squeeze(1)
    picked = captions[torch.arange(len(captions)), choice]
    return torch.where(present.any(-1, keepdim=True), picked, torch.zeros_like(picked))


class MultiTaskVideoTask:
    """Σ weight_t · loss_t over the enabled tasks, plus the router's load-balancing, z and
    supervised routing losses; the best checkpoint by ``score``, the mean of each enabled
    task's headline metric (action accuracy, detection mAP@0.5, QA accuracy, caption BLEU-4)."""

    monitor = "score"
    mode = "max"

    def __init__(
        self,
        transform: ClipTransform,
        num_classes: int,
        loss_weights: dict[str, float],
        router_weights: dict[str, float],
        vocabulary: TextVocabulary,
        smoothing_window: int = 3,
        label_smoothing: float = 0.0,
        beam_size: int = 1,
    ):
        self.transform = transform
        self.num_classes = num_classes
        self.loss_weights = loss_weights
        self.router_weights = router_weights
        self.vocabulary = vocabulary
        self.smoothing_window = smoothing_window
        self.label_smoothing = label_smoothing
        self.beam_size = beam_size

    def task_losses(self, model: nn.Module, batch: list[Tensor]) -> dict[str, Tensor]:
        """Each enabled task's loss (and ``routing``, the router's) on one batch."""
        frames, label, frame_labels, domain, questions, answers, captions = batch
        wants = self.loss_weights
        caption = pick_reference(captions) if "captioning" in wants else None
        output = model(
            self.transform(frames, train=True), questions if "qa" in wants else None, caption
        )
        losses = {}
        if "action" in wants:
            losses["action"] = masked_cross_entropy(
                output.action, label, IGNORE, self.label_smoothing
            )
        if "detection" in wants:
            losses["detection"] = detection_loss(output.detection, frame_labels, self.num_classes)
        if "qa" in wants:
            losses["qa"] = masked_cross_entropy(output.qa, answers, IGNORE)
        if "captioning" in wants:
            losses["captioning"] = masked_cross_entropy(
                output.captioning, caption[:, 1:], WordTokenizer.PAD
            )
        if output.routing is not None:
            routing, weights = output.routing, self.router_weights
            losses["routing"] = (
                weights["balance_weight"] * load_balancing_loss(routing.probs, routing.gates)
                + weights["z_weight"] * router_z_loss(routing.logits)
                + weights["supervised_weight"] * routing_loss(routing.logits, domain)
            )
        return losses

    def training_loss(self, model: nn.Module, batch: list[Tensor]) -> Tensor:
        losses = self.task_losses(model, batch)
        return sum(self.loss_weights.get(name, 1.0) * loss for name, loss in losses.items())

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, loader: DataLoader, device: torch.device
    ) -> dict[str, float]:
        model.eval()
        tally = EvaluationTally(self, model)
        for batch in readable_batches(loader):
            tally.add([t.to(device, non_blocking=True) for t in batch])
        return tally.metrics(device)


class EvaluationTally:
    """Sums and predictions gathered over an evaluation pass (every process's, at the end)."""

    COUNTS = (
        "loss",
        "clips",
        "labelled",
        "action_correct",
        "route_correct",
        "route_counted",
    )

    def __init__(self, task: MultiTaskVideoTask, model: nn.Module):
        self.task = task
        self.model = model
        self.counts = dict.fromkeys(self.COUNTS, 0.0)
        self.usage: list[Tensor] = []
        self.segments: list[tuple[list, list]] = []  # (predicted, ground truth) per clip
        self.captions: list[tuple[list[str], list[list[str]]]] = []  # (hypothesis, references)
        self.answers: list[tuple[tuple[int, ...], bool]] = []  # (question's first words, correct)

    def add(self, batch: list[Tensor]) -> None:
        task, model = self.task, self.model
        frames, label, frame_labels, domain, questions, answers, captions = batch
        wants = task.loss_weights
        clips = task.transform(frames, train=False)
        output = model(clips, questions if "qa" in wants else None)
        counts = self.counts
        counts["clips"] += len(frames)
        counts["labelled"] += (label != IGNORE).sum().item()
        counts["loss"] += F.cross_entropy(
            output.action.float(), label, ignore_index=IGNORE, reduction="sum"
        ).item()
        counts["action_correct"] += (output.action.argmax(-1) == label).sum().item()
        if output.detection is not None:
            predicted = decode_segments(output.detection, smoothing_window=task.smoothing_window)
            truth = [ground_truth_segments(row) for row in frame_labels.cpu()]
            self.segments += list(zip(predicted, truth))
        if output.qa is not None:
            known = answers != IGNORE
            hits = (output.qa.argmax(-1) == answers)[known].tolist()
            kinds = questions[:, :, :QUESTION_KIND_WORDS][known].tolist()
            self.answers += [(tuple(kind), hit) for kind, hit in zip(kinds, hits)]
        if "captioning" in wants:
            words = task.vocabulary.words
            generated = model.caption(output, beam_size=task.beam_size)
            for hypothesis, references in zip(generated.tolist(), captions.tolist()):
                refs = [words.tokenize(words.decode(r)) for r in references]
                self.captions.append(
                    (words.tokenize(words.decode(hypothesis)), [r for r in refs if r])
                )
        if output.routing is not None:
            correct, counted = routing_accuracy(output.routing.logits, domain)
            counts["route_correct"] += correct
            counts["route_counted"] += counted
            self.usage.append(expert_usage(output.routing.gates) * len(frames))

    def metrics(self, device: torch.device) -> dict[str, float]:
        totals = torch.tensor(
            [self.counts[k] for k in self.COUNTS], dtype=torch.float64, device=device
        )
        distributed.all_reduce_sum(totals)
        counts = dict(zip(self.COUNTS, totals.tolist()))
        clips, labelled = max(counts["clips"], 1.0), max(counts["labelled"], 1.0)
        metrics = {"loss": counts["loss"] / labelled, "acc": counts["action_correct"] / labelled}
        headline = {"action": metrics["acc"]}
        pairs = distributed.gather_objects(self.segments)
        if any(truth for _, truth in pairs):  # mAP needs ground-truth segments
            maps = detection_map([p for p, _ in pairs], [t for _, t in pairs])
            metrics.update(maps)
            headline["detection"] = maps["mAP@0.5"]
        answers = distributed.gather_objects(self.answers)
        if answers:
            metrics["qa_acc"] = sum(hit for _, hit in answers) / len(answers)
            headline["qa"] = metrics["qa_acc"]
            metrics.update(self._qa_by_kind(answers))
        if "captioning" in self.task.loss_weights:
            pairs = [p for p in distributed.gather_objects(self.captions) if p[1]]
            if pairs:  # BLEU needs references
                metrics["bleu4"] = corpus_bleu([h for h, _ in pairs], [r for _, r in pairs])
                headline["captioning"] = metrics["bleu4"]
        if counts["route_counted"]:
            metrics["routing_acc"] = counts["route_correct"] / counts["route_counted"]
        if self.usage:
            usage = torch.stack(self.usage).sum(0).to(device)
            distributed.all_reduce_sum(usage)
            for index, share in enumerate((usage / clips).tolist()):
                metrics[f"expert_{index}_usage"] = share
        metrics["score"] = sum(headline.values()) / len(headline)
        return metrics

    def _qa_by_kind(self, answers: list[tuple[tuple[int, ...], bool]]) -> dict[str, float]:
        """QA accuracy per kind of question (its first words, as VQA reports question types):
        ``qa_acc_what_colour`` and the like."""
        tallies: dict[tuple[int, ...], list[int]] = {}
        for kind, hit in answers:
            tally = tallies.setdefault(kind, [0, 0])
            tally[0] += hit
            tally[1] += 1
        decode = self.task.vocabulary.words.decode
        return {
            "qa_acc_" + "_".join(decode(kind).split()): correct / counted
            for kind, (correct, counted) in sorted(tallies.items())
        }


@torch.no_grad()
def plot_predictions(
    model: nn.Module,
    task: MultiTaskVideoTask,
    batch: list[Tensor],
    classes: Sequence[str],
    path: Path,
) -> None:
    """A PNG of the batch's clips: the frames, the true and predicted action segments on a time
    line, the predicted action, answers and caption beside the truth."""
    model.eval()
    frames, label, frame_labels, _, questions, answers, captions = batch
    clips = task.transform(frames, train=False)
    wants = task.loss_weights
    output = model(clips, questions if "qa" in wants else None)
    segments = (
        decode_segments(output.detection, smoothing_window=task.smoothing_window)
        if output.detection is not None
        else [[] for _ in frames]
    )
    generated = model.caption(output, beam_size=task.beam_size) if "captioning" in wants else None
    words, vocabulary = task.vocabulary.words, task.vocabulary.answers
    fig = new_figure(13, 1.9 * len(frames), layout="constrained")
    rows = fig.add_gridspec(len(frames), 2, width_ratios=[3, 2])
    for k in range(len(frames)):
        picture = rows[k, 0].subgridspec(2, 1, height_ratios=[3, 1])
        strip, timeline = fig.add_subplot(picture[0]), fig.add_subplot(picture[1])
        notes = fig.add_subplot(rows[k, 1])
        notes.set_axis_off()
        strip.imshow(frames[k].permute(2, 0, 3, 1).flatten(1, 2).cpu().numpy())
        strip.set_axis_off()
        lines = [
            f"action: {classes[output.action[k].argmax()]} (true {classes[label[k]]})"
            if label[k] >= 0
            else f"action: {classes[output.action[k].argmax()]}"
        ]
        if output.qa is not None:
            for q, (question, answer) in enumerate(zip(questions[k], answers[k])):
                if answer != IGNORE:
                    guess = vocabulary.answer(output.qa[k, q].argmax().item())
                    lines.append(
                        f"Q: {words.decode(question.tolist())}  A: {guess} "
                        f"(true {vocabulary.answer(answer.item())})"
                    )
        if generated is not None:
            lines.append(f"caption: {words.decode(generated[k].tolist())}")
            lines.append(f"reference: {words.decode(captions[k, 0].tolist())}")
        notes.text(0, 1, "\n".join(lines), fontsize=8, va="top", wrap=True)
        _timeline(timeline, frame_labels[k].cpu(), segments[k], classes)
    fig.savefig(path, dpi=100)


def _timeline(ax, frame_labels: Tensor, predicted: list, classes: Sequence[str]) -> None:
    """True segments (top row) and the best predicted one (bottom row) over the frames."""
    steps = len(frame_labels)
    rows = ((1, ground_truth_segments(frame_labels), "tab:green"), (0, predicted[:1], "tab:orange"))
    for row, segments, colour in rows:
        for segment in segments:
            width = segment.end - segment.start
            ax.broken_barh([(segment.start, width)], (row + 0.1, 0.8), facecolors=colour)
            ax.text(segment.start + 0.1, row + 0.35, classes[segment.label], fontsize=7)
    ax.set_xlim(0, steps)
    ax.set_ylim(0, 2)
    ax.set_yticks([0.5, 1.5], ["predicted", "true"], fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
