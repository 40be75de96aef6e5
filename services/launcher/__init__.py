"""Fork-server start of the pipeline's services (issue 14).

Six interpreters each importing the same libraries cost ~1.25 CPU s per `pktscope run`; one
zygote (``zygote.py``) imports them once and forks each service on request of a thin client
(``client.py``) that supervisord runs in its place, so supervisord's restarts, stops and exit
codes stay true. ``start.py`` is the CLI's side: the socket, the zygote process, the commands.
"""
