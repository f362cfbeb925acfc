"""One small exception tree, built around the retry decision.

    SchedulerError                 base; ``transient`` says whether retrying can help
    ├── PermanentError             retrying cannot help: fail the step now
    │   ├── LessonError            a lesson file or catalog is invalid (carries every problem)
    │   ├── InvalidRequest         a request's own fields are wrong (a session name, an id)
    │   ├── NotFound               an unknown lesson or live lesson
    │   ├── LimitExceeded          a session's limit; ``retry_after`` for clients
    │   │   └── AtCapacity         the whole deployment is full (503, where a session's limit is 429)
    │   ├── PrerequisiteMissing    root, a capability or a CNI plugin is missing
    │   ├── CniError               a CNI plugin refused (workers/backends/local/net/cni.py)
    │   └── ApiError               the Kubernetes API refused; ``status`` (workers/backends/kubernetes/)
    └── TemporaryError             retrying may help; ``delay`` is a hint in seconds
        ├── NotReplicated          a write a client is to be told of reached too few Redis replicas
        ├── CniRace                a CNI call lost a race with a concurrent one (workers/backends/local/net/cni.py)
        └── NetlinkRace            a netlink change lost a race (workers/backends/local/net/rtnetlink.py)

Backend and client errors are translated at the boundary, always keeping the cause
(``raise TemporaryError(...) from exc``), so retry policy reads ``transient`` instead of guessing from
exception types it does not own. The HTTP API maps this tree to status codes in one place
(``scheduler/http/errors.py``: ``STATUS_FOR``).
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass

__all__ = [
    "AtCapacity",
    "InvalidRequest",
    "LessonError",
    "LimitExceeded",
    "NotFound",
    "NotReplicated",
    "PermanentError",
    "PrerequisiteMissing",
    "Problem",
    "SchedulerError",
    "TemporaryError",
    "shorten",
]

_REPR = reprlib.Repr()  # Python 3.11's Repr takes no keyword arguments
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlong = 40
_REPR.maxlevel = 2
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def shorten(value: object) -> str:
    """``repr(value)`` cut to about 80 characters: untrusted input quoted in a message (a lesson file, a task
    argument, a request) never floods a terminal or a log, and an expanded value is never echoed whole."""
    text = _REPR.repr(value)
    return text if len(text) <= 120 else text[:117] + "..."  # reprlib bounds most types; this bounds the rest


class SchedulerError(Exception):
    transient: bool = False


class PermanentError(SchedulerError):
    transient = False


class TemporaryError(SchedulerError):
    transient = True

    def __init__(self, message: str, *, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


@dataclass(frozen=True)
class Problem:
    """One validation problem: where (file and path inside it) and what, in words."""

    source: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.path}" if self.path else self.source
        return f"{where}: {self.message}"


class LessonError(PermanentError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class InvalidRequest(PermanentError):
    pass


class NotFound(PermanentError):
    pass


class LimitExceeded(PermanentError):
    def __init__(self, message: str, *, retry_after: int = 30) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AtCapacity(LimitExceeded):
    """The deployment holds as many live lessons as it may; another session's end makes room."""


class PrerequisiteMissing(PermanentError):
    pass


class NotReplicated(TemporaryError):
    """Fewer Redis replicas than LESSON_REDIS_MIN_REPLICAS confirmed a write in time: the client is not told
    it is done (it may retry; the write is idempotent), since a failover now could lose it."""
