"""Many files, many machines: per-file work spread over a Ray cluster (``--ray [ADDRESS]``).

Each Ray worker is an actor that loads the models once and then takes files one at a time;
results come back to this process, which alone writes the outputs, so they are the same as a
plain run's. A worker that dies is restarted and its file is retried (``MAX_RETRIES``); a file
that still kills its worker is reported as failed and the others go on. ADDRESS: "local"
starts a Ray instance on this machine for the run; anything else is a cluster address as
``ray.init`` takes it (``ray start --head`` prints it, e.g. "10.0.0.5:6379", or "auto" for the
cluster this machine joined; Ray's token in ~/.ray/auth_token is sent when there is one). Every
node must have densemesh installed and see the inputs at the same paths (a shared file system).
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

MAX_RETRIES = 2
CONNECT_TIMEOUT_S = 5.0


class WorkerDied(RuntimeError):
    """A file whose worker died on every try (a crash or the machine's memory killer)."""


class ClusterUnreachable(ConnectionError):
    """No Ray cluster answers at the address given (one-line message)."""


def connect(address: str):
    """Join (or, for "local", start) the Ray cluster at ``address``; -> the ``ray`` module.
    ClusterUnreachable when none answers. Safe to call again."""
    host, _, port = address.rpartition(":")
    if host and port.isdigit():  # a head's HOST:PORT: fail in seconds, not after Ray's minutes of retries
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as err:
            raise ClusterUnreachable(f"no Ray cluster answers at {address} ({err.strerror or err})") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if (Path.home() / ".ray" / "auth_token").is_file():  # a cluster started where a token exists wants it
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR)
        else:
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
            except ConnectionError as err:  # e.g. "auto" with no cluster on this machine
                raise ClusterUnreachable(f"no Ray cluster at {address!r}: {str(err).splitlines()[0]}") from None
    return ray


def map_on_ray(address: str, setup, work, items: list, progress=None):
    """Yield (item, work(state, item)) for every item as it finishes, run on the Ray cluster at
    ``address``: one single-threaded actor per CPU of the cluster (at most one per item), each
    with ``state = setup()`` made once. An item whose worker died ``MAX_RETRIES + 1`` times
    yields (item, :class:`WorkerDied`). progress(done, total) after each item."""
    if not items:
        return
    ray = connect(address)

    @ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=MAX_RETRIES)
    class Worker:
        def __init__(self):
            import torch

            torch.set_num_threads(1)  # one CPU per actor
            self.state = setup()

        def run(self, item):
            return work(self.state, item)

    count = max(1, min(len(items), int(ray.cluster_resources().get("CPU", 1))))
    waiting, running = list(reversed(items)), {}

    def give(worker):
        if waiting:
            item = waiting.pop()
            running[worker.run.remote(item)] = (worker, item)

    for _ in range(count):
        give(Worker.remote())
    done = 0
    while running:
        (future,), _ = ray.wait(list(running), num_returns=1)
        worker, item = running.pop(future)
        try:
            result = ray.get(future)
        except ray.exceptions.RayActorError:  # Ray restarted the actor and retried; it died every time
            result = WorkerDied(f"{item}: its worker died {MAX_RETRIES + 1} times on it")
        give(worker)
        done += 1
        if progress is not None:
            progress(done, len(items))
        yield item, result
