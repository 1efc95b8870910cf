#!/usr/bin/env bash
# Single-node Apache Kafka 4.x broker (KRaft, combined broker+controller) that
# fetches its own jars from Maven Central and runs on 127.0.0.1.
#
#   deploy/kafka/broker.sh start|stop|status|logs [-f]
#
# Environment (all optional):
#   KAFKA_VERSION          Kafka version to fetch                (4.1.1)
#   KAFKA_CACHE_DIR        where the jars are cached             (deploy/kafka/.cache)
#   KAFKA_DATA_DIR         storage, config, pid and log file     (deploy/kafka/data)
#   KAFKA_PORT             client (PLAINTEXT) port               (9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port                 (KAFKA_PORT+1)
#   KAFKA_HEAP_OPTS        JVM heap options                      (-Xms128m -Xmx512m)
#   KAFKA_OPTS             extra JVM options
#   KAFKA_AUTO_CREATE_TOPICS  auto.create.topics.enable          (false)
#   KAFKA_EXTRA_CONFIG     extra server.properties lines (newline separated)
#   KAFKA_START_TIMEOUT    seconds `start` waits for the broker  (90)
#   KAFKA_STOP_TIMEOUT     seconds `stop` waits before SIGKILL   (30)
#   KAFKA_PROBE_PYTHON     python with kafka-python for the metadata probe
#                          (python3 if it can `import kafka`; else log-line check only)
#   KAFKA_LOG_LINES        lines shown by `logs` and on failure  (60)
#   JAVA_HOME / MVN        java and maven to use
#
# Exit codes: 0 ok / running, 1 error, 2 usage, 3 `status`: not running.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
CACHE_DIR="$(realpath -m "${KAFKA_CACHE_DIR:-$SCRIPT_DIR/.cache}")"
DATA_DIR="$(realpath -m "${KAFKA_DATA_DIR:-$SCRIPT_DIR/data}")"
PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
LOG_LINES="${KAFKA_LOG_LINES:-60}"
AUTO_CREATE="${KAFKA_AUTO_CREATE_TOPICS:-false}"
MVN="${MVN:-mvn}"
if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then JAVA="$JAVA_HOME/bin/java"; else JAVA=java; fi

LIB_DIR="$CACHE_DIR/kafka-$KAFKA_VERSION/lib"
STAMP="$CACHE_DIR/kafka-$KAFKA_VERSION/.complete"
PID_FILE="$DATA_DIR/kafka.pid"
LOG_FILE="$DATA_DIR/kafka.log"
CONFIG="$DATA_DIR/server.properties"
LOG4J_CONFIG="$DATA_DIR/log4j2.properties"
STORAGE_DIR="$DATA_DIR/kraft-logs"
CLUSTER_ID_FILE="$DATA_DIR/cluster.id"

log() { echo "broker.sh: $*"; }
die() { echo "broker.sh: error: $*" >&2; exit 1; }

for v in PORT CONTROLLER_PORT START_TIMEOUT STOP_TIMEOUT LOG_LINES; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a number, got '${!v}'"
done
[[ "$PORT" != "$CONTROLLER_PORT" ]] || die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ"

# ---------------------------------------------------------------- helpers ---

# pid of the broker running on DATA_DIR, or nothing.
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # guard against pid reuse: it must be our kafka.Kafka on our config
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $CONFIG" || return 1
  echo "$pid"
}

# "127.0.0.1:PORT" the broker on DATA_DIR was configured with at its last start
configured_addr() {
  local l
  l="$(grep -m1 '^advertised.listeners=' "$CONFIG" 2>/dev/null || true)"
  if [[ -n "$l" ]]; then echo "${l#*PLAINTEXT://}"; else echo "127.0.0.1:$PORT"; fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

show_log_tail() {
  if [[ -f "$LOG_FILE" ]]; then
    echo "----- last $LOG_LINES lines of $LOG_FILE -----" >&2
    tail -n "$LOG_LINES" "$LOG_FILE" >&2 || true
    echo "-----" >&2
  else
    echo "(no log file at $LOG_FILE)" >&2
  fi
}

# Fill LIB_DIR with the broker jars once; later calls return at once.
fetch_jars() {
  local pom_sum
  pom_sum="$(sha256sum "$SCRIPT_DIR/pom.xml" | cut -d' ' -f1)"
  if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$pom_sum" ]]; then return 0; fi
  mkdir -p "$CACHE_DIR"
  # two brokers started together must not fetch into the same place at once
  exec 9>"$CACHE_DIR/.fetch.lock"
  flock 9
  if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$pom_sum" ]]; then exec 9>&-; return 0; fi
  command -v "$MVN" >/dev/null || die "Maven ('$MVN') not found; needed once to fetch the Kafka $KAFKA_VERSION jars"
  log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIB_DIR ..."
  local tmp mvn_log t0
  t0=$SECONDS
  tmp="$(mktemp -d "$CACHE_DIR/.fetch.XXXXXX")"
  mvn_log="$tmp.mvn.log"
  if ! "$MVN" -q -B -Dstyle.color=never -f "$SCRIPT_DIR/pom.xml" \
        -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$tmp/lib" >"$mvn_log" 2>&1; then
    echo "----- maven output -----" >&2
    tail -n 40 "$mvn_log" >&2 || true
    echo "-----" >&2
    rm -rf "$tmp" "$mvn_log"
    exec 9>&-
    die "Maven could not fetch Kafka $KAFKA_VERSION (offline, or version not on Maven Central?)"
  fi
  ls "$tmp/lib"/kafka_2.13-*.jar >/dev/null 2>&1 || { rm -rf "$tmp" "$mvn_log"; exec 9>&-; die "Maven ran but kafka_2.13 jar is missing"; }
  rm -rf "$CACHE_DIR/kafka-$KAFKA_VERSION"
  mkdir -p "$CACHE_DIR/kafka-$KAFKA_VERSION"
  mv "$tmp/lib" "$LIB_DIR"
  rm -rf "$tmp" "$mvn_log"
  echo "$pom_sum" >"$STAMP"
  log "fetched $(ls "$LIB_DIR" | wc -l) jars in $((SECONDS - t0))s"
  exec 9>&-
}

write_config() {
  mkdir -p "$DATA_DIR"
  cat >"$CONFIG" <<EOF
# Generated by deploy/kafka/broker.sh on every start; edit the script or use
# KAFKA_EXTRA_CONFIG instead of this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$STORAGE_DIR

# single node: every internal topic has one replica
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
num.partitions=1
group.initial.rebalance.delay.ms=0

# topics are created explicitly (KAFKA_AUTO_CREATE_TOPICS=true to change)
auto.create.topics.enable=$AUTO_CREATE
delete.topic.enable=true

# small footprint for development and tests
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=67108864
${KAFKA_EXTRA_CONFIG:-}
EOF
  cat >"$LOG4J_CONFIG" <<EOF
status = warn
appender.out.type = Console
appender.out.target = SYSTEM_ERR
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
}

# java_argv: fill JAVA_ARGV with the JVM command line (up to -cp) for the cached jars
java_argv() {
  local -a heap opts
  read -r -a heap <<<"$HEAP_OPTS"
  read -r -a opts <<<"${KAFKA_OPTS:-}"
  JAVA_ARGV=("$JAVA" "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$LOG4J_CONFIG" -Dkafka.logs.dir="$DATA_DIR"
    "${opts[@]}" -cp "$LIB_DIR/*")
}

# java_cmd MAIN_CLASS ARGS... : run a class from the cached jars
java_cmd() {
  java_argv
  "${JAVA_ARGV[@]}" "$@"
}

format_storage() {
  [[ -f "$STORAGE_DIR/meta.properties" ]] && return 0
  local cid
  if [[ -s "$CLUSTER_ID_FILE" ]]; then
    cid="$(cat "$CLUSTER_ID_FILE")"
  else
    cid="$(KAFKA_OPTS="" java_cmd kafka.tools.StorageTool random-uuid 2>>"$LOG_FILE" | tail -n 1)"
    [[ -n "$cid" ]] || { show_log_tail; die "could not generate a cluster id"; }
    echo "$cid" >"$CLUSTER_ID_FILE"
  fi
  log "formatting KRaft storage in $STORAGE_DIR (cluster id $cid)"
  if ! java_cmd kafka.tools.StorageTool format --ignore-formatted \
        -t "$cid" -c "$CONFIG" >>"$LOG_FILE" 2>&1; then
    show_log_tail
    die "formatting KRaft storage failed"
  fi
}

pick_python() {
  local py
  for py in "${KAFKA_PROBE_PYTHON:-}" python3 python; do
    [[ -n "$py" ]] || continue
    if command -v "$py" >/dev/null && "$py" -c 'import kafka' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  return 1
}

# A metadata (DescribeCluster) request through kafka-python; its last error
# is kept in PROBE_ERR.
PROBE_ERR=""
probe_metadata() {
  PROBE_ERR="$("$1" - "127.0.0.1:$PORT" 2>&1 <<'EOF'

import sys
from kafka import KafkaAdminClient
admin = KafkaAdminClient(bootstrap_servers=sys.argv[1], client_id="broker.sh-probe",
                         request_timeout_ms=5000, bootstrap_timeout_ms=5000)
try:
    info = admin.describe_cluster()
    assert info and info.get("brokers"), info
finally:
    admin.close()
EOF
)" && return 0
  return 1
}

# ---------------------------------------------------------------- commands ---

cmd_start() {
  local pid
  if pid="$(running_pid)"; then
    log "already running (pid $pid, $(configured_addr), data $DATA_DIR)"
    if [[ "$(configured_addr)" != "127.0.0.1:$PORT" ]]; then
      echo "broker.sh: warning: it listens on $(configured_addr), not on the requested port $PORT" >&2
    fi
    return 0
  fi
  rm -f "$PID_FILE"
  port_open "$PORT" && die "port $PORT is already in use by another process"
  port_open "$CONTROLLER_PORT" && die "controller port $CONTROLLER_PORT is already in use by another process"

  fetch_jars
  write_config
  : >>"$LOG_FILE"
  echo "===== $(date -Is) broker.sh start (Kafka $KAFKA_VERSION, port $PORT, controller $CONTROLLER_PORT) =====" >>"$LOG_FILE"
  format_storage

  local t0=$SECONDS
  local log_offset
  log_offset="$(stat -c %s "$LOG_FILE")"
  # setsid: the broker gets its own session and outlives this script and its
  # terminal; a background child is no group leader, so setsid execs java
  # without forking and $! is the java pid.
  java_argv
  setsid "${JAVA_ARGV[@]}" kafka.Kafka "$CONFIG" </dev/null >>"$LOG_FILE" 2>&1 &
  pid=$!
  echo "$pid" >"$PID_FILE"

  local py=""
  py="$(pick_python || true)"
  local started=0
  while ((SECONDS - t0 < START_TIMEOUT)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      show_log_tail
      die "broker exited during start-up"
    fi
    if port_open "$PORT" && grep -q "Kafka Server started" < <(tail -c +"$((log_offset + 1))" "$LOG_FILE"); then
      if [[ -z "$py" ]] || probe_metadata "$py"; then started=1; break; fi
    fi
    sleep 0.5
  done
  if ((started == 0)); then
    show_log_tail
    if [[ -n "$PROBE_ERR" ]]; then
      echo "----- last metadata probe error ($py) -----" >&2
      tail -n 5 <<<"$PROBE_ERR" >&2
    fi
    log "broker did not become ready within ${START_TIMEOUT}s; stopping it"
    cmd_stop >&2 || true
    exit 1
  fi
  log "started (pid $pid) on 127.0.0.1:$PORT in $((SECONDS - t0))s${py:+ (metadata probe ok)}; data $DATA_DIR"
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE"
    log "not running (data $DATA_DIR)"
    return 0
  fi
  log "stopping broker (pid $pid) ..."
  kill -TERM "$pid" 2>/dev/null || true
  local t0=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS - t0 >= STOP_TIMEOUT)); then
      log "no exit after ${STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  rm -f "$PID_FILE"
  log "stopped"
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    log "running (pid $pid, $(configured_addr), data $DATA_DIR)"
    return 0
  fi
  log "not running (data $DATA_DIR)"
  exit 3
}

cmd_logs() {
  [[ -f "$LOG_FILE" ]] || die "no log file at $LOG_FILE"
  if [[ "${1:-}" == "-f" ]]; then
    exec tail -n "$LOG_LINES" -F "$LOG_FILE"
  fi
  tail -n "$LOG_LINES" "$LOG_FILE"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  logs) shift; cmd_logs "$@" ;;
  *) echo "usage: $0 start|stop|status|logs [-f]" >&2; exit 2 ;;
esac
