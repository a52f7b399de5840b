"""HuggingFace BERT and GPT-2, built from small configs (nothing downloaded), wrapped the usual way in a
LightningModule fed dict batches (``input_ids``, ``attention_mask``, ``labels``) and recorded with the
callback alone: default layers are the models' blocks, and the store equals a fresh forward pass of the
trained model. Skipped without the ``hf`` extra (``pip install actrec[hf]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, default_collate

from actrec.callbacks import ActivationRecorder
from actrec.probe import capture
from actrec.recording import Recording

transformers = pytest.importorskip(
    "transformers", reason="the hf extra is not installed (pip install actrec[hf]): no HuggingFace models to build"
)

VOCAB, LENGTH = 100, 8


class HFModule(pl.LightningModule):
    """The pattern of Lightning's own HuggingFace examples: ``forward(**inputs)`` is the model's call, the
    step passes the whole batch (labels included) and uses the loss the model computes."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **inputs: Any) -> Any:
        return self.model(**inputs)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(**batch).loss
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self(**batch).loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def _items(count: int, language_model: bool) -> list[dict[str, torch.Tensor]]:
    """Token sequences with right padding (a mask of zeros at the end of every other one)."""
    generator = torch.Generator().manual_seed(0)
    items = []
    for index in range(count):
        input_ids = torch.randint(1, VOCAB, (LENGTH,), generator=generator)
        attention_mask = torch.ones(LENGTH, dtype=torch.long)
        if index % 2:
            attention_mask[-3:] = 0
            input_ids[-3:] = 0
        # A language model predicts its own tokens (padding is not predicted); a classifier one class a sequence.
        labels = input_ids.masked_fill(attention_mask == 0, -100) if language_model else torch.tensor(index % 2)
        items.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
    return items


def _record(tmp_path: Path, model: torch.nn.Module, items: list[dict[str, torch.Tensor]], **options: Any) -> Any:
    pl.seed_everything(0, verbose=False)
    module = HFModule(model)
    recorder = ActivationRecorder(background_writes=False, **options)
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path),
        logger=False,
        callbacks=[recorder],
        accelerator="cpu",
        devices=1,
        max_steps=3,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        deterministic=True,
    )
    trainer.fit(module, DataLoader(items, batch_size=4), DataLoader(items[:8], batch_size=4))
    return module, recorder


def _assert_store_is_a_fresh_pass(store_path: Path, module: HFModule, items: list[dict[str, torch.Tensor]]) -> None:
    with Recording.open(store_path, announce=None) as recording:
        store = recording.store
        assert recording.timeline.global_steps.tolist() == [0, 1, 2, 3]
        indices = store.probes.indices.tolist()
        batch = default_collate([items[i] for i in indices])
        np.testing.assert_array_equal(store.probes.images, batch["input_ids"])  # token ids, stored as they are
        fresh = capture(module, batch, store.layer_names)  # the default forward: the dict without its labels
        for layer in store.layer_names:
            assert store.layer(layer).kind == "tokens"
            np.testing.assert_array_equal(
                store.activations(layer)[-1], fresh.activations[layer].numpy().astype(np.float16)
            )
        np.testing.assert_allclose(
            store.logits()[-1], fresh.output.reshape(len(indices), -1).numpy(), rtol=1e-5, atol=1e-6
        )
        losses = store.steps()["batch_loss"]
        assert np.isfinite(losses[1:]).all()


def test_a_small_bert_records_its_encoder_layers(tmp_path: Path) -> None:
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=LENGTH,
        num_labels=2,
    )
    torch.manual_seed(0)
    items = _items(16, language_model=False)
    module, recorder = _record(tmp_path, transformers.BertForSequenceClassification(config), items)
    with Recording.open(recorder.store_path, announce=None) as recording:
        assert recording.layers == ["model.bert.encoder.layer.0", "model.bert.encoder.layer.1"]
        assert recording.task == "classification"
        assert recording.probes.labels.tolist() == [0, 1]  # one per class, from the validation loader
    _assert_store_is_a_fresh_pass(recorder.store_path, module, items)


def test_a_small_gpt2_records_its_blocks(tmp_path: Path) -> None:
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=LENGTH, vocab_size=VOCAB)
    torch.manual_seed(0)
    items = _items(16, language_model=True)
    module, recorder = _record(tmp_path, transformers.GPT2LMHeadModel(config), items, max_probes=4)
    with Recording.open(recorder.store_path, announce=None) as recording:
        assert recording.layers == ["model.transformer.h.0", "model.transformer.h.1"]
        assert recording.num_probes == 4  # labels are token sequences, not classes: the first max_probes
        assert not recording.shows_predictions  # language-model logits are no class scores
    _assert_store_is_a_fresh_pass(recorder.store_path, module, items)
