"""A service restarted within a run (kill -9, crash) carries on from its predecessor, and counts
what was lost in between.

Every stage writes its *progress* after each frame it has handled: the last sequence number
taken from each sender (``seq.<sender>``), its running counters and the next sequence number it
will send (``next_seq``). It goes to a memory-mapped file in the run directory
(shared/progress_file.py: no syscall, and it outlives the writer's kill -9), and with every
stats write to the service's stats hash in Redis too. Without a run directory it goes to the
stats hash after each frame (not waited for; skipped while Redis is out). A restarted
incarnation of the same run reads it back (``resume``), the file over the hash: it continues
the counters, counts ``restarts``, and seeds its gap counter, so
the frames that were queued for the dead process show as ``frames_lost`` on the first frame
after the restart. It numbers its own frames on from ``next_seq``: the next stage then sees a
gap for whatever the dead process had queued but not delivered, and never a number used twice.
That needs to know that the predecessor sent nothing past ``next_seq``: the file says so unless
its last write is a ``handling`` mark (a frame had come in and its sends may have begun); then,
and when only the stats hash is there, the successor starts at ``next_seq + 1``.

What that cautious case cannot tell apart: a frame handled and sent whose progress write the
kill prevented. Its output counts as a lost frame (over-counted by one), while its records, if
they arrived, make the records lost look smaller by as many (at most one frame per restart).
Before the mark (kept since the progress file), a sender killed while idle, having lost
nothing, always showed one frame lost and made a clean replay "incomplete".
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import redis

from shared import stats as stats_module
from shared.frames import SequenceGaps
from shared.progress_file import ProgressFile, read_progress
from shared.stats import ServiceStats

log = logging.getLogger("pktscope.continuity")

# Progress is written after every frame, which exact crash accounting needs: a restarted sender
# numbers its frames from the written ``next_seq`` + 1. Written less often (tried at 10 ms: ~0.3
# CPU s less on the 5x bench capture), that number may be one its predecessor used; the next
# stage then takes the restart for a plain sender restart, and the frames lost with the dead
# process are not counted (tests/test_metrics.py saw no loss). Hence the file, which costs no
# syscall per frame.


def progress_path(run_dir: str | Path, service: str) -> Path | None:
    """Where ``service`` keeps its progress file in ``run_dir`` (None without a run directory)."""
    return Path(run_dir) / "progress" / f"{service}.progress" if run_dir else None


class Continuity:
    def __init__(
        self, stats: ServiceStats, gaps: SequenceGaps, counters: tuple[str, ...], path: Path | None = None
    ) -> None:
        self.stats = stats
        self.gaps = gaps
        self.counters = counters
        self.path = path  # the progress file (progress_path); None: the stats hash only
        self._file: ProgressFile | None = None  # opened at the first progress(), after resume() read it
        self.restarted = False
        self.ended_before = False  # a predecessor of this run had ended the stream (killed after it)
        self.previous: dict[str, str] = {}
        self._next_seq: int | list[int] | None = None  # as last given to progress()
        self._extra: dict[str, int | float | str] = {}
        # the predecessor's last progress came from its file and said it was between frames: it
        # sent nothing past ``next_seq`` (else it may have sent one frame more; see next_seqs)
        self.exact = False

    def resume(self) -> int | None:
        """Take over a predecessor of this run; return the sequence number to send next (None: 0)."""
        st = self.stats
        if st.r is None or not stats_module.RUN_ID:
            return None
        # a service starts beside the private redis-server and may ask before it answers:
        # that is not an outage (it was counted as one)
        st.await_redis(stats_module.READY_WAIT)
        try:
            prev = st.r.hgetall(st.keys.stats(st.service))
        except redis.RedisError:
            st.outages.failed()
            return None
        prev = {_text(k): _text(v) for k, v in prev.items()}
        if prev.get("run_id") != stats_module.RUN_ID:
            return None
        if self.path is not None:
            # the predecessor's last frame: newer than the hash (written each second), if of this run
            latest = read_progress(self.path)
            if latest is not None and latest.get("run_id") == stats_module.RUN_ID:
                prev.update({_text(k): _text(v) for k, v in latest.items()})
                self.exact = not latest.get("in_flight")
        if prev.get("eos"):
            self.ended_before = True
            return None
        self.previous = prev
        self.restarted = True
        for name in self.counters:
            st.c[name] = _count(prev.get(name))
        st.c["restarts"] = _count(prev.get("restarts")) + 1
        st.redis_errors = _count(prev.get("redis_errors"))
        self.gaps.last.update(
            {k[4:]: _count(v) for k, v in prev.items() if k.startswith("seq.") and k[4:]}
        )
        self.gaps.lost = _count(prev.get("frames_lost"))
        log.warning(
            "%s: restarted within run %s (pid %s before); carrying on its counters",
            st.service,
            stats_module.RUN_ID,
            prev.get("pid", "?"),
        )
        nxt = prev.get("next_seq")
        return _count(nxt) + self._skip() if nxt is not None else None

    def _skip(self) -> int:
        """How far past the predecessor's ``next_seq`` a successor starts numbering: 0 when its
        progress file says it was between frames (it sent nothing past it), else 1, in case it
        sent a frame its progress does not show (the receiver then sees a gap for a frame that
        may have arrived: loss over-counted by one, never a number used twice)."""
        return 0 if self.exact else 1

    def next_seqs(self, n: int) -> list[int]:
        """A restarted sender's first sequence number per receiver (see ``_skip``)."""
        prev = self.previous
        skip = self._skip()
        return [
            _count(prev.get(f"next_seq.{j}", prev.get("next_seq") if j == 0 else None)) + skip
            if prev.get(f"next_seq.{j}") is not None or (j == 0 and prev.get("next_seq") is not None)
            else 0
            for j in range(n)
        ]

    def handling(self) -> None:
        """A frame came in and its sends may follow: mark the progress file "in flight" (its last
        progress stays as it was), so that a successor knows the predecessor may have sent past
        it. Only the file: Redis is not asked per frame (the hash keeps the cautious rule)."""
        if self._file is None or self._next_seq is None:
            return
        with contextlib.suppress(OSError, ValueError):  # progress() finds out and falls back to Redis
            self._file.mark_in_flight()

    def _file_record(self) -> dict[str, int | float | str]:
        """What the progress file holds: the progress and its run (the in-flight mark is the file's)."""
        mapping = self.fields()
        mapping["run_id"] = stats_module.RUN_ID
        return mapping

    def progress(self, next_seq: int | list[int], **extra: int | float | str) -> None:
        """After each handled frame: counters, seen sequence numbers, our next sequence number
        (one per receiver when there are several), into the progress file (else one HSET, not
        waited for). Every stats write carries them too (``fields``), so that the counters a
        successor takes over from the hash alone
        are never newer than the sequence numbers beside them (they were once, when progress
        was written every 10 ms: a restarted decoder counted frames its predecessor had
        handled as lost, and a replay that lost nothing said "incomplete")."""
        st = self.stats
        if self._next_seq is None:
            st.sources.append(self.fields)
        self._next_seq, self._extra = next_seq, extra
        if self.path is not None:
            try:
                if self._file is None:
                    self._file = ProgressFile(self.path)
                self._file.write(self._file_record())
                return
            except (OSError, ValueError) as exc:  # unwritable run directory, an oversized map
                log.warning("%s: progress file %s unusable (%s); writing progress to Redis", st.service, self.path, exc)
                self.path = self._file = None
        if st.r is None or st.outages.down:
            return  # (the periodic stats write finds out when Redis is back)
        try:
            st.write_deferred(self.fields())  # not waited for: shared/deferred_write.py
        except redis.RedisError:
            st.redis_errors += 1
            st.outages.failed()

    def fields(self) -> dict[str, int | float | str]:
        """The progress as of now: counters, sequence numbers seen and sent, what it lost."""
        st = self.stats
        mapping: dict[str, int | float | str] = {name: st.c[name] for name in self.counters}
        mapping.update({f"seq.{s}": n for s, n in self.gaps.last.items()})
        mapping["frames_lost"] = self.gaps.lost
        next_seq = self._next_seq
        if isinstance(next_seq, list):
            mapping.update({f"next_seq.{j}": n for j, n in enumerate(next_seq)})
            mapping["next_seq"] = next_seq[0]
        elif next_seq is not None:
            mapping["next_seq"] = next_seq
        mapping.update(self._extra)
        return mapping


def lost_ends(stats: ServiceStats, names: list[str], idle_since: float, restarted: bool) -> list[str]:
    """Those of ``names`` whose end-of-stream frame will not come (``ended_upstream``), asked
    only once the receiver has been idle ``EOS_LOST_AFTER`` s; ``restarted``: the receiver is
    a successor within the run (its predecessor may have taken the frames)."""
    if time.monotonic() - idle_since < EOS_LOST_AFTER:
        return []
    return ended_upstream(stats, names, taken_over=not restarted)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _count(value) -> int:
    try:
        return int(float(value or 0))
    except (TypeError, ValueError):
        return 0


EOS_LOST_AFTER = 5.0  # idle seconds before a receiver believes an upstream's "eos" stats


def ended_upstream(stats: ServiceStats, names: list[str], taken_over: bool = False) -> list[str]:
    """Those of ``names`` whose stats say they ended their stream in this run.

    A receiver asks when it has been idle a while, for two losses that would hang the run:
    a restarted receiver, whose dead predecessor took the end-of-stream frames sent to it; and
    (``taken_over``: any receiver) an upstream killed between its final stats and its
    end-of-stream frame, whose successor (restarted by supervisord after the end) has
    nothing to send. That one is told by the pid: the process that wrote ``eos`` (``eos_pid``)
    is not the one writing the stats now. An upstream still alive that has written ``eos``
    is only slow to send the frame (a full queue to another shard): it is waited for.
    """
    if stats.r is None or not names:
        return []
    try:
        pipe = stats.r.pipeline(transaction=False)
        for name in names:
            pipe.hmget(stats.keys.stats(name), "eos", "run_id", "eos_pid", "pid")
        replies = pipe.execute()
    except redis.RedisError:
        stats.outages.failed()
        return []
    return [
        name
        for name, (eos, run_id, eos_pid, pid) in zip(names, replies, strict=True)
        if _text(eos) == "1"
        and _text(run_id) == stats_module.RUN_ID
        and (not taken_over or (eos_pid is not None and _text(eos_pid) != _text(pid)))
    ]
