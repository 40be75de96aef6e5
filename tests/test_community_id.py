"""Community ID v1 against the spec's own test vectors (tests/data/community_id_vectors.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.community_id import community_id

VECTORS = json.loads((Path(__file__).parent / "data" / "community_id_vectors.json").read_text())
CASES = [(0, v) for v in VECTORS["seed0"]] + [(1, v) for v in VECTORS["seed1"]]


@pytest.mark.parametrize(("seed", "vector"), CASES)
def test_spec_vector(seed: int, vector: dict) -> None:
    got = community_id(
        vector["proto"], vector["saddr"], vector["daddr"], vector["sport"], vector["dport"], seed=seed
    )
    assert got == vector["communityid"]


def test_both_directions_agree_and_families_must_match() -> None:
    a = community_id(6, "10.0.0.1", "10.0.0.2", 40000, 443)
    assert a == community_id(6, "10.0.0.2", "10.0.0.1", 443, 40000)
    assert a != community_id(17, "10.0.0.1", "10.0.0.2", 40000, 443)
    with pytest.raises(ValueError):
        community_id(6, "10.0.0.1", "::1", 1, 2)


def test_icmp_router_solicitation_and_advertisement_are_one_flow():
    """The spec pairs ICMP types 10 and 9 both ways, as it does echo (8/0): tshark agrees."""
    forward = community_id(1, "192.0.2.1", "192.0.2.2", 10, 0)
    assert forward == community_id(1, "192.0.2.2", "192.0.2.1", 9, 0)
    assert forward != community_id(1, "192.0.2.1", "192.0.2.2", 8, 0)
