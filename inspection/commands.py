"""What each ``actrec inspect <command>`` does: the tutorials' pictures, made from a run.

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

from actrec.console import Progress
from actrec.inspection import drawing
from actrec.inspection.errors import InspectError
from actrec.inspection.loading import LoadedModel, load_run_model, stored_weights, zoo_model
from actrec.inspection.maximize import MaximizeSettings
from actrec.recording import Recording, thin_rows
from actrec.viewer import GifWriter, write_png
from actrec.viewer.output import safe_filename

__all__ = ["COMMANDS"]

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
            frames = []
            with Progress(len(steps), f"actrec inspect filters: {name} over training", unit="steps") as progress:
                for row in range(len(steps)):
                    frames.append(
                        draw_kernels(
                            weights[row],
                            title=f"{name} kernels · step {int(steps[row])}",
                            subtitle="one scale for every step",
                            scale=scale,
                        )
                    )
                    progress.update()
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
    with Progress(settings.steps, f"actrec inspect maximize: {layer}", unit="steps") as progress:
        result = maximize_channels(loaded.model, layer, channels, settings=settings, on_step=progress.update)
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
    with Progress(len(states), f"actrec inspect maximize: {layer} over training", unit="steps") as progress:
        for step, state in states:
            model.load_state_dict(state, strict=False)
            results.append((step, maximize_channels(model, layer, channels, settings=settings)))
            progress.update()
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
        with Progress(len(DEFAULT_SHIFTS), f"actrec inspect shift: {loaded.model_name}", unit="shifts") as progress:
            for shift in DEFAULT_SHIFTS:
                accuracy.append(shift_accuracy(loaded.model, images[:count], labels[:count], [shift])[0])
                progress.update()
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


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "filters": _filters,
    "featuremaps": _featuremaps,
    "maximize": _maximize,
    "shift": _shift,
    "summary": _summary,
    "handcrafted": _handcrafted,
}
"""``{command name: what it does with the parsed arguments}``; :mod:`actrec.inspection.cli` parses them."""
