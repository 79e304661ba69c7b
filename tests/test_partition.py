"""Partitions: the server's FNV-1a mapping, and rendezvous ownership among engines."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagnats.domain.partition import assignment, fnv1a32, owner_of, partition_of

ENGINE = st.text(alphabet="abcdef0123456789-", min_size=1, max_size=12)


def test_fnv1a32_matches_the_published_test_vectors():
    # FNV-1a 32-bit vectors (Landon Curt Noll's reference test suite).
    assert fnv1a32("") == 0x811C9DC5
    assert fnv1a32("a") == 0xE40C292C
    assert fnv1a32("foobar") == 0xBF9CF968


def test_partition_of_matches_what_the_server_filed_runs_under():
    # Observed on nats-server 2.15.1 with the transform inbox.* -> inbox.{{partition(4,1)}}.{{wildcard(1)}}
    # (tests/test_resources.py checks the same against a live server for the engine's stream).
    seen = {"run0": 2, "run1": 1, "run2": 0, "run3": 3, "run4": 2, "run5": 1, "runA": 1}
    assert {run: partition_of(run, 4) for run in seen} == seen


def test_a_partition_count_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        partition_of("r", 0)


def test_no_engine_owns_nothing_and_one_engine_owns_everything():
    assert owner_of(3, []) is None
    assert set(assignment(16, ["e1"]).values()) == {"e1"}


@given(st.lists(ENGINE, min_size=1, max_size=6, unique=True), st.permutations(range(6)))
def test_every_engine_computes_the_same_owners_whatever_order_it_lists_members_in(engines, order):
    shuffled = [engines[i] for i in order if i < len(engines)]
    assert assignment(32, engines) == assignment(32, shuffled)


@given(st.lists(ENGINE, min_size=2, max_size=6, unique=True))
def test_an_engine_leaving_moves_only_its_own_partitions(engines):
    before = assignment(64, engines)
    gone = engines[0]
    after = assignment(64, engines[1:])
    for partition, owner in before.items():
        if owner != gone:
            assert after[partition] == owner
        else:
            assert after[partition] in engines[1:]


def test_partitions_spread_over_engines():
    counts = Counter(assignment(256, [f"engine-{i}" for i in range(3)]).values())
    assert len(counts) == 3 and min(counts.values()) >= 256 // 3 // 2
