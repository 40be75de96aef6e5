"""supervisord as `pktscope run` starts it: supervisor's own ``main``, then an exit that skips
the interpreter's teardown.

By the time ``main`` returns supervisord has stopped every program and closed its log and
sockets; what is left is Python tearing down its modules, which `pktscope run`'s stop waits
for (it waits for supervisord's exit before it returns): 16-19 ms of every command's stop, 2-5 ms
without it (docs/benchmarks.md, 2026-12-04 (4)). A failure (a bad configuration, an exception)
ends the usual way, with its message.

    python -m services.cli.supervisord_quick -c supervisord.conf
"""

from __future__ import annotations

import os
import sys

from supervisor import supervisord


def main() -> None:
    supervisord.main()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
