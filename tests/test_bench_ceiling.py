"""scripts/bench_ceiling.py: the core-count prediction obeys the arithmetic it claims, and the
script runs end to end on a small capture (issue 15, acceptance 4)."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.bench_ceiling import SHARDED, ceiling, rate_of

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT.parent / "shared" / "corpus" / "pcaps" / "community-id-ipv4" / "input.pcap"
P = 100_000  # packets in the imagined capture


def even(total: float, counts: tuple[int, ...] = (1, 2, 4, 8, 16)) -> dict[int, list[float]]:
    """A stage whose work splits perfectly: n instances of total/n CPU seconds each."""
    return {n: [total / n] * n for n in counts}


def random_measured(rng: random.Random) -> dict[str, dict[int, list[float]]]:
    """Per-stage CPU with skewed, overhead-carrying splits, as real shards are."""
    out: dict[str, dict[int, list[float]]] = {}
    for stage in ("capture", "decoder", "flowtracker", "detector", "redis"):
        base = rng.uniform(0.05, 1.0)
        out[stage] = {}
        for n in (1, 2, 4, 8, 16):
            weights = [rng.uniform(0.2, 1.0) for _ in range(n)]
            if rng.random() < 0.3:
                weights[0] += rng.uniform(0, n)  # an elephant flow
            s = sum(weights)
            overhead = 1 + 0.02 * (n - 1)
            out[stage][n] = [base * overhead * w / s for w in weights]
    return out


def test_an_unsplittable_stage_sets_the_ceiling_once_cores_are_plenty() -> None:
    measured = {
        "capture": {1: [0.5]},  # only one instance exists
        "decoder": even(2.0),
        "flowtracker": even(1.0),
        "detector": even(0.5),
    }
    plan = ceiling(64, measured, P)
    assert plan.single and plan.limit == "capture"
    assert plan.rate == pytest.approx(P / 0.5)
    # even with every other stage free, one process caps it at packets / its CPU
    assert ceiling(1024, measured, P).rate == pytest.approx(P / 0.5)


def test_a_stage_only_splits_in_the_setups_that_split_it() -> None:
    measured = {"capture": even(0.5), "decoder": even(2.0), "flowtracker": even(1.0), "detector": even(0.5)}
    offline = ceiling(16, measured, P, SHARDED)
    live = ceiling(16, measured, P, (*SHARDED, "capture"))
    assert offline.counts["capture"] == 1 and offline.limit == "capture"
    assert live.counts["capture"] > 1 and live.rate > offline.rate
    assert not live.single


def test_one_core_runs_everything_in_turn() -> None:
    """On one core no split helps: the rate is packets over the least total CPU."""
    rng = random.Random(7)
    for _ in range(20):
        measured = random_measured(rng)
        least = min(sum(sum(m[n]) for m, n in zip(measured.values(), combo, strict=True)) for combo in [(1,) * 5])
        plan = ceiling(1, measured, P, (*SHARDED, "capture", "redis"))
        assert plan.rate == pytest.approx(P / least)
        assert all(n == 1 for n in plan.counts.values())


def test_more_cores_never_lower_the_ceiling_and_never_beat_the_bounds() -> None:
    rng = random.Random(15)
    for _ in range(40):
        measured = random_measured(rng)
        for split in (SHARDED, (*SHARDED, "capture", "redis")):
            last = 0.0
            for cores in range(1, 33):
                plan = ceiling(cores, measured, P, split)
                assert plan.rate >= last * (1 - 1e-12)
                last = plan.rate
                per_stage = {s: measured[s][n] for s, n in plan.counts.items()}
                total = sum(sum(c) for c in per_stage.values())
                busiest = max(max(c) for c in per_stage.values())
                # never above what the cores or the busiest process allow; equal to the tighter
                assert plan.rate <= cores * P / total * (1 + 1e-9)
                assert plan.rate <= P / busiest * (1 + 1e-9)
                assert plan.rate == pytest.approx(min(cores * P / total, P / busiest))
                # the cores each stage keeps busy add up to at most the machine
                assert sum(plan.used.values()) <= cores * (1 + 1e-9)
                # no sharded stage runs more instances than there are cores, the others one
                for stage, n in plan.counts.items():
                    assert n == 1 or (stage in split and n <= cores)


def test_the_busiest_shard_not_the_average_sets_a_sharded_stage() -> None:
    skewed = {n: [1.0 * 0.6] + [0.4 / (n - 1)] * (n - 1) if n > 1 else [1.0] for n in (1, 2, 4, 8, 16)}
    measured = {"capture": {1: [0.01]}, "decoder": skewed}
    plan = ceiling(16, measured, P)
    assert plan.rate == pytest.approx(P / 0.6)  # one shard keeps 60%: 16 cores give 1/0.6, not 16
    assert plan.limit.startswith("decoder (busiest of") and not plan.single
    # and it picks the fewest instances that reach that rate
    assert plan.counts["decoder"] == 2


def test_rate_of_names_the_process_or_the_cores() -> None:
    """Few cores: all busy, named by the stage using most CPU; many: the busiest process's stage."""
    measured = {"a": [1.0], "b": [0.75, 0.75]}
    rate, kind, stage = rate_of(1, measured, P)
    assert (kind, stage) == ("cores", "b") and rate == pytest.approx(P / 2.5)
    rate, kind, stage = rate_of(8, measured, P)
    assert (kind, stage) == ("process", "a") and rate == pytest.approx(P)


@pytest.mark.skipif(not SMALL.exists(), reason="shared corpus not mounted")
def test_the_script_prints_a_ceiling_for_every_core_count() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "scripts.bench_ceiling", str(SMALL), "--runs", "1", "--shards", "1,2,4", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    for stage in ("capture", "decoder", "flowtracker", "detector", "redis"):
        assert re.search(rf"^  {stage} +x1 ", out, re.M), out
    tables = out.split("Predicted ceiling, ")[1:]
    assert len(tables) == 2  # offline and live
    for table in tables:
        for cores in (2, 4, 8, 16):
            row = re.search(rf"^\| {cores} \| ([0-9.]+[kM]) \| ([^|]+) \|", table, re.M)
            assert row, table
