"""A model applied to every row: the cell's template filled in for each row, asked of each
model, and the answers given back as the rows came (a pandas Series with the rows'
index, a DataFrame of a column a model, or a list). The Python API (``each``) and what the
``--each`` option calls; no IPython here (the engine is ``batch.py``).

    from flowgpt_magic.rows import each

    result = each(df, "Summarise in five words: {row.text}", models=["openai:gpt-4o-mini"])
    df["summary"] = result.values(df)
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .batch import EachResult, EachView
from .command import ChatRequest, Settings, build_request
from .exceptions import FlowGptError, InvalidRequestError, RowsInterrupted
from .options import cell_options

if TYPE_CHECKING:
    from .chat import Chat


class Row(Mapping[str, Any]):
    """A DataFrame's row, as a prompt uses it: ``{row.text}`` is a column's value, and
    ``{row}`` all of them, ``column: value`` in a line each."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            columns = ", ".join(map(str, self._values))
            raise AttributeError(
                f"the row has no column {name!r}; its columns: {columns}"
            ) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Any:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __str__(self) -> str:
        return "\n".join(f"{column}: {value}" for column, value in self._values.items())

    def __repr__(self) -> str:
        return f"Row({self._values!r})"


def rows_of(value: Any, name: str) -> tuple[list[Any], list[Any]]:
    """The labels and the rows of what ``--each`` was given: a pandas DataFrame (its index,
    and a :class:`Row` each), a Series (its index and values), a list or a tuple (its
    positions and items)."""
    module = type(value).__module__.partition(".")[0]
    kind = type(value).__name__
    if module == "pandas" and kind == "DataFrame":
        columns = [str(column) for column in value.columns]
        rows = [
            Row(dict(zip(columns, values, strict=True)))
            for values in value.itertuples(index=False, name=None)
        ]
        return list(value.index), rows
    if module == "pandas" and kind == "Series":
        return list(value.index), list(value.tolist())
    if isinstance(value, (list, tuple)):
        return list(range(len(value))), list(value)
    raise InvalidRequestError(
        f"--each {name} needs a pandas DataFrame, a Series, a list or a tuple of rows; "
        f"{name} is a {kind}."
    )


class Run(NamedTuple):
    """A run's result, with what it was asked over: ``values(rows)`` gives its answers in
    the rows' shape; ``errors`` the failed rows' errors, by label (by model and label, for
    several models)."""

    result: EachResult
    interrupted: bool = False

    @property
    def errors(self) -> dict[Any, Any]:
        result = self.result
        if len(result.models) == 1:
            return dict(result.errors[0])
        return {model: dict(e) for model, e in zip(result.models, result.errors, strict=True)}

    def values(self, rows: Any, keep: Any = None) -> Any:
        """The answers in the shape of ``rows``: a pandas Series with its index (a
        DataFrame of a column a model, for several), a list (a dict of lists, model to
        answers, for several); ``keep`` turns an answer into the value kept (its code, the
        value its JSON is)."""
        result = self.result
        answers = [
            [None if a is None or keep is None else keep(a) for a in column]
            if keep is not None
            else column
            for column in result.answers
        ]
        module = type(rows).__module__.partition(".")[0]
        if module == "pandas":
            import pandas

            index = rows.index
            if len(result.models) == 1:
                series = pandas.Series(answers[0], index=index, dtype=object, name="answer")
                series.attrs["errors"] = self.errors
                return series
            frame = pandas.DataFrame(dict(zip(result.models, answers, strict=True)), index=index)
            frame.attrs["errors"] = self.errors
            return frame
        if len(result.models) == 1:
            return answers[0]
        return dict(zip(result.models, answers, strict=True))


def plans_for(
    template: str,
    settings: Settings,
    rows: Sequence[Any],
    namespace: Mapping[str, Any],
    models: Sequence[str | None],
    **options: Any,
) -> list[list[ChatRequest | FlowGptError]]:
    """Each row's requests, one a model: the template filled in with ``{row}`` (over
    ``namespace``), on its own (no conversation). The first row's error is raised (the
    template is wrong for every row, like as not: nothing is sent); a later row's stands
    in for its request, and is that row's failure."""
    plans: list[list[ChatRequest | FlowGptError]] = []
    for index, row in enumerate(rows):
        space = ChainMap({"row": row}, namespace)  # type: ignore[arg-type]
        plan: list[ChatRequest | FlowGptError] = []
        for model in models:
            try:
                plan.append(
                    build_request(
                        template, settings, namespace=space, model=model, no_history=True, **options
                    )
                )
            except FlowGptError as error:
                if index == 0:
                    raise
                plan.append(error)
        plans.append(plan)
    return plans


def each(
    rows: Any,
    template: str,
    *,
    models: Sequence[str | None] = (None,),
    chat: Chat,
    view: EachView,
    settings: Settings,
    namespace: Mapping[str, Any] | None = None,
    concurrency: int = 8,
    max_cost: float | None = None,
    name: str = "rows",
    **options: Any,
) -> Run:
    """Ask ``template`` of every row of ``rows`` (a DataFrame, a Series, a list), of each
    of ``models``, at most ``concurrency`` at once, the whole run within ``max_cost`` US
    dollars. ``options`` are ``build_request``'s (temperature, system, params, ...). The
    stop button ends the run at once; what had come is in the result (``interrupted``)."""
    if not isinstance(concurrency, int) or concurrency < 1:
        raise InvalidRequestError(
            f"-j takes a number of requests at once, 1 or more, not {concurrency!r}."
        )
    labels, values = rows_of(rows, name)
    if not values:
        raise InvalidRequestError(f"--each {name} has no rows: nothing to ask.")
    plans = plans_for(template, settings, values, namespace or {}, models, **options)
    try:
        return Run(chat.ask_each(plans, labels, view, concurrency, max_cost))
    except RowsInterrupted as stopped:
        return Run(stopped.result, interrupted=True)


def answer_each(magics: Any, args: Any, cell: str) -> Any:
    """``%%flowgpt --each NAME``: the cell asked of every row of NAME, its progress shown,
    the answers returned in the rows' shape (and written into ``--into COLUMN``); the
    failed rows' errors in ``_flowgpt_errors``. ``magics``: the cell magic's instance."""
    from collections import ChainMap
    from functools import partial

    from .command import parse_dollars
    from .display.progress import ProgressBox, TextProgress
    from .prompt import resolve
    from .schema import answer_value

    if args.each is None:
        raise InvalidRequestError(
            "-j and --into go with --each NAME (the rows to ask the cell of); without it a "
            "cell asks once."
        )
    refused = [flag for flag in ("background", "insert", "reset", "dry_run") if getattr(args, flag)]
    if refused and refused != ["dry_run"]:
        raise InvalidRequestError(
            f"--each asks every row on its own, with no conversation: --{refused[0]} does not "
            "go with it."
        )
    namespace = magics._namespace
    rows = resolve(args.each, namespace, what="--each")
    if args.into is not None and type(rows).__name__ != "DataFrame":
        raise InvalidRequestError(f"--into writes a column of a DataFrame; {args.each} is not one.")
    settings = magics.settings()
    limit = parse_dollars(args.max_cost) if args.max_cost is not None else settings.max_cost
    chosen = cell_options(magics, args)
    if chosen.tools and args.tools is not None:  # (FlowGptMagics.tools: not offered)
        raise InvalidRequestError(
            "--each asks every row on its own, and --tools would stop at each row to ask: "
            "they do not go together. Ask one row first, with --tools."
        )
    options = {
        "temperature": args.temperature,
        "system": args.system,
        "params": args.param,
        "answer_format": args.format,
        "image_files": args.image,
        "shown": magics.shown,
        "schema": chosen.schema,
        "cache": chosen.cache,
    }
    answer_format = "json" if args.schema else args.format or settings.answer_format
    keep = partial(answer_value, answer_format=answer_format, schema=options["schema"])
    models = args.model or [None]
    if args.dry_run:
        from .reports import each_dry_run

        labels, values = rows_of(rows, args.each)
        space = ChainMap({"Err": magics.errors}, namespace)
        plans = plans_for(cell, settings, values, space, models, **options)
        print(each_dry_run(magics.chat, plans, labels, limit))
        return namespace.get("_flowgpt")
    local = magics.provider_settings.get("local")
    asks_local = "local" in [str(m).partition(":")[0] for m in models]
    if (
        asks_local
        and local is not None
        and local.parallel == 1
        and (args.jobs or magics.concurrency) > 1
    ):
        print(
            "(local writes one answer at a time: %config Local.parallel = 4 has it write four "
            "at once.)"
        )
    title = f"--each {args.each}"
    view = ProgressBox(title) if magics._use_widget() else TextProgress(title)
    concurrency = args.jobs or magics.concurrency
    from .cluster import is_dask

    if is_dask(rows):
        return _on_cluster(magics, args, cell, rows, view, concurrency, limit, options, keep)
    run = each(
        rows,
        cell,
        models=models,
        chat=magics.chat,
        view=view,
        settings=settings,
        namespace=ChainMap({"Err": magics.errors}, namespace),
        concurrency=concurrency,
        max_cost=limit,
        name=args.each,
        **options,
    )
    value = run.values(rows, keep)
    namespace["_flowgpt_errors"] = run.errors
    if args.into is not None:
        models = run.result.models
        for model in models:
            named = args.into if len(models) == 1 else f"{args.into} ({model})"
            column = value if len(models) == 1 else value[model]
            for name, values in columns_of(column, named, options["schema"]).items():
                rows[name] = values
    if run.interrupted:
        namespace["_flowgpt"] = value  # (what came is kept, though the cell ends with a mark)
        raise RowsInterrupted(run.result)
    return value


def columns_of(values: Any, named: str, schema: Any = None) -> dict[str, Any]:
    """The columns ``--into NAMED`` writes of a Series of answers: the one, or (answers
    that are objects of a schema) one a field, ``NAMED.FIELD``, typed as the schema says
    (a row that failed: missing)."""
    if schema is None or schema.fields is None or schema.wrapped:
        return {named: values}
    import pandas

    def field(value: Any, name: str) -> Any:
        return value.get(name) if isinstance(value, dict) else getattr(value, name, None)

    return {
        f"{named}.{name}": pandas.Series(
            [None if v is None else field(v, name) for v in values],
            index=values.index,
            dtype=_dtype(kind),
        )
        for name, kind in schema.fields.items()
    }


def _dtype(kind: Any) -> Any:
    """The pandas dtype for a field's Python type: nullable, as a failed row is missing."""
    import types
    import typing

    present = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(present) == 1:
        kind = present[0]  # (Optional[int]: an int column, its None missing)
    literals = typing.get_args(kind)
    if typing.get_origin(kind) is typing.Literal and all(isinstance(a, str) for a in literals):
        import pandas

        return pandas.CategoricalDtype(list(literals))
    return {int: "Int64", float: "Float64", bool: "boolean", str: "string"}.get(kind, object)


def _on_cluster(
    magics: Any,
    args: Any,
    cell: str,
    rows: Any,
    view: Any,
    concurrency: int,
    limit: float | None,
    options: dict[str, Any],
    keep: Any,
) -> Any:
    """``--each`` of a Dask collection: each partition asked on a worker (``cluster.py``);
    the answers computed, in the rows' order (what ``keep`` keeps of each); their errors
    in ``_flowgpt_errors``."""
    from .batch import Pace, Tally
    from .cluster import answered, computed, spec_for

    if args.into is not None:
        raise InvalidRequestError(
            "--into writes into a pandas DataFrame; over Dask, join _flowgpt to it yourself."
        )
    if magics.cache is not None and options["cache"] != "off":
        print("(Over a Dask cluster the workers ask, and the answer cache is not used.)")
    settings = magics.settings()
    local = magics.provider_settings.get("local")
    spec = spec_for(cell, args.model or [None], settings, options, concurrency, limit, local)
    lazy = answered(rows, spec)
    tally = Tally(len(rows), Pace(concurrency))
    frame = magics.chat.run(computed(lazy, tally, view))
    magics._namespace["_flowgpt_errors"] = dict(frame["error"].dropna().items())
    import pandas

    # (A failed row's answer stays None: Series.map would make it NaN.)
    kept = [keep(answer) if isinstance(answer, str) else None for answer in frame["answer"]]
    answers = pandas.Series(kept, index=frame.index, dtype=object, name="answer")
    answers.attrs["errors"] = magics._namespace["_flowgpt_errors"]
    return answers
