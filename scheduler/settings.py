"""Settings, from the environment (prefix ``LESSON_``). docs/configuration.md is generated from this model."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from scheduler.core.checks import check_image_reference, is_dns1123_label
from scheduler.core.lessons import check_special
from scheduler.core.plan import MAIN_POOL

__all__ = ["Settings", "get_settings", "parse_sentinels"]

_MASTER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


def parse_sentinels(value: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` as (host, port) pairs; ValueError naming the bad entry. IPv6 in brackets."""
    pairs: list[tuple[str, int]] = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        host, sep, port = entry.rpartition(":")
        if not sep or not _HOST.fullmatch(host) or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{entry[:80]!r} is not host:port (e.g. 10.0.0.5:26379)")
        pairs.append((host.strip("[]"), int(port)))
    if len(set(pairs)) != len(pairs):
        raise ValueError("lists a sentinel twice")
    return tuple(pairs)

# The catalog shipped in the repository, used when LESSON_CATALOG is not set.
_DEFAULT_CATALOG = Path(__file__).resolve().parent.parent / "config" / "lessons"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LESSON_", frozen=True, extra="ignore")

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis for the queue, results and state. With LESSON_REDIS_SENTINELS set, its host is "
        "ignored and it gives only the password (of the primary and of the sentinels) and the database.",
    )
    redis_sentinels: str = Field(
        "",
        description="Comma-separated `host:port` of Redis Sentinels: every process then finds the primary of "
        "LESSON_REDIS_MASTER through them and follows a failover. Empty: one Redis at LESSON_REDIS_URL.",
    )
    redis_master: str = Field("lessons", description="The name the sentinels monitor the primary under.")
    redis_min_replicas: int | None = Field(
        None,
        ge=0,
        le=16,
        description="Replicas a write acknowledged to a client (a request's 202, a delete) must reach first "
        "(Redis `WAIT`); if fewer confirm within LESSON_REDIS_WAIT_MS the request gets 503 and may be retried "
        "(it is idempotent). Unset: 1 with sentinels, 0 without.",
    )
    redis_wait_ms: int = Field(
        1000, ge=10, le=60000, description="How long such a write waits for its replicas, in milliseconds."
    )
    backend: Literal["local", "kubernetes"] = Field("local", description="Where lessons run.")
    catalog: Path = Field(_DEFAULT_CATALOG, description="Lesson file, flat folder or Antidote catalog.")
    instance: str = Field(
        "lessons", description="Scopes everything this deployment owns; GC never touches another instance."
    )
    ttl_seconds: int = Field(1800, ge=10, description="A live lesson expires this long after its last keepalive.")
    provision_timeout_seconds: int = Field(
        300, ge=5, description="Deadline from request to ready; past it the lesson fails and is torn down."
    )
    gc_interval_seconds: int = Field(30, ge=1, description="How often beat runs `lessons.gc`.")
    subnet_pool: str = Field(
        "10.10.0.0/16", description="Where connections without a subnet get theirs: one /24 each, in order."
    )
    main_pool: str = Field(
        MAIN_POOL,
        description="Local backend: each live lesson's main network (every pod's eth0, on a bridge of its own) "
        "is the first /24 of this pool that none of its links uses; it may not overlap LESSON_SUBNET_POOL or "
        "LESSON_RESERVED_SUBNETS.",
    )
    check_names: bool = Field(
        True,
        description="verify_connectivity also pings each link's peer by its name (resolved inside the pod: "
        "Kubernetes DNS, the local hosts file), over eth0; the record marks those checks `by_name`.",
    )
    max_per_session: int = Field(3, ge=1, description="Active live lessons one session may hold.")
    max_active: int = Field(
        200, ge=1, description="Active live lessons this instance holds at most; past it requests get 503."
    )
    api_token: str | None = Field(None, description="Bearer token the HTTP API requires when set.")
    log_format: Literal["json", "console"] = Field("json", description="structlog renderer for every process.")
    log_level: str = Field("INFO", description="Log level for every process.")
    kubeconfig: Path | None = Field(None, description="Kubeconfig for the kubernetes backend; else in-cluster.")
    state_dir: Path = Field(
        Path("/var/lib/lesson-scheduler"), description="Local backend: IPAM, CNI results, container bundles, pid files."
    )
    cni_path: Path = Field(Path("/usr/lib/cni"), description="Where the CNI plugins (bridge, host-local) live.")
    local_pods: Literal["container", "emulated"] = Field(
        "container",
        description="Local backend: `container` runs each endpoint's image and command with runc; `emulated` "
        "runs a stand-in process on the declared ports instead (hosts without runc), and says so.",
    )
    local_nodes: int = Field(
        1,
        ge=1,
        le=64,
        description="Local backend: how many nodes (network namespaces joined by an underlay bridge) it "
        "emulates on this host. A lesson stays on one node while it fits; a split one gets VXLAN links.",
    )
    node_max_pods: int = Field(
        0,
        ge=0,
        le=10000,
        description="Pods of lessons one node holds at most (local backend: a kubelet's maxPods; kubernetes "
        "with LESSON_K8S_PLACEMENT=nodes: below the node's allocatable pods); 0: no limit of ours.",
    )
    k8s_placement: Literal["affinity", "nodes"] = Field(
        "affinity",
        description="Kubernetes backend: `affinity` keeps every lesson on one node by the seed's required pod "
        "affinity (the scheduler picks the node); `nodes` places each lesson on the nodes labelled "
        "lessons.io/tunnel-address (where the node agent runs): on one while it fits, else split with the "
        "fewest crossing links, which the node agent joins with VXLAN.",
    )
    insecure_registries: str = Field(
        "",
        description="Local backend: comma-separated registries (host:port) pulled from over plain HTTP or "
        "without TLS verification, e.g. a lab registry on loopback; empty: none.",
    )
    image_dir: Path | None = Field(
        None, description="Local backend's image store (an OCI layout and unpacked images); default STATE_DIR/images."
    )
    image_registry: str = Field("antidotelabs", description="Prefix for catalog image slugs on Kubernetes.")
    image_substitute: str | None = Field(
        None,
        description="An image reference every endpoint runs instead of its own (e.g. `busybox`), for machines "
        "that cannot pull the lessons' images; an endpoint without a `command` then runs `sleep infinity`. "
        "Off when unset or empty; the record and the status page say when it is on.",
    )
    step_max_attempts: int = Field(5, ge=1, description="Attempts per step on transient errors before failing.")
    visibility_timeout_seconds: int = Field(
        600, ge=5, description="Redis redelivers an unacknowledged task after this; above every time limit."
    )
    lease_seconds: int = Field(
        20, ge=2, description="A step with no progress for this long is re-driven by GC (its worker died)."
    )
    ping_probes: int = Field(
        5, ge=1, le=100, description="Pings per link direction once it answers; the record keeps their statistics."
    )
    ping_interval_ms: int = Field(20, ge=2, le=1000, description="Time between those pings, in milliseconds.")
    ping_max_loss_pct: float = Field(
        0.0, ge=0, lt=100, description="A link passes when at most this share of those pings is lost."
    )
    max_lifetime_seconds: int = Field(
        4 * 3600, ge=10, description="A live lesson ends this long after its request, whatever its keepalives."
    )
    reserved_subnets: str = Field(
        "10.96.0.0/12,10.244.0.0/16",
        description="Comma-separated CIDRs no lesson subnet may overlap: the cluster's service and pod ranges "
        "(Kubernetes' defaults) and any management network.",
    )

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels(cls, value: str) -> str:
        return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in parse_sentinels(value))

    @field_validator("redis_min_replicas", mode="before")
    @classmethod
    def _min_replicas(cls, value: object) -> object:
        return None if value == "" else value  # an empty LESSON_REDIS_MIN_REPLICAS= means its default

    @field_validator("redis_master")
    @classmethod
    def _master(cls, value: str) -> str:
        # it goes into a sentinel:// URL and a SENTINEL command: a plain name only
        if not _MASTER_NAME.fullmatch(value):
            raise ValueError("must be 1-64 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("instance")
    @classmethod
    def _instance(cls, value: str) -> str:
        # "<instance>-<10-char id>" must itself be a DNS-1123 label (a namespace name)
        if not is_dns1123_label(value) or len(value) > 40:
            raise ValueError("must be a DNS-1123 label of at most 40 characters")
        return value

    @field_validator("api_token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        # an empty LESSON_API_TOKEN= must not mean "a token that equals the empty header"
        return value or None

    @field_validator("image_substitute")
    @classmethod
    def _substitute(cls, value: str | None) -> str | None:
        # empty means off, like an unset variable; anything else must be an image a runtime can pull
        if not value:
            return None
        if (why := check_image_reference(value)) is not None:
            raise ValueError(f"LESSON_IMAGE_SUBSTITUTE {why}")
        return value

    @field_validator("subnet_pool", "main_pool")
    @classmethod
    def _pool(cls, value: str) -> str:
        net = ipaddress.IPv4Network(value)
        if net.prefixlen > 24:
            raise ValueError("must be /24 or larger")
        if (why := check_special(net)) is not None:
            raise ValueError(why)
        return str(net)

    @field_validator("reserved_subnets")
    @classmethod
    def _reserved(cls, value: str) -> str:
        nets = [ipaddress.IPv4Network(part.strip()) for part in value.split(",") if part.strip()]
        return ",".join(str(n) for n in nets)

    @model_validator(mode="after")
    def _sentinels_without_tls(self) -> Settings:
        if self.redis_sentinels and self.redis_url.startswith("rediss://"):
            # not built: the sentinels' own TLS and the managed connections' would each need certificates
            raise ValueError("LESSON_REDIS_SENTINELS with a rediss:// LESSON_REDIS_URL (TLS) is not supported")
        return self

    @model_validator(mode="after")
    def _pool_not_reserved(self) -> Settings:
        pool, main = ipaddress.IPv4Network(self.subnet_pool), ipaddress.IPv4Network(self.main_pool)
        for name, net in (("LESSON_SUBNET_POOL", pool), ("LESSON_MAIN_POOL", main)):
            for reserved in self.reserved:
                if net.overlaps(reserved):
                    raise ValueError(f"{name} {net} overlaps the reserved {reserved} (LESSON_RESERVED_SUBNETS)")
        if pool.overlaps(main):
            raise ValueError(f"LESSON_MAIN_POOL {main} overlaps LESSON_SUBNET_POOL {pool}: eth0 and a link would clash")
        return self

    @property
    def sentinels(self) -> tuple[tuple[str, int], ...]:
        """The sentinels as (host, port); empty when the deployment has one Redis."""
        return parse_sentinels(self.redis_sentinels)

    @property
    def min_replicas(self) -> int:
        """Replicas an acknowledged write waits for (LESSON_REDIS_MIN_REPLICAS, or its default)."""
        if self.redis_min_replicas is not None:
            return self.redis_min_replicas
        return 1 if self.sentinels else 0

    @property
    def reserved(self) -> tuple[ipaddress.IPv4Network, ...]:
        """The reserved ranges as networks (lesson subnets may not overlap them)."""
        return tuple(ipaddress.IPv4Network(n) for n in self.reserved_subnets.split(",") if n)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
