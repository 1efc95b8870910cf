"""The live event-log source, fed the whole evtx-attack-samples corpus as rendered XML, loses no
record and gives `hunt`'s alerts on the EVTX files.

Each EVTX file's records of one channel are served, in file order, by the fake pywin32
``win32evtlog`` (tests/fakes) as one event-log channel: a real channel holds one machine's records
with rising record ids, and every (file, channel) group of the corpus does (checked below). The
source (connectors/eventlog.py: EvtSubscribe / EvtNext / EvtRender) reads the first half, is
stopped, and after the second half was written resumes from its persisted bookmark, so the
restart path is replayed on the whole corpus too. Every event is then carried as the agent
publishes it (the Kafka envelope, encoded and decoded) and run through the detector that `hunt`
uses. Alerts are compared on every field but ``detected_at`` and ``source`` (processing time and
where the event was read).
"""
from __future__ import annotations

import re
import time
from collections import defaultdict

import orjson
import pytest

import fakes
from sigstream.connectors.eventlog import EventLogSource
from sigstream.connectors.readers import find_event_files
from sigstream.stream import envelope

pytestmark = pytest.mark.conformance

CORPUS_RECORDS = 8255
_DECL = re.compile(r"\A<\?xml[^>]*\?>\s*")
_CHANNEL = re.compile(r"<Channel>([^<]*)</Channel>")


class Collect(list):
    add = list.append

    def flush(self):
        pass

    def close(self):
        pass


@pytest.fixture(scope="module")
def corpus(attack_samples):
    """(evtx files, [(file index, channel, [rendered XML, ...])]) in file and record order."""
    from evtx import PyEvtxParser

    files = [f for f in find_event_files([attack_samples]) if f.suffix.lower() == ".evtx"]
    groups = []
    for i, f in enumerate(files):
        by_channel: dict[str, list[str]] = defaultdict(list)
        for r in PyEvtxParser(str(f)).records():
            xml = _DECL.sub("", r["data"])            # EvtRender gives no XML declaration
            by_channel[_CHANNEL.search(xml).group(1).strip()].append(xml)
        groups += [(i, ch, xs) for ch, xs in by_channel.items()]
    return files, groups


def _replay(win32evtlog, win32event, channel: str, records: list[str], state_dir) -> tuple[list, dict]:
    """Serve `records` as `channel`; read half, stop, add the rest, resume from the bookmark."""
    got: list[dict] = []

    def emit(ev, ack):
        got.append(ev)
        if ack is not None:
            ack()        # handed to the publisher: the bookmark may move past it

    half = len(records) // 2
    win32evtlog.reset()
    win32evtlog.CHANNELS[channel] = list(records[:half])
    stats: dict = {}
    for want, more in ((half, ()), (len(records), records[half:])):
        for xml in more:
            win32evtlog.write(channel, xml)
        src = EventLogSource(channel, emit, state_dir, wait_ms=5, modules=(win32evtlog, win32event))
        src.start()
        assert fakes.wait_until(lambda: len(got) >= want, timeout=60), (channel, len(got), want)
        time.sleep(0.01)     # nothing beyond what was served may come
        src.stop()
        for k, v in src.stats().items():
            if isinstance(v, int) and not isinstance(v, bool):
                stats[k] = stats.get(k, 0) + v
        assert src.error is None
        assert not src.dead_letter_path.exists()
    return got, stats


@pytest.fixture(scope="module")
def replayed(corpus, tmp_path_factory):
    """Every (file, channel) group through the live source: (evtx files, events as carried, counts)."""
    files, groups = corpus
    state = tmp_path_factory.mktemp("live-state")
    with pytest.MonkeyPatch.context() as mp:
        _, win32evtlog, win32event = fakes.install(mp)
        for _, _, xs in groups:            # a channel's record ids only rise
            ids = [win32evtlog.record_id(x) for x in xs]
            assert all(a < b for a, b in zip(ids, ids[1:]))
        live, per_group, totals = [], [], defaultdict(int)
        for n, (_, channel, xs) in enumerate(groups):
            # a few records have an empty <Channel>: served from a channel of some name all the same
            got, stats = _replay(win32evtlog, win32event, channel or "Unnamed", xs, state / str(n))
            per_group.append((channel, [win32evtlog.record_id(x) for x in xs], got))
            for k in ("events", "parse_errors", "unreadable", "acked"):
                totals[k] += stats[k]
            live += got
    # as the agent publishes them and the processor reads them
    carried = [envelope.decode(envelope.encode(envelope.wrap(e, "replay")))["event"] for e in live]
    return files, carried, per_group, dict(totals)


def test_every_record_read_once_in_order_across_a_restart(replayed):
    _, carried, per_group, totals = replayed
    for channel, ids, got in per_group:
        # records in = records out, in order, each once (+ 0 dead letters, checked per run)
        assert [e["EventRecordID"] for e in got] == ids, channel
        assert {e["Channel"] for e in got} == {channel}
    assert len(carried) == CORPUS_RECORDS
    assert totals == {"events": CORPUS_RECORDS, "parse_errors": 0, "unreadable": 0,
                      "acked": CORPUS_RECORDS}


def _alerts_compared(files, events, rules, tmp_path) -> int:
    from sigstream.hunting import hunt_files
    from sigstream.stream.detector import Detector
    from sigstream.stream.engine import Engine
    from sigstream.stream.enrich import enrich

    hunted, ran, errors = Collect(), Collect(), []
    hunt_files(files, Detector(Engine(rules, enrich=enrich, cache_dir=tmp_path)), hunted,
               on_error=errors.append)
    assert errors == []
    det = Detector(Engine(rules, enrich=enrich, cache_dir=tmp_path))
    for e in events:
        ran += det.detect(e, None, time.time())
    ran += det.finish(time.time())

    def strip(alerts):
        out = [{k: v for k, v in a.items() if k not in ("detected_at", "source")} for a in alerts]
        return sorted(out, key=lambda a: orjson.dumps(a, option=orjson.OPT_SORT_KEYS))

    assert hunted and len(ran) == len(hunted)
    # values and their types (orjson tells 1, True, "1" and 1.0 apart)
    assert orjson.dumps(strip(ran), option=orjson.OPT_SORT_KEYS) == \
        orjson.dumps(strip(hunted), option=orjson.OPT_SORT_KEYS)
    return len(hunted)


def test_live_source_gives_hunts_alerts_bundled_rules(replayed, tmp_path):
    from sigstream.resources import bundled_rules
    from sigstream.stream.rules import load_rules

    files, carried, _, _ = replayed
    loaded = load_rules([str(bundled_rules())], cache_dir=tmp_path)
    assert _alerts_compared(files, carried, loaded.rules, tmp_path) > 0


def test_live_source_gives_hunts_alerts_sigmahq_windows_rules(replayed, windows_rules, tmp_path):
    files, carried, _, _ = replayed
    assert _alerts_compared(files, carried, windows_rules.rules, tmp_path) > 1000
