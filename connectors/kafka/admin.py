"""Topic administration: creating topics (:func:`create_topics`) and reading a compacted
topic back as a key -> value map (:func:`read_changelog`, no consumer group).

Topic names are not made here: they come from :mod:`sigstream.stream.topics`.
"""
from __future__ import annotations

import time

from kafka import KafkaAdminClient, KafkaConsumer
from kafka import errors as kerrors

from sigstream.connectors.kafka.connection import _client
from sigstream.connectors.kafka.errors import KafkaError, _describe
from sigstream.connectors.kafka.settings import KafkaSettings


def create_topics(settings: KafkaSettings, names: list[str], partitions: int = 3,
                  retention_ms: int | None = None, replication_factor: int = -1,
                  timeout_s: float = 30, configs: dict[str, str] | None = None) -> list[str]:
    """Create ``names`` (existing topics are fine); returns the ones created now.

    ``replication_factor=-1`` uses the broker's ``default.replication.factor``.
    ``configs``: topic configs for the new topics (e.g. ``{"cleanup.policy": "compact"}``);
    an existing topic keeps its own.
    """
    try:
        admin = _client(KafkaAdminClient, settings, min(timeout_s, settings.connect_timeout_s),
                        request_timeout_ms=int(timeout_s * 1000), bootstrap_timeout_ms=int(timeout_s * 1000))
    except KafkaError:
        raise
    except Exception as e:  # noqa: BLE001
        raise KafkaError(f"cannot reach Kafka at {settings.bootstrap}: {_describe(e)}") from e
    try:
        topic_configs = {"retention.ms": str(retention_ms)} if retention_ms else {}
        topic_configs.update(configs or {})
        spec = {n: {"num_partitions": partitions, "replication_factor": replication_factor,
                    "configs": topic_configs} for n in names}
        result = admin.create_topics(spec, timeout_ms=int(timeout_s * 1000), raise_errors=False)
        created, problems = [], []
        for t in result.get("topics", []):
            code = t.get("error_code", 0)
            name = t.get("name")
            if code == 0:
                created.append(name)
            elif code != kerrors.TopicAlreadyExistsError.errno:
                problems.append(f"{name}: {kerrors.for_code(code).__name__} {t.get('error_message') or ''}".strip())
        if problems:
            raise KafkaError("could not create topic(s): " + "; ".join(problems))
        if created:
            admin.wait_for_topics(created, timeout_ms=int(timeout_s * 1000))
        return created
    finally:
        admin.close()



def read_changelog(settings: KafkaSettings, topic: str, timeout_s: float = 60) -> dict[bytes, bytes]:
    """The latest value of every key of a (compacted) topic: read from the beginning to the
    end offsets taken at the start, last value per key wins, a tombstone (None) deletes.
    No consumer group (nothing is committed). KafkaError if the end is not reached in time."""
    from kafka.structs import TopicPartition

    consumer = _client(KafkaConsumer, settings, group_id=None, enable_auto_commit=False,
                       auto_offset_reset="earliest")
    try:
        deadline = time.monotonic() + timeout_s
        parts: set[int] = set()
        while not parts:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                if time.monotonic() > deadline:
                    raise KafkaError(f"changelog topic {topic} not found")
                time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: dict[bytes, bytes] = {}
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise KafkaError(f"could not read changelog {topic} to its end within {timeout_s}s")
            for _tp, records in consumer.poll(timeout_ms=500).items():
                for r in records:
                    if r.value is None:
                        out.pop(r.key, None)
                    else:
                        out[r.key] = r.value
        return out
    finally:
        consumer.close(autocommit=False)

