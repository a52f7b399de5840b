"""``actrec train``'s terminal output: a plain progress line for logs, and a compact model table.

Lightning's rich progress bar redraws in place, which a terminal shows well and a log file does not: piped to a
file it printed nothing for many minutes, then the end. :class:`LogLineProgress` prints one plain line every
``every_s`` seconds instead (step, epoch, loss, accuracy, steps/s, ETA), by the rule of :mod:`actrec.console`.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelSummary, ProgressBar
from pytorch_lightning.utilities import rank_zero_only
from typing_extensions import override

from actrec.console import DEFAULT_EVERY_S, format_duration

__all__ = ["CompactModelSummary", "LogLineProgress"]


class LogLineProgress(ProgressBar):
    """A progress "bar" for logs: one plain line every ``every_s`` seconds of training, and one per epoch end.

    Args:
        every_s: seconds between lines (default 30).
        stream: where lines go (stdout by default, where Lightning's bar would be).
    """

    def __init__(self, every_s: float = DEFAULT_EVERY_S, stream: IO[str] | None = None) -> None:
        super().__init__()
        if every_s <= 0:
            raise ValueError(f"every_s must be positive, got {every_s}.")
        self.every_s = every_s
        self._stream = stream
        self._enabled = True
        self._started = 0.0
        self._first_step = 0
        self._last_line = 0.0

    @override
    def disable(self) -> None:
        self._enabled = False

    @override
    def enable(self) -> None:
        self._enabled = True

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = self._last_line = time.monotonic()
        self._first_step = trainer.global_step

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.monotonic()
        if now - self._last_line >= self.every_s:
            self._last_line = now
            self._print(self.line(trainer, pl_module, now))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_line = time.monotonic()
        self._print(self.line(trainer, pl_module, self._last_line, epoch_done=True))

    def line(self, trainer: pl.Trainer, pl_module: pl.LightningModule, now: float, epoch_done: bool = False) -> str:
        """``step 640/1890 (34%) · epoch 11/30 · loss 0.213 · acc 93.8% · 27.5 steps/s · ETA 0:45``."""
        step = trainer.global_step
        total = _total_steps(trainer)
        rate = (step - self._first_step) / max(now - self._started, 1e-9)
        parts = [f"step {step}/{total} ({100 * step / total:.0f}%)" if total else f"step {step}"]
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        stopped = trainer.max_steps is not None and 0 < trainer.max_steps <= step  # max_steps may end mid-epoch
        ending = (" (stopped at max_steps)" if stopped else " done") if epoch_done else ""
        parts.append(f"epoch {trainer.current_epoch + 1}{epochs}{ending}")
        metrics = self.get_metrics(trainer, pl_module)
        for label, names in (
            ("loss", ("train/loss", "loss", "train_loss")),
            ("acc", ("train/acc", "acc", "train_acc")),
        ):
            value = next((metrics[name] for name in names if name in metrics), None)
            if isinstance(value, (int, float)):
                parts.append(f"acc {100 * value:.1f}%" if label == "acc" else f"loss {value:.4g}")
        for name in ("val/loss", "val/acc"):
            logged = trainer.callback_metrics.get(name)
            if logged is not None and epoch_done and logged.numel() == 1:
                number = float(logged)
                parts.append(f"{name} {100 * number:.1f}%" if name.endswith("acc") else f"{name} {number:.4g}")
        parts.append(f"{rate:.1f} steps/s")
        if total and rate > 0 and step < total:
            parts.append(f"ETA {format_duration((total - step) / rate)}")
        return " · ".join(parts)

    @rank_zero_only
    def _print(self, text: str) -> None:
        if self._enabled:
            print(text, file=self._stream or sys.stdout, flush=True)


def _total_steps(trainer: pl.Trainer) -> int | None:
    """The run's optimizer steps in all, when the trainer knows (max_steps, or epochs x batches)."""
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # no train dataloader yet, or an iterable without a length
        return None
    return int(total) if total not in (None, float("inf")) and total > 0 else None


class CompactModelSummary(ModelSummary):
    """Lightning's model summary as four columns (name, type, parameters, output shape) and one total line.

    Lightning's own table adds modes, FLOPs and input sizes: 27 lines and 100 columns for the six-conv net.
    ``actrec train --full_summary true`` shows it.
    """

    @staticmethod
    @override
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        print(compact_summary_table(summary_data, total_parameters, trainable_parameters), flush=True)


def compact_summary_table(summary_data: list[tuple[str, list[str]]], total: int, trainable: int) -> str:
    """The rows of Lightning's summary data as ``name  type  params  output shape`` lines, plus totals."""
    columns = dict(summary_data)
    names = columns.get("Name", [])
    wanted = [("Name", "layer"), ("Type", "type"), ("Params", "params"), ("Out sizes", "output")]
    present = [(key, title) for key, title in wanted if key in columns]
    table = [[title for _, title in present]]
    for row in range(len(names)):
        table.append([str(columns[key][row]) for key, _ in present])
    widths = [max(len(line[column]) for line in table) for column in range(len(present))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in table]
    frozen = f", {total - trainable:,} frozen" if total != trainable else ""
    lines.append(f"{total:,} parameters{frozen}")
    return "\n".join(lines)
