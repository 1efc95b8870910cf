"""The collector side: :class:`KafkaEventPublisher` publishes normalised events as
envelopes and spools them to disk (:mod:`sigstream.connectors.spool`) whenever Kafka
cannot take them, so that no event is lost silently.

Delivery -- at-least-once, no silent loss:

* Producer: ``acks=all``, ``enable_idempotence=True``, unlimited retries and a
  long ``delivery_timeout_ms``: a batch in flight when the broker goes away is
  retried with the same producer id/sequence when it comes back, so the broker
  drops retried duplicates (no broker-side duplicates, order kept per
  partition).
* Memory is bounded: at most ``memory_limit`` unacknowledged records are held by
  the producer. When it is full (broker slow or unreachable), when the broker
  cannot be reached at all (no metadata, cannot bootstrap) or when a send
  fails, records go to the disk spool (:mod:`connectors.spool`) instead.
  ``publish`` blocks at most ``max_block_s`` (back-pressure from a healthy but
  slower broker); in an outage it does not block (records go straight to disk).
* Order: while the spool holds unsent records every new record is appended to
  the spool too, and the spool is drained in order through the same producer
  before anything newer is sent, so each host's events (key = host) reach their
  partition in publication order.
* Spool segments are deleted only after every record read from them was
  acknowledged by the broker.
* On ``close`` with records still unacknowledged (broker down at exit), those
  records are written to the FRONT of the spool in their send order and the
  already-sent part of the spool is compacted away, so the next run with the
  same spool directory resends them first, in order.
* The spool has a size cap: when it is hit the event is dropped, counted in
  ``stats["dropped"]`` and ``logging.error`` says so once per episode (never
  silent). Records the broker rejects for good (non-retriable errors such as
  a record too large) are dropped, counted and logged the same way.
* Duplicates remain possible in rare cases (a batch the broker stored but whose
  acknowledgement was lost when the process exited or the delivery timeout
  expired, a crash between acknowledgement and spool clean-up, re-reading the
  same files): envelopes carry a stable ``event_id`` for consumer-side
  de-duplication. A hard crash (SIGKILL) loses the at most ``memory_limit``
  records held only in memory; re-running ``collect`` on the same files
  recovers them (stable event ids).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer

from sigstream.connectors.kafka.connection import _client
from sigstream.connectors.kafka.errors import KafkaConnectError, _describe
from sigstream.connectors.kafka.producer import (_RECORD_ERRORS, _close_producer, _permanent,
                                                 _producer_kwargs, best_compression)
from sigstream.connectors.kafka.settings import KafkaSettings
from sigstream.connectors.spool import Spool, SpoolRecord
from sigstream.stream.envelope import encode, host_key, wrap
from sigstream.stream.topics import TOPIC_PREFIX, event_topic

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _InFlight:
    rec: SpoolRecord
    segment: int | None      # spool segment it was read from (None: sent directly)


class KafkaEventPublisher:
    """Publishes normalised events as envelopes; spools to disk when Kafka cannot take them.

    See the module docstring for the guarantees. Not thread-safe (one publishing thread;
    acknowledgements arrive on the producer's I/O thread).
    """

    def __init__(self, settings: KafkaSettings, *, collector_id: str, spool_dir: str | os.PathLike,
                 topic_prefix: str = TOPIC_PREFIX, memory_limit: int = 10_000,
                 spool_max_bytes: int = 1 << 30, spool_segment_bytes: int = 16 << 20,
                 spool_fsync: str = "batch", max_block_s: float = 1.0,
                 metadata_timeout_s: float = 2.0, bootstrap_timeout_s: float = 5.0,
                 delivery_timeout_s: float = 3600.0, compression: str | None = "auto",
                 linger_ms: int = 5, batch_size: int = 256 * 1024, retry_backoff_s: float = 0.5,
                 max_retry_backoff_s: float = 10.0):
        self.settings = settings
        self.collector_id = collector_id
        self.topic_prefix = topic_prefix
        self.memory_limit = max(1, memory_limit)
        self.max_block_s = max_block_s
        self.spool = Spool(spool_dir, max_bytes=spool_max_bytes, segment_bytes=spool_segment_bytes,
                           fsync=spool_fsync)
        self._producer_kw = _producer_kwargs(
            settings, "all", True, best_compression() if compression == "auto" else compression,
            linger_ms, batch_size=batch_size, max_block_ms=int(metadata_timeout_s * 1000),
            bootstrap_timeout_ms=int(bootstrap_timeout_s * 1000),
            delivery_timeout_ms=int(delivery_timeout_s * 1000),
            request_timeout_ms=30000)
        self._producer: KafkaProducer | None = None
        self._connect_timeout_s = bootstrap_timeout_s
        self._settings_problem = False   # the last failure to connect was our settings' fault
        self._retry_backoff = (retry_backoff_s, max_retry_backoff_s)
        self._backoff = retry_backoff_s
        self._next_attempt = 0.0
        self._last_problem: str | None = None

        self._lock = threading.Condition()
        self._seq = 0
        self._inflight: OrderedDict[int, _InFlight] = OrderedDict()
        self._failed: list[tuple[int, _InFlight, BaseException]] = []
        self._seg_read: dict[int, int] = {}     # spool segment -> records read from it
        self._seg_done: dict[int, int] = {}     # spool segment -> records acknowledged/settled
        self._stalled = False
        self._closed = False
        self._dropping = False
        self._counts = dict(published=0, sent=0, acked=0, spooled=0, dropped=0, retries=0,
                            rejected=0, resent_from_spool=0)
        if self.spool.unread:
            log.info("spool %s holds %d record(s) from an earlier run; they are sent first",
                     self.spool.dir, self.spool.unread)

    # ----------------------------------------------------------- producer --
    def _ensure_producer(self) -> bool:
        """Is there a producer to send to (creating it if due)? False while backing off
        after a failure to connect or to send."""
        if time.monotonic() < self._next_attempt:
            return False
        if self._producer is not None:
            return True
        try:
            self._producer = _client(KafkaProducer, self.settings, self._connect_timeout_s,
                                     **self._producer_kw)
            self._backoff = self._retry_backoff[0]
            self._settings_problem = False
            if self._last_problem:
                log.warning("Kafka at %s reachable again", self.settings.bootstrap)
                self._last_problem = None
            return True
        except KafkaConnectError as e:  # unreachable, or authentication / TLS / protocol
            self._settings_problem = e.config
            self._trouble(str(e))
            return False
        except Exception as e:  # noqa: BLE001 - timeouts, ...
            self._trouble(f"cannot connect to Kafka at {self.settings.bootstrap}: {_describe(e)}")
            return False

    def _trouble(self, problem: str) -> None:
        if problem != self._last_problem:
            log.warning("%s; spooling to %s", problem, self.spool.dir)
            self._last_problem = problem
        self._next_attempt = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._retry_backoff[1])

    def _on_ack(self, seq: int, _meta: Any) -> None:
        with self._lock:
            self._stalled = False
            if self._closed:
                return
            item = self._inflight.pop(seq, None)
            if item is None:
                return
            self._backoff = self._retry_backoff[0]
            self._counts["acked"] += 1
            if item.segment is not None:
                self._seg_done[item.segment] = self._seg_done.get(item.segment, 0) + 1
            self._lock.notify_all()

    def _on_error(self, seq: int, exc: BaseException) -> None:
        with self._lock:
            if self._closed:
                return
            item = self._inflight.pop(seq, None)
            if item is None:
                return
            self._failed.append((seq, item, exc))
            self._lock.notify_all()

    def _send(self, rec: SpoolRecord, segment: int | None) -> bool:
        """Hand one record to the producer; False if it could not even be queued."""
        assert self._producer is not None
        try:
            fut = self._producer.send(rec.topic, value=rec.value, key=rec.key)
        except (*_RECORD_ERRORS, TypeError, ValueError) as e:
            self._reject(rec, segment, e)
            return True
        except Exception as e:  # noqa: BLE001 - metadata timeout, closed, ...
            self._trouble(f"cannot send to {rec.topic}: {_describe(e)}")
            return False
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._inflight[seq] = _InFlight(rec, segment)
            self._counts["sent"] += 1
        fut.add_callback(self._on_ack, seq)
        fut.add_errback(self._on_error, seq)
        return True

    def _reject(self, rec: SpoolRecord, segment: int | None, exc: BaseException) -> None:
        self._counts["dropped"] += 1
        self._counts["rejected"] += 1
        log.error("Kafka rejected a record for %s for good, DROPPED: %s", rec.topic, _describe(exc))
        if segment is not None:
            self._seg_done[segment] = self._seg_done.get(segment, 0) + 1

    # -------------------------------------------------------------- spool --
    def _to_spool(self, rec: SpoolRecord) -> bool:
        if self.spool.append(rec):
            self._counts["spooled"] += 1
            if self._dropping:
                log.warning("spool %s has room again", self.spool.dir)
                self._dropping = False
            return True
        self._counts["dropped"] += 1
        if not self._dropping:
            log.error("spool %s is full (%d bytes, cap %d): DROPPING events until Kafka takes "
                      "records again; the count is in the stats", self.spool.dir, self.spool.bytes,
                      self.spool.max_bytes)
            self._dropping = True
        return False

    def _service(self) -> None:
        """Settle failed sends and delete spool segments that are delivered."""
        with self._lock:
            failed, self._failed = self._failed, []
        for _seq, item, exc in failed:
            if not _permanent(exc):
                if self._counts["retries"] == 0 or exc.__class__.__name__ != getattr(self, "_last_failure", ""):
                    log.warning("delivery failed (%s); the record goes back to the spool", _describe(exc))
                    self._last_failure = exc.__class__.__name__
                self._counts["retries"] += 1
                self._to_spool(item.rec)   # ends up behind newer records (see docstring)
                if item.segment is not None:
                    self._seg_done[item.segment] = self._seg_done.get(item.segment, 0) + 1
            else:
                self._reject(item.rec, item.segment, exc)
        if self._seg_read:
            with self._lock:
                done = dict(self._seg_done)
            for seg, read in list(self._seg_read.items()):
                if (self.spool.fully_read(seg) and done.get(seg, 0) >= self.spool.records_in(seg)
                        and read >= self.spool.records_in(seg)):
                    self.spool.delete_segment(seg)
                    self._seg_read.pop(seg, None)
                    with self._lock:
                        self._seg_done.pop(seg, None)

    def _room(self, wait: bool) -> bool:
        with self._lock:
            if len(self._inflight) < self.memory_limit:
                return True
            if not wait or self._stalled:
                return False
            ok = self._lock.wait_for(lambda: len(self._inflight) < self.memory_limit, self.max_block_s)
            if not ok:
                self._stalled = True
            return ok

    def _pump(self) -> None:
        """Send spooled records, in order, while the producer has room."""
        while self.spool.unread > 0 and self._ensure_producer():
            with self._lock:
                room = self.memory_limit - len(self._inflight)
            if room <= 0:
                return
            batch = self.spool.read(min(room, 1000))
            if not batch:
                return
            for i, (seg, cursor, rec) in enumerate(batch):
                if not self._send(rec, seg):
                    self.spool.seek(cursor, len(batch) - i)
                    return
                self._seg_read[seg] = self._seg_read.get(seg, 0) + 1
                self._counts["resent_from_spool"] += 1

    # ----------------------------------------------------------------- API --
    def publish(self, event: dict) -> None:
        """Wrap ``event`` in an envelope and publish it (key = host, topic per source)."""
        env = wrap(event, self.collector_id)
        rec = SpoolRecord(event_topic(env["source"], self.topic_prefix), host_key(event), encode(env))
        self.publish_record(rec)

    def publish_record(self, rec: SpoolRecord) -> None:
        self._counts["published"] += 1
        self._service()
        if self._ensure_producer():
            if self.spool.unread > 0:
                self._room(wait=True)        # back-pressure, bounded
                self._pump()
            if self.spool.unread == 0 and self._room(wait=True) and self._send(rec, None):
                return
        self._to_spool(rec)

    def pending(self) -> int:
        """Records not yet acknowledged: in memory plus unread in the spool."""
        with self._lock:
            return len(self._inflight) + len(self._failed) + self.spool.unread

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Send everything (spool included) and wait for the acknowledgements, at most
        ``timeout_s``. True if nothing is left unacknowledged."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._service()
            self._pump()
            self.spool.flush()
            if self._producer is None and self._settings_problem:
                break   # authentication / TLS settings: waiting cannot help, the spool keeps it all
            with self._lock:
                if not self._inflight and not self._failed and self.spool.unread == 0:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(min(left, 0.1))
        self._service()
        return self.pending() == 0

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush (bounded), then persist whatever is still unacknowledged to the front of the
        spool so that the next run sends it first."""
        try:
            self.flush(timeout_s)
        finally:
            if self._producer is not None:
                # after this the producer's I/O thread is gone: no callback races below
                _close_producer(self._producer, 0 if self.pending() else 5)
            with self._lock:
                self._closed = True
                held_seq = [(seq, item.rec) for seq, item in self._inflight.items()]
                held_seq += [(seq, item.rec) for seq, item, _ in self._failed]
                held = [rec for _, rec in sorted(held_seq, key=lambda p: p[0])]
                self._inflight.clear()
                self._failed.clear()
            # every record before the spool cursor is now acknowledged, rejected, re-spooled
            # further back or in `held`: drop that prefix, then put `held` in front
            self.spool.compact_read_prefix()
            if held:
                self.spool.prepend(held)
                log.warning("%d unacknowledged record(s) saved to the spool %s for the next run",
                            len(held), self.spool.dir)
            self.spool.close()

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            s = dict(self._counts)
            s["in_flight"] = len(self._inflight)
        s["spool_bytes"] = self.spool.bytes
        s["spool_unsent"] = self.spool.unread
        return s
