"""Tune a recommender with Optuna: seeded TPE over the family's search space, scored on a
validation split carved from the training part (the test part is never seen), pruned
through the models' fit callbacks, every trial a nested MLflow run.

The best parameters are merged into the tuned-parameters file (the packaged
``bespoke/training/tuned_params.json`` by default, see :mod:`bespoke.training.params`)
that training, the benchmarks and ``make demo`` read; then the model is refit with them
and goes through the same registration and champion gate as ``bespoke train``.

The click-through ranker is tuned the same way (:func:`tune_ranker`): its candidates and
features are prepared once, each trial is one LightGBM fit early-stopped and pruned on
the validation people's nDCG@10, and the best parameters go under the ``"ranker"`` key.

**Where studies live, who runs trials.** Studies are kept in ``optuna_storage_url``
(:func:`study_storage`: a SQLite file under ``mlruns/`` by default, PostgreSQL to share
them). ``workers=N`` (either tuning) runs the trials in N processes on the one study,
the trials split between them; several hosts join the same study by running ``bespoke
tune`` over the same data (the study's name holds its fingerprint) with the same
PostgreSQL storage URL, each host's best being the whole study's best.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bespoke.engine.engines import open_engine
from bespoke.privacy.gate import consented_lake
from bespoke.settings import SQLITE_PREFIX, Settings
from bespoke.training import ranking, tracking
from bespoke.training.data import Interactions, load_interactions
from bespoke.training.evaluate import evaluate
from bespoke.training.families import family
from bespoke.training.params import RANKER, params_file_of, tuned_params, write_params
from bespoke.training.ranker import OBJECTIVES
from bespoke.training.ranking import RankerResult, RankingData
from bespoke.training.registry import experiment_name
from bespoke.training.split import Protocol, Split, make_split, validation
from bespoke.training.train import GATE_METRIC, TrainResult, train_recommender

#: Each family's search space: trial -> parameters.
SearchSpace = Callable[[Any], dict[str, Any]]
SEARCH_SPACES: dict[str, SearchSpace] = {
    "popularity": lambda trial: {},
    "ease": lambda trial: {
        "l2": trial.suggest_float("l2", 10.0, 5000.0, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.9),
    },
    "als": lambda trial: {
        "factors": trial.suggest_categorical("factors", [16, 32, 64, 128]),
        "regularization": trial.suggest_float("regularization", 1e-3, 10.0, log=True),
        "alpha": trial.suggest_float("alpha", 0.1, 50.0, log=True),
        "iterations": trial.suggest_int("iterations", 5, 30),
    },
    "itemknn": lambda trial: {
        "similarity": trial.suggest_categorical("similarity", ["cosine", "bm25"]),
        "neighbours": trial.suggest_int("neighbours", 10, 500, log=True),
        "bm25_k1": trial.suggest_float("bm25_k1", 0.5, 3.0),
        "bm25_b": trial.suggest_float("bm25_b", 0.0, 1.0),
    },
    "bpr": lambda trial: {
        "factors": trial.suggest_categorical("factors", [16, 32, 64, 128]),
        "learning_rate": trial.suggest_float("learning_rate", 1e-3, 5e-2, log=True),
        "regularization": trial.suggest_float("regularization", 1e-4, 1e-1, log=True),
        "iterations": trial.suggest_int("iterations", 20, 200),
    },
    # MLlib scales the ridge term by each row's interaction count: smaller values than als'.
    "spark-als": lambda trial: {
        "factors": trial.suggest_categorical("factors", [16, 32, 64, 128]),
        "regularization": trial.suggest_float("regularization", 1e-3, 1.0, log=True),
        "alpha": trial.suggest_float("alpha", 0.1, 50.0, log=True),
        "iterations": trial.suggest_int("iterations", 5, 30),
    },
}
#: Families a tuned blend draws on, each with the parameters tuning found for it.
BLENDED = ("ease", "als", "itemknn")


def blend_space(params_file: Path, dataset: str, protocol: str) -> SearchSpace:
    """A hybrid's search space: a weight per family already tuned for this dataset and
    protocol (their parameters fixed as tuned); tune those families first."""
    components = {
        name: tuned_params(params_file, dataset, protocol, name)
        for name in BLENDED
        if tuned_params(params_file, dataset, protocol, name)
    }
    if len(components) < 2:
        raise ValueError(
            f"a blend needs at least two tuned families in {params_file} for {dataset} "
            f"({protocol}); tune {' and '.join(BLENDED)} first"
        )

    def space(trial: Any) -> dict[str, Any]:
        weights = {name: trial.suggest_float(f"weight_{name}", 0.0, 1.0) for name in components}
        return {"components": components, "weights": weights}

    return space


#: How often (in fit iterations) an iterative model reports its validation metric.
REPORT_EVERY = 5


@dataclass
class TuneResult:
    model_name: str
    best_params: dict[str, Any]
    best_value: float
    trials: int
    pruned: int
    final: TrainResult | RankerResult | None
    #: The Optuna study (``optuna.load_study(study_name=…, storage=storage)``).
    study_name: str = ""
    storage: str = ""


#: Seconds between a running trial's heartbeats, and without one before it counts as dead.
HEARTBEAT_S = 30
HEARTBEAT_GRACE_S = 120


def study_storage(settings: Settings) -> str:
    """Where the Optuna studies are kept: ``settings.optuna_storage_url``, by default
    ``sqlite:///<root>/mlruns/optuna.db`` (a SQLite file's folder is created here)."""
    url = settings.optuna_storage_url or f"{SQLITE_PREFIX}{settings.root / 'mlruns' / 'optuna.db'}"
    if url.startswith(SQLITE_PREFIX):
        Path(url.removeprefix(SQLITE_PREFIX)).parent.mkdir(parents=True, exist_ok=True)
    return url


def shown_storage(url: str) -> str:
    """``url`` with its password (if any) hidden, for messages and logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _open_study(study_name: str, storage: str, sampler: Any, pruner: Any, *, create: bool) -> Any:
    """The study, created when missing (``create``) or loaded; a storage that cannot be
    reached is a clear error naming the setting."""
    import optuna
    from sqlalchemy.exc import OperationalError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Processes sharing a SQLite file take turns on its lock: wait for it longer than
    # SQLite's 5 s, which a loaded machine can exceed.
    options = {"connect_args": {"timeout": 60}} if storage.startswith(SQLITE_PREFIX) else {}
    try:
        # Every running trial beats a heartbeat; a trial whose worker died (a killed
        # process, a lost host) stops beating and is marked failed by the next worker
        # that asks for a trial, instead of staying RUNNING for ever.
        with warnings.catch_warnings():  # "experimental" since Optuna 2.9, unchanged since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            rdb = optuna.storages.RDBStorage(storage, engine_kwargs=options,
                                             heartbeat_interval=HEARTBEAT_S,
                                             grace_period=HEARTBEAT_GRACE_S)  # fmt: skip
        if create:
            return optuna.create_study(
                study_name=study_name, storage=rdb, load_if_exists=True,
                direction="maximize", sampler=sampler, pruner=pruner,
            )  # fmt: skip
        return optuna.load_study(study_name=study_name, storage=rdb, sampler=sampler, pruner=pruner)
    except OperationalError as error:
        raise ValueError(
            f"the study storage {shown_storage(storage)} (BESPOKE_OPTUNA_STORAGE_URL) cannot "
            f"be used: {str(error.orig).strip()}"
        ) from error


def _sampler(seed: int, concurrent: bool) -> Any:
    """Seeded TPE; with other processes running trials on the study at once, it counts
    their running trials as scoring badly ("constant liar") so that it does not propose
    what they are trying already."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, constant_liar=concurrent)


def _pruner(warmup_steps: int = REPORT_EVERY) -> Any:
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup_steps)


def search_space(
    model_name: str, dataset: str, protocol: str, params_file: Path | None = None
) -> SearchSpace:
    """The family's search space (a blend's: weights over the families tuned in
    ``params_file``); a family without one is refused."""
    space = SEARCH_SPACES.get(model_name)
    if model_name == "hybrid" and params_file is not None:
        space = blend_space(params_file, dataset, protocol)
    if space is None:
        raise ValueError(
            f"no search space for {model_name!r}; tunable: {', '.join(sorted(SEARCH_SPACES))}"
        )
    return space


def worker_id() -> str:
    """Who ran a trial (its ``worker`` attribute): this host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def trial_shares(trials: int, workers: int) -> list[int]:
    """``trials`` split between at most ``workers`` processes, as evenly as can be (none
    gets zero: there are never more processes than trials, and always one)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    count = max(1, min(workers, trials))
    return [trials // count + (index < trials % count) for index in range(count)]


@dataclass(frozen=True)
class _Share:
    """One process's part of a study, pickled to it: where the study and the runs are,
    how many trials it runs, its seed, and the parent run its trials nest under."""

    settings: Settings
    study_name: str
    storage: str
    trials: int
    seed: int
    parent_id: str


@dataclass(frozen=True)
class _RecommenderJob:
    """A recommender family's trials on the validation split."""

    share: _Share
    model_name: str
    dataset: str
    protocol: str
    params_file: Path | None
    inner: Split
    k: int

    def run(self) -> int:
        share = self.share
        space = search_space(self.model_name, self.dataset, self.protocol, self.params_file)
        study = _open_study(
            share.study_name, share.storage, _sampler(share.seed, True), _pruner(), create=False
        )
        experiment_of = experiment_name("recommender", self.dataset)
        with tracking.session(share.settings, experiment_of) as experiment:
            study.optimize(
                lambda trial: _objective(
                    trial, self.model_name, space, self.inner, self.k, experiment, share.parent_id
                ),
                n_trials=share.trials,
            )
        return share.trials


@dataclass(frozen=True)
class _RankerJob:
    """The click-through ranker's trials on a prepared fit stage."""

    share: _Share
    data: RankingData
    stage: str

    def run(self) -> int:
        import mlflow

        share = self.share
        study = _open_study(
            share.study_name, share.storage, _sampler(share.seed, True),
            _pruner(RANKER_WARMUP_ROUNDS), create=False,
        )  # fmt: skip
        with tracking.session(share.settings, experiment_name("ranker", self.data.dataset)) as exp:
            mlflow.lightgbm.autolog(
                log_models=False, log_datasets=False, log_input_examples=False, silent=True
            )
            try:
                study.optimize(
                    lambda trial: _ranker_objective(
                        trial, self.data, self.stage, exp, share.parent_id
                    ),
                    n_trials=share.trials,
                )
            finally:
                mlflow.lightgbm.autolog(disable=True)
        return share.trials


def _run_job(job: _RecommenderJob | _RankerJob) -> int:
    return job.run()


def _run_in_processes(jobs: list[_RecommenderJob] | list[_RankerJob]) -> None:
    """Run the jobs in as many fresh processes at once; the first failure is raised
    after all have ended.

    With SQLite storage too: Optuna and MLflow wait on SQLite's lock and hold it for
    milliseconds between trials of seconds, so a few processes on one machine take
    turns; PostgreSQL is for more of them, or several hosts."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # Spawned, not forked: a forked child would inherit the parent's open database
    # connections (Optuna's and MLflow's SQLAlchemy pools) and share them mid-conversation.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=context) as pool:
        list(pool.map(_run_job, jobs))


def tune_recommender(
    settings: Settings,
    dataset: str,
    model_name: str,
    trials: int,
    *,
    protocol: Protocol = "temporal",
    seed: int = 42,
    k: int = 10,
    params_file: Path | None = None,
    register: bool = True,
    interactions: Interactions | None = None,
    split: Split | None = None,
    show_progress: bool = False,
    workers: int = 1,
) -> TuneResult:
    """Run ``trials`` Optuna trials for ``model_name`` on ``dataset``; see the module doc.

    ``split`` (default: the protocol's split of the dataset) is the outer split: only its
    training part is read by the trials. ``workers`` > 1 runs the trials in that many
    processes at once on the one study (each with its own seed: ``seed``, ``seed + 1``…,
    so the study is no longer repeatable trial for trial); the best trial of the whole
    study is then written down and registered as with one.
    """
    import mlflow
    import optuna

    family(model_name)  # an unknown family fails before anything runs
    shares = trial_shares(trials, workers)
    if split is not None:
        protocol = split.protocol  # the parameters are filed under the split's protocol
    space = search_space(model_name, dataset, protocol, params_file)
    if split is None:
        if interactions is None:
            lake = consented_lake(settings)
            interactions = load_interactions(lake, dataset, engine=open_engine(settings, lake))
        split = make_split(interactions, protocol)
    inner = validation(split)  # tuning sees only the outer training part
    storage = study_storage(settings)
    # The validation data's fingerprint is in the name: a study is resumed only over the
    # same data, since trials scored on older data (a retrain after new events) are not
    # comparable and their "best" would win on stale numbers. It is also what lets
    # processes and hosts tuning the same data meet in one study.
    study = _open_study(
        f"{dataset}-{model_name}-{protocol}-{inner.train.fingerprint()[:12]}",
        storage,
        _sampler(seed, concurrent=len(shares) > 1),
        _pruner(),
        create=True,
    )
    with (
        tracking.session(settings, experiment_name("recommender", dataset)) as experiment,
        mlflow.start_run(run_name=f"tune {model_name}", experiment_id=experiment) as parent,
    ):
        mlflow.set_tags(
            tracking.run_tags(
                settings,
                dataset=dataset,
                model=model_name,
                protocol=protocol,
                kind="study",
                train_fingerprint=split.train.fingerprint(),
                validation_fingerprint=inner.train.fingerprint(),
            )
        )
        mlflow.log_params(
            {"trials": trials, "seed": seed, "protocol": protocol, "study": study.study_name,
             "workers": len(shares), "study_storage": shown_storage(storage)}
        )  # fmt: skip
        if len(shares) == 1:
            study.optimize(
                lambda trial: _objective(
                    trial, model_name, space, inner, k, experiment, parent.info.run_id
                ),
                n_trials=trials,
                show_progress_bar=show_progress,
            )
        else:
            _run_in_processes(
                [
                    _RecommenderJob(
                        _Share(
                            settings,
                            study.study_name,
                            storage,
                            share,
                            seed + index,
                            parent.info.run_id,
                        ),
                        model_name,
                        dataset,
                        protocol,
                        params_file,
                        inner,
                        k,
                    )
                    for index, share in enumerate(shares)
                ]
            )
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
        best = study.best_trial if complete else None
        # The model's parameters, rebuilt from the trial's (they differ for a blend).
        best_params = space(optuna.trial.FixedTrial(best.params)) if best else {}
        best_value = float(best.value) if best else float("nan")
        mlflow.log_params({f"best.{name}": value for name, value in best_params.items()})
        mlflow.log_metrics(
            {
                f"best_validation_{GATE_METRIC.replace('@', '_at_')}": best_value,
                "pruned_trials": pruned,
            }
        )
    if params_file is not None:
        write_params(
            params_file, dataset, protocol, model_name, best_params, GATE_METRIC, best_value,
            study.study_name,
        )  # fmt: skip
    final = None
    if register:
        final = train_recommender(
            settings,
            dataset,
            model_name,
            best_params,
            protocol=protocol,
            k=k,
            interactions=interactions,
        )
    return TuneResult(
        model_name, best_params, best_value, len(study.trials), pruned, final,
        study.study_name, storage,
    )  # fmt: skip


def _objective(
    trial: Any,
    model_name: str,
    space: SearchSpace,
    inner: Split,
    k: int,
    experiment: str,
    parent_id: str,
) -> float:
    import mlflow
    import optuna

    params = space(trial)
    trial.set_user_attr("worker", worker_id())
    model = family(model_name)(**params)

    def report(iteration: int, metrics: dict[str, float]) -> None:
        if iteration == 0 or (iteration + 1) % REPORT_EVERY:
            return
        value = evaluate(model, inner, k=k)[GATE_METRIC]
        trial.report(value, iteration + 1)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at iteration {iteration + 1} with {value:.4f}")

    with mlflow.start_run(
        run_name=f"trial {trial.number}",
        nested=True,
        parent_run_id=parent_id,
        experiment_id=experiment,
    ):
        mlflow.log_params(params)
        try:
            model.fit(inner.train, callback=report)
        except optuna.TrialPruned:
            mlflow.set_tag("trial.state", "pruned")
            raise
        value = float(evaluate(model, inner, k=k)[GATE_METRIC])
        mlflow.log_metric(f"validation_{GATE_METRIC.replace('@', '_at_')}", value)
        mlflow.set_tag("trial.state", "complete")
    return value


# --- the click-through ranker --------------------------------------------------------

#: What a ranker trial is scored on: validation nDCG@10 after reranking.
RANKER_METRIC = "reranked_ndcg@10"
#: LightGBM rounds before the median pruner may stop a trial.
RANKER_WARMUP_ROUNDS = 10


def ranker_space(trial: Any) -> dict[str, Any]:
    """The ranker's search space: the objective and LightGBM's main parameters."""
    return {
        "objective": trial.suggest_categorical("objective", list(OBJECTIVES)),
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 7, 127, log=True),
        "min_child_samples": trial.suggest_int("min_child_samples", 20, 500, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True),
    }


def ranker_data(
    settings: Settings,
    dataset: str,
    protocol: Protocol = "temporal",
    params_file: Path | None = None,
    n_candidates: int | None = None,
) -> RankingData:
    """The ranker's fit-stage data, its retrievers with the parameters tuning wrote to
    ``params_file`` (default: the settings' tuned-parameters file)."""
    source = params_file or params_file_of(settings)
    retrievers = {
        name: tuned_params(source, dataset, protocol, name) for name in ranking.RETRIEVERS
    }
    return ranking.prepare(
        consented_lake(settings),
        dataset,
        protocol,
        retrievers,
        n_candidates or ranking.N_CANDIDATES,
    )


def tune_ranker(
    settings: Settings,
    dataset: str,
    trials: int,
    *,
    protocol: Protocol = "temporal",
    seed: int = 42,
    params_file: Path | None = None,
    register: bool = True,
    data: RankingData | None = None,
    show_progress: bool = False,
    callback: Callable[[str, int, int], None] | None = None,
    workers: int = 1,
) -> TuneResult:
    """Run ``trials`` Optuna trials of the click-through ranker on ``dataset``.

    The fit stage (``data``, default: prepared here once, retrievers as tuned in
    ``params_file``) is shared by every trial; a trial fits LightGBM on its training people,
    early-stopped and pruned on the validation people's nDCG@10, and scores the validation
    ``reranked_ndcg@10``. Each trial is a nested MLflow run with LightGBM autologging (no
    model logged). The study is resumed when it exists, but the best trial is chosen among
    those on this fit stage (:func:`fit_stage_key`) only. The best parameters are merged
    into ``params_file`` under ``"ranker"``
    and, with ``register``, refit by :func:`~bespoke.training.ranking.train_ranker`, which
    evaluates on the test stage, registers and applies the champion gate.
    ``callback(stage, done, total)`` follows the progress. ``workers`` > 1 runs the trials
    in that many processes at once, as :func:`tune_recommender` does (each is handed the
    prepared fit stage).
    """
    import mlflow
    import optuna

    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    shares = trial_shares(trials, workers)
    report = callback or (lambda stage, done, total: None)
    if data is None:
        report("preparing candidates and features", 0, 1)
        data = ranker_data(settings, dataset, protocol, params_file)
    elif (data.dataset, data.protocol) != (dataset, protocol):
        raise ValueError(
            f"the prepared data is {data.dataset} ({data.protocol}), not {dataset} ({protocol})"
        )
    storage = study_storage(settings)
    study = _open_study(
        f"{dataset}-{RANKER}-{protocol}",
        storage,
        _sampler(seed, concurrent=len(shares) > 1),
        _pruner(RANKER_WARMUP_ROUNDS),
        create=True,
    )
    metric_key = RANKER_METRIC.replace("@", "_at_")
    stage = fit_stage_key(data)
    done = [0]

    def after_trial(study: Any, trial: Any) -> None:
        done[0] += 1
        report("tuning the ranker", done[0], trials)

    with (
        tracking.session(settings, experiment_name("ranker", dataset)) as experiment,
        mlflow.start_run(run_name=f"tune {RANKER}", experiment_id=experiment) as parent,
    ):
        mlflow.set_tags(
            tracking.run_tags(
                settings,
                dataset=dataset,
                model=RANKER,
                protocol=protocol,
                kind="study",
                train_fingerprint=data.split.train.fingerprint(),
                fit_stage=stage,
            )
        )
        mlflow.log_params(
            {"trials": trials, "seed": seed, "protocol": protocol, "study": study.study_name,
             "n_candidates": data.train.n_candidates, "workers": len(shares),
             "study_storage": shown_storage(storage)}
        )  # fmt: skip
        report("tuning the ranker", 0, trials)
        if len(shares) > 1:
            report(f"tuning the ranker in {len(shares)} processes", 0, trials)
            _run_in_processes(
                [
                    _RankerJob(_Share(settings, study.study_name, storage, share, seed + index,
                                      parent.info.run_id), data, stage)
                    for index, share in enumerate(shares)
                ]
            )  # fmt: skip
            report("tuning the ranker", trials, trials)
        else:
            mlflow.lightgbm.autolog(
                log_models=False, log_datasets=False, log_input_examples=False, silent=True
            )
            try:
                study.optimize(
                    lambda trial: _ranker_objective(
                        trial, data, stage, experiment, parent.info.run_id
                    ),
                    n_trials=trials,
                    show_progress_bar=show_progress,
                    callbacks=[after_trial],
                )
            finally:  # autologging is process-wide: leave no stray runs behind
                mlflow.lightgbm.autolog(disable=True)
        # A resumed study may hold trials scored on another fit stage (other retriever
        # parameters): only trials on this one are comparable.
        complete = [
            t
            for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE
            and t.user_attrs.get("fit_stage") == stage
        ]
        pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
        best = max(complete, key=lambda t: t.value) if complete else None
        best_params = ranker_space(optuna.trial.FixedTrial(best.params)) if best else {}
        best_value = float(best.value) if best else float("nan")
        mlflow.log_params({f"best.{name}": value for name, value in best_params.items()})
        mlflow.log_metrics({f"best_validation_{metric_key}": best_value, "pruned_trials": pruned})
    if params_file is not None and best is not None:
        write_params(
            params_file, dataset, protocol, RANKER, best_params, RANKER_METRIC, best_value,
            study.study_name,
        )  # fmt: skip
    final = None
    if register and best is not None:
        report("refitting the best ranker, test stage, registration", 0, 1)
        params = {name: value for name, value in best_params.items() if name != "objective"}
        # The tuned booster and logistic regression compete on validation, as families:
        # a linear reranker can beat a tuned LightGBM (it does on ML-100K).
        final = ranking.train_ranker(
            settings,
            dataset,
            protocol=protocol,
            objective=(best_params["objective"], "logistic"),
            params=params,
            retriever_params=data.retriever_params,
            n_candidates=data.train.n_candidates,
            data=data,
            register=True,
        )
    return TuneResult(
        RANKER, best_params, best_value, len(study.trials), pruned, final,
        study.study_name, storage,
    )  # fmt: skip


def fit_stage_key(data: RankingData) -> str:
    """What makes two ranker trials comparable: the dataset, the protocol's training part,
    the retrievers' parameters and the number of candidates."""
    import hashlib

    key = {
        "dataset": data.dataset,
        "protocol": data.protocol,
        "train": data.split.train.fingerprint(),
        "retrievers": data.retriever_params,
        "candidates": data.train.n_candidates,
        "people": [len(data.train.users), len(data.valid.users)],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _ranker_objective(
    trial: Any, data: RankingData, stage: str, experiment: str, parent_id: str
) -> float:
    import mlflow
    import optuna
    from optuna_integration.lightgbm import LightGBMPruningCallback

    params = ranker_space(trial)
    trial.set_user_attr("fit_stage", stage)
    trial.set_user_attr("worker", worker_id())
    pruning = LightGBMPruningCallback(trial, "ndcg@10", valid_name="valid")
    with mlflow.start_run(
        run_name=f"trial {trial.number}",
        nested=True,
        parent_run_id=parent_id,
        experiment_id=experiment,
    ):
        mlflow.log_params(params)
        start = time.perf_counter()
        try:
            ranker = ranking.fit_ranker(
                data.train, data.valid, data.fit_builder, params, lightgbm_callbacks=[pruning]
            )
        except optuna.TrialPruned:
            mlflow.set_tag("trial.state", "pruned")
            raise
        scores = ranking.evaluate_ranker(ranker, data.valid)
        value = float(scores[RANKER_METRIC])
        mlflow.log_metrics(
            {**tracking.metric_values(scores, "valid."), "fit_s": round(time.perf_counter() - start, 3),
             "best_iteration": ranker.best_iteration_}
        )  # fmt: skip
        mlflow.set_tag("trial.state", "complete")
    return value
