"""`--notify URL`: an Apprise URL plus pktscope's own per-URL options (query parameters).

    json://127.0.0.1:8080/hook?min_severity=warning&rate_limit=5/60&group_window=30

* ``min_severity`` (info|notice|warning|critical, default info): quieter alerts are skipped;
* ``rate_limit`` (N/SECONDS, default 10/60): at most N notifications per SECONDS; what has to
  wait is merged into one summary when a slot frees up, never dropped;
* ``group_window`` (seconds, default 10): one entity's alerts within this window (from its first
  one) become one digest ("curl: 5 new destinations: a.com, b.net, ...").

These three are removed before the URL goes to Apprise. Besides Apprise's own schemes (json://,
slack://, ntfy://, mailto://, syslog://, ...) ``desktop://`` runs notify-send on the session bus.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SEVERITIES = ("info", "notice", "warning", "critical")
OPTION_NAMES = ("min_severity", "rate_limit", "group_window")


class TargetError(ValueError):
    """A --notify URL that cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class Target:
    url: str  # as given (for messages); may hold credentials: never logged whole
    apprise_url: str
    min_severity: str = "info"
    rate_count: int = 10
    rate_period: float = 60.0
    group_window: float = 10.0

    @property
    def ident(self) -> str:
        """Stable id of the URL (its consumer group): the same URL continues where it stopped."""
        return hashlib.sha1(self.apprise_url.encode()).hexdigest()[:12]

    @property
    def scheme(self) -> str:
        return self.apprise_url.split("://", 1)[0]

    def wants(self, severity: str) -> bool:
        return _rank(severity) >= _rank(self.min_severity)


def _rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else 1


def parse_target(url: str) -> Target:
    if "://" not in url:
        raise TargetError("not a URL; write it like json://127.0.0.1:8080/hook or desktop://")
    parts = urlsplit(url)
    ours: dict[str, str] = {}
    rest = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        (ours.__setitem__(key, value) if key in OPTION_NAMES else rest.append((key, value)))
    apprise_url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment))
    if parts.scheme == "desktop":
        apprise_url = "desktop://"  # ours, not Apprise's: notify-send on the session bus
    severity = ours.get("min_severity", "info").lower()
    if severity not in SEVERITIES:
        raise TargetError(f"min_severity={severity!r}: use one of {', '.join(SEVERITIES)}")
    count, period = 10, 60.0
    if "rate_limit" in ours:
        text = ours["rate_limit"]
        try:
            n, _, secs = text.partition("/")
            count, period = int(n), float(secs or 60)
            if count < 1 or period <= 0:
                raise ValueError
        except ValueError:
            raise TargetError(f"rate_limit={text!r}: write N/SECONDS, e.g. 5/60") from None
    window = 10.0
    if "group_window" in ours:
        try:
            window = float(ours["group_window"])
            if not 0 <= window <= 86400:
                raise ValueError
        except ValueError:
            raise TargetError(f"group_window={ours['group_window']!r}: seconds between 0 and 86400") from None
    target = Target(url, apprise_url, severity, count, period, window)
    if target.scheme != "desktop":
        import apprise

        if not apprise.Apprise().add(apprise_url):
            raise TargetError(
                "Apprise does not accept this URL (see https://github.com/caronc/apprise/wiki for URL forms)"
            )
    return target


def desktop_available() -> bool:
    return bool(os.environ.get("DBUS_SESSION_BUS_ADDRESS")) and shutil.which("notify-send") is not None


def notify_send(title: str, body: str, urgency: str) -> bool:
    """desktop://: notify-send on the session bus (False when there is none, so it is retried)."""
    if not desktop_available():
        return False
    try:
        proc = subprocess.run(
            ["notify-send", "--app-name=pktscope", f"--urgency={urgency}", "--", title, body],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0
