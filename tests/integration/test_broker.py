"""Round trip through the real Kafka broker started by conftest.py."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

N_MESSAGES = 100
N_KEYS = 7
N_PARTITIONS = 3


def test_produce_consume_round_trip(kafka_bootstrap):
    topic = f"it-roundtrip-{uuid.uuid4().hex[:8]}"
    group = f"it-group-{uuid.uuid4().hex[:8]}"

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="it-admin")
    try:
        admin.create_topics(
            [NewTopic(name=topic, num_partitions=N_PARTITIONS, replication_factor=1)]
        )
        admin.wait_for_topics([topic], timeout_ms=30000)
        described = admin.describe_topics([topic])
        assert len(described[0]["partitions"]) == N_PARTITIONS
    finally:
        admin.close()

    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        acks="all",
    )
    sent = defaultdict(list)  # key -> values in send order
    try:
        futures = []
        for i in range(N_MESSAGES):
            key = f"key-{i % N_KEYS}"
            value = f"{key}:{i}"
            sent[key].append(value)
            futures.append(producer.send(topic, key=key.encode(), value=value.encode()))
        producer.flush(timeout=30)
        metas = [f.get(timeout=30) for f in futures]
    finally:
        producer.close()
    assert {m.partition for m in metas} <= set(range(N_PARTITIONS))
    assert len({m.partition for m in metas}) > 1, "keys should spread over partitions"

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    received = defaultdict(list)
    partitions_of_key = defaultdict(set)
    count = 0
    deadline = time.monotonic() + 60
    try:
        while count < N_MESSAGES and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=1000).items():
                for r in records:
                    key = r.key.decode()
                    received[key].append(r.value.decode())
                    partitions_of_key[key].add(tp.partition)
                    count += 1
        consumer.commit()
        assigned = consumer.assignment()
    finally:
        consumer.close()

    assert count == N_MESSAGES, f"got {count} of {N_MESSAGES} messages"
    assert {tp.partition for tp in assigned} == set(range(N_PARTITIONS))
    assert dict(received) == dict(sent)  # all arrived, per-key order kept
    assert all(len(p) == 1 for p in partitions_of_key.values())


def test_broker_status_reports_running(kafka_broker):
    res = kafka_broker.run("status")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "running" in res.stdout
    assert f"127.0.0.1:{kafka_broker.port}" in res.stdout
