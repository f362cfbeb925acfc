"""Where Redis is: the Sentinel settings, validated at the boundary, and what each client is given."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from scheduler.services.queue import celery_config
from scheduler.services.redis_endpoint import celery_endpoints
from scheduler.settings import Settings


def test_sentinels_parse_and_normalise() -> None:
    s = Settings(redis_sentinels=" 10.0.0.5:26379, sentinel-2.example:26380,[::1]:26381 ")
    assert s.sentinels == (("10.0.0.5", 26379), ("sentinel-2.example", 26380), ("::1", 26381))
    assert s.redis_sentinels == "10.0.0.5:26379,sentinel-2.example:26380,[::1]:26381"
    assert Settings().sentinels == ()


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("10.0.0.5", "'10.0.0.5' is not host:port"),
        ("10.0.0.5:0", "is not host:port"),
        ("10.0.0.5:65536", "is not host:port"),
        ("host name:1", "is not host:port"),
        ("a:1;FLUSHALL", "is not host:port"),
        ("x@evil:1", "is not host:port"),
        ("a:1,a:1", "lists a sentinel twice"),
    ],
)
def test_hostile_sentinel_lists_are_refused_by_name(value: str, says: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(redis_sentinels=value)
    assert "redis_sentinels" in str(info.value) and says in str(info.value)


@pytest.mark.parametrize("name", ["", "a b", "lessons/0", "x" * 65, "m;x"])
def test_a_master_name_is_a_plain_name(name: str) -> None:
    with pytest.raises(ValidationError, match="redis_master"):
        Settings(redis_master=name)


def test_min_replicas_defaults_to_one_with_sentinels_and_none_without() -> None:
    assert Settings().min_replicas == 0
    assert Settings(redis_sentinels="127.0.0.1:26379").min_replicas == 1
    assert Settings(redis_sentinels="127.0.0.1:26379", redis_min_replicas=0).min_replicas == 0
    assert Settings(redis_min_replicas="").min_replicas == 0  # type: ignore[arg-type]  # as an empty env var
    with pytest.raises(ValidationError, match="redis_min_replicas"):
        Settings(redis_min_replicas=-1)


def test_tls_with_sentinels_is_refused_not_ignored() -> None:
    with pytest.raises(ValidationError, match="not supported"):
        Settings(redis_sentinels="127.0.0.1:26379", redis_url="rediss://:pw@127.0.0.1:6380/0")


def test_one_redis_gives_celery_its_url() -> None:
    s = Settings(redis_url="redis://:pw@10.1.2.3:6379/2")
    url, options = celery_endpoints(s)
    assert url == s.redis_url and "master_name" not in options


def test_sentinels_give_celery_one_sentinel_url_each_with_the_password_and_db() -> None:
    s = Settings(
        redis_url="redis://:p%40ss@ignored:6379/3", redis_sentinels="10.0.0.5:26379,[::1]:26380", redis_master="m1"
    )
    url, options = celery_endpoints(s)
    assert url == "sentinel://:p%40ss@10.0.0.5:26379/3;sentinel://:p%40ss@[::1]:26380/3"
    assert options["master_name"] == "m1"
    # the sentinels require the same password: kombu and Celery pass sentinel_kwargs to them
    assert options["sentinel_kwargs"]["password"] == "p@ss"
    config = celery_config(s)
    assert config["broker_url"] == config["result_backend"] == url
    assert config["broker_transport_options"]["master_name"] == "m1"
    assert config["result_backend_transport_options"]["master_name"] == "m1"
    assert config["broker_transport_options"]["visibility_timeout"] == s.visibility_timeout_seconds


def test_no_sentinel_answering_is_a_temporary_error_in_words() -> None:
    from scheduler.core.errors import TemporaryError
    from scheduler.dev.redis_server import free_port
    from scheduler.services.state import Store

    store = Store.from_settings(Settings(redis_sentinels=f"127.0.0.1:{free_port()}", redis_master="m1"))
    with pytest.raises(TemporaryError) as info:
        store.ping()
    assert str(info.value) == "Redis is unreachable: no sentinel of LESSON_REDIS_SENTINELS names a primary for 'm1'"
