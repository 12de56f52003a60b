"""Curation on Ray: the same chunks and functions as the local process pool, on a Ray cluster.

`ray.init()` joins the cluster named by RAY_ADDRESS, or starts a local one. Per-document work
runs in actors that each build their DocumentSteps once (the fastText models load once per
actor); results come back in submission order, so the output equals the local one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from scratchlm.config import CurateSettings


def ray_map(
    s: CurateSettings, fn: Callable[[Any], Any], items: Iterable[Any], stateful: bool, workers: int
) -> Iterator[Any]:
    import ray
    from ray.util import ActorPool

    if not ray.is_initialized():
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)

    @ray.remote(num_cpus=1)
    class Worker:
        def __init__(self, settings: CurateSettings, stateful: bool):
            if stateful:
                from scratchlm.data import curate

                curate._init_worker(settings)

        def run(self, fn: Callable[[Any], Any], item: Any) -> Any:
            return fn(item)

    pool = ActorPool([Worker.remote(s, stateful) for _ in range(workers)])
    in_flight = 0
    for item in items:  # at most two items per worker in flight: memory stays bounded
        pool.submit(lambda actor, x: actor.run.remote(fn, x), item)
        in_flight += 1
        if in_flight == 2 * workers:
            yield pool.get_next()
            in_flight -= 1
    while pool.has_next():
        yield pool.get_next()
