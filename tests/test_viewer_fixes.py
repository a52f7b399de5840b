"""Epochs counted from 0 in titles and curves, RGB probes in colour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from viewer_fixtures import make_store, record

from actrec.recording import Recording, colors
from actrec.recording.epochs import epoch_starts, row_epochs
from actrec.viewer import FrameLayout
from actrec.viewer.plan import row_title


def test_end_of_training_row_belongs_to_the_last_epoch() -> None:
    # A 3-epoch run of 63 steps per epoch, recorded every 5 steps, and once more at the end (step 189),
    # after Lightning counted epoch 2 as done. Validation ran at 63, 126 and 189.
    steps = np.array([0, 60, 65, 125, 130, 185, 189])
    stored = np.array([0, 0, 1, 1, 2, 2, 3])
    validation = np.array([63, 126, 189])
    assert row_epochs(steps, stored, validation).tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert row_epochs(steps, stored, np.zeros(0), max_epochs=3).tolist() == [0, 0, 1, 1, 2, 2, 2]
    # Epoch lines at the steps where the epochs began (63, 126), not at the next recorded row (65, 130).
    assert epoch_starts(steps, row_epochs(steps, stored, validation), validation) == [(1, 63), (2, 126)]
    # Without validation the first recorded row of each epoch is the best there is.
    assert epoch_starts(steps, stored, np.zeros(0)) == [(1, 65), (2, 130), (3, 189)]


def test_frame_titles_count_epochs_from_zero(tmp_path: Path) -> None:
    def final_row(step: int):
        return record(step, epoch=3 if step == 9 else step // 4)

    make_store(tmp_path / "run", [0, 4, 8, 9], record_fn=final_row)  # val/loss logged at step 9
    with Recording.open(tmp_path / "run") as recording:
        assert recording.timeline.epochs.tolist() == [0, 1, 2, 2]
        assert row_title(recording, "net.conv1", 3) == "net.conv1 · step 9 · epoch 2"


def test_rgb_probes_are_drawn_in_colour() -> None:
    images = np.zeros((2, 3, 4, 4), np.float32)
    images[0, 0] = 1.0  # probe 0 pure red
    images[1, 1:] = 1.0  # probe 1 cyan
    layout = FrameLayout((1, 4, 4), num_probes=2, scale=1.0, probe_images=images, tile_size=8)
    rgb = colors.to_rgb(layout.frame(np.zeros((2, 1, 4, 4)), title="rgb"))
    colours = {tuple(pixel) for pixel in rgb.reshape(-1, 3).tolist()}
    assert (255, 0, 0) in colours
    assert (0, 255, 255) in colours
