"""A stand-in service for the launcher tests: ``python -m tests.launcher_probe ACTION [ARG]``.

Run through the launcher client, it shows what the service sees (its pid and parent, argv, the
environment, stdout) and ends the ways a service can: an exit code, a signal, a SIGTERM stop.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def main(argv: list[str]) -> int:
    action, arg = argv[0], (argv[1] if len(argv) > 1 else "")
    if action == "exit":
        print(f"exiting {arg}", flush=True)
        return int(arg)
    if action == "signal":
        os.kill(os.getpid(), int(arg))
        time.sleep(5)
        return 99
    if action == "envb":  # a variable's bytes, whatever they are (not all are UTF-8)
        print(os.environb.get(arg.encode(), b"(unset)").hex(), flush=True)
        return 0
    if action == "show":
        print(f"pid={os.getpid()} ppid={os.getppid()} argv={','.join(sys.argv[1:])} env={os.environ.get(arg, '')}")
        with open("/proc/self/comm") as f:
            comm = f.read().strip()
        print(f"cwd={os.getcwd()} name={__name__} file={os.path.basename(sys.argv[0])} comm={comm}", flush=True)
        return 0
    if action == "wait-term":
        got: list[int] = []
        signal.signal(signal.SIGTERM, lambda sig, _f: got.append(sig))
        print(f"ready pid={os.getpid()}", flush=True)
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        print("term" if got else "timeout", flush=True)
        return 5 if got else 1
    if action == "raise":
        raise RuntimeError("probe failure")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
