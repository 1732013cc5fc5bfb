"""Many files, many machines: per-photo work spread over a Ray cluster (``--ray [ADDRESS]``).

Each Ray worker is an actor that loads the models once and then takes photos one at a time;
results come back to this process, which alone writes the outputs, in the same order as a
plain run, so the outputs are the same. A worker that dies is restarted and its photo is
retried (``MAX_RETRIES``). ADDRESS: "local" starts a Ray instance on this machine for the run;
anything else is a cluster address as ``ray.init`` takes it (``ray start --head`` prints it,
e.g. "10.0.0.5:6379", or "auto" for the cluster this machine joined; Ray's token in
~/.ray/auth_token is sent when there is one). Every node must see the photos at the same paths
(a shared file system).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

MAX_RETRIES = 2


def _connect(address: str):
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if (Path.home() / ".ray" / "auth_token").is_file():  # a cluster started where a token exists wants it
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    return ray


def read_faces_on_ray(address: str, options: dict, min_quality: float):
    """The ``read`` of :func:`densemesh.gallery.enrol` on a Ray cluster: one actor per CPU of the
    cluster (at most one per photo), each with a :class:`densemesh.identity.Comparer(**options)`."""
    def read(paths: list[Path], progress=None):
        if not paths:
            return
        ray = _connect(address)
        from ray.util import ActorPool

        @ray.remote(num_cpus=1, max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES)
        class FaceReader:
            def __init__(self):
                import torch

                from densemesh.identity import Comparer

                torch.set_num_threads(1)
                self.comparer = Comparer(**options)

            def read(self, path: str) -> tuple[str, dict]:
                from densemesh.gallery import read_faces

                return path, read_faces(self.comparer, Path(path), min_quality)

        workers = max(1, min(len(paths), int(ray.cluster_resources().get("CPU", 1))))
        pool = ActorPool([FaceReader.remote() for _ in range(workers)])
        for k, (path, record) in enumerate(pool.map_unordered(lambda actor, p: actor.read.remote(str(p)), paths)):
            if progress is not None:
                progress(k + 1, len(paths))
            yield Path(path), record
    return read
