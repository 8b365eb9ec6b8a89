"""``python -m train.ask``: answer questions about a video file, or caption it, with a multi-task
``train.video`` checkpoint (one trained with the ``qa`` or ``captioning`` task).

    python -m train.ask --checkpoint runs/video_multitask/best.pt --video clip.mp4 \\
        --question "what colour is the shape?"
    python -m train.ask --checkpoint runs/video_multitask/best.pt --video clip.mp4 --caption

The model is rebuilt from the settings the checkpoint saved. The video is sampled as the job
tests clips (``data.video.num_frames`` segment centres, decoded at ``frame_size``); an answer
is the QA head's most likely one among the training answers, a caption the decoder's (greedy,
or beam search with ``--beam-size``). The clip's action class is printed too.
"""

import argparse
from pathlib import Path

import torch

from .data.moving_shapes import ACTIONS
from .data.text import TextVocabulary
from .data.video import decode, open_video, sample_frame_indices
from .tasks import video


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m train.ask", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="a train.video checkpoint")
    parser.add_argument("--video", type=Path, required=True, help="the video file to ask about")
    parser.add_argument(
        "--question", action="append", default=[], help="a question (may be given several times)"
    )
    parser.add_argument("--caption", action="store_true", help="caption the video")
    parser.add_argument(
        "--beam-size", type=int, default=None, help="caption beam size (default: the checkpoint's)"
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if not args.question and not args.caption:
        parser.error("give --question TEXT (one or more) or --caption")
    if args.beam_size is not None and args.beam_size < 1:
        parser.error(f"--beam-size must be >= 1, got {args.beam_size}")
    return args


def read_clip(path: Path, config: video.VideoConfig) -> torch.Tensor:
    """uint8 (1, T, 3, H, W): the video's frames at the segment centres, at the model's size."""
    side = config.video.frame_size
    with open_video(path, (side, side), config.video.backend) as opened:
        indices = sample_frame_indices(
            opened.num_frames, num_segments=config.video.num_frames, mode="test"
        )
        return decode(opened, indices)[None]


def class_names(config: video.VideoConfig) -> tuple[str, ...]:
    """The names of the action classes: the data's, the built-in set's, or the class numbers."""
    if config.classes:
        return tuple(config.classes)
    if not config.train_data:
        return ACTIONS
    return tuple(str(c) for c in range(config.num_classes))


def check_tasks(config: video.VideoConfig, args: argparse.Namespace) -> None:
    asked = [
        task for task, wanted in (("qa", args.question), ("captioning", args.caption)) if wanted
    ]
    missing = [task for task in asked if task not in config.tasks]
    if missing:
        raise ValueError(
            f"{args.checkpoint}: trained without the {missing} task(s) (its tasks: "
            f"{list(config.tasks)}); train one with them, e.g. python -m train.video --config "
            "configs/video_multitask.yaml"
        )


@torch.no_grad()
def ask(args: argparse.Namespace) -> dict:
    """The clip's action, the answers to ``args.question`` and the caption, as asked."""
    model, config = video.load_trained(args.checkpoint)
    check_tasks(config, args)
    vocabulary = TextVocabulary.from_state_dict(config.vocabulary)
    clips = video.clip_transform(config)(read_clip(args.video, config), train=False)
    questions = None
    if args.question:
        encoded = vocabulary.words.encode_batch(args.question, config.text.max_question_len)
        questions = encoded[None]
    output = model(clips, questions)
    result = {"action": class_names(config)[output.action[0].argmax().item()]}
    if questions is not None:
        choices = output.qa[0].argmax(-1).tolist()
        result["answers"] = [vocabulary.answers.answer(index) for index in choices]
    if args.caption:
        beam_size = args.beam_size or config.text.beam_size
        ids = model.caption(output, beam_size=beam_size)[0]
        result["caption"] = vocabulary.words.decode(ids)
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    result = ask(args)
    print(f"action: {result['action']}")
    for question, answer in zip(args.question, result.get("answers", [])):
        print(f"Q: {question}\nA: {answer}")
    if "caption" in result:
        print(f"caption: {result['caption']}")
    return result


def cli() -> None:
    """Console-script entry point (``main`` returns results for programmatic use)."""
    main()


if __name__ == "__main__":
    cli()
