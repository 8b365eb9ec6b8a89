"""The source design's performance table at its own setting: ``hvlm_base`` (width 768, 12 heads)
on clips of 32 frames of 224² (a class token and 32 × 196 = 6,272 patch tokens), batch 1,
forward + backward, each row against two baselines:

- ``standard``: softmax attention that materialises the L × L scores and their softmax
  (``StandardAttention``: matmul, softmax, matmul), what the design calls standard attention;
- ``full``: PyTorch's fused ``scaled_dot_product_attention`` (SDPA), what users run today.

Three tables, each with its rows timed in turn (``time_impls``: one warm-up call, one untimed
call for the tensor peak, then ``repeats`` samples taken round by round across the rows, so a
change in a shared machine's load falls on every row):

- ``mixer``: a block's token mixer alone: its projections in and out (``qkv``/``proj``, or the
  type's own: ``q`` for ``cross_memory``, ``in_proj``/``out_proj`` for ``mamba``) and the mixing,
  on (batch, tokens, width) inputs that need their gradient, backward from a fixed random
  output gradient. No norm, no MLP, no residual.
- ``model``: the whole model (stem, positions, blocks, norm, head, cross-entropy) at each
  ``depths``, for every type without merging and with merging 0.5 (before the first block), and
  the combined setting: merging 0.5 and gradient checkpointing (``set_grad_checkpointing``).
- ``peers``: torchvision's video transformers ``swin3d_t`` and ``mvit_v2_s`` (random weights,
  400 classes) beside ours on the clips each takes: ``mvit_v2_s``'s positions are fixed to
  16 frames of 224², so ours also runs on those.

Memory is the tensor peak a step adds above the model and its inputs (``cpu_tensor_peak_bytes``
on the CPU, the caching allocator's peak on CUDA); speed-ups are a baseline's median step over
the row's, memory shares the row's tensor peak over the baseline's.
"""

import argparse
import json
import sys
from collections.abc import Callable, Sequence

import torch
import yaml
from torch import Tensor, nn

from hvision_ext.bench.timing import Timing, time_impls
from python_models import create_model
from python_models.video import MIXERS
from python_models.video.mixers import QKVMixer, TokenLayout, build_mixer

from .training import describe_device, mib, training_step

Column = tuple[str, int, Callable[[dict], str]]  # header, width, the cell of a row
SEED_MODEL = "hvlm_base"
BASELINES = {"standard": "standard", "sdpa": "full"}  # ratio column → the row it divides by
EFFICIENT = [kind for kind in MIXERS if kind != "full"]
TABLES = ("mixer", "model", "peers")
MERGE_RATIO = 0.5
PEER_FRAMES = {"swin3d_t": None, "mvit_v2_s": 16}  # None: the table's frames
NUM_CLASSES = 400

# The floors the measured figures are held to (the design's lower bounds).
MIXER_SPEEDUP_FLOOR = 3.0  # over SDPA, forward + backward, for SPEED_FLOOR_TYPES
SPEED_FLOOR_TYPES = ("strided", "local_global", "performer", "mamba")
MERGE_SPEEDUP_FLOOR = 1.5  # merging 0.5 over no merging, every type
EFFICIENT_MEMORY_CEILING = 0.40  # of standard attention's tensor peak
COMBINED_MEMORY_CEILING = 0.10


class StandardAttention(QKVMixer):
    """Softmax attention with the (batch, heads, L, L) scores and probabilities materialised:
    ``softmax(q kᵀ / √d) v`` as three plain operations, the design's "standard attention".
    The same ``qkv`` and ``proj`` projections as ``FullAttention``, so a model's weights load."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout) -> Tensor:
        scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        return scores.softmax(-1) @ v


def make_mixer(kind: str, dim: int, num_heads: int) -> nn.Module:
    """``standard`` or a type of ``MIXERS`` with its default options."""
    if kind == "standard":
        return StandardAttention(dim, num_heads)
    return build_mixer(kind, dim, num_heads)


def mixer_step(mixer: nn.Module, x: Tensor, layout: TokenLayout, grad: Tensor) -> Callable:
    """Forward and backward of ``mixer`` on ``x``; the gradients are dropped after each step."""

    def step() -> None:
        mixer(x, layout).backward(grad)
        x.grad = None
        mixer.zero_grad(set_to_none=True)

    return step


def seed_model(
    kind: str, depth: int, merge_ratio: float, checkpointing: bool, model_args: dict
) -> nn.Module:
    """``hvlm_base`` with ``model_args``, ``depth`` blocks of mixer ``kind`` (``standard``: the
    ``full`` model with each mixer swapped for ``StandardAttention`` on the same weights),
    merging at ``merge_ratio``, in training mode."""
    torch.manual_seed(0)
    attention = "full" if kind == "standard" else kind
    settings = {"depth": depth, "attention": attention, "merge_ratio": merge_ratio}
    model = create_model(SEED_MODEL, **{**model_args, **settings})
    if kind == "standard":
        for block in model.blocks:
            standard = StandardAttention(model.embed_dim, block.attn.num_heads)
            standard.load_state_dict(block.attn.state_dict())
            block.attn = standard
    model.set_grad_checkpointing(checkpointing)
    return model.train()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def measure_rows(rows: dict[str, dict], steps: dict[str, Callable], device, repeats: int) -> None:
    """Times ``steps`` together and fills each row of ``rows`` (same keys) with its median step,
    the samples' range and its memory; a step that raised gets its error instead."""
    timings = time_impls(
        steps, device, budget_s=0.0, min_runs=repeats, max_runs=repeats, tensor_peak=True
    )
    for name, timing in timings.items():
        rows[name].update(timing_figures(timing))


def timing_figures(timing: Timing | Exception) -> dict:
    if isinstance(timing, Exception):
        return {"error": f"{type(timing).__name__}: {timing}"}
    return {
        "step_s": timing.median_s,
        "step_range_s": [min(timing.samples_s), max(timing.samples_s)],
        "samples_s": timing.samples_s,
        "tensor_peak_mib": mib(timing.tensor_peak_bytes),
        "resident_peak_mib": mib(timing.peak_bytes),
    }


def add_ratios(rows: Sequence[dict], baselines: dict[str, dict]) -> None:
    """Each row's speed-up (baseline step / row step) and memory share (row tensor peak /
    baseline's) against every baseline row of ``baselines`` (ratio name → row)."""
    for row in rows:
        for name, base in baselines.items():
            measured = "step_s" in row and "step_s" in base
            row[f"speedup_vs_{name}"] = base["step_s"] / row["step_s"] if measured else None
            row[f"memory_vs_{name}"] = (
                row["tensor_peak_mib"] / base["tensor_peak_mib"] if measured else None
            )


def clip_args(args: argparse.Namespace) -> dict:
    """``hvlm_base``'s overrides for the table: merging (when on) before the first block, then
    ``model_args`` and ``frames``."""
    return {"merge_at": [0], **args.model_args, "num_frames": args.frames}


def mixer_table(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Every type's mixer alone (see the module's docstring), with the ratios."""
    model = create_model(SEED_MODEL, **{**clip_args(args), "depth": 1})
    dim, num_heads = model.embed_dim, model.blocks[0].attn.num_heads
    frames, grid_rows, grid_cols = model.patch_embed.grid(model.clip_shape)
    tokens = model.num_prefix_tokens + frames * grid_rows * grid_cols
    layout = TokenLayout(model.num_prefix_tokens, frames)
    torch.manual_seed(0)
    x = torch.randn(1, tokens, dim, device=device, requires_grad=True)
    grad = torch.randn(1, tokens, dim, device=device)
    rows, steps = {}, {}
    for kind in args.types:
        torch.manual_seed(0)
        mixer = make_mixer(kind, dim, num_heads).to(device).train()
        rows[kind] = {
            "table": "mixer",
            "row": kind,
            "tokens": tokens,
            "width": dim,
            "heads": num_heads,
            "params": parameter_count(mixer),
        }
        steps[kind] = mixer_step(mixer, x, layout, grad)
    measure_rows(rows, steps, device, args.repeats)
    add_ratios(rows.values(), baseline_rows(rows))
    return list(rows.values())


def baseline_rows(rows: dict[str, dict]) -> dict[str, dict]:
    """The baseline rows present in ``rows`` (keyed by type), by ratio name."""
    return {name: rows[kind] for name, kind in BASELINES.items() if kind in rows}


def model_settings(args: argparse.Namespace) -> list[tuple[str, float, bool]]:
    """(type, merge ratio, checkpointing) of every model row: each type without and with
    merging, then each combined type with merging and checkpointing."""
    plain = [(kind, ratio) for kind in args.types for ratio in (0.0, MERGE_RATIO)]
    return [(kind, ratio, False) for kind, ratio in plain] + [
        (kind, MERGE_RATIO, True) for kind in args.combined_types
    ]


def row_label(kind: str, merge_ratio: float, checkpointing: bool) -> str:
    label = kind + (f" + merge {merge_ratio}" if merge_ratio else "")
    return label + (" + checkpointing" if checkpointing else "")


def model_table(args: argparse.Namespace, device: torch.device, depth: int) -> list[dict]:
    """The whole model at ``depth`` for every setting of ``model_settings``, with the ratios to
    the baselines without merging."""
    rows, steps, baselines = {}, {}, {}
    for kind, ratio, checkpointing in model_settings(args):
        model = seed_model(kind, depth, ratio, checkpointing, clip_args(args)).to(device)
        label = row_label(kind, ratio, checkpointing)
        rows[label] = {
            "table": "model",
            "row": label,
            "attention": kind,
            "depth": depth,
            "merge_ratio": ratio,
            "checkpointing": checkpointing,
            "params": parameter_count(model),
        }
        steps[label] = clip_step(model, args.frames, device)
        if not ratio and kind in BASELINES.values():
            baselines[kind] = rows[label]
    measure_rows(rows, steps, device, args.repeats)
    add_ratios(rows.values(), baseline_rows(baselines))
    for row in rows.values():
        unmerged = rows.get(row_label(row["attention"], 0.0, False))
        merged = row["merge_ratio"] and not row["checkpointing"]
        if merged and unmerged and "step_s" in row and "step_s" in unmerged:
            row["merge_speedup"] = unmerged["step_s"] / row["step_s"]
    return list(rows.values())


def clip_step(model: nn.Module, frames: int, device: torch.device, channels_first: bool = False):
    """A training step of ``model`` on one random clip of ``frames`` frames of its size and
    a random label; ``channels_first``: (batch, C, T, H, W), as torchvision's models take."""
    torch.manual_seed(0)
    _, chans, height, width = getattr(model, "clip_shape", (frames, 3, 224, 224))
    clip = torch.randn(1, frames, chans, height, width, device=device)
    if channels_first:
        clip = clip.transpose(1, 2)
    labels = torch.randint(0, NUM_CLASSES, (1,), device=device)
    return training_step(model, clip, labels, "none")


def peer_table(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """torchvision's ``swin3d_t`` and ``mvit_v2_s`` and ours (``peer_types`` at ``peer_depth``,
    merging at ``peer_merge_ratio``) on the clips each peer takes, per clip and per parameter."""
    try:
        from torchvision.models import video as torchvision_video
    except ImportError as err:
        raise ImportError(
            "--tables peers needs torchvision: pip install 'hvision-ext[bench]'"
        ) from err

    rows, steps = {}, {}
    for peer, peer_frames in PEER_FRAMES.items():
        frames = peer_frames or args.frames
        torch.manual_seed(0)
        model = getattr(torchvision_video, peer)(weights=None, num_classes=NUM_CLASSES)
        entries = [(peer, model.to(device).train(), True)]
        for kind in args.peer_types:
            ours = seed_model(
                kind,
                args.peer_depth,
                args.peer_merge_ratio,
                False,
                {**clip_args(args), "num_frames": frames},
            )
            label = f"{row_label(kind, args.peer_merge_ratio, False)}, depth {args.peer_depth}"
            entries.append((label, ours.to(device), False))
        for name, model, channels_first in entries:
            label = f"{name}, {frames} frames"
            rows[label] = {
                "table": "peers",
                "row": label,
                "frames": frames,
                "params": parameter_count(model),
            }
            steps[label] = clip_step(model, frames, device, channels_first)
    measure_rows(rows, steps, device, args.repeats)
    for row in rows.values():
        if "step_s" in row:
            million = row["params"] / 1e6
            row["ms_per_million_params"] = row["step_s"] * 1e3 / million
            row["mib_per_million_params"] = row["tensor_peak_mib"] / million
    return list(rows.values())


def floor_checks(mixer_rows: Sequence[dict], model_rows: Sequence[dict]) -> list[dict]:
    """Each floor the figures are held to, with the figure and whether it is met (rows whose
    figure is missing, because a row or its baseline was not measured, are left out)."""
    checks = []

    def check(claim: str, figure: float | None, limit: float, at_least: bool) -> None:
        if figure is not None:
            met = figure >= limit if at_least else figure <= limit
            checks.append({"claim": claim, "figure": figure, "limit": limit, "met": met})

    for row in mixer_rows:
        if row["row"] in SPEED_FLOOR_TYPES:
            claim = f"mixer {row['row']}: speed-up over SDPA >= {MIXER_SPEEDUP_FLOOR}"
            check(claim, row.get("speedup_vs_sdpa"), MIXER_SPEEDUP_FLOOR, True)
    for row in model_rows:
        where = f"model depth {row['depth']}, {row['row']}"
        if "merge_speedup" in row:
            claim = f"{where}: speed-up over no merging >= {MERGE_SPEEDUP_FLOOR}"
            check(claim, row["merge_speedup"], MERGE_SPEEDUP_FLOOR, True)
        if row["attention"] in EFFICIENT and not row["merge_ratio"]:
            claim = f"{where}: memory share of standard <= {EFFICIENT_MEMORY_CEILING}"
            check(claim, row.get("memory_vs_standard"), EFFICIENT_MEMORY_CEILING, False)
        if row["checkpointing"]:
            claim = f"{where}: memory share of standard <= {COMBINED_MEMORY_CEILING}"
            check(claim, row.get("memory_vs_standard"), COMBINED_MEMORY_CEILING, False)
    return checks


def ratio_text(value: float | None, suffix: str) -> str:
    return "" if value is None else f"{value:.2f}{suffix}"


def print_table(title: str, rows: Sequence[dict], columns: Sequence[Column]) -> None:
    """A table: each row's label, parameters, step median and range and tensor peak, then
    ``columns`` (header, width, the row's cell)."""
    print(f"\n{title}")
    width = max(len("row"), *(len(row["row"]) for row in rows))
    headers = "".join(f" {header:>{cell_width}}" for header, cell_width, _ in columns)
    print(
        f"  {'row':<{width}} {'params':>10} {'step s':>8} {'range s':>13} {'tensor MiB':>10}"
        + headers
    )
    for row in rows:
        if "error" in row:
            print(f"  {row['row']:<{width}} {row['params']:>10} failed: {row['error']}")
            continue
        low, high = row["step_range_s"]
        cells = "".join(f" {cell(row):>{cell_width}}" for _, cell_width, cell in columns)
        print(
            f"  {row['row']:<{width}} {row['params']:>10} {row['step_s']:>8.3f} "
            f"{f'{low:.3f}-{high:.3f}':>13} {row['tensor_peak_mib']:>10.0f}" + cells,
            flush=True,
        )


def ratio_column(header: str, key: str, suffix: str, width: int = 8) -> Column:
    return header, width, lambda row: ratio_text(row.get(key), suffix)


RATIO_COLUMNS = (
    ratio_column("x standard", "speedup_vs_standard", "x", 10),
    ratio_column("x SDPA", "speedup_vs_sdpa", "x"),
    ratio_column("mem/std", "memory_vs_standard", ""),
    ratio_column("mem/SDPA", "memory_vs_sdpa", ""),
    ratio_column("x merge", "merge_speedup", "x"),
)
PER_PARAMETER_COLUMNS = (
    ("ms/M params", 11, lambda row: f"{row['ms_per_million_params']:.1f}"),
    ("MiB/M params", 12, lambda row: f"{row['mib_per_million_params']:.2f}"),
)
PEERS_TITLE = "peers: torchvision's video transformers (random weights) and ours, batch 1"


def print_checks(checks: Sequence[dict]) -> None:
    print("\nfloors")
    for item in checks:
        verdict = "met" if item["met"] else "NOT MET"
        print(f"  {item['claim']}: {item['figure']:.2f} ({verdict})")


def comma_list(kind: Callable) -> Callable[[str], list]:
    """An argparse type: comma-separated values, each converted with ``kind``."""
    return lambda text: [kind(value) for value in text.split(",") if value]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m train.bench --video --seed-table", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--video", action="store_true", help="required: a video table")
    parser.add_argument("--seed-table", action="store_true", help="required: this table")
    parser.add_argument(
        "--tables",
        type=comma_list(str),
        default=list(TABLES),
        help=f"which tables, comma-separated, of {','.join(TABLES)}",
    )
    parser.add_argument(
        "--types",
        type=comma_list(str),
        default=["standard", *MIXERS],
        help="attention types of the mixer and model tables (standard: "
        "materialised scores; full: SDPA)",
    )
    parser.add_argument(
        "--combined-types",
        type=comma_list(str),
        default=EFFICIENT,
        help="types of the combined setting (merging and checkpointing)",
    )
    parser.add_argument(
        "--depths",
        type=comma_list(int),
        default=[1, 2],
        help="model depths, comma-separated (hvlm_base has 12)",
    )
    parser.add_argument("--frames", type=int, default=32, help="frames per clip")
    parser.add_argument(
        "--model-args",
        type=yaml.safe_load,
        default={},
        help="YAML overrides of hvlm_base (e.g. embed_dim, num_heads, img_size)",
    )
    parser.add_argument(
        "--peer-types", type=comma_list(str), default=["strided"], help="our types beside the peers"
    )
    parser.add_argument("--peer-depth", type=int, default=12, help="our depth beside the peers")
    parser.add_argument(
        "--peer-merge-ratio",
        type=float,
        default=MERGE_RATIO,
        help="our merge ratio beside the peers",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per row")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--json", help="also write the rows and floors to this file")
    args = parser.parse_args(argv)
    if not (args.video and args.seed_table):
        parser.error("the seed table is chosen with both --video and --seed-table")
    validate(parser, args)
    return args


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    known = {
        "--tables": TABLES,
        "--types": ["standard", *MIXERS],
        "--combined-types": EFFICIENT,
        "--peer-types": list(MIXERS),
    }
    for option, allowed in known.items():
        given = getattr(args, option[2:].replace("-", "_"))
        unknown = [value for value in given if value not in allowed]
        if unknown:
            parser.error(f"{option}: expected values of {list(allowed)}, got {unknown}")
    if args.repeats < 1 or args.frames < 1 or args.peer_depth < 1 or min(args.depths) < 1:
        parser.error(
            f"--repeats, --frames, --peer-depth and --depths must be >= 1, got {args.repeats}, "
            f"{args.frames}, {args.peer_depth} and {args.depths}"
        )


def main(argv: Sequence[str] | None = None) -> dict:
    """Measures and prints the asked-for tables and the floors; returns (and with ``--json``
    writes) the rows, the floors and the setting."""
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = describe_device(device)
    print(f"{SEED_MODEL} {clip_args(args)}, batch 1, forward+backward, {where}", flush=True)
    summary: dict = {"model": SEED_MODEL, "model_args": clip_args(args), "device": where}
    mixer_rows, model_rows = [], []
    if "mixer" in args.tables:
        mixer_rows = mixer_table(args, device)
        print_table("mixer alone", mixer_rows, RATIO_COLUMNS)
    for depth in args.depths if "model" in args.tables else []:
        rows = model_table(args, device, depth)
        print_table(f"whole model, depth {depth}", rows, RATIO_COLUMNS)
        model_rows += rows
    summary["rows"] = mixer_rows + model_rows
    if "peers" in args.tables:
        peer_rows = peer_table(args, device)
        print_table(PEERS_TITLE, peer_rows, PER_PARAMETER_COLUMNS)
        summary["rows"] += peer_rows
    summary["floors"] = floor_checks(mixer_rows, model_rows)
    print_checks(summary["floors"])
    if args.json:
        with open(args.json, "w") as file:
            json.dump(summary, file, indent=2)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
