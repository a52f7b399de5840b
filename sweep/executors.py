"""The cluster executors: each trial a Ray task, or a SLURM job through submitit.

Both run the very function the local pool does (:func:`~actrec.sweep.launch.run_trial`: ``actrec train`` as
a subprocess, its output in the trial's log file) on whichever machine the task or job lands, so the run
folders, the plan and the logs must be on a path every machine sees. Ray and submitit are optional
extras, imported only here.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from actrec.runs.sweeps import SweepError, SweepRecord
from actrec.sweep.launch import TrialSpec, run_trial

__all__ = ["RayLauncher", "SlurmLauncher", "unshared_nodes"]


def _missing_extra(executor: str, extra: str, module: str) -> SweepError:
    return SweepError(f"--executor {executor} needs {module}, which is not installed: pip install -e '.[{extra}]'.")


def _check_exists(path: str) -> bool:
    return Path(path).exists()


def unshared_nodes(visible: dict[str, bool]) -> list[str]:
    """The nodes (of ``node -> saw the marker file``) that cannot see the runs folder."""
    return sorted(node for node, seen in visible.items() if not seen)


class RayLauncher:
    """Each trial a Ray task with ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs.

    With ``address`` it joins that cluster (``auto``: the one this machine belongs to); without, it starts
    a local Ray instance. On a cluster of more than one node it first checks that every node sees the runs
    folder, by a marker file each node looks for, and refuses in one sentence when one does not.
    """

    def __init__(self, record: SweepRecord, settings: dict[str, Any]) -> None:
        try:
            import ray
        except ImportError:
            raise _missing_extra("ray", "ray", "Ray") from None
        self.ray = ray
        cpus = float(settings.get("cpus_per_trial") or 1)
        gpus = float(settings.get("gpus_per_trial") or 0)
        if cpus <= 0 or gpus < 0:
            raise SweepError("--cpus-per-trial must be above 0 and --gpus-per-trial at least 0.")
        parallel = settings.get("parallel")
        self.slots = int(parallel) if parallel else None
        self._threads = max(1, int(cpus))
        self._logs: dict[str, str] = {}
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            address = settings.get("address") or None
            try:
                ray.init(
                    address=address,
                    num_cpus=None if address else settings.get("num_cpus"),
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    configure_logging=False,
                )
            except ConnectionError as error:
                raise SweepError(f"--address {address}: no Ray cluster answers there ({error}).") from None
        self._task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(run_trial)
        try:
            self._check_shared(record.experiment_dir)
        except BaseException:
            self.close()
            raise

    def _check_shared(self, folder: Path) -> None:
        """Refuse a runs folder that some node of a multi-node cluster cannot see."""
        ray = self.ray
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        if len(nodes) < 2:
            return
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        marker = folder / f".shared-check-{os.getpid()}-{time.time_ns()}"
        marker.write_text("")
        try:
            check = ray.remote(num_cpus=0)(_check_exists)
            refs = {
                f"{node['NodeManagerAddress']} ({str(node['NodeID'])[:8]})": check.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                ).remote(str(marker.resolve()))
                for node in nodes
            }
            visible = dict(zip(refs, ray.get(list(refs.values()), timeout=120), strict=True))
        finally:
            marker.unlink(missing_ok=True)
        missing = unshared_nodes(visible)
        if missing:
            raise SweepError(
                f"the runs folder {folder.parent} is not shared: {len(missing)} of {len(nodes)} Ray nodes "
                f"({', '.join(missing[:3])}) cannot see it; pass a --runs_dir on a filesystem every node mounts."
            )

    def threads(self) -> int:
        return self._threads

    def start(self, specs: Sequence[TrialSpec]) -> list[Any]:
        handles = [self._task.remote(spec) for spec in specs]
        self._logs.update((handle.hex(), spec.log) for handle, spec in zip(handles, specs, strict=True))
        return handles

    def poll(self, handle: Any) -> int | None:
        ready, _ = self.ray.wait([handle], timeout=0)
        if not ready:
            return None
        try:
            return int(self.ray.get(handle))
        except self.ray.exceptions.RayError as error:
            return _failed(self._logs.get(handle.hex()), "Ray task", error)

    def stop(self, handles: Sequence[Any]) -> None:
        for handle in handles:
            self.ray.cancel(handle)  # KeyboardInterrupt in the task: run_trial stops its actrec train

    def close(self) -> None:
        if self._started_ray and self.ray.is_initialized():
            self.ray.shutdown()


def _failed(log: str | None, what: str, error: BaseException) -> int:
    """Say in the trial's log why its task or job failed (not actrec train: Ray or SLURM); exit code 1."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    if log is not None:
        with open(log, "a") as file:
            file.write(f"\nactrec sweep: the trial's {what} failed: {first}\n")
    return 1


class SlurmLauncher:
    """Each trial a SLURM job (or one job array) through submitit; ``cluster`` local/debug runs them here."""

    def __init__(self, record: SweepRecord, settings: dict[str, Any]) -> None:
        try:
            import submitit
        except ImportError:
            raise _missing_extra("slurm", "slurm", "submitit") from None
        cluster = settings.get("cluster") or "slurm"
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise SweepError(
                "--executor slurm needs SLURM's sbatch, which is not on this machine's PATH; run actrec sweep on a "
                "login node (or --slurm-cluster local to run the same jobs here)."
            )
        minutes = int(settings.get("time_min") or 60)
        if minutes < 1:
            raise SweepError(f"--slurm-time must be at least 1 minute, got {minutes}.")
        self.folder = record.experiment_dir / f"sweep-{record.sweep_id}-slurm"
        self.executor = submitit.AutoExecutor(folder=self.folder, cluster=cluster)
        parameters: dict[str, Any] = {
            "name": f"actrec-sweep-{record.sweep_id}",
            "timeout_min": minutes,
            "cpus_per_task": int(settings.get("cpus_per_task") or 1),
        }
        if settings.get("gpus_per_node"):
            parameters["gpus_per_node"] = int(settings["gpus_per_node"])
        if settings.get("partition"):
            parameters["slurm_partition"] = settings["partition"]
        parallel = settings.get("parallel")
        if settings.get("array") and parallel:
            parameters["slurm_array_parallelism"] = int(parallel)
        self.executor.update_parameters(**parameters)
        self.array = bool(settings.get("array"))
        # SLURM queues every job itself (an array throttles with --parallel); run here, --parallel is the pool.
        self.slots = None if cluster == "slurm" else (int(parallel) if parallel else None)
        self._threads = int(parameters["cpus_per_task"])
        self._logs: dict[int, str] = {}

    def threads(self) -> int:
        return self._threads

    def start(self, specs: Sequence[TrialSpec]) -> list[Any]:
        if self.array and len(specs) > 1:
            with self.executor.batch():
                jobs = [self.executor.submit(run_trial, spec) for spec in specs]
        else:
            jobs = [self.executor.submit(run_trial, spec) for spec in specs]
        self._logs.update((id(job), spec.log) for job, spec in zip(jobs, specs, strict=True))
        return jobs

    def poll(self, handle: Any) -> int | None:
        if not handle.done():
            return None
        try:
            return int(handle.result())
        except Exception as error:  # the job itself failed: timed out, cancelled, node lost
            return _failed(self._logs.get(id(handle)), "SLURM job", error)

    def stop(self, handles: Sequence[Any]) -> None:
        for job in handles:
            job.cancel(check=False)

    def close(self) -> None:
        """Nothing to release: submitit's jobs end on their own."""
