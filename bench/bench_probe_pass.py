"""The probe pass on the training thread against the bare forward it cannot avoid.

Three ways of running the ten probe images through the six-conv net, interleaved round by round in one process:

- bare: ``model.eval()``, ``model(images)`` under ``no_grad``, ``model.train()``: the floor;
- hooks + half: the same with forward hooks keeping each conv block's output as float16 (what a hand-written
  recorder does before it stores anything);
- engine: ``ProbeEngine.run``, what the recorder runs each recorded step (hooks, the copy into the packed step,
  each layer's peak and non-finite count, the model-change check, the forked random number generator).

    python bench/bench_probe_pass.py               # medians of 7 rounds of 200 passes
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from actrec.probe import ProbeEngine, resolve_layers
from actrec.trainer import ImageClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--passes", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ImageClassifier(init="article")
    images = torch.randn(10, 1, 28, 28)
    layers = resolve_layers(model, None)
    engine = ProbeEngine(model, images, layers, record_params=True, params_cap=16_384, cuda_graph=False)
    modules = dict(model.named_modules())

    def bare() -> None:
        model.eval()
        with torch.no_grad():
            model(images)
        model.train()

    def hooks() -> None:
        kept: dict[str, torch.Tensor] = {}
        handles = [
            modules[name].register_forward_hook(lambda m, i, o, name=name: kept.__setitem__(name, o.detach().half()))
            for name in layers
        ]
        bare()
        for handle in handles:
            handle.remove()

    variants: dict[str, Callable[[], object]] = {
        "bare forward": bare,
        "hooks + half": hooks,
        "ProbeEngine.run": lambda: engine.run(0.5, 0.5),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"load {os.getloadavg()[0]:.2f}"
    )
    for _ in range(args.rounds):
        for name, run in variants.items():
            for _ in range(20):
                run()
            start = time.perf_counter()
            for _ in range(args.passes):
                run()
            results[name].append((time.perf_counter() - start) / args.passes * 1000)
    bare_ms = results["bare forward"]
    for name, times in results.items():
        ratio = statistics.median(a / b for a, b in zip(times, bare_ms, strict=True))
        print(f"{name:16s} {statistics.median(times):6.3f} ms  {ratio:5.2f}x the bare forward")


if __name__ == "__main__":
    main()
