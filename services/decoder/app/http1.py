"""HTTP/1.x message heads from one direction of a TCP stream, bodies skipped.

Each direction has an ``Http1Parser``; both share an ``Http1Conn`` (the request methods still
waiting for a response, and what a 101/CONNECT switched the connection to). Parsing is lenient
like an IDS: bare LF line ends, leading blank lines, odd spacing, HTTP/0.9 request lines, header
folding. Bodies are skipped by Content-Length or chunked encoding; a response with neither runs to
the end of the connection. On anything unreadable the parser resynchronises by searching for the
next line that starts a request (known method) or a response ("HTTP/").
"""

from __future__ import annotations

import re
from collections import Counter, deque

from services.decoder.app import credentials
from services.decoder.app.http_text import authority_of, normalise_host, text

MAX_HEAD = 16384  # bytes of one message head (request/status line + headers)
MAX_LINE = 1024  # bytes of a chunk-size or trailer line
MAX_QUEUED_METHODS = 64

HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILER, TO_EOF, SWITCHED = range(8)

KNOWN_METHODS = (
    b"GET|POST|HEAD|PUT|DELETE|OPTIONS|CONNECT|TRACE|PATCH|PROPFIND|PROPPATCH|MKCOL|COPY|MOVE|"
    b"LOCK|UNLOCK|SEARCH|REPORT|MKACTIVITY|CHECKOUT|MERGE|NOTIFY|SUBSCRIBE|UNSUBSCRIBE|PURGE|"
    b"M-SEARCH|BPROPFIND|BCOPY|BDELETE|BMOVE|BPROPPATCH|POLL|SOURCE|DESCRIBE|ANNOUNCE|SETUP|PLAY|"
    b"PAUSE|TEARDOWN|GET_PARAMETER|SET_PARAMETER|REDIRECT|RECORD|ACL|BIND|LINK|UNLINK|REBIND|"
    b"UNBIND|VERSION-CONTROL|MKWORKSPACE|UPDATE|LABEL|BASELINE-CONTROL|MKREDIRECTREF|ORDERPATCH"
)
# where a message may start when resynchronising: a known method + space, or a status line
_RESYNC = re.compile(rb"(?:^|\n)[ \t\r]*(?:(?:" + KNOWN_METHODS + rb")[ \t]|HTTP/\d)", re.IGNORECASE)
_KNOWN_METHOD = re.compile(rb"(?:" + KNOWN_METHODS + rb")\Z")
_FIRST_TOKEN = re.compile(rb"[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*")
_METHOD_TOKEN = re.compile(rb"[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,31}\Z")
_HEAD_END = re.compile(rb"\n\r?\n")
_WS = b" \t\r\n\x0b\x0c"


def looks_like_http1(data: bytes) -> bool | None:
    """Content check on the first bytes of a stream: True, False, or None (need more bytes).

    A status line, a known method followed by a space, or any method-like token whose line ends
    with an HTTP version. Unknown tokens alone are not enough: SMTP, FTP or IRC commands look
    like "WORD argument" too.
    """
    data = data.lstrip(_WS)
    if not data:
        return None
    head = data[:5].upper()
    if b"HTTP/".startswith(head):
        return True if len(head) == 5 else None
    m = _FIRST_TOKEN.match(data)
    if m is None:
        return False
    if m.end() == len(data):
        return None if len(data) <= 32 else False  # the token is still arriving
    token = m.group()
    if data[m.end()] not in b" \t":
        return False
    if _KNOWN_METHOD.match(token):
        return True
    nl = data.find(b"\n")
    if nl < 0:
        return None
    return data[:nl].rstrip().upper().rsplit(None, 1)[-1].startswith(b"HTTP/")


class Http1Conn:
    """What both directions of one connection share."""

    __slots__ = ("methods", "switch", "upgrade_h2c")

    def __init__(self) -> None:
        self.methods: deque = deque(maxlen=MAX_QUEUED_METHODS)  # requests awaiting a response
        self.switch = ""  # "" | "h2" (upgraded to h2c) | "tunnel" (CONNECT 2xx) | "other" (101)
        self.upgrade_h2c = False


class Http1Parser:
    """Message heads of one direction; ``feed`` returns a list of field dicts (often empty)."""

    __slots__ = ("buf", "conn", "counters", "remaining", "resync", "state")

    def __init__(self, conn: Http1Conn, counters: Counter) -> None:
        self.conn = conn
        self.counters = counters
        self.buf = bytearray()
        self.state = HEAD
        self.remaining = 0
        self.resync = False

    def leftover(self) -> bytes:
        """Bytes received after the head that switched protocols (they belong to the new one)."""
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def close(self) -> list:
        """The sender closed: a head still incomplete (e.g. "GET /" with no line end) is complete."""
        if self.state != HEAD or self.resync or not self.buf.strip():
            return []
        return self.feed(b"\r\n\r\n")

    def gap(self, size: int) -> None:
        """Bytes missing from the stream: shorten a body being skipped, else resynchronise."""
        if self.state == TO_EOF or self.state == SWITCHED:
            return
        if (self.state == BODY or self.state == CHUNK_DATA) and not self.buf and size < self.remaining:
            self.remaining -= size
            return
        self.counters["http_gap_resyncs"] += 1
        self.buf.clear()
        self.state = HEAD
        self.resync = True

    def feed(self, data: bytes) -> list:
        state = self.state
        if state == TO_EOF or state == SWITCHED:
            if state == SWITCHED and len(self.buf) < MAX_HEAD:
                self.buf += data
            return []
        if (state == BODY or state == CHUNK_DATA) and not self.buf:
            n = len(data)
            if n < self.remaining:
                self.remaining -= n
                return []
            data = data[self.remaining :]
            self.remaining = 0
            self.state = HEAD if state == BODY else CHUNK_END
            if not data:
                return []
        self.buf += data
        out: list = []
        try:
            self._run(out)
        except (ValueError, IndexError, UnicodeError) as exc:  # defensive: never raise
            self.counters["http_parse_errors"] += 1
            self.counters[f"http_error_{type(exc).__name__}"] += 1
            self.buf.clear()
            self.state = HEAD
            self.resync = True
        return out

    # --- state machine -------------------------------------------------------------------
    def _run(self, out: list) -> None:
        buf = self.buf
        before = None
        while buf:
            state = self.state
            now = (len(buf), state, self.resync, self.remaining)
            if now == before:  # no progress: a parser bug must not spin forever
                self.counters["http_no_progress"] += 1
                buf.clear()
                self.state = HEAD
                self.resync = True
                return
            before = now
            if state == HEAD:
                if not self._head(out):
                    return
            elif state == BODY or state == CHUNK_DATA:
                n = min(self.remaining, len(buf))
                del buf[:n]
                self.remaining -= n
                if self.remaining:
                    return
                self.state = HEAD if state == BODY else CHUNK_END
            elif state == CHUNK_SIZE:
                line = self._line()
                if line is None:
                    return
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    self._lost("http_bad_chunk_size")
                    continue
                if size < 0:
                    self._lost("http_bad_chunk_size")
                    continue
                if size == 0:
                    self.state = TRAILER
                else:
                    self.remaining = size
                    self.state = CHUNK_DATA
            elif state == CHUNK_END:
                line = self._line()
                if line is None:
                    return
                self.state = CHUNK_SIZE
                if line.strip():  # data where the chunk's CRLF should be: treat it as the size line
                    buf[:0] = line + b"\n"
            elif state == TRAILER:
                line = self._line()
                if line is None:
                    return
                if not line.strip():
                    self.state = HEAD
            else:  # TO_EOF, SWITCHED
                if state == TO_EOF:
                    buf.clear()
                return

    def _line(self) -> bytes | None:
        """Take one line (without its LF) off the buffer; None when incomplete (bounded)."""
        buf = self.buf
        nl = buf.find(b"\n")
        if nl < 0:
            if len(buf) > MAX_LINE:
                self._lost("http_long_line")
            return None
        line = bytes(buf[:nl])
        del buf[: nl + 1]
        return line.rstrip(b"\r")

    def _lost(self, why: str) -> None:
        """Framing lost: count it and look for the next message start."""
        self.counters[why] += 1
        self.state = HEAD
        self.resync = True

    def _head(self, out: list) -> bool:
        """Parse one message head if complete; False when more bytes are needed."""
        buf = self.buf
        if self.resync:
            m = _RESYNC.search(buf)
            if m is None:
                keep = buf[-40:]
                buf.clear()
                buf += keep
                return False
            del buf[: m.start()]
            self.resync = False
        # leading blank lines / whitespace before a message are tolerated
        if buf[0] in _WS:
            skip = len(buf) - len(buf.lstrip(_WS))
            del buf[:skip]
            if not buf:
                return False
        nl = buf.find(b"\n")
        if nl < 0:
            if len(buf) > MAX_HEAD:
                buf.clear()
                self._lost("http_head_too_long")
                return True
            return False
        first = bytes(buf[:nl]).rstrip(b"\r")
        is_response = first[:5].upper() == b"HTTP/"
        if not is_response:
            parts = first.split()
            if (
                not parts
                or _METHOD_TOKEN.match(parts[0]) is None
                or (len(parts) < 3 and not _KNOWN_METHOD.match(parts[0]))
            ):
                del buf[: nl + 1]  # never look at this line again
                self._lost("http_bad_start_line")
                return True
        m = _HEAD_END.search(buf, nl)
        if m is None:
            if len(buf) > MAX_HEAD:
                del buf[: nl + 1]  # skip this start line; resync looks for the next one
                self._lost("http_head_too_long")
                return True
            return False
        end = m.end()
        head = bytes(buf[:end])
        del buf[:end]
        headers = _headers(head[nl:])
        if is_response:
            out.append(self._response(first, headers))
        else:
            out.append(self._request(first, first.split(), headers))
        return True

    def _request(self, first: bytes, parts: list, headers: dict) -> dict:
        method = parts[0]
        if len(parts) >= 3 and parts[-1].upper().startswith(b"HTTP/"):
            version = parts[-1]
            target = first[len(method) :].strip()
            target = target[: len(target) - len(version)].strip()
        else:
            version = b"HTTP/0.9"
            target = first[len(method) :].strip()
        method_s = text(method)
        uri = text(target)
        fields = {"http.method": method_s, "http.uri": uri, "http.version": text(version)}
        host = headers.get(b"host")
        if host is not None:
            fields["http.host"] = normalise_host(text(host))
        else:
            authority = authority_of(uri)
            if authority:
                fields["http.host"] = normalise_host(authority)
        ua = headers.get(b"user-agent")
        if ua is not None:
            fields["http.user_agent"] = text(ua)
        ctype = headers.get(b"content-type")
        if ctype is not None:
            fields["http.content_type"] = text(ctype)
        auth = headers.get(b"authorization") or headers.get(b"proxy-authorization")
        if auth is not None:
            found = credentials.http_authorization(auth)  # the user name only, never the secret
            if found is not None:
                fields.update(found)
        conn = self.conn
        conn.methods.append(method.upper())
        upgrade = headers.get(b"upgrade")
        if upgrade is not None and b"h2c" in upgrade.lower():
            conn.upgrade_h2c = True
        if version == b"HTTP/0.9":
            return fields
        self._body(headers, True)
        return fields

    def _response(self, first: bytes, headers: dict) -> dict:
        parts = first.split(None, 2)
        fields: dict = {"http.version": text(parts[0])}
        status = 0
        if len(parts) > 1 and parts[1][:3].isdigit():
            status = int(parts[1][:3])
            fields["http.status"] = status
        ctype = headers.get(b"content-type")
        if ctype is not None:
            fields["http.content_type"] = text(ctype)
        conn = self.conn
        method = conn.methods[0] if conn.methods else b""
        if (status >= 200 or status == 101 or not status) and conn.methods:
            conn.methods.popleft()
        if status == 101:
            conn.switch = "h2" if conn.upgrade_h2c else "other"
            self.state = SWITCHED
            return fields
        if method == b"CONNECT" and 200 <= status < 300:
            conn.switch = "tunnel"
            self.state = SWITCHED
            return fields
        if method == b"HEAD" or 100 <= status < 200 or status == 204 or status == 304:
            return fields
        if not self._body(headers, False):
            self.state = TO_EOF
        return fields

    def _body(self, headers: dict, is_request: bool) -> bool:
        """Set the state that skips this message's body; False when its length is unknown."""
        te = headers.get(b"transfer-encoding")
        if te is not None and b"chunked" in te.lower():
            self.state = CHUNK_SIZE
            return True
        cl = headers.get(b"content-length")
        if cl is not None:
            digits = cl.strip().split(b",", 1)[0].strip()
            if digits.isdigit():
                n = int(digits)
                if n:
                    self.state = BODY
                    self.remaining = n
                return True
            self.counters["http_bad_content_length"] += 1
        return is_request


# obsolete line folding: a line starting with a space or tab. One regex search is 0.27 us on a
# 289-byte response head where ``b"\n " in block or b"\n\t" in block`` took 0.70-0.83 us (timeit).
_FOLDED = re.compile(rb"\n[ \t]")
_WANTED = re.compile(
    rb"\n(host|user-agent|content-type|content-length|transfer-encoding|upgrade|authorization|proxy-authorization)[ \t]*:"
)


def _headers(block: bytes) -> dict:
    """The headers this decoder uses, {lower-case name: value}; the first occurrence wins.

    ``block`` starts at the line end of the start line. The fast path finds only the wanted
    names in a lower-cased copy; heads with obsolete line folding take the line-by-line path.
    """
    if _FOLDED.search(block) is not None:
        return _folded_headers(block.split(b"\n"))
    headers: dict = {}
    for m in _WANTED.finditer(block.lower()):
        name = m.group(1)
        if name not in headers:
            end = block.find(b"\n", m.end())
            headers[name] = block[m.end() : end if end >= 0 else len(block)].strip()
    return headers


def _folded_headers(lines: list) -> dict:
    """Every header of a head that uses folding (a line starting with a space or tab)."""
    headers: dict = {}
    last = None
    for line in lines:
        colon = line.find(b":")
        if line[:1] in b" \t" and line and last is not None:  # folding continues the last value
            headers[last] = headers[last] + b" " + line.strip()
            continue
        if colon <= 0:
            last = None
            continue
        name = line[:colon].strip().lower()
        if name in headers:
            last = None
            continue
        headers[name] = line[colon + 1 :].strip()
        last = name
    return headers


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ("Http1Conn", "Http1Parser", "looks_like_http1"))
