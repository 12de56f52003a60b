"""A map on Ray: `fn` over items on a Ray cluster, results in input order.

`ray.init()` joins the cluster named by RAY_ADDRESS, or starts a local one. Each worker is an
actor that runs `initializer(*initargs)` once (as a process pool's initializer does: load the
models a function needs once per worker), then `fn` on the items sent to it. Nothing here knows
what the function does; curation (curate.py) is one caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any


def ray_map(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
) -> Iterator[Any]:
    import ray
    from ray.util import ActorPool

    if not ray.is_initialized():
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)

    @ray.remote(num_cpus=1)
    class Worker:
        def __init__(self, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]):
            if initializer is not None:
                initializer(*initargs)

        def run(self, fn: Callable[[Any], Any], item: Any) -> Any:
            return fn(item)

    pool = ActorPool([Worker.remote(initializer, initargs) for _ in range(workers)])
    in_flight = 0
    for item in items:  # at most two items per worker in flight: memory stays bounded
        pool.submit(lambda actor, x: actor.run.remote(fn, x), item)
        in_flight += 1
        if in_flight == 2 * workers:
            yield pool.get_next()
            in_flight -= 1
    while pool.has_next():
        yield pool.get_next()
