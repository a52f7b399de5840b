"""actrec.probe on plain torch models: layer choice, output selection, capture, probe selection."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from actrec.probe import (
    UNLABELED,
    ProbeError,
    capture,
    default_layers,
    eval_mode,
    probes_from_dataset,
    probes_from_loader,
    probes_from_tensors,
    resolve_layers,
    scale_kinds,
)


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


@dataclasses.dataclass
class Out:
    hidden: torch.Tensor
    extra: int


class DataclassBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> Out:
        return Out(hidden=self.linear(x) * 2, extra=1)


class UsesDataclass(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = DataclassBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x).hidden.sum(-1, keepdim=True)


def test_default_layers_a_person_would_name() -> None:
    resnet = torchvision.models.resnet18(num_classes=3)
    assert default_layers(resnet) == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)
    assert default_layers(nn.Sequential(nn.Linear(4, 16), encoder)) == ["1.layers.0", "1.layers.1"]
    assert default_layers(LSTMClassifier()) == ["lstm[0]"]
    conv_bn_relu = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    assert default_layers(conv_bn_relu) == ["2"]  # after batch norm and ReLU, not the raw convolution
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Dropout(), nn.Linear(3, 2))
    assert default_layers(mlp) == ["2"]  # never the model's output
    with pytest.raises(ProbeError, match=r"found no blocks, .* name the layers, e.g. from: 0, 1"):
        default_layers(nn.Sequential(nn.Linear(4, 2), nn.Tanh()))


def test_scale_kinds_follow_the_last_activation_that_ran() -> None:
    resnet = torchvision.models.resnet18(num_classes=3)
    kinds = scale_kinds(resnet, torch.rand(2, 3, 32, 32), ["layer1.0", "conv1", "bn1"])
    assert kinds == {"layer1.0": "nonnegative", "conv1": "symmetric", "bn1": "symmetric"}
    net = nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Dropout(), nn.Linear(4, 4), nn.Tanh())
    # A bare dropout layer alone tells nothing about its range: symmetric, the safe choice.
    assert scale_kinds(net, torch.rand(2, 4), ["1", "2", "4"]) == {"1": "sigmoid", "2": "symmetric", "4": "tanh"}
    assert scale_kinds(LSTMClassifier(), torch.rand(2, 5, 4), ["lstm[0]"]) == {"lstm[0]": "tanh"}


def test_output_selectors_on_tuples_and_dataclasses() -> None:
    model = LSTMClassifier()
    x = torch.rand(3, 5, 4)
    seen = capture(model, x, ["lstm[0]", "lstm[1][1]"])
    with torch.no_grad():
        expected, (_, cell) = model.lstm(x)
        logits = model(x)
    assert torch.equal(seen.activations["lstm[0]"], expected)
    assert torch.equal(seen.activations["lstm[1][1]"], cell)
    assert torch.equal(seen.output, logits)
    dataclass_model = UsesDataclass()
    seen = capture(dataclass_model, torch.ones(2, 4), ["block['hidden']", "block"])
    assert torch.equal(seen.activations["block['hidden']"], seen.activations["block"])
    with pytest.raises(ProbeError, match=r"layer 'lstm\[5\]': output selector \[5\] does not fit its output"):
        capture(model, x, ["lstm[5]"])
    with pytest.raises(ProbeError, match=r"no module matches layer 'nope'; available: lstm, head"):
        resolve_layers(model, ["nope[0]"])


def test_capture_restores_modes_and_consumes_no_randomness() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.BatchNorm1d(4))
    model.train()
    model[2].eval()  # a frozen norm stays frozen
    images = torch.rand(6, 4)
    state = torch.get_rng_state()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    capture(model, images, ["0", "1"])
    assert torch.equal(torch.get_rng_state(), state)
    assert [m.training for m in model.modules()] == [True, True, True, False]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    with eval_mode(model):
        assert not any(m.training for m in model.modules())


def test_resolve_layers_globs_and_order() -> None:
    net = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh()), nn.Sequential(nn.Conv2d(2, 2, 3), nn.ReLU()))
    assert resolve_layers(net, ["1", "*"]) == ["0", "1"]
    assert resolve_layers(net, ["0.[01]"]) == ["0.0", "0.1"]  # a glob when it matches as one
    shared = nn.Linear(2, 2)
    with pytest.raises(ProbeError, match=r"ran 2 times in one forward pass"):
        capture(nn.Sequential(shared, shared), torch.rand(1, 2), ["0"])


def test_probe_selection_from_tensors_datasets_and_loaders() -> None:
    images = torch.rand(12, 1, 4, 4)
    labels = torch.tensor([2, 0, 1, 0, 2, 1, 0, 1, 2, 0, 1, 2])
    chosen = probes_from_dataset(TensorDataset(images, labels))
    assert chosen.indices.tolist() == [1, 2, 0]
    assert chosen.labels.tolist() == [0, 1, 2]
    assert torch.equal(chosen.images, images[[1, 2, 0]])
    assert probes_from_dataset(TensorDataset(images, labels), per_class=2).labels.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ProbeError, match="probe index 99 is outside the validation split of 12 images"):
        probes_from_dataset(TensorDataset(images, labels), indices=[99])

    loader = DataLoader(TensorDataset(images, labels), batch_size=5, shuffle=True)
    state = torch.get_rng_state()
    from_loader = probes_from_loader(loader)
    assert torch.equal(torch.get_rng_state(), state)  # the run's random numbers stay as they were
    assert from_loader.labels.tolist() == [0, 1, 2]

    unlabeled = probes_from_loader(DataLoader(images, batch_size=5), max_probes=7)
    assert unlabeled.labels.tolist() == [UNLABELED] * 7
    assert torch.equal(unlabeled.images, images[:7])
    given = probes_from_tensors(images[:3], [1, 2, 0])
    assert given.labels.tolist() == [1, 2, 0]
    with pytest.raises(ProbeError, match="probe_labels has 2 labels for 3 probe images"):
        probes_from_tensors(images[:3], [1, 2])


@pytest.mark.slow  # a fresh interpreter importing torch (test_architecture checks the imports statically)
def test_probe_imports_neither_lightning_nor_h5py() -> None:
    code = (
        "import sys, actrec.probe; "
        "print(sorted(m for m in ('h5py', 'lightning', 'pytorch_lightning') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
