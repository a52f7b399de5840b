"""Outputs drawn by task: real tiny trainings (the models of test_any_training) rendered with ``actrec render``,
their frames read back from the GIF and contact sheet, and the drawn pixels checked against the store's values.

- a reconstruction: an "output" picture row under the inputs, on the inputs' brightness scale, changing per step;
- a GAN's generator on noise probes: the noise as a red-blue strip, the generated picture as the output row;
- a language model (token ids in, (T, V) scores out): the token ids as numbers, the predicted next id per position;
- a regressor: its one output value as a red-blue cell with the number under it;
- a classifier fed token ids: its ✓/✗ row, unchanged, under the ids;
and no fake ✓/✗ row for any model that is not a classifier.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from recorder_fixtures import TinyData
from report_browser import browser_page, find_chromium
from test_any_training import GAN, AutoEncoder, GPT2Like, TokenClassifier, _token_items, _trainer, generate
from torch import nn
from torch.utils.data import DataLoader
from viewer_fixtures import make_store, rgb_to_indices

from actrec.callbacks import ActivationRecorder
from actrec.names import TASKS
from actrec.probe import ProbeSelection, decide_task
from actrec.recording import OUTPUT_CLASSES, OUTPUT_IMAGE, OUTPUT_TOKENS, OUTPUT_VALUES, Recording, colors
from actrec.report import build_report
from actrec.report.build import probe_strip
from actrec.store import StoreReader
from actrec.viewer import RenderResult, export_tensorboard, render_run
from actrec.viewer.frames import CARD_FRAME_WIDTH, CARD_TEXT_SCALE, FrameLayout, picture_tiles
from actrec.viewer.plan import frame_layout, make_plan
from actrec.viewer.tb_export import at_least_own_resolution

TILE = 16

# Palette indices of the green (right) and red (wrong) prediction ramps: only a ✓/✗ row uses them.
_MARKS = np.arange(colors.PALETTE_SIZE - 18, colors.PALETTE_SIZE - 2)


def _animation(result: RenderResult, layer: str) -> Path:
    """The animation ``actrec render`` wrote for ``layer`` (whatever its format: GIF, APNG)."""
    (path,) = [path for path in result.files if Path(path).stem == layer]
    return Path(path)


def _frames(path: Path) -> list[np.ndarray]:
    """Every frame of an animation (as Pillow composes them) as palette indices; an APNG's still picture, kept
    outside its animation (Pillow's frame 0), is left out, so the frames are the steps drawn."""
    frames = []
    with Image.open(path) as image:
        for index in range(1 if image.info.get("default_image") else 0, image.n_frames):
            image.seek(index)
            frames.append(rgb_to_indices(np.asarray(image.convert("RGB"))))
    return frames


def _sheet(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return rgb_to_indices(np.asarray(image.convert("RGB")))


def _box(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    left, top, right, bottom = box
    return frame[top:bottom, left:right]


def _layout(run: Path, layer: str) -> tuple[Recording, FrameLayout, Any]:
    recording = Recording.open(run)
    plan = make_plan(recording, [layer], None, None, 1, TILE)
    return recording, frame_layout(recording, plan.layer_plans[layer], plan.rows), plan


def _fit(root: Path, model: pl.LightningModule, *data: Any, epochs: int = 2, **options: Any) -> Path:
    pl.seed_everything(0, verbose=False)
    recorder = ActivationRecorder(background_writes=False, **options)
    _trainer(root, logger=False, callbacks=[recorder], max_epochs=epochs).fit(model, *data)
    return recorder.store_path.parent


class LanguageModel(pl.LightningModule):
    """GPT-2 in small (blocks under ``transformer.h``), trained to predict the next token of dict batches."""

    def __init__(self) -> None:
        super().__init__()
        self.model = GPT2Like()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        ids = batch["input_ids"]
        scores = self(ids)
        loss = nn.functional.cross_entropy(scores[:, :-1].reshape(-1, scores.shape[-1]), ids[:, 1:].reshape(-1))
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.05)


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        features, target = batch
        return nn.functional.mse_loss(self(features).squeeze(-1), target)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.05)


# -- the decision ---------------------------------------------------------------------------------


def _selection(inputs: torch.Tensor) -> ProbeSelection:
    return ProbeSelection(inputs, torch.full((len(inputs),), -1), torch.arange(len(inputs)), "test")


@pytest.mark.parametrize(
    ("inputs", "output", "task"),
    [
        (torch.rand(3, 1, 6, 6), (3, 36), "reconstruction"),
        (torch.rand(3, 8), (3, 1, 6, 6), "generation"),
        (torch.randint(0, 20, (3, 6)), (3, 6, 20), "generation"),  # a language model's next-token scores
        (torch.randint(0, 20, (3, 6)), (3, 2), "classification"),
        (torch.rand(3, 5), (3, 1), "regression"),
        (torch.rand(3, 1, 6, 6), (3, 4, 2), "none"),
    ],
)
def test_auto_decides_from_shapes_with_the_shared_task_names(
    inputs: torch.Tensor, output: tuple[int, ...], task: str
) -> None:
    decided, why = decide_task(_selection(inputs), output)
    assert decided == task
    assert decided in TASKS
    assert why


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Lightning's autoencoder example in small, trained for two epochs (7 recorded steps)."""
    return _fit(tmp_path_factory.mktemp("autoencoder"), AutoEncoder(), TinyData(batch_size=8, size=24))


def test_the_output_shape_is_stored_and_older_stores_still_draw_their_outputs(
    autoencoder_run: Path, tmp_path: Path
) -> None:
    run = autoencoder_run
    with StoreReader(run / "activations.h5") as store:
        assert store.output_shape == (36,)  # the autoencoder's forward returns flat vectors
    with Recording.open(run) as recording:
        drawing = recording.output_drawing
        assert (drawing.mode, drawing.shape) == (OUTPUT_IMAGE, (1, 6, 6))  # as many values as the input image
        images = recording.probes.images
        assert (drawing.low, drawing.high) == (float(images.min()), float(images.max()))
    make_store(tmp_path / "old", range(2))  # no output_shape, no task: a classifier, as before
    with StoreReader(tmp_path / "old" / "activations.h5") as store:
        assert store.output_shape is None
    with Recording.open(tmp_path / "old") as recording:
        assert recording.output_drawing.mode == OUTPUT_CLASSES


# -- real trainings, rendered ------------------------------------------------------------------------


def test_a_reconstruction_is_drawn_as_an_output_picture_under_the_inputs(autoencoder_run: Path) -> None:
    run = autoencoder_run
    result = render_run(run, layers=["encoder.1"], tile_size=TILE)
    frames = _frames(_animation(result, "encoder.1"))
    recording, layout, plan = _layout(run, "encoder.1")
    with recording:
        assert layout.output is not None
        assert layout.output.mode == OUTPUT_IMAGE
        outputs = recording.outputs(plan.rows)
        images = recording.probes.images
        low, high = float(images.min()), float(images.max())
        assert len(frames) == len(plan.rows) == 7
        for frame, stored in zip(frames, outputs, strict=True):
            expected = picture_tiles(stored.reshape(3, 1, 6, 6), TILE, low, high)  # drawn like the inputs
            for probe in range(3):
                np.testing.assert_array_equal(_box(frame, layout.output_box(probe)), expected[probe])
                # the output row lies between the inputs and the grid
                assert layout.input_box(probe)[3] <= layout.output_box(probe)[1] < layout.tile_box(0, probe)[1]
            assert not np.isin(frame, _MARKS).any()  # no fake ✓/✗ row
        assert not np.array_equal(_box(frames[0], layout.output_box(0)), _box(frames[-1], layout.output_box(0)))
        np.testing.assert_array_equal(_box(frames[0], layout.input_box(1)), picture_tiles(images, TILE)[1])
        # the contact sheet draws the outputs of its own steps
        sheet = _sheet(result.out_dir / "encoder.1.sheet.png")
        first = picture_tiles(outputs[0].reshape(3, 1, 6, 6), TILE, low, high)[0]
        last = picture_tiles(outputs[-1].reshape(3, 1, 6, 6), TILE, low, high)[0]
        assert _contains(sheet, first)
        assert _contains(sheet, last)
        assert not np.isin(sheet, _MARKS).any()


def test_the_tensorboard_export_draws_the_reconstruction_too(autoencoder_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    result = export_tensorboard(autoencoder_run, layers=["decoder.1"], tile_size=TILE)
    accumulator = EventAccumulator(str(result.export_dir), size_guidance={IMAGES: 0})
    accumulator.Reload()
    events = accumulator.Images("activations/decoder.1")
    with Recording.open(autoencoder_run) as recording:
        plan = make_plan(
            recording, ["decoder.1"], None, None, 1, TILE, max_frame_width=CARD_FRAME_WIDTH, text_scale=CARD_TEXT_SCALE
        )
        layer_plan = at_least_own_resolution(plan.layer_plans["decoder.1"])
        layout = frame_layout(recording, layer_plan, plan.rows)
        outputs = recording.outputs(plan.rows)
        images = recording.probes.images
        assert len(events) == len(plan.rows)
        for event, stored in zip(events, outputs, strict=True):
            frame = rgb_to_indices(np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")))
            expected = picture_tiles(stored.reshape(3, 1, 6, 6), layer_plan.tile_size, images.min(), images.max())
            for probe in range(3):
                np.testing.assert_array_equal(_box(frame, layout.output_box(probe)), expected[probe])


def _inked(pixels: np.ndarray) -> bool:
    """Whether text (grey ink: neither the white background nor the gutter grey) is drawn in ``pixels``."""
    grey = (pixels >= colors.GREY_START) & (pixels < colors.GREY_START + colors.GREY_LEVELS)
    return bool((grey & (pixels != colors.GUTTER_INDEX)).any())


def _contains(image: np.ndarray, tile: np.ndarray) -> bool:
    """Whether ``tile`` appears in ``image`` exactly (at any position)."""
    windows = np.lib.stride_tricks.sliding_window_view(image, tile.shape)
    return bool((windows == tile).all(axis=(-2, -1)).any())


def test_a_gan_draws_its_noise_as_a_strip_and_its_generated_picture(tmp_path: Path) -> None:
    noise = torch.randn(4, 8, generator=torch.Generator().manual_seed(5))
    run = _fit(
        tmp_path,
        GAN(),
        TinyData(batch_size=8, size=24),
        probe_batch=noise,
        probe_forward=generate,
        batch_loss_names=["g_loss"],
    )
    result = render_run(run, tile_size=TILE)
    frames = _frames(_animation(result, "generator.1"))
    recording, layout, plan = _layout(run, "generator.1")
    with recording:
        assert recording.task == "generation"
        assert layout.labels is None  # noise probes have no label: no row of "?"
        drawing = recording.output_drawing
        assert (drawing.mode, drawing.shape) == (OUTPUT_IMAGE, (1, 6, 6))  # the stored output_shape
        outputs = recording.outputs(plan.rows)
        for frame, stored in zip(frames, outputs, strict=True):
            expected = picture_tiles(stored.reshape(4, 1, 6, 6), TILE, drawing.low, drawing.high)
            for probe in range(4):
                np.testing.assert_array_equal(_box(frame, layout.output_box(probe)), expected[probe])
            assert not np.isin(frame, _MARKS).any()
        # The noise: 8 cells on the red-blue scale of its largest |value|, inside a gutter outline.
        strip = _box(frames[0], layout.input_box(0))
        inner = strip[1:-1, 1:-1]
        cells = inner[inner.shape[0] // 2, :: inner.shape[1] // 8]
        limit = float(np.abs(noise.numpy()).max())
        np.testing.assert_array_equal(cells, colors.diverging_indices(noise.numpy()[0], limit))
        assert (strip[0] == colors.GUTTER_INDEX).all()


@pytest.fixture(scope="module")
def language_model_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT-2-like model trained for next tokens on dict batches, three probes of six token ids."""
    items = [{"input_ids": item["input_ids"]} for item in _token_items()]
    probes = {"input_ids": torch.stack([item["input_ids"] for item in items[:3]])}
    return _fit(tmp_path_factory.mktemp("lm"), LanguageModel(), DataLoader(items, batch_size=8), probe_batch=probes)


def test_a_language_model_draws_token_ids_and_its_predicted_next_ids(language_model_run: Path) -> None:
    run = language_model_run
    result = render_run(run, layers=["model.transformer.h.0"], tile_size=TILE)
    frames = _frames(_animation(result, "model.transformer.h.0"))
    recording, layout, plan = _layout(run, "model.transformer.h.0")
    with recording:
        assert recording.task == "generation"
        assert recording.store.output_shape == (6, 20)
        assert (recording.output_drawing.mode, recording.output_drawing.shape) == (OUTPUT_TOKENS, (6, 20))
        assert layout.kind == "tokens"
        outputs = recording.outputs(plan.rows)
        predicted = outputs.reshape(len(plan.rows), 3, 6, 20).argmax(-1)  # the next id at every position
        assert not (predicted[0] == predicted[-1]).all()  # it learns: what it predicts changes
        activations = recording.layer("model.transformer.h.0").read(plan.rows).values
        for index, frame in enumerate(frames):
            # The same layout drawing scores whose argmax is the expected ids: the same text pixels.
            one_hot = np.eye(20, dtype=np.float32)[predicted[index]].reshape(3, 120)
            reference = layout.frame(activations[index], title="", outputs=one_hot)
            for probe in range(3):
                ids_box = layout.output_box(probe)
                np.testing.assert_array_equal(_box(frame, ids_box), _box(reference, ids_box))
                assert _inked(_box(frame, ids_box))  # numbers are written there
            assert not np.isin(frame, _MARKS).any()
        for probe in range(3):  # the probes' own token ids, as numbers, differ between probes
            assert _inked(_box(frames[0], layout.input_box(probe)))
        assert not np.array_equal(_box(frames[0], layout.input_box(0)), _box(frames[0], layout.input_box(1)))


def test_a_regressor_draws_its_value_never_a_class(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(32, 5, generator=generator)
    data = torch.utils.data.TensorDataset(features, features.sum(1))
    with caplog.at_level("INFO"):
        run = _fit(
            tmp_path, Regressor(), DataLoader(data, batch_size=8), probe_batch=(features[:3], features[:3].sum(1))
        )
    said = [record.getMessage() for record in caplog.records if "task " in record.getMessage()]
    assert said == ["ActivationRecorder: task regression (one value per probe); pass task= to choose another."]
    result = render_run(run, tile_size=TILE)
    frames = _frames(_animation(result, "net.1"))
    recording, layout, plan = _layout(run, "net.1")
    with recording:
        assert recording.task == "regression"
        drawing = recording.output_drawing
        assert drawing.mode == OUTPUT_VALUES
        outputs = recording.outputs(plan.rows)
        for frame, stored in zip(frames, outputs, strict=True):
            for probe in range(3):
                cell = _box(frame, layout.output_box(probe))
                colour = colors.diverging_indices(stored[probe], drawing.high)[0]
                assert (cell == colour).sum() >= 16  # the value's colour fills its cell
                assert _inked(cell)  # and its number is written under it
            assert not np.isin(frame, _MARKS).any()


def test_a_classifier_fed_token_ids_keeps_its_marks_and_shows_its_ids(tmp_path: Path) -> None:
    items = _token_items()
    run = _fit(
        tmp_path,
        TokenClassifier(),
        DataLoader(items, batch_size=8),
        DataLoader(items[:12], batch_size=5),
        probes_per_class=2,
    )
    result = render_run(run, layers=["encoder.layers.0"], tile_size=TILE)
    frames = _frames(_animation(result, "encoder.layers.0"))
    recording, layout, _ = _layout(run, "encoder.layers.0")
    with recording:
        assert recording.output_drawing.mode == OUTPUT_CLASSES
        with pytest.raises(ValueError, match="no output row"):
            layout.output_box(0)
        for probe in range(4):
            assert _inked(_box(frames[-1], layout.input_box(probe)))
            assert np.isin(_box(frames[-1], layout.prediction_box(probe)), _MARKS).any()  # ✓/✗ as before


def _report_data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    assert match is not None
    return json.loads(match[1])


def test_the_report_shows_a_reconstruction_per_step(autoencoder_run: Path) -> None:
    result = build_report(autoencoder_run, out=autoencoder_run / "report.html")
    data = _report_data(result.path)
    page = result.path.read_text(encoding="utf-8")
    assert data["predictions"] is None
    assert 'id="output-img"' in page
    assert "Probes and outputs" in page
    assert "<span>0</span><span>1</span><span>2</span>" in page  # labels without class names: their numbers
    outputs = data["outputs"]
    assert outputs["label"] == "output"
    assert outputs["shape"] == [6, 6]
    with Recording.open(autoencoder_run) as recording:
        rows = recording.timeline.thin()
        assert len(outputs["frames"]) == len(rows) == len(data["steps"])
        images = recording.probes.images
        for frame, stored in zip(outputs["frames"], recording.outputs(rows), strict=True):
            with Image.open(io.BytesIO(base64.b64decode(frame))) as picture:
                drawn = np.asarray(picture)
            expected = probe_strip(stored.reshape(3, 1, 6, 6), float(images.min()), float(images.max()))
            np.testing.assert_array_equal(drawn, colors.to_rgb(expected) if drawn.ndim == 3 else expected)


def test_the_report_writes_no_row_of_question_marks_for_unlabeled_probes(tmp_path: Path) -> None:
    scores = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    run = _store_without_output_shape(tmp_path / "run", np.ones((2, 5)), scores, "regression")
    page = build_report(run, out=run / "report.html").path.read_text(encoding="utf-8")
    # As render draws them: probes without labels (noise, prompts, features) get no "?" over their columns.
    assert "<span>?</span>" not in page
    assert '<div class="labels"><span></span><span></span></div>' in page  # the columns stay


def test_the_report_lists_a_language_model_s_next_ids(language_model_run: Path) -> None:
    result = build_report(language_model_run, out=language_model_run / "report.html")
    data = _report_data(result.path)
    assert data["outputs"]["label"] == "next id"
    assert 'id="outputs"' in result.path.read_text(encoding="utf-8")
    with Recording.open(language_model_run) as recording:
        rows = recording.timeline.thin()
        predicted = recording.outputs(rows).reshape(len(rows), 3, 6, 20).argmax(-1)
    assert data["outputs"]["texts"] == [[" ".join(map(str, ids)) for ids in step] for step in predicted.tolist()]


def test_the_report_page_swaps_the_outputs_with_the_slider(autoencoder_run: Path, tmp_path: Path) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium on this machine: the page is not tested in a browser")
    pytest.importorskip("aiohttp", reason="the DevTools client needs aiohttp (installed with pytorch-lightning[extra])")
    page_path = build_report(autoencoder_run, out=tmp_path / "report.html").path
    frames = _report_data(page_path)["outputs"]["frames"]
    source = "document.getElementById('output-img').src"

    async def scenario() -> tuple[str, str, dict, list[str]]:
        async with browser_page(chromium) as page:
            await page.open(page_path, width=1366, height=768)
            first = await page.evaluate(source)
            await page.press("End", 35)
            await asyncio.sleep(0.1)
            last = await page.evaluate(source)
            box = await page.evaluate(
                "(() => { const r = document.getElementById('output-img').getBoundingClientRect(); "
                "return {width: r.width, height: r.height}; })()"
            )
            await page.screenshot(tmp_path / "report.png")
            return first, last, box, page.errors

    first, last, box, errors = asyncio.run(scenario())
    assert errors == []
    assert first == "data:image/png;base64," + frames[0]
    assert last == "data:image/png;base64," + frames[-1]
    assert box["width"] >= 3 * box["height"] > 0  # three probes' pictures side by side, sized like the inputs


def test_live_tensorboard_images_draw_the_outputs_not_a_fake_class(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    from actrec.recording import output_drawing
    from actrec.viewer import frame_title, live_frames

    pl.seed_everything(0, verbose=False)
    recorder = ActivationRecorder(background_writes=False, log_images_every_n_steps=2)
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="logs")
    _trainer(tmp_path, logger=logger, callbacks=[recorder]).fit(AutoEncoder(), TinyData(batch_size=8, size=24))
    events = EventAccumulator(str(recorder.store_path.parent), size_guidance={IMAGES: 0})
    events.Reload()
    with StoreReader(recorder.store_path) as store:
        steps = store.global_steps().tolist()
        logged_rows = [row for row, step in enumerate(steps) if step % 2 == 0]
        first = store.logits(np.array(logged_rows[:1]))
        drawing = output_drawing("reconstruction", store.probes.images, 36, store.output_shape, lambda rows: first, 1)
        assert drawing.mode == OUTPUT_IMAGE
        state = None
        for row in logged_rows:
            expected, state = live_frames(
                store.layer("encoder.1").scale_kind,
                store.activations("encoder.1", np.array([row]))[0],
                state,
                title=frame_title("encoder.1", steps[row], int(store.steps()["epoch"][row])),
                probe_images=store.probes.images,
                labels=store.probes.labels,
                output=drawing,
                outputs=store.logits(np.array([row]))[0],
            )
            (suffix, image), *_ = expected
            logged = [e for e in events.Images(f"activations/encoder.1{suffix}") if e.step == steps[row]]
            pixels = np.asarray(Image.open(io.BytesIO(logged[0].encoded_image_string)).convert("RGB"))
            np.testing.assert_array_equal(pixels, image)
            assert not np.isin(rgb_to_indices(pixels), _MARKS).any()


def test_live_tensorboard_images_widen_a_regressors_scale_as_its_outputs_grow(tmp_path: Path) -> None:
    # The scale of drawn values only grows over the run, as a layer's limit does: decided from the first
    # logged step alone, outputs that grow later would sit at the colour scale's ends for the rest of training.
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    from actrec.recording import OutputDrawing
    from actrec.viewer import frame_title, live_frames

    generator = torch.Generator().manual_seed(3)
    features = torch.randn(32, 5, generator=generator)
    data = torch.utils.data.TensorDataset(features, 6 * features.sum(1))  # outputs grow from ~0 to ~±15
    pl.seed_everything(0, verbose=False)
    recorder = ActivationRecorder(
        background_writes=False, log_images_every_n_steps=1, probe_batch=(features[:3], features[:3].sum(1))
    )
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="logs")
    trainer = _trainer(tmp_path, logger=logger, callbacks=[recorder], max_epochs=6)
    trainer.fit(Regressor(), DataLoader(data, batch_size=8))
    events = EventAccumulator(str(recorder.store_path.parent), size_guidance={IMAGES: 0})
    events.Reload()
    with StoreReader(recorder.store_path) as store:
        steps = store.global_steps().tolist()
        outputs = store.logits()
        limits = np.maximum.accumulate(np.abs(outputs).reshape(len(steps), -1).max(axis=1))
        assert limits[-1] > 3 * limits[0]  # the case under test: a first-step scale would pin later values
        state = None
        for row in (len(steps) // 2, len(steps) - 1):
            drawing = OutputDrawing(OUTPUT_VALUES, (1,), -float(limits[row]), float(limits[row]))
            expected, state = live_frames(
                store.layer("net.1").scale_kind,
                store.activations("net.1", np.array([row]))[0],
                None,
                title=frame_title("net.1", steps[row], int(store.steps()["epoch"][row])),
                probe_images=store.probes.images,
                labels=store.probes.labels if (store.probes.labels >= 0).any() else None,
                output=drawing,
                outputs=outputs[row],
            )
            (suffix, image), *_ = expected
            logged = [e for e in events.Images(f"activations/net.1{suffix}") if e.step == steps[row]]
            pixels = np.asarray(Image.open(io.BytesIO(logged[0].encoded_image_string)).convert("RGB"))
            np.testing.assert_array_equal(pixels, image)


def _store_without_output_shape(folder: Path, inputs: np.ndarray, outputs: np.ndarray, task: str, **extra: Any) -> Path:
    """A finished store of two rows whose writer gave no ``output_shape`` (as before the attribute existed)."""
    from actrec.store import LayerSpec, ProbeSet, StepRecord, StoreWriter

    folder.mkdir(parents=True)
    probes = len(inputs)
    writer = StoreWriter.create(
        folder / "activations.h5",
        run_id="old",
        config={},
        probes=ProbeSet(inputs.astype(np.float32), np.full(probes, -1), np.arange(probes), []),
        layers=[LayerSpec("hidden", (4,), "Linear", "symmetric")],
        num_classes=outputs.shape[-1],
        background=False,
        task=task,
        **extra,
    )
    with writer:
        for step in range(2):
            writer.append(
                StepRecord(step, 0, 0.0, 0.0, outputs * (step + 1), {"hidden": np.zeros((probes, 4), np.float32)})
            )
    return folder


def test_older_stores_are_drawn_from_their_flattened_outputs(tmp_path: Path) -> None:
    ids = np.array([[3, 1, 4], [1, 5, 9]])
    scores = np.random.default_rng(0).normal(size=(2, 3 * 7)).astype(np.float32)  # (T=3, V=7) flattened
    lm = _store_without_output_shape(tmp_path / "lm", ids, scores, "none")
    values = _store_without_output_shape(tmp_path / "values", np.ones((2, 5)), scores[:, :4], "regression")
    # An output_shape that disagrees with the stored values is not trusted: drawn from the values.
    wrong = _store_without_output_shape(tmp_path / "wrong", ids, scores, "none", output_shape=(5, 5))
    with Recording.open(lm) as recording:
        drawing = recording.output_drawing
        assert (drawing.mode, drawing.shape) == (OUTPUT_TOKENS, (3, 7))  # T from the token ids, V from K / T
        np.testing.assert_array_equal(drawing.drawn(recording.outputs([1])[0]), scores.reshape(2, 3, 7).argmax(-1))
    with Recording.open(values) as recording:
        drawing = recording.output_drawing
        assert (drawing.mode, drawing.shape) == (OUTPUT_VALUES, (4,))
        assert drawing.high == pytest.approx(2 * float(np.abs(scores[:, :4]).max()))  # over the rows, both of them
    with Recording.open(wrong) as recording:
        assert recording.store.output_shape == (5, 5)
        assert recording.output_drawing.mode == OUTPUT_TOKENS


@pytest.mark.parametrize("attribute", ["abc", np.array([[1, 2], [3, 4]]), np.array([2.5, np.nan])])
def test_an_output_shape_that_is_not_whole_numbers_is_not_trusted(tmp_path: Path, attribute: Any) -> None:
    import h5py

    scores = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    run = _store_without_output_shape(tmp_path / "run", np.ones((2, 5)), scores, "regression")
    with h5py.File(run / "activations.h5", "r+") as file:
        file.attrs["output_shape"] = attribute  # a foreign or damaged store: read as if the attribute were absent
    with Recording.open(run) as recording:
        assert recording.store.output_shape is None
        assert (recording.output_drawing.mode, recording.output_drawing.shape) == (OUTPUT_VALUES, (4,))
    result = render_run(run, tile_size=TILE)
    assert len(_frames(_animation(result, "hidden"))) == 2


_LIVE_READER = """
import numpy as np
from actrec.recording import Recording
from actrec.store import LayerSpec, ProbeSet, StepRecord, StoreWriter

writer = StoreWriter.create(
    "activations.h5", run_id="live", config={},
    probes=ProbeSet(np.ones((2, 5), np.float32), np.full(2, -1), np.arange(2), []),
    layers=[LayerSpec("hidden", (4,), "Linear", "symmetric")],
    num_classes=4, background=False, task="regression", flush_every=1,
)
with writer, Recording.open("activations.h5", allow_empty=True, announce=None) as recording:
    before = recording.output_drawing
    outputs, hidden = np.full((2, 4), 3.0, np.float32), {"hidden": np.zeros((2, 4), np.float32)}
    writer.append(StepRecord(0, 0, 0.0, 0.0, outputs, hidden))
    writer.flush()
    rows = recording.refresh()
    after = recording.output_drawing
    print(before.shape, rows, after.mode, after.shape, after.high)
"""


def test_outputs_decided_before_the_first_row_are_decided_again_once_rows_arrive(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    # A live reader beside its writer, in one process of its own: HDF5's file locks (read once per process) would
    # refuse the reader in the test process, and SWMR needs none.
    environment = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"}
    done = subprocess.run(
        [sys.executable, "-c", _LIVE_READER], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    # Nothing recorded: nothing known of the outputs (1 value); once a row is there, its 4 values on their scale.
    assert done.stdout.split() == ["(1,)", "1", OUTPUT_VALUES, "(4,)", "3.0"]


def test_compare_draws_no_label_row_for_unlabeled_probes_as_render_does(tmp_path: Path) -> None:
    import shutil

    from actrec.compare import compare_runs

    scores = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    run = _store_without_output_shape(tmp_path / "one" / "version_0", np.ones((2, 5)), scores, "regression")
    other = tmp_path / "two" / "version_0"
    shutil.copytree(run, other)
    rendered = _frames(_animation(render_run(run, tile_size=TILE), "hidden"))
    compared = _frames(compare_runs([run, other], ["hidden"], out_dir=tmp_path / "out", tile_size=TILE).animation)
    # The same rows top to bottom (no "label" row of "?" in either), so the same height.
    assert compared[0].shape[0] == rendered[0].shape[0]


def test_compare_draws_each_run_s_outputs(autoencoder_run: Path, tmp_path: Path) -> None:
    import shutil

    from actrec.compare import compare_runs

    other = tmp_path / "again" / "version_0"
    shutil.copytree(autoencoder_run, other, ignore=shutil.ignore_patterns("renders", "report.html"))
    result = compare_runs([autoencoder_run, other], ["encoder.1"], out_dir=tmp_path / "out", tile_size=TILE)
    frames = _frames(result.animation)
    with Recording.open(autoencoder_run) as recording:
        outputs = recording.outputs(recording.timeline.thin())
        low, high = float(recording.probes.images.min()), float(recording.probes.images.max())
    assert len(frames) == len(outputs)
    for frame, stored in zip(frames, outputs, strict=True):
        expected = picture_tiles(stored.reshape(3, 1, 6, 6), TILE, low, high)
        windows = np.lib.stride_tricks.sliding_window_view(frame, expected[2].shape)
        # The same output in both runs' panels: twice per probe drawing exactly this tile (an untrained decoder
        # can draw every probe alike, and then all of them match).
        alike = sum(np.array_equal(tile, expected[2]) for tile in expected)
        assert (windows == expected[2]).all(axis=(-2, -1)).sum() == 2 * alike
        assert not np.isin(frame, _MARKS).any()
