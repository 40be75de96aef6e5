"""Coverage-guided fuzzing (atheris / libFuzzer) of everything that reads attacker-controlled bytes.

Targets:

* ``decoder``  -- one packet through the fast path (with the application-layer inspector) and
  through the dissector that ``pktscope read`` uses, on the link type the first byte picks;
* ``app``      -- the application-layer parsers directly: DNS messages, TLS ClientHello and
  ServerHello/Certificate, HTTP/1 and HTTP/2 streams fed in chunks, QUIC Initial datagrams;
* ``filter``   -- the display-filter parser, then the compiled filter run on a packet.

A crash is any exception that escapes, and any "exception" counter a parser kept instead of
raising (the parsers catch everything so the pipeline survives; a caught surprise is still a
bug). Each crash input is written to ``--artifacts`` by libFuzzer; copy it into
``tests/fuzz_regressions/<target>/`` and ``tests/test_fuzz_regressions.py`` replays it forever.

    .venv/bin/pip install atheris    # or: pip install -e '.[fuzz]'
    nice .venv/bin/python scripts/fuzz.py decoder --runs 4000000
    nice .venv/bin/python scripts/fuzz.py app --runs 4000000
    nice .venv/bin/python scripts/fuzz.py filter --runs 2000000

libFuzzer's last line, ``Done N runs in T second(s)``, is the count of inputs run; each crash
prints ``fuzz: crash N written to PATH`` with its traceback (docs/reliability.md keeps the figures
of the runs made).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LINKTYPES = (0, 1, 12, 14, 101, 104, 108, 113, 228, 229, 276, 147)


class FuzzFinding(AssertionError):
    """A parser hid an exception in a counter, or returned something of the wrong shape."""


# --- targets: each one_input(data) raises on a finding --------------------------------------------
def decoder_target():
    """Up to 8 packets of one link type (split at 0xff 0xfe), through a fresh inspector.

    A fresh inspector per input makes every finding reproducible from its input alone; the
    packets of one input still reach the stateful parts (reassembly, QUIC, HTTP) in order.
    """
    from services.decoder.app.inspector import AppInspector
    from services.decoder.dissect import dissect
    from services.decoder.fastpath import decode_batch

    def one_input(data: bytes) -> None:
        if len(data) < 2:
            return
        linktype = LINKTYPES[data[0] % len(LINKTYPES)]
        app = AppInspector(max_flows=2, max_done=4)  # tiny: eviction paths run too
        packets = [
            (i + 1, 1_700_000_000.0 + i * 0.001, linktype, len(p), p)
            for i, p in enumerate(data[1:].split(b"\xff\xfe", 7))
        ]
        res = decode_batch(packets, app)
        if res.decoded + res.malformed != len(packets):
            raise FuzzFinding(f"decoded {res.decoded} + malformed {res.malformed} != {len(packets)}")
        if res.app_errors:
            raise FuzzFinding("an application-layer parser raised (app_errors)")
        _no_exception_counters(app.all_counters())
        for packet in packets:
            fields, _l4 = dissect(*packet)
            reason = fields.get("_malformed")
            if isinstance(reason, str) and reason.startswith("decoder error"):
                raise FuzzFinding(reason)

    return one_input


def app_target():
    """First byte: which parser (and, for HTTP/2, whether the client preface is expected)."""
    from services.decoder.app import dns, http1, http2, quic, tls

    def one_input(data: bytes) -> None:
        if not data:
            return
        which, rest = data[0] % 6, data[1:]
        counters: Counter = Counter()
        if which == 0:
            try:
                fields = dns.parse_message(rest, counters)
            except dns.DnsError:
                return
            if not isinstance(fields, dict):
                raise FuzzFinding("dns.parse_message returned a non-dict")
        elif which == 1:
            tls.parse_client(rest)
            _no_exception_counters(tls.counters)
        elif which == 2:
            tls.parse_server(rest)
            _no_exception_counters(tls.counters)
        elif which == 3:
            parser = http1.Http1Parser(http1.Http1Conn(), counters)
            for chunk in _chunks(rest):
                parser.feed(chunk)
            parser.close()
        elif which == 4:
            client, server = http2.new_connection(counters, bool(data[0] & 0x80))
            for i, chunk in enumerate(_chunks(rest)):
                (client if i % 2 == 0 else server).feed(chunk)
        else:
            flow = quic.QuicFlow()
            for i, chunk in enumerate(_chunks(rest)):
                flow.feed(chunk, from_client=i % 3 != 2)
            _no_exception_counters(quic.counters)
        _no_exception_counters(counters)

    return one_input


def filter_target():
    from services.cli.filter import FilterError, compile_filter

    packet = {
        "frame": {"number": 1, "len": 60, "time": 1.5},
        "ip": {"src": "10.0.0.1", "dst": "93.184.216.34", "proto": 6, "ttl": 64},
        "tcp": {"srcport": 40000, "dstport": 443, "flags": {"syn": True}, "len": 0},
        "tls": {"sni": "example.com", "alpn": ["h2", "http/1.1"]},
        "dns": {"qry": {"name": "example.com"}, "answers": ["93.184.216.34"]},
    }

    def one_input(data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        try:
            predicate = compile_filter(text)
        except FilterError:
            return
        if predicate(packet) not in (True, False):
            raise FuzzFinding("a compiled filter returned a non-bool")

    return one_input


TARGETS = {"decoder": decoder_target, "app": app_target, "filter": filter_target}


def _chunks(data: bytes) -> list[bytes]:
    """Split at 0xff 0xfe markers (at most 16 pieces): the fuzzer learns where TCP segments end."""
    return data.split(b"\xff\xfe", 15)


def _no_exception_counters(counters) -> None:
    bad = [k for k, v in counters.items() if v and "exception" in k]
    if bad:
        for k in bad:
            counters[k] = 0  # report it once
        raise FuzzFinding("a parser caught an unexpected exception: " + ", ".join(sorted(bad)))


# --- seeds ------------------------------------------------------------------------------------------
def write_seeds(target: str, out: Path) -> int:
    """Starting inputs: real packets of the corpus (decoder, app), real filters (filter)."""
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    if target == "filter":
        for i, text in enumerate(
            (
                "tcp",
                'tls.sni == "example.com"',
                "ip.src == 10.0.0.0/8 and not udp",
                'tcp.dstport in {80 443} or dns.qry.name contains "ex"',
                '(frame.len > 50 && ip.ttl <= 64) || tls.alpn == "h2"',
                'dns.answers matches "^93\\\\."',
            )
        ):
            (out / f"seed-{i}").write_text(text)
            n += 1
        return n
    import pcap

    pcaps = ROOT.parent / "shared" / "corpus" / "pcaps"
    for path in sorted(p for p in pcaps.rglob("*") if p.is_file()):
        try:
            cap = pcap.pcap(str(path))
        except OSError:
            continue
        lt = cap.datalink()
        if lt not in LINKTYPES:
            continue
        for i, (_ts, buf) in enumerate(cap):
            if i >= 8:
                break
            data = bytes(buf)
            if target == "decoder":
                data = bytes([LINKTYPES.index(lt)]) + data
            (out / f"{path.name}-{i}").write_bytes(data)
            n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", choices=sorted(TARGETS))
    ap.add_argument("--runs", type=int, default=1_000_000, help="inputs to run (libFuzzer -runs)")
    ap.add_argument("--max-len", type=int, default=4096, help="largest input in bytes")
    ap.add_argument(
        "--corpus", type=Path, default=None, help="working corpus (default /tmp/pktscope-fuzz/TARGET)"
    )
    ap.add_argument(
        "--artifacts",
        type=Path,
        default=None,
        help="where crash inputs go (default corpus/../crashes-TARGET)",
    )
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    try:
        import atheris
    except ImportError:
        print("fuzz: atheris is not installed: .venv/bin/pip install atheris", file=sys.stderr)
        return 2
    corpus = args.corpus or Path("/tmp/pktscope-fuzz") / args.target
    artifacts = args.artifacts or corpus.parent / f"crashes-{args.target}"
    artifacts.mkdir(parents=True, exist_ok=True)
    if not corpus.exists() or not any(corpus.iterdir()):
        write_seeds(args.target, corpus)
    with atheris.instrument_imports(include=["services", "shared"]):
        one_input = TARGETS[args.target]()
    runs = {"n": 0, "crashes": 0}

    def counted(data: bytes) -> None:
        runs["n"] += 1
        try:
            one_input(data)
        except Exception:
            runs["crashes"] += 1
            path = artifacts / f"crash-{runs['crashes']}"
            path.write_bytes(data)
            import traceback

            traceback.print_exc()
            print(f"fuzz: crash {runs['crashes']} written to {path}", file=sys.stderr, flush=True)
            if runs["crashes"] >= 50:
                raise
            # keep going: libFuzzer would stop at the first; we record up to 50

    libfuzzer_args = [
        sys.argv[0],
        f"-runs={args.runs}",
        f"-max_len={args.max_len}",
        f"-seed={args.seed}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        str(corpus),
    ]
    atheris.Setup(libfuzzer_args, counted)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
