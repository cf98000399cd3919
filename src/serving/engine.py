"""What should this person see now: the library behind the service's routes.

The service only parses, calls :class:`Engine` and formats. The engine reuses the
training code's own predict paths — ``RankingPipeline.recommend`` (retrieve + rerank) when
a ranker is there, ``Recommender.recommend_from_history`` otherwise, the popularity
fallback for people with no history — then applies the JSON rules.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from bespoke.experiments.runtime import Treatment
from bespoke.features.build import Profile
from bespoke.serving import rules as rules_engine
from bespoke.training.base import Recommender
from bespoke.training.ranker import RankingPipeline

#: How many more candidates than asked for go through the rules (they may remove some).
HEADROOM = 3


@dataclass
class Recommended:
    item_id: str
    score: float | None
    reason: str


@dataclass
class Answer:
    items: list[Recommended]
    content: list[dict[str, Any]] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    model_version: str = ""


@dataclass
class Models:
    """The @champion models of one dataset, and what identifies them (cache keys)."""

    dataset: str
    #: None for a dataset without a catalog (CDNOW's purchases carry no items): its pages
    #: get rules and content, and recommendation slots come back empty.
    recommender: Recommender | None
    recommender_version: str | None
    pipeline: RankingPipeline | None = None
    ranker_version: str | None = None

    @property
    def version(self) -> str:
        if self.recommender is None:
            return "no-recommender"
        ranker = f"+ranker-v{self.ranker_version}" if self.pipeline is not None else ""
        return f"recommender-v{self.recommender_version}{ranker}"


@dataclass
class Slot:
    """One place on a page: ``recommendations`` (retrieval + ranker + rules) or
    ``content`` (what the rules show there)."""

    id: str
    kind: str = "recommendations"
    k: int = 10
    ranked: bool = True


@dataclass
class SlotAnswer:
    id: str
    kind: str
    items: list[Recommended] = field(default_factory=list)
    content: list[dict[str, Any]] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)


#: Added to the reason when ranking was asked for and no ranker is @champion: the champion
#: gate promotes a ranker only when it beats retrieval alone, so retrieval order is served.
UNRANKED = " (retrieval order: no ranker is @champion)"


class Engine:
    """Recommendations for one person from their live profile, with rules applied."""

    def __init__(
        self,
        models: Models,
        item_categories: Mapping[str, Collection[str]],
        rules: rules_engine.RulesFile | None = None,
        *,
        load_variant: Callable[[Treatment], Models] | None = None,
    ) -> None:
        self.models = models
        self.item_categories = item_categories
        self.rules = rules
        #: Loads the models an experiment variant pins (a recommender version or family).
        self.load_variant = load_variant
        self._variant_models: dict[tuple[str | None, str | None], Models] = {}
        self._variant_rules: dict[str, rules_engine.RulesFile] = {}
        self._lock = threading.Lock()

    def _models_for(self, treatment: Treatment | None) -> Models:
        """The champions, or the models a variant pins (loaded once, then kept)."""
        if treatment is None or (
            treatment.recommender_version is None and treatment.recommender_family is None
        ):
            return self.models
        key = (treatment.recommender_version, treatment.recommender_family)
        found = self._variant_models.get(key)
        if found is None:
            if self.load_variant is None:
                raise RuntimeError("this engine cannot load an experiment variant's models")
            with self._lock:
                found = self._variant_models.get(key)
                if found is None:
                    found = self._variant_models[key] = self.load_variant(treatment)
        return found

    def _rules_for(self, treatment: Treatment | None) -> rules_engine.RulesFile | None:
        """The rules in force, or the rules file a variant names (hot-reloaded too)."""
        if treatment is None or treatment.rules is None:
            return self.rules
        found = self._variant_rules.get(treatment.rules)
        if found is None:
            with self._lock:
                found = self._variant_rules.get(treatment.rules)
                if found is None:
                    found = rules_engine.RulesFile(treatment.rules)
                    self._variant_rules[treatment.rules] = found
        return found

    def recommend(
        self,
        profile: Profile,
        events: Sequence[Mapping[str, Any]],
        *,
        k: int = 10,
        context: Mapping[str, Any] | None = None,
        exclude: Collection[str] = (),
        categories: Collection[str] | None = None,
        now: datetime | None = None,
        slot: str | None = None,
        ranked: bool = True,
        treatment: Treatment | None = None,
        with_experiment_content: bool = True,
    ) -> Answer:
        """The top ``k`` for the person: the recommender's, reranked by the ranker when
        ``ranked`` and one is loaded, then the rules. An experiment's ``treatment`` may
        pin other models, turn the ranker on or off, use other rules and add content."""
        now = now or datetime.now(UTC)
        # one request, one set of models, whatever a swap does meanwhile
        models = self._models_for(treatment)
        if treatment is not None and treatment.ranker is not None:
            ranked = treatment.ranker
        rules = self._rules_for(treatment)
        seen = {str(item) for item in profile.items}
        excluded = seen | set(exclude)
        wanted = k * HEADROOM
        if models.recommender is None:
            items, scores, reason = [], [], "no recommender"
        else:
            items, scores, reason = self._candidates(
                models, profile, wanted, excluded, set(exclude), now, ranked
            )
        if categories:
            chosen = set(categories)
            keep = [i for i, item in enumerate(items)
                    if chosen & set(self.item_categories.get(item, ()))]  # fmt: skip
            items, scores = [items[i] for i in keep], [scores[i] for i in keep]
        reasons = [reason] * len(items)
        answer = Answer(items=[], model_version=models.version)
        if rules is not None:
            decision = self._decision(rules, profile, events, context, now, slot)
            ruled_items, ruled_scores, ruled_reasons = rules_engine.apply(
                decision, items, scores, self.item_categories, exclude=excluded
            )
            by_item = dict(zip(items, reasons, strict=True))
            reasons = [by_item.get(i, r) if r == "model" else r
                       for i, r in zip(ruled_items, ruled_reasons, strict=True)]  # fmt: skip
            items, scores = ruled_items, ruled_scores
            answer.content = _blocks(decision)
            answer.rules = list(decision.rule_ids)
        if treatment is not None and with_experiment_content:
            answer.content += list(treatment.content)
        answer.items = [
            Recommended(item, None if score is None else float(score), why)
            for item, score, why in zip(items[:k], scores[:k], reasons[:k], strict=True)
        ]
        return answer

    def personalize(
        self,
        profile: Profile,
        events: Sequence[Mapping[str, Any]],
        slots: Sequence[Slot],
        *,
        context: Mapping[str, Any] | None = None,
        exclude: Collection[str] = (),
        now: datetime | None = None,
        treatment: Treatment | None = None,
    ) -> list[SlotAnswer]:
        """Every slot of a page, in order. An item shown in one recommendation slot is
        not repeated in a later one. An experiment's content goes to the content slots."""
        now = now or datetime.now(UTC)
        shown = set(exclude)
        answers = []
        rules = self._rules_for(treatment)
        for slot in slots:
            if slot.kind == "content":
                decision = self._decision(rules, profile, events, context, now, slot.id)
                extra = list(treatment.content) if treatment is not None else []
                answers.append(SlotAnswer(slot.id, slot.kind, content=_blocks(decision) + extra,
                                          rules=list(decision.rule_ids)))  # fmt: skip
                continue
            answer = self.recommend(profile, events, k=slot.k, context=context,
                                    exclude=shown, now=now, slot=slot.id,
                                    ranked=slot.ranked, treatment=treatment,
                                    with_experiment_content=False)  # fmt: skip
            shown |= {item.item_id for item in answer.items}
            answers.append(SlotAnswer(slot.id, slot.kind, answer.items, answer.content,
                                      answer.rules))  # fmt: skip
        return answers

    def _decision(
        self,
        rules: rules_engine.RulesFile | None,
        profile: Profile,
        events: Sequence[Mapping[str, Any]],
        context: Mapping[str, Any] | None,
        now: datetime,
        slot: str | None,
    ) -> rules_engine.Decision:
        if rules is None:
            return rules_engine.evaluate((), {}, dict(context or {}), now)
        document = self.profile_document(profile, events, now)
        return rules.current().evaluate(document, dict(context or {}), now, slot=slot)

    def profile_document(
        self, profile: Profile, events: Sequence[Mapping[str, Any]], now: datetime
    ) -> Mapping[str, Any]:
        """What conditions read of the person (rules and experiment targeting alike)."""
        return rules_engine.profile_document(
            profile.attributes,
            events,
            now,
            item_categories=self.item_categories,
            lazy=True,
            scores=profile.scores,
        )

    def _candidates(
        self,
        models: Models,
        profile: Profile,
        n: int,
        excluded: set[str],
        asked: set[str],
        now: datetime,
        ranked: bool,
    ) -> tuple[list[str], list[float], str]:
        """``n`` candidates, none of them ``excluded`` (the history and what the request
        excludes, ``asked``)."""
        assert models.recommender is not None
        if len(profile.items) and ranked and models.pipeline is not None:
            ids, probability = models.pipeline.recommend(
                [profile], k=n, now=np.datetime64(now.replace(tzinfo=None), "us"),
                exclude=list(excluded),
            )  # fmt: skip
            return (*_present(ids[0], probability[0]), "model:ranker")
        if len(profile.items):
            # The history is never recommended: only the request's exclusions are added.
            ids, scores = models.recommender.recommend_from_history(
                profile.items, k=n, exclude=list(asked)
            )
            reason = f"model:{models.recommender.family}"
            if ranked and models.pipeline is None:  # asked for, but no ranker beat retrieval
                reason += UNRANKED
            return (*_present(ids, scores), reason)
        recommender = models.recommender
        order = np.argsort(-recommender.popularity_, kind="stable")
        ids = [
            str(recommender.item_ids_[i]) for i in order if recommender.item_ids_[i] not in excluded
        ]
        popularity = recommender.popularity_ / max(float(recommender.popularity_.max()), 1.0)
        lookup = {str(item): i for i, item in enumerate(recommender.item_ids_)}
        chosen = ids[:n]
        return chosen, [float(popularity[lookup[i]]) for i in chosen], "fallback:popularity"


def _blocks(decision: rules_engine.Decision) -> list[dict[str, Any]]:
    return [
        {"block_id": block.block_id, "payload": block.payload, "rule": block.rule_id}
        for block in decision.content
    ]


def _present(ids: np.ndarray, scores: np.ndarray) -> tuple[list[str], list[float]]:
    keep = [i for i, item in enumerate(ids) if item is not None]
    return [str(ids[i]) for i in keep], [float(scores[i]) for i in keep]
