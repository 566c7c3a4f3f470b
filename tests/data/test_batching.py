"""How a step's samples divide over processes (data/batching.py:process_shares)."""

from __future__ import annotations

import random

import pytest

from medtune.data.batching import process_shares


def test_every_sample_goes_to_exactly_one_process_in_the_steps_order():
    lengths = [random.Random(7).randint(50, 2000) for _ in range(17)]
    shares = process_shares(lengths, 3)
    assert sorted(i for share in shares for i in share) == list(range(17))
    assert all(share == sorted(share) for share in shares)
    assert sorted(len(share) for share in shares) == [5, 6, 6]


def test_one_process_trains_the_whole_step_in_order():
    assert process_shares([5, 900, 3], 1) == [[0, 1, 2]]


def test_tokens_are_balanced_where_round_robin_is_not():
    # round-robin would give process 0 the three long samples and process 1 only short ones: 3,010 against 40
    lengths = [1000, 10, 1000, 10, 1000, 10, 10, 10]
    shares = process_shares(lengths, 2)
    tokens = [sum(lengths[i] for i in share) for share in shares]
    assert sorted(tokens) == [1030, 2020]
    assert [len(share) for share in shares] == [4, 4]


@pytest.mark.parametrize("processes", [2, 4])
def test_the_busiest_process_is_within_one_sample_of_the_mean(processes):
    rng = random.Random(processes)
    for _ in range(50):
        lengths = [rng.randint(100, 3000) for _ in range(16)]
        tokens = [sum(lengths[i] for i in share) for share in process_shares(lengths, processes)]
        assert max(tokens) - sum(lengths) / processes <= max(lengths)
        assert all(len(share) == 16 // processes for share in process_shares(lengths, processes))


def test_fewer_samples_than_processes_leave_the_last_ones_empty_but_lose_none():
    assert process_shares([300, 100], 3) == [[0], [1], []]
