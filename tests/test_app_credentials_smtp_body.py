"""LineWatch skips what cannot hold a login: an SMTP message body (after DATA + 354, up to the
line "."), BDAT chunk data, and the server's lines of FTP/POP3/IMAP. Checked against a plain
line-by-line reference of the same rules, under every way of cutting the stream into segments."""

from __future__ import annotations

import base64
import random

from services.decoder.app.credentials import LineWatch


def plain(user: bytes) -> bytes:
    return base64.b64encode(b"\0" + user + b"\0secret")


LOGIN = b"AUTH PLAIN " + plain(b"frank") + b"\r\n"
DECOY = b"AUTH PLAIN " + plain(b"decoy") + b"\r\n"  # a mail quoting a login: no finding

SESSION = [
    (False, b"220 mx ready\r\n"),
    (True, b"EHLO me\r\n"),
    (False, b"250-mx\r\n250 AUTH PLAIN\r\n"),
    (True, b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"),
    (False, b"250 ok\r\n250 ok\r\n354 go ahead\r\n"),
    (True, b"Subject: hi\r\n\r\n" + DECOY + b"STARTTLS\r\n..leading dot\r\n.x\r\n. \r\nend\r\n.\r\n"),
    (False, b"250 queued\r\n"),
    (True, LOGIN),
    (False, b"235 ok\r\n"),
    (True, b"QUIT\r\n"),
]


def users(found: list[dict]) -> list[str]:
    return [f["anomaly.user"] for f in found]


def run(messages: list[tuple[bool, bytes]], cuts: random.Random | None = None, protocol: str = "smtp") -> list:
    watch = LineWatch(protocol)
    out: list = []
    for from_client, data in messages:
        if cuts is None:
            out += watch.feed(data, from_client)
            continue
        i = 0
        while i < len(data):
            n = cuts.randint(1, 9)
            out += watch.feed(data[i : i + n], from_client)
            i += n
    return users(out)


def test_body_lines_are_not_commands():
    assert run(SESSION) == ["frank"]


def test_any_segmentation_gives_the_same_findings():
    rng = random.Random(14)
    for _ in range(200):
        assert run(SESSION, rng) == ["frank"]


def test_terminator_cut_anywhere():
    body = b"line\r\n.\r\n" + LOGIN
    head = [(True, b"DATA\r\n"), (False, b"354 go\r\n")]
    for cut in range(1, len(body)):
        assert run([*head, (True, body[:cut]), (True, body[cut:])]) == ["frank"], cut


def test_empty_body_and_lf_only_lines():
    assert run([(True, b"DATA\n"), (False, b"354 go\n"), (True, b".\n" + LOGIN)]) == ["frank"]


def test_rejected_data_reads_the_next_lines():
    """No 354: there is no body, and the client's next lines are commands."""
    msgs = [(True, b"DATA\r\n"), (False, b"554 no valid recipients\r\n"), (True, b"RSET\r\n" + LOGIN)]
    assert run(msgs) == ["frank"]


def test_354_without_data_opens_no_body():
    assert run([(True, b"NOOP\r\n"), (False, b"354 odd\r\n"), (True, LOGIN)]) == ["frank"]


def test_bdat_chunk_is_skipped_by_count():
    chunk = DECOY + b"\r\n"
    msgs = [(True, b"BDAT %d LAST\r\n" % len(chunk) + chunk[:7]), (True, chunk[7:] + LOGIN)]
    assert run(msgs) == ["frank"]
    rng = random.Random(3)
    for _ in range(50):
        assert run(msgs, rng) == ["frank"]


def test_gap_returns_to_reading_lines():
    watch = LineWatch("smtp")
    watch.feed(b"DATA\r\n", True)
    watch.feed(b"354 go\r\n", False)
    watch.feed(b"part of a body\r\n", True)
    watch.gap(100)  # the "." may have been in the hole
    assert users(watch.feed(LOGIN, True)) == ["frank"]


def test_server_lines_of_ftp_pop3_imap_are_not_kept():
    for protocol in ("ftp", "pop3", "imap"):
        watch = LineWatch(protocol)
        watch.feed(b"x" * 5000 + b"\r\nUSER someone\r\nPASS p\r\n", False)
        assert not watch._buf[1]
    assert run([(False, b"+OK\r\n"), (True, b"USER dave\r\nPASS x\r\n")], protocol="pop3") == ["dave"]
