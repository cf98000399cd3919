"""The ``bespoke`` command: parses, calls library functions, formats. No logic lives here."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    help="Bespoke: a personalization engine for data scientists.", no_args_is_help=True
)
ingest_app = typer.Typer(
    help="Add a source's events (and attributes, catalog) to the lake.", no_args_is_help=True
)
data_app = typer.Typer(help="Look at what is in the lake.", no_args_is_help=True)
train_app = typer.Typer(
    help="Train a model: evaluate, log to MLflow, register, champion gate.", no_args_is_help=True
)
tune_app = typer.Typer(
    help="Tune a model with Optuna; the best parameters are refit and gated.", no_args_is_help=True
)
evaluate_app = typer.Typer(
    help="Evaluate a model on held-out data without registering it.", no_args_is_help=True
)
models_app = typer.Typer(help="The MLflow model registry.", no_args_is_help=True)
events_app = typer.Typer(
    help="The service's event inbox (live events) and its way to the lake.", no_args_is_help=True
)
keys_app = typer.Typer(help="API keys of the service (stored hashed).", no_args_is_help=True)
profiles_app = typer.Typer(
    help="The online profiles the service answers from.", no_args_is_help=True
)
app.add_typer(ingest_app, name="ingest")
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(tune_app, name="tune")
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(models_app, name="models")
app.add_typer(events_app, name="events")
app.add_typer(keys_app, name="keys")
app.add_typer(profiles_app, name="profiles")
identity_app = typer.Typer(
    help="Who is who: the identity graph (build, show, split) and customer-record matching.",
    no_args_is_help=True,
)
app.add_typer(identity_app, name="identity")
rules_app = typer.Typer(help="The JSON rules the service applies.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
webhooks_app = typer.Typer(
    help="Outgoing webhooks (segment_changed): the outbox, delivery, dead letters.",
    no_args_is_help=True,
)
app.add_typer(webhooks_app, name="webhooks")

# The monitoring commands are defined beside their code; importing the modules adds them
# to these groups (``bespoke monitor drift|quality``, ``bespoke report kpi``,
# ``bespoke retrain``).
from bespoke.channels.cli import campaign_app  # noqa: E402
from bespoke.experiments.cli import experiment_app  # noqa: E402
from bespoke.monitoring import drift_cli, kpi_cli, quality_cli  # noqa: E402, F401
from bespoke.monitoring.apps import monitor_app, report_app  # noqa: E402
from bespoke.privacy.cli import audit_app, privacy_app  # noqa: E402
from bespoke.stream.cli import stream_app  # noqa: E402

app.add_typer(monitor_app, name="monitor")
app.add_typer(report_app, name="report")
app.add_typer(experiment_app, name="experiment")
app.add_typer(campaign_app, name="campaign")
app.add_typer(stream_app, name="stream")
app.add_typer(privacy_app, name="privacy")
app.add_typer(audit_app, name="audit")
app.command("retrain")(quality_cli.retrain_command)

console = Console()
errors = Console(stderr=True)

DatasetOption = Annotated[
    str | None, typer.Option("--dataset", help="Dataset name in the lake (default: the source's).")
]
PathOption = Annotated[
    Path | None,
    typer.Option("--path", help="Source folder or file (default: under BESPOKE_DATASETS_DIR)."),
]


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("starting", total=None)

        def update(stage: str, done: int, total: int) -> None:
            progress.update(task, description=stage, completed=done, total=total)

        yield update


def _fail(message: str) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Bad input ends the command with its message and exit code 1, not a traceback."""
    from bespoke.features.parse import IngestError

    try:
        yield
    except (IngestError, FileNotFoundError, KeyError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        raise _fail(message) from error


def _ingest(build: Callable[[], Any]) -> None:
    from bespoke.features.collect import ingest
    from bespoke.features.lake import Lake
    from bespoke.features.report import manifest_summary
    from bespoke.privacy.gate import PersonGate
    from bespoke.settings import get_settings

    settings = get_settings()
    with _clear_errors():
        batch = build()
        lake = Lake(settings.lake_url)
        with _progress() as update:
            gate = PersonGate.from_settings(settings)
            result = ingest(batch, lake, settings.pseudonym_key(), callback=update, gate=gate)
    console.print(
        f"[bold green]ingested[/] {batch.source} → dataset [bold]{result.dataset}[/] (run {result.run_id})"
    )
    console.print(manifest_summary(result.manifest), highlight=False)


def _builtin(name: str, path: Path | None, dataset: str | None) -> None:
    from bespoke.features.sources import BUILTIN_SOURCES
    from bespoke.settings import get_settings

    adapter, folder = BUILTIN_SOURCES[name]

    def build() -> Any:
        source = path or get_settings().dataset_path(folder)
        return adapter(source, **({"dataset": dataset} if dataset else {}))

    _ingest(build)


@ingest_app.command("movielens-100k")
def ingest_movielens_100k(path: PathOption = None, dataset: DatasetOption = None) -> None:
    """MovieLens 100K: ratings, users (zip → state/region), movie catalog with genres."""
    _builtin("movielens-100k", path, dataset)


@ingest_app.command("movielens-1m")
def ingest_movielens_1m(path: PathOption = None, dataset: DatasetOption = None) -> None:
    """MovieLens 1M ratings (interactions only, no timestamps)."""
    _builtin("movielens-1m", path, dataset)


@ingest_app.command("cdnow")
def ingest_cdnow(path: PathOption = None, dataset: DatasetOption = None) -> None:
    """CDNOW purchases: dollar value and number of CDs per order."""
    _builtin("cdnow", path, dataset)


@ingest_app.command("csv")
def ingest_csv(
    file: Annotated[Path, typer.Argument(help="A CSV, TSV or Parquet interaction log.")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name in the lake.")],
    mapping: Annotated[
        Path | None, typer.Option("--mapping", help="JSON column mapping (see ColumnMapping).")
    ] = None,
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="FIELD=COLUMN, repeatable; adds to or overrides --mapping."),
    ] = None,
    event_type: Annotated[
        str | None, typer.Option("--event-type", help="One event type for every row.")
    ] = None,
    consent: Annotated[
        str | None,
        typer.Option(
            "--consent", help="Purposes for rows without their own, e.g. personalization,analytics."
        ),
    ] = None,
    timestamp_format: Annotated[
        str | None,
        typer.Option("--timestamp-format", help="iso, unix_s, unix_ms or a strftime pattern."),
    ] = None,
    event_type_value: Annotated[
        list[str] | None,
        typer.Option(
            "--event-type-value", help="SOURCE=TYPE, repeatable: the log's own name for a type."
        ),
    ] = None,
    delimiter: Annotated[
        str | None,
        typer.Option(
            "--delimiter",
            help="Column separator ('tab' for a tab); default: sniffed from the file.",
        ),
    ] = None,
) -> None:
    """Any interaction log, through a column mapping."""
    from bespoke.features.parse import IngestError
    from bespoke.features.sources import ColumnMapping, interactions_file

    def build() -> Any:
        fields: dict[str, Any] = {}
        for pair in map_ or []:
            field, sep, column = pair.partition("=")
            if not sep or not field.strip() or not column.strip():
                raise IngestError(f"--map {pair!r}: expected FIELD=COLUMN, e.g. user_id=customer")
            fields[field.strip()] = column.strip()
        if event_type:
            fields["event_type_constant"] = event_type
        if consent:
            fields["default_consent"] = [p.strip() for p in consent.split(",") if p.strip()]
        if timestamp_format:
            fields["timestamp_format"] = timestamp_format
        if delimiter:
            fields["delimiter"] = delimiter
        for pair in event_type_value or []:
            value, sep, kind = pair.partition("=")
            if not sep or not value.strip() or not kind.strip():
                raise IngestError(
                    f"--event-type-value {pair!r}: expected SOURCE=TYPE, e.g. buy=purchase"
                )
            fields.setdefault("event_type_values", {})[value.strip()] = kind.strip()
        column_mapping = (
            ColumnMapping.load(mapping, overrides=fields)
            if mapping
            else ColumnMapping.from_fields(fields, "--map options")
        )
        return interactions_file(file, column_mapping, dataset)

    _ingest(build)


def _table(title: str, frame: pd.DataFrame) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for column in frame.columns:
        numeric = pd.api.types.is_numeric_dtype(frame[column])
        table.add_column(str(column), justify="right" if numeric else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*[_cell(v) for v in row])
    return table


def _cell(value: Any) -> str:
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d") if not pd.isna(value) else "—"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else ""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "—"
    return f"{value:,}" if isinstance(value, int) else str(value)


@data_app.command("report")
def data_report(dataset: DatasetOption = None) -> None:
    """Rows per source and type, date ranges, quarantine by reason, imputed values."""
    from bespoke.features.lake import Lake
    from bespoke.features.report import data_report as build_report
    from bespoke.settings import get_settings

    settings = get_settings()
    with _clear_errors():
        report = build_report(Lake(settings.lake_url), dataset)
    console.print(f"[dim]lake: {settings.lake_url}[/]")
    if report.events.empty:
        console.print("The lake is empty: run [bold]bespoke ingest …[/] first.")
        return
    console.print(_table("Events", report.events))
    console.print(
        _table("Attributes and catalog", report.tables)
        if not report.tables.empty
        else "Attributes and catalog: none"
    )
    console.print(
        _table("Quarantine (reason = first failed rule)", report.quarantine)
        if not report.quarantine.empty
        else "Quarantine: empty"
    )
    console.print(
        _table("Imputed values", report.imputed)
        if not report.imputed.empty
        else "Imputed values: none"
    )
    console.print(_table("Kept out: no consent, consent withdrawn, erased", report.consent))


@data_app.command("doctor")
def data_doctor(
    fix: Annotated[
        bool,
        typer.Option(
            "--fix",
            help="Settle what an interrupted write left (publish committed runs' files, "
            "remove uncommitted ones) and move unreadable files under <lake>/_damaged/.",
        ),
    ] = False,
) -> None:
    """Check the lake for what a crashed or interrupted write left, and for files no reader
    can open. Exit 0 when healthy (or repaired), 1 when problems remain."""
    from bespoke.features.lake import Lake
    from bespoke.settings import get_settings

    lake = Lake(get_settings().lake_url)
    with _clear_errors():
        health = lake.repair() if fix else lake.check()
    console.print(f"[dim]lake: {lake.url}[/]")
    findings = [
        (path, "temporary file of a committed run", "published") for path in health.to_publish
    ]
    findings += [
        (path, "temporary file of a run that never committed", "removed")
        for path in health.to_remove
    ]
    findings += [
        (path, f"unreadable: {why}", "moved under _damaged/")
        for path, why in health.unreadable.items()
    ]
    findings += [
        (path, "listed by its run's manifest but missing", "cannot be repaired")
        for path in health.missing
    ]
    if health.writer_active and (health.to_publish or health.to_remove):
        console.print("A write is in progress now: its temporary files are listed too.")
    if health.damaged:
        console.print(
            f"{len(health.damaged)} file(s) of committed runs were moved under _damaged/ by an "
            "earlier repair: their rows are out of the views until their source is ingested "
            "again (the ingestion stores exactly the missing events)."
        )
    if not findings:
        console.print("[bold green]healthy[/]: no leftovers, every file readable")
        return
    table = Table("file", "finding", "with --fix" if not fix else "done", header_style="bold")
    table.columns[0].overflow = "fold"  # a path is read whole
    for path, finding, action in findings:
        table.add_row(path.removeprefix(lake.path("")), finding, action)
    console.print(table)
    if health.missing or not fix:
        hint = "" if fix else " (run [bold]bespoke data doctor --fix[/])"
        errors.print(f"{len(findings)} problem(s) found{hint}", highlight=False)
        raise typer.Exit(code=1)


ModelOption = Annotated[str, typer.Option("--model", help="Family: popularity, ease, als, …")]
ParamOption = Annotated[
    list[str] | None, typer.Option("--param", help="NAME=VALUE, repeatable (numbers are parsed).")
]
ProtocolOption = Annotated[
    str, typer.Option("--protocol", help="ms-stratified (the published benchmark) or temporal.")
]


def _params(pairs: list[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--param {pair!r}: expected NAME=VALUE, e.g. l2=500")
        try:
            params[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[name.strip()] = value
    return params


def _run_training(
    dataset: str,
    model: str,
    param: list[str] | None,
    protocol: str,
    register: bool,
    refit: bool = True,
) -> None:
    from bespoke.settings import get_settings
    from bespoke.training.train import train_recommender

    with _clear_errors():
        try:
            result = train_recommender(
                get_settings(),
                dataset,
                model,
                _params(param),
                protocol=protocol,  # type: ignore[arg-type]
                register=register,
                refit=refit,
            )
        except TypeError as error:  # a parameter the family does not take
            raise ValueError(f"--param: {error}") from error
    metrics = pd.DataFrame(
        [(name, round(value, 4)) for name, value in result.metrics.items()],
        columns=["metric", "value"],
    )
    console.print(_table(f"{model} on {dataset} ({protocol}), held-out test", metrics))
    console.print(f"train {result.timings.get('train_s')} s · MLflow run {result.run_id}")
    if register:
        state = "[green]champion[/]" if result.promoted else "not promoted"
        console.print(
            f"registered version {result.version}, fitted on {result.trained_on} "
            f"(held-out nDCG@10 {result.metrics['ndcg@10']:.4f}): {state} ({result.decision})"
        )


RefitOption = Annotated[
    bool,
    typer.Option(
        "--refit/--no-refit",
        help="Register a model refit on all data (default), or the one fitted on the "
        "training part.",
    ),
]


@train_app.command("recommender")
def train_recommender_command(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the lake, e.g. ml-100k.")],
    model: ModelOption,
    param: ParamOption = None,
    protocol: ProtocolOption = "temporal",
    refit: RefitOption = True,
) -> None:
    """Fit on the protocol's training part and evaluate on its test part (selection), then
    refit on all data and register; ``@champion`` moves only if this configuration beats
    the champion's on the same held-out data."""
    _run_training(dataset, model, param, protocol, register=True, refit=refit)


@train_app.command("segments")
def train_segments_command(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the lake, e.g. cdnow.")],
    as_of: Annotated[
        str, typer.Option("--as-of", help="Features from events up to this time (ISO).")
    ],
    rules: Annotated[
        Path | None, typer.Option("--rules", help="Rule segments (JSON conditions).")
    ] = None,
) -> None:
    """Behavioural segments (k-means on point-in-time person features; names kept from the
    previous model) and rule segments, assigned with history in the lake and tracked in
    MLflow."""
    from bespoke.segments.train import train_segments
    from bespoke.settings import get_settings

    with _clear_errors():
        result = train_segments(get_settings(), dataset, as_of, rules)
    model = result.model
    table = Table(title=f"Segments of {dataset} as of {as_of}: k = {model.k_} "
                        f"(silhouette {model.silhouettes_[model.k_]:.3f}, stability ARI {model.stability_:.3f})",
                  title_justify="left", header_style="bold")  # fmt: skip
    for column in ("segment", "people", "what they are like"):
        table.add_column(column)
    for name, description in zip(model.names_, model.descriptions_, strict=True):
        table.add_row(name, f"{result.sizes.get(name, 0):,}", description)
    for name, people in result.rule_sizes.items():
        table.add_row(f"{name} (rule)", f"{people:,}", "")
    console.print(table)
    console.print(f"{result.written:,} changed assignments written (segments, segments_history); "
                  f"MLflow run {result.run_id}; bespoke-segments-{dataset} v{result.version}: "
                  f"{result.decision}")  # fmt: skip


@train_app.command("churn")
def train_churn_command(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the lake, e.g. cdnow.")],
    as_of: Annotated[str, typer.Option("--as-of", help="Train on what was known by then (ISO).")],
    horizon_days: Annotated[
        float, typer.Option("--horizon-days", help="Churn: no order within this many days.")
    ] = 92.0,
    trials: Annotated[
        int,
        typer.Option(
            "--trials", min=0, help="Optuna trials tuning the churn model (0: the defaults)."
        ),
    ] = 10,
) -> None:
    """Churn (calibrated LightGBM) and lifetime value (LightGBM) on point-in-time person
    features, trained on cuts whose horizons end by --as-of, measured on the latest cut
    against BG/NBD and BG/NBD × Gamma–Gamma, registered as bespoke-churn-<dataset> and
    bespoke-clv-<dataset> through the champion gate."""
    from bespoke.segments.train import train_churn
    from bespoke.settings import get_settings

    with _clear_errors():
        result = train_churn(get_settings(), dataset, as_of, horizon_days, trials)
    console.print(
        f"{dataset} as of {as_of}: {result.horizon_days:g}-day horizon, cuts "
        f"{', '.join(result.cuts)} ({result.train_rows:,} rows; the latest held out)"
    )
    table = Table(header_style="bold")
    for column in ("model", "held out", "baseline", "version", "gate"):
        table.add_column(column)
    churn, clv = result.churn, result.clv
    table.add_row(
        f"bespoke-churn-{dataset}",
        f"AUC {churn.held_out:.4f}",
        f"BG/NBD {churn.baseline:.4f}",
        str(churn.version),
        churn.decision,
    )
    table.add_row(f"bespoke-clv-{dataset}", f"MAE ${clv.held_out:.2f}",
                  f"BG/NBD × Gamma–Gamma ${clv.baseline:.2f}", str(clv.version), clv.decision)  # fmt: skip
    console.print(table)
    console.print(
        f"MLflow run {result.run_id}"
        + "".join(f"; {kind} tuned: {found}" for kind, found in result.params.items() if found)
    )


WorkersOption = Annotated[
    int,
    typer.Option(
        "--workers",
        min=1,
        help="Processes running the trials at once on the one study, the trials split "
        "between them. Hosts join the same study by tuning the same data with the same "
        "BESPOKE_OPTUNA_STORAGE_URL (PostgreSQL).",
    ),
]


@tune_app.command("recommender")
def tune_recommender_command(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the lake, e.g. ml-100k.")],
    model: ModelOption,
    trials: Annotated[int, typer.Option("--trials", min=1, help="Optuna trials.")] = 20,
    protocol: ProtocolOption = "temporal",
    seed: Annotated[int, typer.Option("--seed", help="TPE sampler seed.")] = 42,
    params_file: Annotated[
        Path | None, typer.Option("--params-file", help="Where to merge the best parameters.")
    ] = None,
    workers: WorkersOption = 1,
) -> None:
    """Seeded TPE on a validation split of the training part, pruned trials, nested MLflow
    runs; the best parameters are written down, refit, registered and gated."""
    from bespoke.settings import get_settings
    from bespoke.training.params import params_file_of
    from bespoke.training.tune import shown_storage, tune_recommender

    with _clear_errors():  # a bad setting (BESPOKE_OPTUNA_STORAGE_URL…) is said plainly
        settings = get_settings()
        result = tune_recommender(
            settings,
            dataset,
            model,
            trials,
            protocol=protocol,
            seed=seed,  # type: ignore[arg-type]
            params_file=params_file or params_file_of(settings),
            show_progress=workers == 1,
            workers=workers,
        )
    console.print(
        f"{trials} trials run ({result.trials} in the study, {result.pruned} pruned); best validation nDCG@10 "
        f"{result.best_value:.4f} with {result.best_params}"
    )
    console.print(f"[dim]study {result.study_name} in {shown_storage(result.storage)}[/]")
    if result.final is not None:
        final = result.final
        console.print(
            f"held-out nDCG@10 {final.metrics['ndcg@10']:.4f}; version {final.version} "
            f"(fitted on {final.trained_on}) "
            f"{'is now @champion' if final.promoted else 'not promoted'} ({final.decision})"
        )


ObjectiveOption = Annotated[
    str | None,
    typer.Option(
        "--objective",
        help="auto (fit binary and lambdarank, keep the better on validation), binary or "
        "lambdarank; default: the tuned one, else auto.",
    ),
]
CandidatesOption = Annotated[
    int, typer.Option("--candidates", help="Candidates EASE retrieves per person for reranking.")
]
RankerParamsFileOption = Annotated[
    Path | None,
    typer.Option(
        "--params-file", help="Tuned parameters (ranker and retrievers); default: the project's."
    ),
]
#: The held-out metrics ``train ranker`` shows, in this order.
RANKER_METRICS = (
    "retrieval_ndcg@10",
    "reranked_ndcg@10",
    "lift",
    "auc",
    "logloss",
    "brier",
    "ece",
    "logreg_auc",
)


def _train_ranker(
    dataset: str,
    protocol: str,
    objective: str | None,
    candidates: int,
    params_file: Path | None,
) -> tuple[Any, Path | None]:
    """Train (and register) the ranker with the tuned parameters in ``params_file`` when
    there are some; returns the result and the file the ranker's parameters came from."""
    from bespoke.settings import get_settings
    from bespoke.training.params import params_file_of, tuned_params, tuned_ranker_params
    from bespoke.training.ranker import CHOICES
    from bespoke.training.ranking import RETRIEVERS, train_ranker

    if objective is not None and objective not in ("auto", *CHOICES):
        raise ValueError(f"--objective {objective!r}: use auto, {', '.join(CHOICES)}")
    if candidates < 10:
        raise ValueError(
            f"--candidates must be at least 10 (metrics are at k = 10), got {candidates}"
        )
    settings = get_settings()
    source = params_file or params_file_of(settings)
    params = tuned_ranker_params(source, dataset, protocol)
    tuned_objective = params.pop("objective", None)
    retrievers = {name: tuned_params(source, dataset, protocol, name) for name in RETRIEVERS}
    with console.status(
        f"ranker on {dataset}: candidates and features, LightGBM, test stage, registration"
    ):
        result = train_ranker(
            settings,
            dataset,
            protocol=protocol,  # type: ignore[arg-type]
            objective=objective or tuned_objective or "auto",  # type: ignore[arg-type]
            params=params,
            retriever_params=retrievers,
            n_candidates=candidates,
            register=True,
        )
    return result, source if params else None


def _objective_line(result: Any) -> str:
    scores = " · ".join(
        f"{name} {values['reranked_ndcg@10']:.4f}" for name, values in result.validation.items()
    )
    return f"objective: [bold]{result.objective}[/] (validation reranked nDCG@10: {scores})"


def _gate_line(result: Any) -> str:
    if result.version is None:
        return "not registered"
    state = "[green]@champion[/]" if result.promoted else "not promoted"
    return (
        f"registered version {result.version}, fitted on {result.trained_on}: {state} "
        f"({result.decision})"
    )


def _lift_table(result: Any, dataset: str) -> Table:
    """Retrieval against each fitted reranker (the one chosen on validation marked) and the
    logistic baseline."""
    metrics = result.metrics
    retrieval = metrics["retrieval_ndcg@10"]

    def lift(ndcg: float) -> float | None:
        return ndcg / retrieval - 1.0 if retrieval else None

    rows = [("EASE retrieval", retrieval, None, None)]
    for name in result.validation:
        ndcg = metrics[f"{name}_reranked_ndcg@10"]
        label = "logistic regression" if name == "logistic" else f"LightGBM {name}"
        chosen = " (chosen on validation)" if name == result.objective else ""
        rows.append((f"{label} rerank{chosen}", ndcg, lift(ndcg), metrics[f"{name}_auc"]))
    if "logistic" not in result.validation:
        ndcg = metrics["logreg_reranked_ndcg@10"]
        rows.append(("logistic rerank (baseline)", ndcg, lift(ndcg), metrics["logreg_auc"]))
    frame = pd.DataFrame(rows, columns=["ranking", "ndcg@10", "lift", "auc"]).round(4)
    return _table(f"Reranking on {dataset}, held-out test", frame)


def _print_ranker(result: Any, dataset: str, protocol: str) -> None:
    metrics = pd.DataFrame(
        [(name, round(float(result.metrics[name]), 4)) for name in RANKER_METRICS],
        columns=["metric", "value"],
    )
    console.print(_table(f"ranker on {dataset} ({protocol}), held-out test", metrics))
    console.print(_objective_line(result))
    importance = pd.Series(result.importance, dtype=float).head(10)
    total = sum(result.importance.values()) or 1.0
    frame = pd.DataFrame(
        {
            "feature": importance.index,
            "gain": importance.to_numpy().round(1),
            "share": [f"{value / total:.1%}" for value in importance.to_numpy()],
        }
    )
    console.print(_table("Top 10 features (LightGBM gain)", frame))
    console.print(_gate_line(result))
    console.print(f"MLflow run {result.run_id}")


@train_app.command("ranker")
def train_ranker_command(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the lake, e.g. ml-100k.")],
    protocol: ProtocolOption = "temporal",
    objective: ObjectiveOption = None,
    candidates: CandidatesOption = 100,
    params_file: RankerParamsFileOption = None,
) -> None:
    """The click-through ranker: LightGBM reranks EASE's candidates (features as of the
    cut, calibrated probabilities), evaluated on the test stage against retrieval and a
    logistic baseline, logged, registered; ``@champion`` moves only for a better one."""
    with _clear_errors():
        result, source = _train_ranker(dataset, protocol, objective, candidates, params_file)
    if source is not None:
        console.print(f"[dim]tuned ranker parameters from {source}[/]")
    _print_ranker(result, dataset, protocol)


@tune_app.command("ranker")
def tune_ranker_command(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the lake, e.g. ml-100k.")],
    trials: Annotated[int, typer.Option("--trials", help="Optuna trials.")] = 20,
    protocol: ProtocolOption = "temporal",
    seed: Annotated[int, typer.Option("--seed", help="TPE sampler seed.")] = 42,
    params_file: Annotated[
        Path | None, typer.Option("--params-file", help="Where to merge the best parameters.")
    ] = None,
    workers: WorkersOption = 1,
) -> None:
    """Seeded TPE over the objective and LightGBM's parameters on the validation people
    (candidates and features prepared once), pruned through LightGBM, nested MLflow runs;
    the best parameters are written down, refit, registered and gated."""
    from bespoke.settings import get_settings
    from bespoke.training.params import params_file_of
    from bespoke.training.tune import tune_ranker

    with _clear_errors():  # a bad setting (BESPOKE_OPTUNA_STORAGE_URL…) is said plainly
        settings = get_settings()
    target = params_file or params_file_of(settings)
    with _clear_errors(), _progress() as update:
        result = tune_ranker(
            settings,
            dataset,
            trials,
            protocol=protocol,  # type: ignore[arg-type]
            seed=seed,
            params_file=target,
            callback=update,
            workers=workers,
        )
    console.print(
        f"{trials} trials run ({result.trials} in the study, {result.pruned} pruned); best "
        f"validation reranked nDCG@10 {result.best_value:.4f} with {result.best_params}"
    )
    if result.best_params:
        console.print(f"[dim]written to {target} (key 'ranker')[/]")
    if result.final is not None:
        _print_ranker(result.final, dataset, protocol)


@evaluate_app.command("recommender")
def evaluate_recommender_command(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the lake, e.g. ml-100k.")],
    model: ModelOption,
    param: ParamOption = None,
    protocol: ProtocolOption = "ms-stratified",
) -> None:
    """Fit and evaluate (logged to MLflow) without registering."""
    _run_training(dataset, model, param, protocol, register=False)


@models_app.command("list")
def models_list() -> None:
    """Registered model versions: aliases, held-out score, what each was fitted on."""
    from bespoke.settings import get_settings
    from bespoke.training.registry import Registry

    with _clear_errors():
        frame = Registry.of(get_settings()).list_models()
    console.print(
        _table("Registered models", frame.drop(columns=["run_id"]).round(4))
        if not frame.empty
        else "No registered models yet."
    )


@models_app.command("promote")
def models_promote(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset the model was trained on.")],
    version: Annotated[str, typer.Option("--version", help="Model version to make @champion.")],
    kind: Annotated[str, typer.Option("--kind", help="recommender or ranker.")] = "recommender",
) -> None:
    """Make a version ``@champion`` by hand, overriding the gate (recorded in the audit
    log)."""
    import getpass

    from bespoke.privacy.audit import audit_log
    from bespoke.settings import get_settings
    from bespoke.training.registry import Registry

    settings = get_settings()
    with _clear_errors():
        Registry.of(settings).promote(kind, dataset, version)
    audit_log(settings).append("model.promoted", actor=getpass.getuser(), detail={
        "kind": kind, "dataset": dataset, "version": version, "by": "hand"})  # fmt: skip
    console.print(f"{kind} version {version} is now @champion")


@models_app.command("export-bento")
def models_export_bento(
    dataset: Annotated[
        str, typer.Option("--dataset", help="Dataset of the champions.")
    ] = "ml-100k",
    bentofile: Annotated[
        Path | None,
        typer.Option("--bentofile", help="Add the exported models to this bentofile's models."),
    ] = None,
) -> None:
    """Copy the @champion recommender and ranker into BentoML's model store (BENTOML_HOME),
    so that ``bentoml build`` packages them (``make bento`` runs this first)."""
    from bespoke.serving.champions import export_champions
    from bespoke.settings import get_settings

    with _clear_errors():
        tags = export_champions(get_settings().mlflow_tracking_uri or "", dataset)
    if bentofile is not None:
        text = bentofile.read_text()
        if "\nmodels:" in f"\n{text}":
            raise _fail(f"{bentofile} already lists models; add {', '.join(tags)} by hand")
        listed = "".join(f'  - "{tag}"\n' for tag in tags)
        bentofile.write_text(f"{text.rstrip()}\nmodels:\n{listed}")
    for tag in tags:
        console.print(f"exported {tag}")


@profiles_app.command("seed")
def profiles_seed(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the lake.")] = "ml-100k",
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Only events before this time (ISO).")
    ] = None,
) -> None:
    """Load the lake's people (latest attributes, events) into the online store, so that
    the service knows them from its first request. Safe to run again."""
    from bespoke.serving.local import seed_online_store
    from bespoke.settings import get_settings

    with _clear_errors():
        counts = seed_online_store(get_settings(), dataset, as_of)
    console.print(
        f"online store: {counts['people']:,} people's attributes, {counts['events']:,} events "
        f"of {dataset}"
    )


@profiles_app.command("show")
def profiles_show(
    person: Annotated[str, typer.Argument(help="User id (or anonymous id with --anonymous).")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the lake.")] = "ml-100k",
    anonymous: Annotated[bool, typer.Option("--anonymous", help="An anonymous id.")] = False,
) -> None:
    """One person as the service sees them (what GET /v1/profiles/{id} answers)."""
    from bespoke.serving.store import open_store
    from bespoke.settings import get_settings

    with _clear_errors():
        view = open_store(get_settings()).profile(person, dataset, anonymous=anonymous)
    if not view.known:
        raise _fail(f"no profile for {person!r} in {dataset}")
    console.print_json(view.model_dump_json())


@identity_app.command("build")
def identity_build(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the lake.")] = "ml-100k",
) -> None:
    """Bring the dataset's identity graph up to date with its events (incremental)."""
    from bespoke.features.lake import Lake
    from bespoke.identity.build import build_graph
    from bespoke.settings import get_settings

    settings = get_settings()
    with _clear_errors():
        result = build_graph(Lake(settings.lake_url), dataset, settings.pseudonym_key())
    if result.run_id is None:
        console.print(f"identity graph of {dataset} is up to date (version {result.version})")
        return
    decided = ", ".join(f"{n:,} {d}" for d, n in sorted(result.decisions.items())) or "no links"
    console.print(
        f"identity graph of {dataset}, version {result.version}: {result.events:,} new events "
        f"→ {result.identifiers:,} identifiers in {result.persons:,} persons ({decided}) "
        f"in {result.seconds:.1f} s"
    )


IdentifierArgument = Annotated[
    str,
    typer.Argument(help="An identifier written type:value, e.g. user_id:42 or anonymous_id:c-1."),
]


@identity_app.command("show")
def identity_show(
    identifier: IdentifierArgument,
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the lake.")] = "ml-100k",
) -> None:
    """The person an identifier belongs to: every identifier with its evidence, and the
    refused merges that involved them."""
    from bespoke.features.lake import Lake
    from bespoke.identity.build import person_report
    from bespoke.settings import get_settings

    settings = get_settings()
    with _clear_errors():
        report = person_report(
            Lake(settings.lake_url), dataset, identifier, settings.pseudonym_key()
        )
    console.print(f"person {report['person_id']} in {dataset}")
    console.print(_table("identifiers", pd.DataFrame(report["identifiers"])))
    for row in report["refused"]:
        console.print(
            f"{row['decision']}: {row['left_type']}:{row['left_id']} ~ "
            f"{row['right_type']}:{row['right_id']}: {row['reason']}",
            highlight=False,
            soft_wrap=True,
        )


@identity_app.command("split")
def identity_split(
    identifier: IdentifierArgument,
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the lake.")] = "ml-100k",
    reason: Annotated[str, typer.Option("--reason", help="Why (kept with the split).")] = (
        "split by an operator"
    ),
) -> None:
    """Undo the merges that joined an identifier to its person; it joins no one later."""
    from bespoke.features.lake import Lake
    from bespoke.identity.build import split_identifier
    from bespoke.identity.graph import node_label, parse_node
    from bespoke.settings import get_settings

    settings = get_settings()
    with _clear_errors():
        node = parse_node(identifier)
        changed = split_identifier(
            Lake(settings.lake_url), dataset, node, settings.pseudonym_key(), reason
        )
    moved = ", ".join(node_label(n) for n in changed)
    console.print(
        f"split {identifier} from its person; {len(changed)} identifier(s) moved: {moved}"
    )


@identity_app.command("resolve")
def identity_resolve(
    files: Annotated[list[Path], typer.Argument(help="Customer-record CSV/TSV/Parquet file(s).")],
    mapping: Annotated[Path, typer.Option("--mapping", help="JSON: field → column.")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the lake.")] = "ml-100k",
    link_only: Annotated[
        bool, typer.Option("--link-only", help="Several files, each free of duplicates.")
    ] = False,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help="Accept links from this probability (default: chosen without labels).",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for clusters, links, review.")
    ] = None,
    delimiter: Annotated[
        str | None, typer.Option("--delimiter", help="Column separator (default: sniffed).")
    ] = None,
) -> None:
    """Match customer records without a shared key (Splink), keep raw values only in the
    encrypted vault, and join the links above the threshold to the identity graph; the
    grey zone goes to a review list."""
    from datetime import UTC, datetime

    from bespoke.features.lake import Lake
    from bespoke.identity.matching import RecordMapping, resolve_records, splink_backend
    from bespoke.identity.vault import Vault
    from bespoke.settings import get_settings

    settings = get_settings()
    with _clear_errors():
        fields = RecordMapping.load(mapping)
        if delimiter is not None:
            fields = RecordMapping.model_validate({**fields.model_dump(), "delimiter": delimiter})
        assert settings.home is not None
        folder = out or settings.home / "identity" / dataset / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        result = resolve_records(
            files,
            fields,
            dataset=dataset,
            lake=Lake(settings.lake_url),
            key=settings.pseudonym_key(),
            vault=Vault.from_settings(settings),
            out_dir=folder,
            link_only=link_only,
            threshold=threshold,
            backend=splink_backend(settings),  # DuckDB, or Spark (BESPOKE_ENGINE)
        )
    match = result.match
    decided = ", ".join(f"{n:,} {d}" for d, n in sorted(result.graph.items())) or "no changes"
    console.print(
        f"{result.records:,} records → {match.clusters['cluster_id'].nunique():,} clusters; "
        f"{len(match.links):,} links at probability ≥ {match.threshold:.3f} (chosen "
        f"{'by you' if threshold is not None else 'without labels: expected F1 ' + format(match.expected_f1, '.4f')}), "
        f"{len(match.review):,} to review; graph: {decided}; {result.vaulted:,} records in the vault; "
        f"{match.seconds:.1f} s"
    )
    for name, path in result.outputs.items():
        console.print(f"  {name}: {path}")


def _flush_line(result: Any) -> str:
    if not result.datasets:
        return "nothing to flush"
    return "; ".join(
        f"{name}: {c['flushed']} flushed → {c['stored']} stored, "
        f"{c['already_present']} already present, {c['quarantined']} quarantined"
        for name, c in result.datasets.items()
    )


@events_app.command("flush")
def events_flush(
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Only this dataset's events (default: all).")
    ] = None,
    every: Annotated[
        float | None,
        typer.Option("--every", help="Keep flushing every SECONDS until interrupted.", min=0.001),
    ] = None,
) -> None:
    """Move the events the service accepted from its inbox to the lake (ingestion rules)."""
    from bespoke.features.lake import Lake
    from bespoke.serving.store import flush_every, open_store
    from bespoke.settings import get_settings

    settings = get_settings()
    with _clear_errors():
        store = open_store(settings)
        lake = Lake(settings.lake_url)
        if every is None:
            console.print(_flush_line(store.flush(lake, dataset=dataset)), highlight=False)
            return
        console.print(f"flushing every {every:g} s (Ctrl-C stops)")

        def report(result: Any) -> None:
            if result.flushed:
                console.print(_flush_line(result), highlight=False)

        try:
            flush_every(store, lake, every, dataset=dataset, on_flush=report)
        except KeyboardInterrupt:
            console.print("stopped")


def _keys() -> Any:
    import getpass

    from bespoke.privacy.audit import audit_log
    from bespoke.serving.keys import ApiKeys
    from bespoke.settings import get_settings

    settings = get_settings()
    control = settings.control_store_url or ""
    return ApiKeys(control, audit=audit_log(settings), actor=getpass.getuser())


KeyNameOption = Annotated[str, typer.Option("--name", help="The key's name, e.g. the caller's.")]


@keys_app.command("create")
def keys_create(
    name: KeyNameOption,
    publishable: Annotated[
        bool,
        typer.Option(
            "--publishable",
            help="A key for web pages (bespoke.js): events, "
            "identify, consent and personalize for the browser's own anonymous id.",
        ),
    ] = False,
    origin: Annotated[
        list[str] | None,
        typer.Option(
            "--origin",
            help="A publishable key's allowed page origin, e.g. "
            "https://shop.example (repeat for more).",
        ),
    ] = None,
    client_rate: Annotated[
        int, typer.Option("--client-rate", help="Publishable: requests a minute per client.")
    ] = 300,
    key_rate: Annotated[
        int, typer.Option("--key-rate", help="Publishable: requests a minute in all.")
    ] = 30_000,
) -> None:
    """Create a key; it is printed once (only its hash is kept)."""
    with _clear_errors():
        key = _keys().create(name, publishable=publishable, origins=origin or [],
                             client_rate=client_rate, key_rate=key_rate)  # fmt: skip
    kind = "publishable key" if publishable else "API key"
    errors.print(f"{kind} {name!r} (shown once; only its SHA-256 hash is stored):")
    print(key)


@keys_app.command("list")
def keys_list() -> None:
    """Every key's name, creation and revocation time (never the keys themselves)."""
    with _clear_errors():
        keys = _keys().list()
    if not keys:
        console.print("No API keys yet: create one with `bespoke keys create --name NAME`.")
        return
    table = Table("name", "kind", "origins", "created", "revoked", header_style="bold")
    for info in keys:
        revoked = f"{info.revoked_at:%Y-%m-%d %H:%M:%S}" if info.revoked_at else ""
        table.add_row(info.name, info.kind, " ".join(info.origins),
                      f"{info.created_at:%Y-%m-%d %H:%M:%S}", revoked)  # fmt: skip
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(name: KeyNameOption) -> None:
    """Revoke a key: requests with it are refused from now on."""
    with _clear_errors():
        info = _keys().revoke(name)
    console.print(f"API key {info.name!r} revoked at {info.revoked_at:%Y-%m-%d %H:%M:%S} UTC")


@report_app.command("segments")
def report_segments(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the lake, e.g. cdnow.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for segments.html (default: reports/<time>/)."),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Migration from the assignment at this time.")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Migration to the assignment at this time.")
    ] = None,
) -> None:
    """Segment sizes and profiles, migration between two assignment times, value after
    assignment per segment, the churn model's calibration and lift: one HTML file."""
    from bespoke.segments.report import SegmentReportError, write_segment_report
    from bespoke.settings import get_settings

    try:
        report, path = write_segment_report(
            get_settings(), dataset, out=out, since=since, until=until
        )
    except (SegmentReportError, ValueError) as error:
        raise _fail(str(error)) from None
    for note in report.notes:
        errors.print(f"note: {note}")
    console.print(f"segments report of {dataset}: {len(report.sizes)} segments → {path}")


@rules_app.command("check")
def rules_check(
    path: Annotated[
        Path | None, typer.Argument(help="A rules file or folder (default: the service's).")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="Check segment names against this dataset's segments "
            "(default: the served dataset).",
        ),
    ] = None,
) -> None:
    """Validate rules as the service would load them, segment names included."""
    from bespoke.features.lake import Lake
    from bespoke.segments.live import known_segments
    from bespoke.segments.train import champion_segmenter
    from bespoke.serving.rules import SHIPPED_RULES_DIR, RulesError, RuleSet
    from bespoke.settings import get_settings

    settings = get_settings()
    dataset = dataset or settings.serving_dataset
    where = path or settings.rules_path or SHIPPED_RULES_DIR
    known = known_segments(champion_segmenter(settings, dataset), Lake(settings.lake_url), dataset)
    try:
        rules = RuleSet.load(where).check_segments(known, str(where))
    except RulesError as error:
        raise _fail(str(error)) from None
    segments = "not checked: no segments trained" if known is None else f"{len(known)} known"
    console.print(f"{len(rules)} rules valid in {where} (segments of {dataset}: {segments})")


def _outbox_db() -> Any:
    """The online store's database, which holds the webhook outbox."""
    from bespoke.serving.store import open_store
    from bespoke.settings import get_settings

    return open_store(get_settings()).database()


@webhooks_app.command("list")
def webhooks_list(
    status: Annotated[
        str | None, typer.Option("--status", help="pending, delivered or dead (default: all).")
    ] = None,
) -> None:
    """The queued webhooks, oldest first, with their attempts and last error."""
    from bespoke.serving.webhooks import outbox

    if status not in (None, "pending", "delivered", "dead"):
        raise _fail(f"--status must be pending, delivered or dead, not {status!r}")
    with _clear_errors():
        rows = outbox(_outbox_db(), status)
    table = Table("id", "topic", "status", "attempts", "last error", "created", "data",
                  header_style="bold")  # fmt: skip
    for row in rows:
        table.add_row(str(row["id"]), row["topic"], row["status"], str(row["attempts"]),
                      row["last_error"] or "", row["created_at"], json.dumps(row["data"]))  # fmt: skip
    console.print(table if rows else "The outbox is empty.")


@webhooks_app.command("deliver")
def webhooks_deliver() -> None:
    """Deliver what is due now (the service does this every second by itself)."""
    from bespoke.serving.webhooks import deliver_due
    from bespoke.settings import get_settings

    settings = get_settings()
    if not settings.webhook_url:
        raise _fail("no webhook URL is set: export BESPOKE_WEBHOOK_URL=https://…")
    with _clear_errors():
        report = deliver_due(_outbox_db(), settings)
    console.print(f"{report.delivered} delivered, {report.retried} to retry, "
                  f"{report.dead} dead-lettered")  # fmt: skip


@webhooks_app.command("retry")
def webhooks_retry(ident: Annotated[int, typer.Argument(help="The dead webhook's id.")]) -> None:
    """Queue a dead-lettered webhook again."""
    from bespoke.serving.webhooks import retry

    with _clear_errors():
        retry(_outbox_db(), ident)
    console.print(f"webhook {ident} queued again")


@webhooks_app.command("replay")
def webhooks_replay(
    ids: Annotated[
        list[int] | None, typer.Argument(help="Webhook ids (default: by filter).")
    ] = None,
    topic: Annotated[str | None, typer.Option("--topic", help="Only this topic.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only those created at or after (ISO time).")
    ] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="delivered or dead (default: both).")
    ] = None,
) -> None:
    """Send delivered or dead webhooks again (a receiver that lost them), with their ids."""
    from datetime import datetime

    from bespoke.serving.webhooks import replay

    if status not in (None, "delivered", "dead"):
        raise _fail(f"--status must be delivered or dead, not {status!r}")
    since_us = None
    if since is not None:
        try:
            moment = datetime.fromisoformat(since)
        except ValueError:
            raise _fail(
                f"--since is an ISO time such as 2026-12-01T00:00:00Z, not {since!r}"
            ) from None
        if moment.tzinfo is None:
            raise _fail("--since needs a time zone (e.g. Z)")
        since_us = int(moment.timestamp() * 1_000_000)
    if not ids and topic is None and since is None and status is None:
        raise _fail("name webhook ids, or choose them with --topic, --since or --status")
    with _clear_errors():
        queued = replay(_outbox_db(), ids or None, topic=topic, since_us=since_us, status=status)
    console.print(f"{len(queued)} webhooks queued again: {', '.join(map(str, queued)) or '-'}")


@app.command("settings")
def show_settings() -> None:
    """The settings in force (secrets hidden) and where they come from."""
    from bespoke.settings import get_settings

    settings = get_settings()
    table = Table("setting", "value", header_style="bold")
    for name, value in settings.model_dump().items():
        shown = str(value)
        if name == "hmac_key":
            shown = "(set)" if value else f"(generated once in {settings.hmac_key_file})"
        table.add_row(f"BESPOKE_{name.upper()}", shown)
    console.print(table)


def _protocols_table(served: pd.DataFrame, published: pd.DataFrame) -> Table:
    """Held-out nDCG@10 and P@10 of each family under both protocols, and what was
    registered (from the temporal selection)."""
    frame = pd.DataFrame(
        {
            "model": served["model"],
            "temporal ndcg@10": served["ndcg@10"],
            "temporal p@10": served["precision@10"],
            "ms-stratified ndcg@10": published["ndcg@10"].to_numpy(),
            "ms-stratified p@10": published["precision@10"].to_numpy(),
            "registered": [f"v{v} (all data)" for v in served["version"]],
            "champion": served["champion"],
        }
    )
    return _table("ML-100K held-out (k = 10)", frame.round(4))


@app.command("demo")
def demo() -> None:
    """The main job end to end on the embedded defaults (what ``make demo`` runs)."""
    import time

    started = time.perf_counter()
    console.rule("[bold]1. Ingest MovieLens 100K and CDNOW into the event lake")
    _builtin("movielens-100k", None, None)
    _builtin("cdnow", None, None)
    console.rule("[bold]2. Data report")
    data_report(None)

    from bespoke.settings import get_settings
    from bespoke.training.params import params_file_of, tuned_params
    from bespoke.training.train import compare_recommenders
    from bespoke.training.tune import tune_ranker, tune_recommender

    settings = get_settings()
    params_file = params_file_of(settings)
    console.rule("[bold]3. Tune EASE briefly on a validation split (Optuna, tracked in MLflow)")
    with _clear_errors():
        tuned = tune_recommender(settings, "ml-100k", "ease", 5, register=False)
    console.print(f"best validation nDCG@10 {tuned.best_value:.4f} with {tuned.best_params}")
    console.rule(
        "[bold]4. Select on held-out data (temporal), refit on all data, register; "
        "the best becomes @champion"
    )
    candidates = {
        "popularity": {},
        "ease": tuned.best_params,
        "als": tuned_params(params_file, "ml-100k", "temporal", "als"),
    }
    with _clear_errors(), console.status("three families: fit, evaluate, refit, register"):
        served = compare_recommenders(settings, "ml-100k", candidates)
        published = compare_recommenders(
            settings, "ml-100k", candidates, protocol="ms-stratified", register=False
        )
    console.print(_protocols_table(served, published))
    console.print(
        "temporal: each person's next interactions after the cut (what the service faces); "
        "the registered models are then refit on all 100,000 ratings. MS-stratified: "
        "Microsoft Recommenders' random split, for published figures (best there: BiVAE "
        "nDCG@10 0.475, P@10 0.412, data README).",
        soft_wrap=True,
    )
    console.rule(
        "[bold]5. Rerank EASE's top 100: tune the click-through ranker briefly, refit, gate"
    )
    with _clear_errors(), _progress() as update:
        tuned_ranker = tune_ranker(settings, "ml-100k", 3, callback=update)
    console.print(
        f"{tuned_ranker.trials} trials in the study; best validation reranked nDCG@10 "
        f"{tuned_ranker.best_value:.4f}"
    )
    if (ranker := tuned_ranker.final) is not None:
        console.print(_lift_table(ranker, "ml-100k"))
        console.print(_objective_line(ranker))
        console.print(_gate_line(ranker))
    models_list()
    profiles_seed("ml-100k", None)  # `make serve` knows every ML-100K person from the start
    uri = settings.mlflow_tracking_uri
    console.print(
        f"MLflow runs: {uri} (experiments recommenders-ml-100k, rankers-ml-100k); "
        f"browse them with [bold]mlflow ui --backend-store-uri {uri}[/]",
        soft_wrap=True,
    )
    console.rule("[bold]6. Drift report: ML-100K's first two months against its last two")
    from bespoke.monitoring.drift import run_drift
    from bespoke.monitoring.drift_cli import print_result

    with _clear_errors():
        drift = run_drift(settings, "ml-100k", "1997-09-20..1997-11-19", "last 60 days")
    print_result(drift, console)
    console.print(
        "The same from the shell (exit 0 no drift, 1 drift, 2 error): [bold]bespoke monitor "
        "drift --dataset ml-100k --reference 1997-09-20..1997-11-19 --current 'last 60 days'[/]",
        soft_wrap=True,
    )
    console.rule("[bold]7. The service: a page for person 1, two events, the page again")
    from bespoke.features.lake import Lake
    from bespoke.serving.local import round_trip
    from bespoke.training.data import load_catalog

    with _clear_errors(), console.status("starting bentoml serve on a free loopback port…"):
        trip = round_trip(settings, "ml-100k", person="1")
    console.print(_round_trip_table(trip, load_catalog(Lake(settings.lake_url), "ml-100k")))
    console.print(
        f"{trip.accepted} events accepted at {trip.url}/v1/events; the rated films left the "
        "page at once. Serve it yourself with [bold]make serve[/] and a key from "
        "[bold]bespoke keys create --name me[/].",
        soft_wrap=True,
    )
    console.print(f"demo done in {time.perf_counter() - started:.0f} s")


def _round_trip_table(trip: Any, catalog: pd.DataFrame) -> Table:
    titles = dict(zip(catalog["item_id"].astype(str), catalog["title"], strict=True))
    rated = {event["item_id"] for event in trip.events}
    pages = [answer["slots"][0]["items"] for answer in (trip.before, trip.after)]
    reasons = sorted({item["reason"] for page in pages for item in page})
    table = Table("#", "before", "after two ratings of 5", header_style="bold",
                  title=f"/v1/personalize for person {trip.person}", title_justify="left",
                  caption=f"reason: {', '.join(reasons)}", caption_justify="left")  # fmt: skip
    for n, (first, second) in enumerate(zip(*pages, strict=False), start=1):
        mark = " [dim](rated 5)[/]" if first["item_id"] in rated else ""
        table.add_row(str(n), titles.get(first["item_id"], first["item_id"]) + mark,
                      titles.get(second["item_id"], second["item_id"]))  # fmt: skip
    return table


def main() -> None:  # pragma: no cover - console entry point
    app()
