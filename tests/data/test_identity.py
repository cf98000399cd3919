"""Identity resolution on real data: FEBRL record linkage with Splink (threshold chosen
without labels, labels used only to score), and stitching of the seeded cross-channel
overlay on ML-100K's real behaviour."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bespoke.features import collect, sources
from bespoke.features.lake import Lake
from bespoke.features.sources import ColumnMapping
from bespoke.identity.build import build_graph, join_records, load_graph
from bespoke.identity.evaluate import link_scores, pairwise_scores, score_graph
from bespoke.identity.graph import IdentityGraph, parse_node
from bespoke.identity.matching import RecordMapping, match_records, read_records, resolve_records
from bespoke.identity.overlay import build_crm_export, build_overlay
from bespoke.identity.vault import Vault

FEBRL = RecordMapping(
    record_id="rec_id", given_name="given_name", surname="surname",
    street_number="street_number", address="address_1", address_2="address_2",
    city="suburb", postcode="postcode", state="state", date_of_birth="date_of_birth",
    date_format="%Y%m%d", national_id="soc_sec_id",
)  # fmt: skip


def _person(ids: pd.Series) -> pd.Series:
    return ids.str.extract(r"rec-(\d+)-")[0]


def test_febrl4_links_originals_to_duplicates(datasets_dir: Path) -> None:
    folder = datasets_dir / "febrl"
    a = read_records(folder / "dataset4a.csv", FEBRL)
    b = read_records(folder / "dataset4b.csv", FEBRL)
    result = match_records([a, b], link_type="link_only")
    truth = {frozenset((f"rec-{n}-org", f"rec-{n}-dup-0")) for n in _person(a["record_id"])}
    found = {
        frozenset(p)
        for p in zip(result.links["record_id_l"], result.links["record_id_r"], strict=True)
    }
    scores = link_scores(found, truth)
    assert scores["f1"] >= 0.999, scores
    assert 0.5 < result.threshold < 1  # chosen from the model, not from the labels
    assert (result.review["probability"] < result.threshold).all()


def test_febrl3_deduplicates_into_people(datasets_dir: Path) -> None:
    records = read_records(datasets_dir / "febrl" / "dataset3.csv", FEBRL)
    result = match_records([records])
    clusters = result.clusters
    assert len(clusters) == 5000
    scores = pairwise_scores(clusters["cluster_id"], _person(clusters["record_id"]))
    assert scores["f1"] >= 0.998, scores


@pytest.fixture(scope="module")
def overlay_100k(datasets_dir: Path) -> pd.DataFrame:
    return build_overlay(sources.movielens_100k(datasets_dir / "ml-100k").events)


def test_the_overlay_is_seeded_and_keeps_the_truth(
    datasets_dir: Path, overlay_100k: pd.DataFrame
) -> None:
    again = build_overlay(sources.movielens_100k(datasets_dir / "ml-100k").events)
    pd.testing.assert_frame_equal(overlay_100k, again)
    assert len(overlay_100k) == 100_000 and overlay_100k["true_person"].nunique() == 943
    shares = overlay_100k["channel"].value_counts(normalize=True)
    assert 0.45 < shares["web"] < 0.65 and 0.05 < shares["email"] < 0.15
    # Raw ids split people: a system without identity sees more "people" than there are.
    assert overlay_100k["raw_id"].nunique() > 1.5 * 943


def test_stitching_the_overlay_merges_no_two_people(overlay_100k: pd.DataFrame) -> None:
    graph = IdentityGraph("ml-100k")
    graph.observe_events(overlay_100k)
    scores = score_graph(graph, overlay_100k)
    assert scores["over_merges"] == 0
    assert scores["precision"] >= 0.995, scores
    # Everything the evidence links is linked; the rest were never seen with a login.
    assert scores["recall_reachable"] >= 0.99, scores
    assert scores["persons"] < overlay_100k["raw_id"].nunique()


def test_customer_records_join_the_graph_and_only_the_vault_holds_raw_values(
    datasets_dir: Path, tmp_path: Path, lake: Lake, key: bytes
) -> None:
    """FEBRL3's 5,000 records as a CRM export (with e-mails made from the names, so typos
    carry over); one of its people has logged in on the shop with their e-mail."""
    records = pd.read_csv(datasets_dir / "febrl" / "dataset3.csv", dtype=str, skipinitialspace=True)
    records.columns = [c.strip() for c in records.columns]
    records = records.apply(lambda c: c.str.strip())
    records["email"] = (
        records["given_name"].fillna("x") + "." + records["surname"].fillna("y") + "@example.org"
    )
    crm = tmp_path / "crm.tsv"
    records.to_csv(crm, sep="\t", index=False)
    numbers = records["rec_id"].str.split("-").str[1]
    number = numbers.value_counts().index[0]  # the person with the most duplicates
    original = records[records["rec_id"] == f"rec-{number}-org"].iloc[0]
    events = tmp_path / "events.csv"
    events.write_text(
        f"user,cookie,mail,item,ts\nshopper-1,c1,{original['email']},i1,2024-01-01T10:00:00Z\n"
    )
    mapping = ColumnMapping(user_id="user", anonymous_id="cookie", email="mail", item_id="item",
                            timestamp="ts", event_type_constant="view",
                            default_consent=["personalization"])  # fmt: skip
    collect.ingest(sources.interactions_file(events, mapping, "shop"), lake, key)
    build_graph(lake, "shop", key)
    vault = Vault(tmp_path / "vault", tmp_path / "vault.key")
    fields = FEBRL.model_copy(update={"email": "email"})
    result = resolve_records(
        [crm], fields, dataset="shop", lake=lake, key=key, vault=vault, out_dir=tmp_path / "out"
    )
    graph = load_graph(lake, "shop", key)
    shopper = graph.person_of(parse_node("user_id:shopper-1"))
    same = records[records["rec_id"].str.startswith(f"rec-{number}-")]["rec_id"]
    assert len(same) >= 2
    assert {graph.person_of(parse_node(f"crm_id:{r}")) for r in same} == {shopper}
    others = records[~records["rec_id"].isin(same)]["rec_id"].head(200)
    assert shopper not in {graph.person_of(parse_node(f"crm_id:{r}")) for r in others}
    assert set(vault.get(shopper)) == set(same)
    assert vault.get(shopper)[original["rec_id"]]["surname"] == original["surname"].lower()
    surnames = [s.encode() for s in records["surname"].dropna().unique() if len(s) > 6][:50]
    for path in [
        *lake.files("identity_graph"),
        *lake.files("identity_links"),
        *result.outputs.values(),
    ]:
        content = Path(path).read_bytes()
        assert not any(s in content for s in surnames), path
    assert result.match.threshold > 0.5 and len(result.match.links) > 2500


def test_the_overlays_crm_export_joins_the_right_people(
    datasets_dir: Path, overlay_100k: pd.DataFrame
) -> None:
    names = pd.read_csv(datasets_dir / "febrl" / "dataset4a.csv", dtype=str, skipinitialspace=True)
    names.columns = [c.strip() for c in names.columns]
    names = names[["given_name", "surname"]].apply(lambda c: c.str.strip())
    crm = build_crm_export(overlay_100k, names)
    pd.testing.assert_frame_equal(crm, build_crm_export(overlay_100k, names))  # seeded
    twins = crm[crm["true_person"].duplicated(keep=False)].sort_values("true_person")
    assert len(twins) > 100
    first, second = twins.groupby("true_person").nth(0), twins.groupby("true_person").nth(1)
    assert (first["email"].to_numpy() != second["email"].to_numpy()).mean() > 0.3  # typo'd
    graph = IdentityGraph("ml-100k")
    graph.observe_events(overlay_100k)
    result = match_records([crm.rename(columns={"crm_id": "record_id"})])
    links = result.links.rename(columns={"record_id_l": "crm_id_l", "record_id_r": "crm_id_r"})
    join_records(
        graph,
        pd.DataFrame(
            {"crm_id": crm["crm_id"], "identifier_type": "email", "identifier": crm["email"]}
        ),
        links.assign(evidence="records"),
    )
    scores = score_graph(graph, overlay_100k, crm)
    assert scores["over_merges"] == 0 and scores["precision"] >= 0.995, scores
    # Every CRM record, typo'd e-mail or not, is its account's person.
    account = {
        person: graph.person_of(parse_node(f"user_id:{person}"))
        for person in overlay_100k["user_id"].dropna().unique()
    }
    joined = [
        graph.person_of(parse_node(f"crm_id:{c}")) == account[t]
        for c, t in zip(crm["crm_id"], crm["true_person"], strict=True)
    ]
    assert sum(joined) / len(joined) >= 0.99
