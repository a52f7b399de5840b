"""How fast the actrec tab's server answers on a long run: first frames and a step change, 100,000 rows.

Builds a synthetic store of ``--rows`` rows (default 100,000; 10 probes; layers ``net.conv1``
(4, 8, 8) tanh, ``net.conv2`` (8, 4, 4) ReLU-like and ``net.fc`` (16,) symmetric; about 0.8 GB), written
by actrec's StoreWriter for its layout and filled in bulk with h5py (HDF5's own per-chunk checksums
are computed as usual). Then it times the plugin's routes in-process (werkzeug's test client, so the
numbers are server time, no network):

- first frames: what opening the tab asks for: ``runs``, ``run`` (layers, colour scales from sampled
  rows), ``timeline`` (every row's step, thinned curves), ``step`` and one ``frame`` per layer at the
  last row. Target: under 1 s.
- a step change: ``step`` and one ``frame`` per layer at a row not seen before (no cache help), median
  and worst over ``--changes`` random rows. Target: under 100 ms.

    python bench/bench_dashboard.py              # 100,000 rows in a temporary folder
    python bench/bench_dashboard.py --rows 20000 --keep /tmp/store
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from werkzeug.test import Client
from werkzeug.wrappers import Response

from actrec.dashboard import ActrecPlugin
from actrec.store import LayerSpec, ProbeSet, StepRecord, StoreWriter

LAYERS = [
    LayerSpec("net.conv1", (4, 8, 8), "Conv2d", "tanh"),
    LayerSpec("net.conv2", (8, 4, 4), "ReLU", "nonnegative"),
    LayerSpec("net.fc", (16,), "Linear", "symmetric"),
]
PROBES = 10
BLOCK = 5000
_FIRST_TARGET_S = 1.0
_CHANGE_TARGET_S = 0.1


def build_store(path: Path, rows: int, seed: int = 0) -> None:
    """A ``rows``-row store: a first row through StoreWriter (the layout), the rest written in bulk."""
    rng = np.random.default_rng(seed)
    images = rng.random((PROBES, 1, 8, 8), dtype=np.float32)
    probes = ProbeSet(images, np.arange(PROBES), np.arange(PROBES), [str(i) for i in range(PROBES)])
    patterns = {spec.name: rng.normal(size=(PROBES, *spec.sample_shape)).astype(np.float32) for spec in LAYERS}

    def activations(progress: np.ndarray) -> dict[str, np.ndarray]:
        """Activations that sharpen as training goes on: ``(n, P, *shape)`` per layer, ``progress`` in 0..1."""
        gain = (0.2 + 3 * progress)[:, None, None, None, None]
        conv1 = np.tanh(gain * patterns["net.conv1"][None])
        conv2 = np.maximum(0, gain * patterns["net.conv2"][None])
        fc = gain[..., 0, 0] * patterns["net.fc"][None]
        return {"net.conv1": conv1, "net.conv2": conv2, "net.fc": fc}

    writer = StoreWriter.create(
        path, run_id="bench-dashboard", config={}, probes=probes, layers=LAYERS, num_classes=PROBES, background=False
    )
    with writer:
        first = activations(np.zeros(1))
        writer.append(
            StepRecord(
                global_step=0,
                epoch=0,
                batch_loss=2.3,
                batch_acc=0.1,
                logits=np.zeros((PROBES, PROBES), np.float32),
                activations={name: value[0] for name, value in first.items()},
            )
        )
    with h5py.File(path, "a") as file:
        for dataset in _row_datasets(file):
            dataset.resize(rows, axis=0)
        for start in range(1, rows, BLOCK):
            stop = min(rows, start + BLOCK)
            index = np.arange(start, stop)
            progress = index / max(rows - 1, 1)
            file["steps/global_step"][start:stop] = index
            file["steps/epoch"][start:stop] = index * 5 // rows
            file["steps/batch_loss"][start:stop] = 2.3 * np.exp(-4 * progress) + 0.05 * rng.random(len(index))
            file["steps/batch_acc"][start:stop] = 1 - 0.9 * np.exp(-4 * progress)
            file["steps/wall_time"][start:stop] = 1.7e9 + index * 0.1
            logits = rng.normal(size=(len(index), PROBES, PROBES)).astype(np.float32)
            logits[:, np.arange(PROBES), np.arange(PROBES)] += 4 * progress[:, None]
            file["steps/logits"][start:stop] = logits
            for name, values in activations(progress).items():
                file[f"layers/{name}/activations"][start:stop] = values.astype(np.float16)
                file[f"layers/{name}/abs_max"][start:stop] = np.abs(values).reshape(len(index), -1).max(axis=1)
                file[f"layers/{name}/nonfinite"][start:stop] = 0


def _row_datasets(file: h5py.File) -> list[h5py.Dataset]:
    found: list[h5py.Dataset] = []
    file.visititems(
        lambda name, item: (
            found.append(item)
            if isinstance(item, h5py.Dataset) and (name.startswith("steps/") or name.startswith("layers/"))
            else None
        )
    )
    return found


class _Context:
    def __init__(self, logdir: Path) -> None:
        self.logdir = str(logdir)
        self.flags = None


def _client(logdir: Path) -> Client:
    """The plugin's routes as one WSGI app, the way TensorBoard mounts them under /data/plugin/actrec."""
    from werkzeug.routing import Map, Rule
    from werkzeug.wrappers import Request

    routes = ActrecPlugin(_Context(logdir)).get_plugin_apps()
    urls = Map([Rule(path, endpoint=path) for path in routes])

    def app(environ: dict, start_response: object) -> object:
        endpoint, _ = urls.bind_to_environ(environ).match(Request(environ).path)
        return routes[endpoint](environ, start_response)

    return Client(app, Response)


def _get(client: Client, path: str) -> Response:
    response = client.get(path)
    if response.status_code != 200:
        raise RuntimeError(f"{path}: {response.status_code} {response.get_data(as_text=True)}")
    return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the synthetic store (default 100,000)")
    parser.add_argument("--changes", type=int, default=40, help="step changes to time (default 40)")
    parser.add_argument(
        "--keep", type=Path, help="build (or reuse) the store in this folder instead of a temporary one"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="actrec-bench-dashboard-") as scratch:
        logdir = args.keep or Path(scratch)
        store = logdir / "bench" / "version_0" / "activations.h5"
        if not store.exists():
            store.parent.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            build_store(store, args.rows)
            seconds = time.perf_counter() - started
            print(f"built {args.rows:,} rows ({store.stat().st_size / 1e9:.2f} GB) in {seconds:.1f} s")
        client = _client(logdir)
        run = "bench/version_0"
        parts: dict[str, float] = {}

        def timed(label: str, path: str) -> Response:
            started = time.perf_counter()
            response = _get(client, path)
            parts[label] = parts.get(label, 0.0) + time.perf_counter() - started
            return response

        runs = timed("runs", "/runs").json["runs"]
        info = timed("run (opens the recording)", f"/run?run={run}").json
        timeline = timed("timeline", f"/timeline?run={run}").json
        last = timeline["num_rows"] - 1
        timed("step", f"/step?run={run}&row={last}")
        for layer in info["layers"]:
            timed("frames", f"/frame?run={run}&layer={layer['name']}&row={last}")
        first = sum(parts.values())
        if runs != [run] or timeline["num_rows"] != args.rows:
            raise RuntimeError(f"expected {args.rows} rows of {run}, the plugin saw {runs} with {timeline['num_rows']}")
        rng = np.random.default_rng(1)
        changes = []
        for row in rng.choice(last, size=args.changes, replace=False).tolist():
            started = time.perf_counter()
            _get(client, f"/step?run={run}&row={row}")
            for layer in info["layers"]:
                _get(client, f"/frame?run={run}&layer={layer['name']}&row={row}")
            changes.append(time.perf_counter() - started)
        median, worst = statistics.median(changes), max(changes)
        print(f"store: {args.rows:,} rows, {len(info['layers'])} layers, {PROBES} probes")
        verdict = "ok" if first < _FIRST_TARGET_S else "MISSED"
        print(f"first frames (runs, run, timeline, step, {len(info['layers'])} frames): {first * 1000:.0f} ms "
              f"(target < {_FIRST_TARGET_S * 1000:.0f} ms) {verdict}")  # fmt: skip
        print("  " + ", ".join(f"{label} {seconds * 1000:.0f} ms" for label, seconds in parts.items()))
        print(f"step change (step + {len(info['layers'])} frames, uncached), {len(changes)} rows: median "
              f"{median * 1000:.1f} ms, worst {worst * 1000:.1f} ms (target < {_CHANGE_TARGET_S * 1000:.0f} ms) "
              f"{'ok' if median < _CHANGE_TARGET_S else 'MISSED'}")  # fmt: skip


if __name__ == "__main__":
    main()
