"""``actrec inspect <command>``: the tutorials' pictures, made from a run.

Every command reads a run folder (or an experiment folder: its newest version), loads its model from
``config.yaml`` and a checkpoint (``--checkpoint``, by default the last) and writes PNGs (and GIFs) into
``RUN/inspect/`` unless ``--out`` says otherwise. Bad input is one sentence on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from actrec.errors import run_guarded
from actrec.inspection import drawing
from actrec.inspection.errors import InspectError
from actrec.inspection.loading import LoadedModel, load_run_model, stored_weights, zoo_model
from actrec.inspection.maximize import MaximizeSettings
from actrec.recording import Recording, thin_rows
from actrec.viewer import GifWriter, write_png
from actrec.viewer.output import safe_filename

__all__ = ["inspect_main"]

_OUT_FOLDER = "inspect"


def _out_dir(args: argparse.Namespace, loaded: LoadedModel | None) -> Path:
    out = Path(args.out) if args.out else (loaded.run_dir / _OUT_FOLDER if loaded else Path(_OUT_FOLDER))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InspectError(f"cannot create the output folder {out} ({error.strerror or error}).") from error
    return out


def _write(canvas: np.ndarray, path: Path) -> Path:
    try:
        write_png(canvas, path)
    except OSError as error:
        raise InspectError(f"cannot write {path} ({error.strerror or error}).") from error
    print(path)
    return path


def _input_image(args: argparse.Namespace, config: dict) -> tuple[np.ndarray, str, str, int | None]:
    """``(image (1, 1, 28, 28), description, file-name part, label or None)`` from ``--image`` or ``--index``."""
    from actrec.inspection.images import dataset_split, load_image

    if args.image is not None:
        image, inverted = load_image(args.image)
        note = " (inverted: MNIST digits are white on black)" if inverted else ""
        return image, f"{Path(args.image).name}{note}", safe_filename(Path(args.image).stem), None
    index = 0 if args.index is None else args.index
    images, labels, class_names = dataset_split(config, "test")
    if not 0 <= index < len(images):
        raise InspectError(f"--index {index} is out of range: the test split has {len(images)} images.")
    label = int(labels[index])
    return images[index : index + 1], f"test image {index} (a {class_names[label]})", f"test{index}", label


# ------------------------------------------------------------------------------------------------ commands


def _filters(args: argparse.Namespace) -> None:
    from actrec.inspection.filters import conv_kernels, draw_kernels, kernel_scale, pick_convs, stored_kernels

    loaded = load_run_model(args.run, args.checkpoint)
    convs = pick_convs(conv_kernels(loaded.model), args.layer)
    if not convs:
        raise InspectError(f"{loaded.model_name} has no convolutions; filters draws conv kernels only.")
    # Every stored kernel is read before anything is written: a damaged chunk in the last layer's weights
    # refuses the command with nothing written, not with the other layers' pictures already there.
    over_training: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if loaded.store_path is not None:
        with Recording.open(loaded.store_path, allow_empty=True, announce=None) as recording:
            for name in convs:
                found = stored_kernels(recording.store, name)
                if found is not None and len(found[0]) >= 2:
                    steps, weights = found
                    rows = thin_rows(np.asarray(steps), stride=max(1, args.stride))  # the one rule: last row kept
                    over_training[name] = (np.asarray(steps)[rows], np.asarray(weights)[rows])
    out = _out_dir(args, loaded)
    for name, weight in convs.items():
        title = f"{name} kernels · {loaded.label}"
        _write(draw_kernels(weight, title=title, subtitle="symmetric scale for the layer"), out / f"filters-{name}.png")
    for name, (steps, weights) in over_training.items():
        scale = kernel_scale(weights)
        path = out / f"filters-{name}.gif"
        with GifWriter(path, fps=args.fps) as gif:
            frames = [
                draw_kernels(
                    weights[row],
                    title=f"{name} kernels · step {int(steps[row])}",
                    subtitle="one scale for every step",
                    scale=scale,
                )
                for row in tqdm(range(len(steps)), desc=f"{name} over training", unit="step", leave=False)
            ]
            _append_padded(gif, frames)
        print(path)


def _append_padded(gif: GifWriter, frames: Sequence[np.ndarray]) -> None:
    """Append frames padded with white to the largest one's size (titles differ in width)."""
    height, width = max(f.shape[0] for f in frames), max(f.shape[1] for f in frames)
    for frame in frames:
        gif.append(drawing.pad(frame, 0, width - frame.shape[1], height - frame.shape[0], 0))


def _featuremaps(args: argparse.Namespace) -> None:
    from actrec.inspection.featuremaps import draw_featuremaps, feature_stages

    loaded = load_run_model(args.run, args.checkpoint)
    image, description, stem, _ = _input_image(args, loaded.config)
    stages = feature_stages(loaded.model, image)
    if not stages:
        raise InspectError(f"{loaded.model_name} has no conv, activation or pooling maps to draw.")
    canvas = draw_featuremaps(image, stages, title=f"Feature maps of {description}", subtitle=loaded.label)
    _write(canvas, _out_dir(args, loaded) / f"featuremaps-{stem}.png")


def _channels(text: str | None, count: int, layer: str) -> list[int]:
    if text is None:
        return list(range(count))
    try:
        channels = [int(part) for part in re.split(r"[,\s]+", text.strip()) if part]
    except ValueError as error:
        raise InspectError(f"--channels takes comma-separated channel numbers, got {text!r}.") from error
    wrong = [channel for channel in channels if not 0 <= channel < count]
    if wrong or not channels:
        raise InspectError(f"{layer} has channels 0 to {count - 1}; got {text!r}.")
    return channels


def _maximize(args: argparse.Namespace) -> None:
    from actrec.inspection.maximize import MaximizeSettings, draw_maximized, layer_channels, maximize_channels

    loaded = load_run_model(args.run, args.checkpoint)
    layer = args.layer
    channels = _channels(args.channels, layer_channels(loaded.model, layer), layer)
    settings = MaximizeSettings(steps=args.steps, seed=args.seed)
    out = _out_dir(args, loaded)
    with tqdm(total=settings.steps, desc=f"maximising {layer}", unit="step", leave=False) as bar:
        result = maximize_channels(loaded.model, layer, channels, settings=settings, on_step=bar.update)
    title = f"What drives each channel of {layer} · {loaded.label}"
    _write(draw_maximized(result, title=title), out / f"maximize-{safe_filename(layer)}.png")
    if args.over_training:
        _maximize_over_training(args, loaded, layer, channels, settings, out)


def _maximize_over_training(
    args: argparse.Namespace,
    loaded: LoadedModel,
    layer: str,
    channels: Sequence[int],
    settings: MaximizeSettings,
    out: Path,
) -> None:
    from actrec.inspection.maximize import draw_maximized, maximize_channels, over_training_sheet

    states = _weights_over_training(loaded, layer, args.frames)
    results = []
    model = zoo_model(loaded.model_name)
    for step, state in tqdm(states, desc=f"{layer} over training", unit="step", leave=False):
        model.load_state_dict(state, strict=False)
        results.append((step, maximize_channels(model, layer, channels, settings=settings)))
    run_name = f"{loaded.run_dir.parent.name}/{loaded.run_dir.name}"
    frames = [
        draw_maximized(result, title=f"What drives each channel of {layer} · {run_name} · step {step}")
        for step, result in results
    ]
    path = out / f"maximize-{safe_filename(layer)}-over-training.gif"
    with GifWriter(path, fps=args.fps) as gif:
        _append_padded(gif, frames)
    print(path)
    sheet = over_training_sheet(
        results,
        title=f"How the preferred patterns of {layer} form · {run_name}",
    )
    _write(sheet, out / f"maximize-{safe_filename(layer)}-over-training.png")


def _weights_over_training(loaded: LoadedModel, layer: str, frames: int) -> list[tuple[int, dict]]:
    """``[(step, state dict)]`` at up to ``frames`` steps: the store's per-step weights, else the checkpoints."""
    from actrec.inspection.maximize import weights_needed

    needed = weights_needed(loaded.model, layer)
    if loaded.store_path is not None:
        with Recording.open(loaded.store_path, allow_empty=True, announce=None) as recording:
            steps, weights = stored_weights(recording.store, loaded.model)
        if needed <= weights.keys() and len(steps) >= 2:
            rows = _spread(len(steps), frames)
            return [
                (int(steps[row]), {key: torch.from_numpy(np.asarray(weights[key][row])) for key in needed})
                for row in rows
            ]
    from actrec.runs import resolve_run

    checkpoints = resolve_run(loaded.run_dir).checkpoints()
    if len(checkpoints) < 2:
        raise InspectError(
            f"--over-training needs the weights at several steps, but {loaded.run_dir} has "
            f"{len(checkpoints)} checkpoint(s) and its store holds no per-step weights for {layer} "
            "(train with --recorder.record_weights true)."
        )
    states = []
    for row in _spread(len(checkpoints), frames):
        saved = torch.load(checkpoints[row], map_location="cpu", weights_only=True)
        states.append((int(saved.get("global_step", row)), saved["state_dict"]))
    return states


def _spread(count: int, frames: int) -> list[int]:
    """Up to ``frames`` row indices out of ``count``: the first, the last, and log-spaced between (early training
    changes fastest)."""
    if count <= frames:
        return list(range(count))
    picks = np.unique(np.round(np.geomspace(1, count, frames)).astype(int) - 1)
    return sorted({0, count - 1, *picks.tolist()})


def _shift(args: argparse.Namespace) -> None:
    from actrec.inspection.images import dataset_split
    from actrec.inspection.shift import (
        DEFAULT_SHIFTS,
        draw_accuracy_chart,
        draw_heatmap,
        shift_accuracy,
        shift_probabilities,
    )

    runs = [load_run_model(args.run, args.checkpoint)]
    if args.compare is not None:
        runs.append(load_run_model(args.compare, None))
    image, description, stem, label = _input_image(args, runs[0].config)
    _, _, class_names = dataset_split(runs[0].config, "test")
    out = _out_dir(args, runs[0])
    heatmaps = []
    for loaded in runs:
        probabilities = shift_probabilities(loaded.model, image, DEFAULT_SHIFTS)
        heatmaps.append(
            draw_heatmap(
                probabilities,
                DEFAULT_SHIFTS,
                class_names,
                title=f"{loaded.model_name}: {description}",
                subtitle=loaded.label,
                label=label,
            )
        )
    if len(runs) == 1:
        _write(heatmaps[0], out / f"shift-{stem}.png")
        return
    accuracies = {}
    for loaded in runs:
        images, labels, _ = dataset_split(loaded.config, "test")
        count = min(args.images, len(images))
        accuracy = []
        for shift in tqdm(DEFAULT_SHIFTS, desc=f"accuracy of {loaded.model_name}", unit="shift", leave=False):
            accuracy.append(shift_accuracy(loaded.model, images[:count], labels[:count], [shift])[0])
        name = f"{loaded.model_name}: {loaded.label}"
        accuracies[name] = np.array(accuracy)
    chart = draw_accuracy_chart(
        DEFAULT_SHIFTS,
        accuracies,
        title="Accuracy against horizontal shift",
        subtitle=f"the first {count} test images, each shifted alike",
    )
    height = max(h.shape[0] for h in heatmaps + [chart])
    parts = [
        np.pad(part, ((0, height - part.shape[0]), (0, 0), (0, 0)), constant_values=255) for part in [*heatmaps, chart]
    ]
    _write(np.concatenate(parts, axis=1), out / f"shift-{stem}-compare.png")


def _summary(args: argparse.Namespace) -> None:
    from actrec.inspection.summary import format_table, summarize

    if args.model is not None:
        if args.run is not None:
            raise InspectError("give a run or --model, not both.")
        model, title = zoo_model(args.model), f"{args.model} (freshly built)"
    elif args.run is not None:
        loaded = load_run_model(args.run, args.checkpoint)
        model, title = loaded.model, f"{loaded.model_name} · {loaded.label}"
    else:
        raise InspectError("give a run folder or --model NAME.")
    print(format_table(summarize(model), title=title), end="")


def _handcrafted(args: argparse.Namespace) -> None:
    from actrec.inspection.handcrafted import apply_edge_filters, draw_handcrafted

    config = {"data": {"dataset": "mnist-sample"}}
    image, description, stem, _ = _input_image(args, config)
    result = apply_edge_filters(image)
    canvas = draw_handcrafted(result, title=f"Four hand-made edge filters on {description}")
    _write(canvas, _out_dir(args, None) / f"handcrafted-{stem}.png")


# ------------------------------------------------------------------------------------------------ parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="actrec inspect", description="The tutorials' pictures, made from a run.")
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)

    def command(name: str, help_text: str, run: str = "required") -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if run == "required":
            sub.add_argument("run", help="run folder, experiment folder (newest version) or activations.h5")
        elif run == "optional":
            sub.add_argument("run", nargs="?", help="run folder, experiment folder (newest version)")
        if run != "none":
            sub.add_argument("--checkpoint", help="checkpoint file or its name in RUN/checkpoints (default: the last)")
        sub.add_argument("--out", help="output folder (default: RUN/inspect)")
        return sub

    def image_source(sub: argparse.ArgumentParser, required: bool) -> None:
        source = sub.add_mutually_exclusive_group(required=required)
        source.add_argument("--image", help="a PNG/JPEG, resized to 28x28 and scaled to [0, 1] as in training")
        # default None, not 0: argparse's required group would take an explicit "--index 0" for no choice at all
        source.add_argument(
            "--index", type=int, help="an image of the run's test split" + ("" if required else " (default 0)")
        )

    sub = command("filters", "every conv kernel as a red-blue grid, and an animation over training from the store")
    sub.add_argument("--layer", help="a conv block or conv module, e.g. net.conv3 (default: every conv)")
    sub.add_argument("--fps", type=float, default=10.0, help="animation speed")
    sub.add_argument("--stride", type=int, default=1, help="animate every K-th recorded step")
    sub.set_defaults(handler=_filters)

    sub = command("featuremaps", "one image through every conv, activation and pooling stage")
    image_source(sub, required=True)
    sub.set_defaults(handler=_featuremaps)

    sub = command("maximize", "the input that maximises each channel's mean activation")
    sub.add_argument("--layer", required=True, help="e.g. net.conv5 (the block's output after its tanh)")
    sub.add_argument("--channels", help="comma-separated channels (default: all)")
    sub.add_argument("--steps", type=int, default=200, help="optimisation steps per image")
    sub.add_argument("--seed", type=int, default=0, help="seed of the starting noise and jitter")
    sub.add_argument("--over-training", action="store_true", help="repeat at several training steps and animate")
    sub.add_argument("--frames", type=int, default=8, help="training steps to sample for --over-training")
    sub.add_argument("--fps", type=float, default=2.0, help="animation speed for --over-training")
    sub.set_defaults(handler=_maximize)

    sub = command("shift", "class probabilities of a test image shifted -5 to +5 pixels")
    image_source(sub, required=False)
    sub.add_argument("--compare", help="a second run, drawn beside the first, plus accuracy against shift for both")
    sub.add_argument("--images", type=int, default=1000, help="test images for the accuracy curves")
    sub.set_defaults(handler=_shift)

    sub = command("summary", "the layer table with the output-size rule checked against a forward pass", "optional")
    sub.add_argument("--model", help="a zoo model instead of a run: six_conv_tanh, lenet or mlp")
    sub.set_defaults(handler=_summary)

    sub = command("handcrafted", "a conv layer set to four hand-made edge filters, applied to a digit", "none")
    image_source(sub, required=False)
    sub.set_defaults(handler=_handcrafted)
    return parser


def inspect_main(argv: list[str]) -> int:
    """Run ``actrec inspect`` with ``argv`` (the arguments after ``inspect``); returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:
        return exit_request.code if isinstance(exit_request.code, int) else 2
    handler: Callable[[argparse.Namespace], None] = args.handler

    def action() -> int:
        handler(args)
        return 0

    # The one guard: user errors in one sentence, Ctrl-C and SIGTERM end with 130 and 143.
    return run_guarded(f"actrec inspect {args.command}", action)
