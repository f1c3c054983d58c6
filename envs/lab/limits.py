"""Process limits the lab's parts need: enough file descriptors for their sockets.

Every replica listens on its own port and every in-flight request of the load generator holds a
connection, so a lab of a few hundred replicas under a few thousand rps outgrows the common soft
limit of 1024 open files long before it runs out of CPU. The hard limit is usually much higher
and an unprivileged process may raise its soft limit up to it, which is all this does.
"""

from __future__ import annotations

import resource

_FALLBACKS = (1 << 20, 65_536, 10_240)
"""Soft limits tried when the hard one is refused: Linux caps descriptors at `fs.nr_open`
(2**20 by default) even under an unlimited hard limit, macOS at 10240 per process."""


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard limit, best effort; never raises.

    Returns the soft limit in force afterwards (`resource.RLIM_INFINITY` when unlimited, -1
    when it cannot even be read). Child processes inherit it, so calling this before spawning
    raises their limit too.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return -1
    if soft == hard or soft == resource.RLIM_INFINITY:
        return soft
    unlimited = hard == resource.RLIM_INFINITY
    candidates = [hard, *(n for n in _FALLBACKS if soft < n and (unlimited or n < hard))]
    for target in candidates:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            continue
        return target
    return soft
