"""The search space of a sweep: ``--grid``, ``--space`` with ``--random`` and ``--seeds``, expanded into trials.

Pure functions: the text of the flags in, a list of override dicts out. Random values are drawn once,
from a generator seeded by the sweep's id, and written into the plan, so a resumed sweep reruns the same
values.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from actrec.runs.sweeps import SweepError

__all__ = ["RandomRange", "SEED_KEY", "expand_trials", "parse_grid", "parse_space", "parse_value"]

#: The ``actrec train`` key that ``--seeds N`` varies.
SEED_KEY = "seed_everything"
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
#: Keys that say where a trial goes; the sweep sets them itself.
_RESERVED_KEYS = ("experiment", "runs_dir")


def parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"1e-3"`` -> 0.001, ``"true"`` -> True, anything else stays text."""
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            value = kind(stripped)
        except ValueError:
            continue
        if kind is float and not math.isfinite(value):
            return stripped
        return value
    return stripped


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets, so ``[net.conv1,net.conv2],[net.fc3]`` is two values."""
    values: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        if char == "," and depth == 0:
            values.append("".join(current))
            current = []
        else:
            current.append(char)
    values.append("".join(current))
    return [value.strip() for value in values]


def _key(text: str, flag: str, spec: str) -> str:
    key = text.strip().removeprefix("--")
    if not _KEY.match(key):
        raise SweepError(f"{flag} {spec}: {key!r} is not a config key like model.lr or seed_everything.")
    if key in _RESERVED_KEYS:
        raise SweepError(f"{flag} {spec}: {key} is set by the sweep itself (pass --{key} to actrec sweep).")
    return key


def parse_grid(specs: Sequence[str]) -> dict[str, list[Any]]:
    """``["model.lr=0.01,0.02"]`` -> ``{"model.lr": [0.01, 0.02]}``.

    Raises:
        SweepError: a spec without ``=`` or values, a key given twice, an empty or repeated value.
    """
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key_text, equals, values_text = spec.partition("=")
        if not equals or not values_text.strip():
            raise SweepError(f"--grid {spec}: write KEY=V1,V2,... (e.g. --grid model.lr=0.001,0.01).")
        key = _key(key_text, "--grid", spec)
        if key in grid:
            raise SweepError(f"--grid {spec}: {key} is given twice; list all its values in one --grid.")
        texts = _split_values(values_text)
        if any(not text for text in texts):
            raise SweepError(f"--grid {spec}: an empty value; separate values by single commas.")
        values = [parse_value(text) for text in texts]
        if len({repr(value) for value in values}) != len(values):
            raise SweepError(f"--grid {spec}: a value is listed twice.")
        grid[key] = values
    return grid


@dataclass(frozen=True)
class RandomRange:
    """One ``--space KEY=LOW:HIGH[:log]``: uniform (whole numbers when both ends are) or log-uniform."""

    key: str
    low: float
    high: float
    log: bool
    integer: bool

    def sample(self, rng: random.Random) -> Any:
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
            return round(value) if self.integer else float(f"{value:.4g}")
        if self.integer:
            return rng.randint(int(self.low), int(self.high))
        return float(f"{rng.uniform(self.low, self.high):.4g}")


def parse_space(specs: Sequence[str]) -> list[RandomRange]:
    """``["model.lr=1e-4:1e-2:log"]`` -> one :class:`RandomRange` per key.

    Raises:
        SweepError: a spec that is not ``KEY=LOW:HIGH[:log]``, LOW not below HIGH, a log range not above 0.
    """
    ranges: list[RandomRange] = []
    for spec in specs:
        key_text, equals, range_text = spec.partition("=")
        parts = range_text.split(":")
        if not equals or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise SweepError(f"--space {spec}: write KEY=LOW:HIGH or KEY=LOW:HIGH:log (e.g. model.lr=1e-4:1e-2:log).")
        key = _key(key_text, "--space", spec)
        if any(existing.key == key for existing in ranges):
            raise SweepError(f"--space {spec}: {key} is given twice.")
        low, high = parse_value(parts[0]), parse_value(parts[1])
        if not all(isinstance(end, int | float) and not isinstance(end, bool) for end in (low, high)):
            raise SweepError(f"--space {spec}: LOW and HIGH must be numbers.")
        if not low < high:
            raise SweepError(f"--space {spec}: LOW must be below HIGH.")
        log = len(parts) == 3
        if log and low <= 0:
            raise SweepError(f"--space {spec}: a log range needs LOW above 0.")
        integer = isinstance(low, int) and isinstance(high, int)
        ranges.append(RandomRange(key, float(low), float(high), log, integer))
    return ranges


def expand_trials(
    grid: dict[str, list[Any]],
    space: Sequence[RandomRange] = (),
    random_trials: int = 0,
    seeds: int = 0,
    rng_seed: str = "",
) -> list[dict[str, Any]]:
    """Every trial's overrides: the grid's product, times ``random_trials`` draws from ``space``, times seeds.

    Args:
        grid: key -> values, crossed with each other.
        space: ranges to draw from; needs ``random_trials`` > 0.
        random_trials: draws from ``space`` (each crossed with every grid point).
        seeds: with N > 0, ``seed_everything`` takes 0 ... N-1 for every other combination.
        rng_seed: seeds the draws (the sweep's id), so a plan is reproducible from its id.

    Raises:
        SweepError: nothing to vary, ``--space`` without ``--random`` (or the reverse), a key varied twice.
    """
    if space and random_trials < 1:
        raise SweepError("--space needs --random N, the number of trials to draw.")
    if random_trials and not space:
        raise SweepError("--random N needs at least one --space KEY=LOW:HIGH[:log] to draw from.")
    if seeds < 0 or random_trials < 0:
        raise SweepError("--seeds and --random take a positive number.")
    keys = list(grid) + [item.key for item in space]
    if seeds and SEED_KEY in keys:
        raise SweepError(f"--seeds varies {SEED_KEY}, which --grid or --space already varies; use one of them.")
    if len(set(keys)) != len(keys):
        raise SweepError("a key is both in --grid and in --space; vary it in one of them.")
    if not keys and not seeds:
        raise SweepError("nothing to vary: give --grid KEY=V1,V2, --random N with --space, or --seeds N.")
    rng = random.Random(rng_seed)
    draws = [{item.key: item.sample(rng) for item in space} for _ in range(random_trials)] or [{}]
    seed_values = [{SEED_KEY: seed} for seed in range(seeds)] or [{}]
    points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    return [{**point, **draw, **seed} for point in points for draw in draws for seed in seed_values]
