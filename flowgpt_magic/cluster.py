"""Rows answered on a Dask cluster: ``--each`` of a Dask DataFrame (or Series) asks each
partition on a worker, with the same run as in the notebook (its pace, retries, errors),
each worker with a chat of its own (and, for ``-m local``, a local model of its own: a
model spread over the cluster's machines). The partitions' answers come back as they are
done, and the run's progress counts them.

Only ``{row}`` is filled in on a worker (the notebook's other names stay behind), and one
model is asked (several at once, and a cost limit over the whole cluster, are not held
there). Dask is imported here only, and only when a Dask collection is given.
"""

from __future__ import annotations

import atexit
import os
from typing import TYPE_CHECKING, Any, NamedTuple

from .exceptions import InvalidRequestError

if TYPE_CHECKING:
    from .chat import Chat
    from .command import Settings


def is_dask(value: Any) -> bool:
    return type(value).__module__.partition(".")[0] == "dask" and hasattr(value, "map_partitions")


class Spec(NamedTuple):
    """What a worker needs to answer a partition (all of it pickled to the worker)."""

    template: str
    model: str | None
    settings: Settings
    options: dict[str, Any]
    concurrency: int
    #: The local model's settings (a worker starts its own), if it is asked.
    local: dict[str, Any] | None


def spec_for(
    template: str,
    models: list[str | None],
    settings: Settings,
    options: dict[str, Any],
    concurrency: int,
    max_cost: float | None,
    local: Any,
) -> Spec:
    """The spec of a run on a cluster, refused here (nothing sent) for what a cluster
    cannot hold: several models, a cost limit, images."""
    if len(models) > 1:
        raise InvalidRequestError(
            "--each over a Dask DataFrame asks one model; run the cell once a model, or "
            "compute the rows first (rows = ddf.compute())."
        )
    if max_cost is not None:
        raise InvalidRequestError(
            "A cost limit cannot be held over a Dask cluster (its workers spend apart); ask "
            "without --max-cost, or compute the rows first (rows = ddf.compute())."
        )
    if options.get("image_files"):
        raise InvalidRequestError("-i does not go to a Dask cluster's workers; leave it out.")
    # What cannot be pickled stays behind: the local model's server (each worker starts its
    # own), the images the notebook's cells showed.
    provider_options = {
        name: {k: v for k, v in values.items() if k != "server"}
        for name, values in settings.provider_options.items()
    }
    # The endpoints and keys as this process finds them (a worker's environment may be
    # another's: a real cluster's machines).
    from .providers import PROVIDERS

    for name, values in provider_options.items():
        provider = PROVIDERS[name].provider
        if "base_url" in provider.options:
            values["base_url"] = provider.endpoint(**values)
            values.setdefault("api_key", None)
            values["api_key"] = values["api_key"] or os.environ.get("OPENAI_API_KEY")
        if "api_url" in provider.options:
            values["api_url"] = provider.endpoint(**values)
    kept = {k: v for k, v in options.items() if k not in ("shown", "image_files")}
    local_settings = None
    if local is not None and str(models[0] or settings.model).partition(":")[0] == "local":
        local_settings = {
            "model_path": local.model_path or os.environ.get("FLOWGPT_LOCAL_MODEL"),
            "mmproj_path": local.mmproj_path,
            "threads": local.threads,
            "context_size": local.context_size,
            "parallel": local.parallel,
        }
    return Spec(
        template,
        models[0],
        settings._replace(provider_options=provider_options),
        kept,
        concurrency,
        local_settings,
    )


#: The worker process's chat (and local model's server), made by its first partition.
_WORKER: dict[str, Any] = {}


def _worker_chat() -> Chat:
    if "chat" not in _WORKER:
        from .chat import Chat

        _WORKER["chat"] = made = Chat()
        atexit.register(made.close)
    chat: Chat = _WORKER["chat"]
    return chat


def _worker_settings(spec: Spec) -> Settings:
    if spec.local is None:
        return spec.settings
    if "local" not in _WORKER:
        from .llama import LlamaServer

        local = dict(spec.local)
        _WORKER["local"] = server = LlamaServer(local.pop("model_path"), **local)
        atexit.register(server.stop)
    options = {**spec.settings.provider_options, "local": {"server": _WORKER["local"]}}
    return spec.settings._replace(provider_options=options)


class _Quiet:
    """A worker's run shows nothing (its notebook counts the partitions)."""

    def begin(self, tally: Any) -> None:
        pass

    def finish(self, tally: Any, preview: Any, failures: str) -> None:
        pass


def answer_partition(frame: Any, spec: Spec) -> Any:
    """On a worker: the partition's answers and errors, a row each (pandas DataFrame)."""
    import pandas

    from .rows import each

    if len(frame) == 0:
        return pandas.DataFrame({"answer": [], "error": []}, index=frame.index, dtype=object)
    run = each(
        frame,
        spec.template,
        models=[spec.model],
        chat=_worker_chat(),
        view=_Quiet(),
        settings=_worker_settings(spec),
        concurrency=spec.concurrency,
        **spec.options,
    )
    answers = run.values(frame)
    errors = [run.errors.get(label) for label in frame.index]
    return pandas.DataFrame({"answer": answers, "error": errors}, index=frame.index, dtype=object)


def answered(rows: Any, spec: Spec) -> Any:
    """The Dask DataFrame of the rows' answers and errors (lazy: nothing is asked yet)."""
    import pandas

    frame = rows.to_frame() if not hasattr(rows, "columns") else rows
    meta = pandas.DataFrame({"answer": [], "error": []}, dtype=object)
    return frame.map_partitions(answer_partition, spec, meta=meta)


async def computed(lazy: Any, tally: Any, view: Any) -> Any:
    """``lazy`` computed (in a thread: Dask's client waits), while ``view`` shows ``tally``
    on this loop; the stop button cancels the partitions not done."""
    import asyncio
    import threading
    import time

    from .batch import failures_line

    stop = threading.Event()
    view.begin(tally)
    frame = None
    try:
        loop = asyncio.get_running_loop()
        frame = await loop.run_in_executor(None, _compute, lazy, tally, stop)
        return frame
    except asyncio.CancelledError:
        stop.set()
        raise
    finally:
        tally.ended = time.monotonic()
        preview = [] if frame is None else list(frame["answer"].head(5).items())
        errors = {} if frame is None else dict(frame["error"].dropna().items())
        view.finish(tally, preview, failures_line([errors], [""]))


def _compute(lazy: Any, tally: Any, stop: Any) -> Any:
    """Compute ``lazy`` partition by partition (on the distributed client, if there is
    one), counting its rows in ``tally`` as each comes back; the pandas DataFrame, in
    order. ``stop`` set: the partitions not done are cancelled."""
    import pandas

    try:
        from distributed import as_completed, get_client

        client = get_client()
    except (ImportError, ValueError):
        client = None
    parts = lazy.to_delayed()
    if client is None:
        from dask.base import compute

        done = []
        for part in parts:
            if stop.is_set():
                break
            frame = compute(part)[0]
            _count(tally, frame)
            done.append(frame)
        return pandas.concat(done) if done else lazy._meta
    futures = client.compute(parts)
    order = {future.key: i for i, future in enumerate(futures)}
    frames: list[Any] = [None] * len(futures)
    for future in as_completed(futures):
        if stop.is_set():
            client.cancel(futures)
            break
        frame = future.result()
        _count(tally, frame)
        frames[order[future.key]] = frame
    return pandas.concat([frame for frame in frames if frame is not None])


def _count(tally: Any, frame: Any) -> None:
    tally.done += len(frame)
    tally.failed += int(frame["error"].notna().sum())
