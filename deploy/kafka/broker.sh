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
#   KAFKA_PORT             client port (PLAINTEXT, or SASL_SSL)  (9092)
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
#   KAFKA_SECURITY         plaintext | sasl_ssl                  (plaintext)
#   KAFKA_SASL_USERNAME    sasl_ssl: the client SCRAM user       (sigstream)
#
# KAFKA_SECURITY=sasl_ssl: the client listener on KAFKA_PORT is SASL_SSL with
# SCRAM-SHA-512 (and also serves inter-broker traffic); the KRaft controller
# listener stays PLAINTEXT on 127.0.0.1. On the first start of a data dir it
# generates, with openssl, a CA and a broker certificate (SAN IP:127.0.0.1 and
# DNS:localhost, so clients keep hostname checks on) in $KAFKA_DATA_DIR/tls/,
# random passwords for the client user and the broker's own user
# ($KAFKA_DATA_DIR/scram.secrets, mode 0600), and formats the storage with
# both SCRAM users (`kafka-storage format --add-scram`). Every start writes
# $KAFKA_DATA_DIR/client.env (mode 0600) for clients:
#   export SIGSTREAM_BOOTSTRAP=127.0.0.1:PORT SIGSTREAM_SECURITY_PROTOCOL=SASL_SSL
#          SIGSTREAM_SASL_MECHANISM=SCRAM-SHA-512 SIGSTREAM_SASL_USERNAME=...
#          SIGSTREAM_SASL_PASSWORD=... SIGSTREAM_SSL_CAFILE=$KAFKA_DATA_DIR/tls/ca.crt
#   e.g.  . "$KAFKA_DATA_DIR/client.env" && sigstream topics create
# A data dir formatted in plaintext mode has no SCRAM users: start sasl_ssl on
# a fresh KAFKA_DATA_DIR.
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
SECURITY="${KAFKA_SECURITY:-plaintext}"
SASL_USER="${KAFKA_SASL_USERNAME:-sigstream}"
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
TLS_DIR="$DATA_DIR/tls"
SECRETS_FILE="$DATA_DIR/scram.secrets"
CLIENT_ENV="$DATA_DIR/client.env"
SCRAM_MECHANISM="SCRAM-SHA-512"

log() { echo "broker.sh: $*"; }
die() { echo "broker.sh: error: $*" >&2; exit 1; }

for v in PORT CONTROLLER_PORT START_TIMEOUT STOP_TIMEOUT LOG_LINES; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a number, got '${!v}'"
done
[[ "$PORT" != "$CONTROLLER_PORT" ]] || die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ"
case "$SECURITY" in
  plaintext|sasl_ssl) ;;
  *) die "KAFKA_SECURITY must be plaintext or sasl_ssl, got '$SECURITY'" ;;
esac
[[ "$SASL_USER" =~ ^[A-Za-z0-9._-]+$ ]] || die "KAFKA_SASL_USERNAME may only contain letters, digits, '.', '_' and '-'"

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
  if [[ -n "$l" ]]; then echo "${l#*://}"; else echo "127.0.0.1:$PORT"; fi
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

# the listener lines of server.properties for the security mode
listener_config() {
  if [[ "$SECURITY" == plaintext ]]; then
    cat <<EOF
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
EOF
    return 0
  fi
  # SASL_SSL for clients and for the broker's own inter-broker client (SCRAM user
  # BROKER_USER); the controller listener stays PLAINTEXT on loopback.
  cat <<EOF
listeners=SASL_SSL://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=SASL_SSL://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=$SCRAM_MECHANISM
sasl.mechanism.inter.broker.protocol=$SCRAM_MECHANISM
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$BROKER_USER" password="$BROKER_PASSWORD";
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.crt
ssl.client.auth=none
ssl.endpoint.identification.algorithm=https
EOF
}

write_config() {
  mkdir -p "$DATA_DIR"
  # sasl_ssl: the file holds the broker user's password
  [[ "$SECURITY" == plaintext ]] || (umask 077 && : >"$CONFIG" && chmod 600 "$CONFIG")
  cat >"$CONFIG" <<EOF
# Generated by deploy/kafka/broker.sh on every start; edit the script or use
# KAFKA_EXTRA_CONFIG instead of this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
$(listener_config)
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
  local -a scram=()
  if [[ "$SECURITY" == sasl_ssl ]]; then
    # SCRAM users go into the metadata log at format time (KRaft has no ZooKeeper to
    # hold them); the passwords are on this JVM's command line for its few seconds.
    scram=(--add-scram "$SCRAM_MECHANISM=[name=$CLIENT_USER,password=$CLIENT_PASSWORD]"
           --add-scram "$SCRAM_MECHANISM=[name=$BROKER_USER,password=$BROKER_PASSWORD]")
  fi
  log "formatting KRaft storage in $STORAGE_DIR (cluster id $cid${scram:+, SCRAM users $CLIENT_USER and $BROKER_USER})"
  if ! java_cmd kafka.tools.StorageTool format --ignore-formatted \
        -t "$cid" -c "$CONFIG" "${scram[@]}" >>"$LOG_FILE" 2>&1; then
    show_log_tail
    die "formatting KRaft storage failed"
  fi
}

# sasl_ssl: a CA and a broker certificate for 127.0.0.1/localhost, made once per data dir.
ensure_tls() {
  command -v openssl >/dev/null || die "openssl is needed for KAFKA_SECURITY=sasl_ssl"
  if [[ -s "$TLS_DIR/ca.crt" && -s "$TLS_DIR/broker.pem" ]] &&
     openssl x509 -checkend 86400 -noout -in "$TLS_DIR/broker.pem" >/dev/null 2>&1; then
    return 0
  fi
  log "generating a CA and a broker certificate (SAN IP:127.0.0.1, DNS:localhost) in $TLS_DIR"
  local tmp
  tmp="$(umask 077 && mktemp -d "$DATA_DIR/.tls.XXXXXX")"
  if ! (
    set -e
    cd "$tmp"
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
      -keyout ca.key -out ca.crt -subj "/CN=sigstream dev broker CA $(date +%Y%m%d%H%M%S)" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout broker.key -out broker.csr -subj "/CN=localhost"
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >broker.ext
    openssl x509 -req -sha256 -days 825 -in broker.csr -CA ca.crt -CAkey ca.key \
      -CAcreateserial -extfile broker.ext -out broker.crt
    cat broker.key broker.crt >broker.pem          # PKCS#8 key + certificate: ssl.keystore.type=PEM
    chmod 600 broker.pem broker.key
    chmod 644 ca.crt broker.crt
  ) >"$tmp.log" 2>&1; then
    cat "$tmp.log" >&2
    rm -rf "$tmp" "$tmp.log"
    die "could not generate the TLS certificates with openssl"
  fi
  rm -rf "$TLS_DIR"
  mkdir -p "$TLS_DIR"
  chmod 755 "$TLS_DIR"
  # the CA key is not kept: nothing else can be signed with this CA
  mv "$tmp/ca.crt" "$tmp/broker.crt" "$tmp/broker.pem" "$TLS_DIR/"
  rm -rf "$tmp" "$tmp.log"
}

# sasl_ssl: CLIENT_USER/CLIENT_PASSWORD and BROKER_USER/BROKER_PASSWORD, generated
# (random) on the first start of a data dir, before its storage is formatted.
CLIENT_USER="" CLIENT_PASSWORD="" BROKER_USER="" BROKER_PASSWORD=""
ensure_secrets() {
  if [[ ! -s "$SECRETS_FILE" ]]; then
    if [[ -f "$STORAGE_DIR/meta.properties" ]]; then
      die "$DATA_DIR was formatted in plaintext mode (no SCRAM users); use a fresh KAFKA_DATA_DIR for KAFKA_SECURITY=sasl_ssl"
    fi
    command -v openssl >/dev/null || die "openssl is needed for KAFKA_SECURITY=sasl_ssl"
    (
      umask 077
      printf '%s\n' "CLIENT_USER=$SASL_USER" "CLIENT_PASSWORD=$(openssl rand -hex 24)" \
        "BROKER_USER=broker" "BROKER_PASSWORD=$(openssl rand -hex 24)" >"$SECRETS_FILE.tmp"
      mv "$SECRETS_FILE.tmp" "$SECRETS_FILE"
    )
  fi
  local key value
  while IFS='=' read -r key value; do
    case "$key" in
      CLIENT_USER) CLIENT_USER="$value" ;;
      CLIENT_PASSWORD) CLIENT_PASSWORD="$value" ;;
      BROKER_USER) BROKER_USER="$value" ;;
      BROKER_PASSWORD) BROKER_PASSWORD="$value" ;;
    esac
  done <"$SECRETS_FILE"
  [[ -n "$CLIENT_USER" && -n "$CLIENT_PASSWORD" && -n "$BROKER_USER" && -n "$BROKER_PASSWORD" ]] ||
    die "$SECRETS_FILE is incomplete; use a fresh KAFKA_DATA_DIR"
  if [[ "$CLIENT_USER" != "$SASL_USER" ]]; then
    echo "broker.sh: warning: $DATA_DIR was formatted with SCRAM user '$CLIENT_USER'; KAFKA_SASL_USERNAME='$SASL_USER' is ignored" >&2
  fi
}

# sasl_ssl: the client settings for sigstream (and the probe), mode 0600
write_client_env() {
  (
    umask 077
    {
      echo "# sigstream client settings for the SASL_SSL broker on $DATA_DIR"
      echo "# (written by deploy/kafka/broker.sh on every start; holds a password)"
      printf 'export %s=%q\n' SIGSTREAM_BOOTSTRAP "127.0.0.1:$PORT" \
        SIGSTREAM_SECURITY_PROTOCOL SASL_SSL SIGSTREAM_SASL_MECHANISM "$SCRAM_MECHANISM" \
        SIGSTREAM_SASL_USERNAME "$CLIENT_USER" SIGSTREAM_SASL_PASSWORD "$CLIENT_PASSWORD" \
        SIGSTREAM_SSL_CAFILE "$TLS_DIR/ca.crt"
    } >"$CLIENT_ENV.tmp"
    chmod 600 "$CLIENT_ENV.tmp"
    mv "$CLIENT_ENV.tmp" "$CLIENT_ENV"
  )
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
# In sasl_ssl mode it connects with the settings of client.env.
probe_metadata() {
  PROBE_ERR="$(
    unset SIGSTREAM_SECURITY_PROTOCOL SIGSTREAM_SASL_MECHANISM SIGSTREAM_SASL_USERNAME \
      SIGSTREAM_SASL_PASSWORD SIGSTREAM_SSL_CAFILE SIGSTREAM_SSL_CHECK_HOSTNAME
    if [[ "$SECURITY" == sasl_ssl ]]; then set -a; . "$CLIENT_ENV"; set +a; fi
    "$1" - "127.0.0.1:$PORT" 2>&1 <<'EOF'

import os
import sys
from kafka import KafkaAdminClient
env = os.environ.get
security = {}
protocol = (env("SIGSTREAM_SECURITY_PROTOCOL") or "PLAINTEXT").upper()
if protocol != "PLAINTEXT":
    security["security_protocol"] = protocol
    if protocol.startswith("SASL_"):
        security.update(sasl_mechanism=env("SIGSTREAM_SASL_MECHANISM"),
                        sasl_plain_username=env("SIGSTREAM_SASL_USERNAME"),
                        sasl_plain_password=env("SIGSTREAM_SASL_PASSWORD"))
    if protocol in ("SSL", "SASL_SSL") and env("SIGSTREAM_SSL_CAFILE"):
        security["ssl_cafile"] = env("SIGSTREAM_SSL_CAFILE")
admin = KafkaAdminClient(bootstrap_servers=sys.argv[1], client_id="broker.sh-probe",
                         request_timeout_ms=5000, bootstrap_timeout_ms=5000, **security)
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
  mkdir -p "$DATA_DIR"
  if [[ "$SECURITY" == sasl_ssl ]]; then
    ensure_secrets
    ensure_tls
  else
    rm -f "$CLIENT_ENV"
  fi
  write_config
  : >>"$LOG_FILE"
  echo "===== $(date -Is) broker.sh start (Kafka $KAFKA_VERSION, port $PORT ($SECURITY), controller $CONTROLLER_PORT) =====" >>"$LOG_FILE"
  format_storage
  [[ "$SECURITY" == plaintext ]] || write_client_env

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
  if [[ "$SECURITY" == sasl_ssl ]]; then
    log "SASL_SSL ($SCRAM_MECHANISM, user $CLIENT_USER); client settings: . $CLIENT_ENV"
  fi
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
