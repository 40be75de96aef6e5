"""The flow-tracker's capture-order merge (services/flowtracker/merge.py), compiled or not: what
it refuses, the order it releases records in, and the packet time it says it has passed."""

from __future__ import annotations

import pytest

from services.flowtracker.merge import CaptureOrderMerge


def _recs(*pairs):
    """Records as (packet number, packet time, ...) tuples, as the merge reads them."""
    return [(num, ts, "rest") for num, ts in pairs]


@pytest.mark.parametrize(
    "bad",
    [
        _recs((3, 1.0), (2, 1.1)),  # numbers going back
        _recs((3, 1.0), (3, 1.1)),  # a number twice
        [(3, 1.0), ("4", 1.1)],  # not an integer
        [(3, 1.0), ()],  # no number at all
        [(3, 1.0), None],
    ],
)
def test_a_frame_whose_numbers_do_not_increase_is_refused_whole(bad):
    merge = CaptureOrderMerge(1)
    merge.add("d0", _recs((1, 0.5)))
    with pytest.raises(ValueError):
        merge.add("d0", bad)
    assert merge.buffered == 1 and merge.reached["d0"] == 1


def test_two_inputs_leave_in_number_order_up_to_what_both_reached():
    merge = CaptureOrderMerge(2)
    merge.add("d0", _recs((1, 1.0), (4, 4.0), (6, 6.5)))
    assert merge.release() == []  # d1 has said nothing yet
    merge.add("d1", _recs((2, 2.0), (3, 3.0), (5, 5.0)))
    out = merge.release()
    assert [r[0] for r in out] == [1, 2, 3, 4, 5]  # d1 reached 5: 6 waits
    assert merge.watermark == 5.0
    merge.finish("d1")
    assert [r[0] for r in merge.release()] == [6]
    assert merge.watermark == 6.5


def test_the_watermark_is_the_latest_time_released_not_the_last_record_s():
    merge = CaptureOrderMerge(1)
    merge.add("d0", _recs((1, 10.0), (2, 12.0), (3, 11.0)))  # capture's own times go back once
    merge.release()
    assert merge.watermark == 12.0
    merge.add("d0", _recs((4, 11.5)))
    merge.release()
    assert merge.watermark == 12.0
