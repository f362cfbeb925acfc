"""The live-lesson record as pydantic models: the JSON the API answers, ``lessons.request`` returns and Redis
stores, so its fields are a contract with other services. Pure data."""

from __future__ import annotations

import secrets
import string
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from scheduler.core.steps import ACTIVE, PROVISIONING, STEP_STATUS, STEPS, TERMINAL, Status

__all__ = [
    "ACTIVE",
    "EMULATED_NOTE",
    "PROVISIONING",
    "STEPS",
    "STEP_STATUS",
    "TERMINAL",
    "Check",
    "EndpointState",
    "Interface",
    "LiveLesson",
    "PodKind",
    "PresentationState",
    "Status",
    "StepError",
    "StepTiming",
    "forward_command",
    "new_id",
    "now",
    "substitute_note",
]


PodKind = Literal["container", "emulated"]
EMULATED_NOTE = "emulated pods: stand-in processes on the declared ports; the images and commands do not run"


def substitute_note(image: str) -> str:
    """What a record with ``image_substitute`` says, in the CLI and on the status page."""
    return f"images: every endpoint runs {image} instead of its own image (LESSON_IMAGE_SUBSTITUTE)"


def forward_command(livelesson: str, endpoint: str, port: int) -> str:
    """How a program on the user's machine reaches a pod's port: a local port forwarded to it (127.0.0.1)."""
    return f"lessonctl port-forward {livelesson} {endpoint} {port}"


ID_ALPHABET = string.ascii_lowercase + string.digits  # what checks.ID_PATTERN accepts


def new_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(10))


def now() -> datetime:
    return datetime.now(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StepTiming(_Model):
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0


class Interface(_Model):
    name: str
    network: str
    address: str | None = None


class PresentationState(_Model):
    """A presentation of the lesson file (what a learner's terminal or browser opens) and where it is."""

    name: str
    type: str  # ssh | http
    port: int
    # the endpoint's name and port as the lesson's pods reach it: the Service's DNS name on Kubernetes,
    # the name in the pods' hosts file on the local backend
    reach: str
    forward: str  # from the user's machine: the command that forwards a port of 127.0.0.1 to it


class EndpointState(_Model):
    pod: str
    node: str | None = None
    ready: bool = False
    interfaces: list[Interface] = Field(default_factory=list)
    presentations: list[PresentationState] = Field(default_factory=list)


class Check(_Model):
    """One link direction, measured by a burst of pings once the first reply came back."""

    source: str
    target: str
    network: str
    address: str | None
    by_name: bool = False  # pinged by the target's name rather than its address
    crossed_nodes: bool = False  # source and target run on different nodes: the pings crossed a tunnel
    sent: int
    received: int
    loss_pct: float = 100.0
    rtt_min_ms: float | None = None
    rtt_avg_ms: float | None
    rtt_max_ms: float | None = None
    ok: bool


class StepError(_Model):
    step: str
    message: str


class LiveLesson(_Model):
    id: str
    lesson: str
    session: str
    instance: str
    backend: str
    status: Status = "requested"
    namespace: str
    node: str | None = None
    # endpoint -> node, decided once before the networks are made when the backend has several nodes or
    # a pod limit per node (None: the backend keeps the lesson on one node by affinity)
    placement: dict[str, str] | None = None
    created_at: datetime
    ready_at: datetime | None = None
    expires_at: datetime
    updated_at: datetime
    steps: dict[str, StepTiming] = Field(default_factory=dict)
    # what a pod is: a container running the endpoint's image, or an emulated stand-in (a process that
    # listens on the declared ports; the image and command are not run). Known once pods are scheduled.
    pods: PodKind | None = None
    # LESSON_IMAGE_SUBSTITUTE when the pods were scheduled: every endpoint runs this image instead of its
    # own (None: each runs its own). Set with ``pods``.
    image_substitute: str | None = None
    endpoints: dict[str, EndpointState] = Field(default_factory=dict)
    checks: list[Check] = Field(default_factory=list)
    error: StepError | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def to_json(self) -> str:
        return self.model_dump_json()
