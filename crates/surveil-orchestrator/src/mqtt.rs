//! Events on an MQTT broker: an [`EventSink`] that publishes every event, alerts (retained),
//! periodic health and the process's availability, without ever holding up the analysis.
//!
//! # Topics
//!
//! With `mqtt.topic_prefix = "surveil"` (the default), camera `entrance` and node `shop-1`:
//!
//! | topic | payload | QoS | retained |
//! |---|---|---|---|
//! | `surveil/entrance/events` | every [`Event`] of the camera, as its `events.jsonl` line | `mqtt.events_qos` | no |
//! | `surveil/entrance/alerts` | events at level `alert` or `critical`, the same JSON | 1 | yes: the last alert |
//! | `surveil/node/shop-1/stats` | [`NodeStats`]: fps, frames, analyses, queue depth, RSS, the publisher's counters | 0 | no |
//! | `surveil/node/shop-1/available` | `online` / `offline` | 1 | yes |
//!
//! Camera topics belong to the camera (camera names are unique across the installation, each
//! camera analysed by one process); node topics belong to one surveil process, named by
//! `mqtt.node_id` (default: the host name). Several processes share one broker without
//! clashing: client ids default to `surveil-<hostname>-<pid>` and each process has its node
//! topics. A camera or node name is made a valid topic level by [`topic_level`] (`/`, `+`, `#`
//! become `_`).
//!
//! `available` is `online` (retained) after every connection, `offline` (retained) on a clean
//! finish, and `offline` as the connection's last will when the process dies or loses the
//! network (the broker publishes it once the keep alive runs out, at once when the socket
//! closes).
//!
//! # Never stalling the analysis
//!
//! [`EventSink::write`] only serialises the event and appends it to a bounded in-memory buffer
//! (`mqtt.buffer_messages`); when the buffer is full, the message is dropped and counted. Two
//! threads do the network work: one runs rumqttc's connection (connects, reconnects with
//! capped exponential backoff, from 250 ms to 30 s) and one hands buffered messages to it while
//! connected. `events.jsonl` has every event whatever happens to the broker. Messages handed to
//! the connection just before it drops can be lost (they are not counted as dropped): MQTT
//! delivery here is best effort, the file is the record.
//!
//! Credentials: the password is read from `mqtt.password_env` or `mqtt.password_file` when the
//! publisher starts, kept only inside the connection options, and never logged, shown or
//! written to the summary.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{
    Client, ClientError, Connection, ConnectionError, Event as MqttEvent, LastWill, MqttOptions,
    Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use serde::Serialize;
use surveil_config::MqttConfig;

use crate::decision::AlertLevel;
use crate::event::Event;
use crate::metrics::Stage;
use crate::pipeline::{CameraProgress, RunObserver, RunProgress};
use crate::sink::EventSink;
use crate::{OrchestratorError, Result};

/// First wait before reconnecting after a failed connection; doubled after each failure.
pub const RECONNECT_BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest wait between two connection attempts.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long [`EventSink::finish`] waits, at most, for buffered messages to go out and the
/// `offline` message to be sent before disconnecting.
pub const FINISH_GRACE: Duration = Duration::from_secs(5);
/// Largest outgoing MQTT packet (the protocol's limit, 256 MiB).
const MAX_PACKET_BYTES: usize = 268_435_455;
/// Requests rumqttc's own channel holds; the buffer proper is ours (`mqtt.buffer_messages`).
const CLIENT_CHANNEL: usize = 64;
/// How long the connection thread reads after DISCONNECT, waiting for the broker to close.
const DISCONNECT_DRAIN: Duration = Duration::from_secs(2);
/// Seconds rumqttc waits for a TCP (and TLS) connection and the broker's CONNACK.
const CONNECT_TIMEOUT_S: u64 = 5;

/// Payload of `available` while the process runs.
pub const ONLINE: &str = "online";
/// Payload of `available` after a clean finish, and the connection's last will.
pub const OFFLINE: &str = "offline";

/// `name` as one MQTT topic level: `/`, `+`, `#` and control characters become `_`; an empty
/// name becomes `_`.
pub fn topic_level(name: &str) -> String {
    let level: String = name
        .chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#') || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if level.is_empty() {
        "_".to_string()
    } else {
        level
    }
}

/// The host name of this machine (`/proc/sys/kernel/hostname`, else `/etc/hostname`), or
/// `localhost` when neither can be read.
pub fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| t.trim().to_string())
        .find(|t| !t.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The client id used when `mqtt.client_id` is absent: `surveil-<hostname>-<pid>`, with any
/// character outside `[A-Za-z0-9._-]` of the host name replaced by `-`.
pub fn default_client_id() -> String {
    let host: String = host_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("surveil-{host}-{}", std::process::id())
}

/// The topics of one publisher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MqttTopics {
    /// `mqtt.topic_prefix`.
    pub prefix: String,
    /// This process's node id (a topic level).
    pub node: String,
}

impl MqttTopics {
    /// `<prefix>/<camera>/events`.
    pub fn events(&self, camera: &str) -> String {
        format!("{}/{}/events", self.prefix, topic_level(camera))
    }

    /// `<prefix>/<camera>/alerts`.
    pub fn alerts(&self, camera: &str) -> String {
        format!("{}/{}/alerts", self.prefix, topic_level(camera))
    }

    /// `<prefix>/node/<node>/stats`.
    pub fn stats(&self) -> String {
        format!("{}/node/{}/stats", self.prefix, self.node)
    }

    /// `<prefix>/node/<node>/available`.
    pub fn available(&self) -> String {
        format!("{}/node/{}/available", self.prefix, self.node)
    }
}

/// What the publisher has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MqttCounters {
    /// PUBLISH packets written to the broker connection: events, alerts, stats and
    /// availability (QoS 1 and 2 retransmissions included).
    pub published: u64,
    /// Event and alert messages given up: the buffer was full, or they were still buffered
    /// when the publisher finished.
    pub dropped: u64,
    /// Connections made after the first one (each broker restart or network outage adds one).
    pub reconnects: u64,
    /// Messages waiting in the buffer now.
    pub buffered: u64,
    /// Whether the broker connection is up now.
    pub connected: bool,
}

/// The `mqtt` section of `summary.json`: where the run published and how it went. Never holds
/// credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MqttReport {
    /// `host:port` of the broker.
    pub broker: String,
    /// Whether the connection used TLS.
    pub tls: bool,
    /// The MQTT client id.
    pub client_id: String,
    /// The topics.
    pub topics: MqttTopics,
    /// The counters at the end.
    #[serde(flatten)]
    pub counters: MqttCounters,
}

/// The health message of `<prefix>/node/<node>/stats`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeStats {
    /// Node id.
    pub node: String,
    /// Host name of the machine.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// MQTT client id.
    pub client_id: String,
    /// When the stats were taken, RFC 3339 in UTC.
    pub timestamp: String,
    /// Frames analysed so far.
    pub frames: u64,
    /// Frames per second since the first frame.
    pub fps: f64,
    /// VLM analyses finished so far.
    pub analyses: u64,
    /// Events at level alert or critical so far.
    pub alerts: u64,
    /// Frames waiting in the decode queue after the last frame was taken.
    pub queue_depth: u32,
    /// Resident memory of the process, bytes (`None` where the OS does not say).
    pub rss_bytes: Option<u64>,
    /// Seconds since the first frame.
    pub elapsed_s: f64,
    /// The publisher's counters.
    pub mqtt: MqttCounters,
}

/// One message waiting to be handed to the connection.
#[derive(Debug, Clone)]
struct Message {
    topic: String,
    qos: QoS,
    retain: bool,
    payload: Vec<u8>,
}

/// The publisher's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Publishing.
    Running,
    /// Finishing: buffered messages still go out, nothing new comes in.
    Draining,
    /// Stopped: the threads end.
    Closed,
}

/// What the threads and the sink share, behind one mutex.
#[derive(Debug)]
struct State {
    /// Events and alerts, oldest first, at most `capacity`.
    queue: VecDeque<Message>,
    /// Availability and stats, sent before the queue.
    control: VecDeque<Message>,
    capacity: usize,
    connected: bool,
    /// A message taken by the forwarder and not yet accepted by rumqttc.
    in_hand: bool,
    /// The connection thread still runs (rumqttc accepts requests).
    net_alive: bool,
    phase: Phase,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    published: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A thread that panicked while holding the lock left consistent data (plain fields):
        // keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn counters(&self) -> MqttCounters {
        let st = self.lock();
        MqttCounters {
            published: self.published.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            buffered: (st.queue.len() + usize::from(st.in_hand)) as u64,
            connected: st.connected,
        }
    }

    /// Wait on the condition variable for at most `timeout`.
    fn wait<'a>(&self, guard: MutexGuard<'a, State>, timeout: Duration) -> MutexGuard<'a, State> {
        match self.wake.wait_timeout(guard, timeout) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        }
    }
}

/// Who this process is on the broker, shared by the sink and its [`MqttHandle`]s.
#[derive(Debug, Clone)]
struct Identity {
    topics: MqttTopics,
    client_id: String,
    host: String,
    broker: String,
    tls: bool,
}

/// A cheap, cloneable handle on a running [`MqttPublisher`] for other threads and observers:
/// stats messages and counters. Publishing through a handle never blocks on the network.
#[derive(Debug, Clone)]
pub struct MqttHandle {
    shared: Arc<Shared>,
    identity: Arc<Identity>,
}

impl MqttHandle {
    /// The publisher's counters now.
    pub fn counters(&self) -> MqttCounters {
        self.shared.counters()
    }

    /// The topics.
    pub fn topics(&self) -> &MqttTopics {
        &self.identity.topics
    }

    /// Publish `progress` and the process's memory on the stats topic (QoS 0, not retained).
    /// Only the latest stats wait while the broker is unreachable; nothing is sent after the
    /// publisher finished.
    pub fn publish_stats(&self, progress: &RunProgress) {
        let stats = NodeStats {
            node: self.identity.topics.node.clone(),
            host: self.identity.host.clone(),
            pid: std::process::id(),
            client_id: self.identity.client_id.clone(),
            timestamp: jiff::Timestamp::now().to_string(),
            frames: progress.frames,
            fps: progress.fps,
            analyses: progress.analyses,
            alerts: progress.alerts,
            queue_depth: progress.queue_depth,
            rss_bytes: surveil_memory::ProcessMemory::current().rss_bytes,
            elapsed_s: progress.elapsed_s,
            mqtt: self.counters(),
        };
        let Ok(payload) = serde_json::to_vec(&stats) else {
            return;
        };
        let topic = self.identity.topics.stats();
        let mut st = self.shared.lock();
        if st.phase != Phase::Running {
            return;
        }
        // Older stats still waiting are replaced: they say less than these.
        st.control.retain(|m| m.topic != topic);
        st.control.push_back(Message {
            topic,
            qos: QoS::AtMostOnce,
            retain: false,
            payload,
        });
        drop(st);
        self.shared.wake.notify_all();
    }
}

/// Publishes a run's events to an MQTT broker; see the [module documentation](self) for the
/// topics and the guarantees. Build it with [`MqttPublisher::start`], pass it to
/// [`run_with_sinks`](crate::run_with_sinks) as a sink, and wrap the run's observer in
/// [`MqttStatsObserver`] for the periodic stats.
///
/// [`EventSink::finish`] sends what is buffered for up to [`FINISH_GRACE`] (dropping an
/// unfinished publisher: 1 s), publishes `offline` and disconnects; what is still buffered
/// then is counted as dropped.
pub struct MqttPublisher {
    handle: MqttHandle,
    client: Client,
    qos_events: QoS,
    net: Option<JoinHandle<()>>,
    forwarder: Option<JoinHandle<()>>,
    report: Option<MqttReport>,
}

impl std::fmt::Debug for MqttPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The options hold the password: never print them.
        f.debug_struct("MqttPublisher")
            .field("broker", &self.handle.identity.broker)
            .field("client_id", &self.handle.identity.client_id)
            .field("topics", &self.handle.identity.topics)
            .finish_non_exhaustive()
    }
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn config_error(key: &str, value: &Path, what: impl std::fmt::Display) -> OrchestratorError {
    OrchestratorError::Config(format!("{key} = {}: {what}", value.display()))
}

/// The password `config` points at: the variable `password_env` (looked up with `var`) or the
/// first line of `password_file`. The error names the key and the variable or file, never the
/// text read.
fn read_password(
    config: &MqttConfig,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>> {
    if let Some(name) = &config.password_env {
        return match var(name) {
            Some(p) => Ok(Some(p)),
            None => Err(OrchestratorError::Config(format!(
                "mqtt.password_env = {name:?}: the environment variable {name} is not set"
            ))),
        };
    }
    if let Some(path) = &config.password_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| config_error("mqtt.password_file", path, format!("cannot read: {e}")))?;
        let first = text.lines().next().unwrap_or_default().to_string();
        return Ok(Some(first));
    }
    Ok(None)
}

/// rustls client settings on the ring provider: the certificate authorities of `ca_file`, else
/// the system's trust store.
fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| config_error("mqtt.ca_file", path, format!("cannot read: {e}")))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| {
                    config_error("mqtt.ca_file", path, format!("not a PEM certificate: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    config_error("mqtt.ca_file", path, format!("unusable certificate: {e}"))
                })?;
            }
            if roots.is_empty() {
                return Err(config_error(
                    "mqtt.ca_file",
                    path,
                    "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                ));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(OrchestratorError::Config(
                    "mqtt.tls = true: no certificate authority found in the system's trust \
                     store; set mqtt.ca_file"
                        .into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OrchestratorError::Config(format!("mqtt.tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl MqttPublisher {
    /// Set up the connection of `config` (validated: `surveil-config` checked every key) and
    /// start its threads; connecting happens in the background, so a broker that is down
    /// delays nothing (events wait in the buffer). `var` looks environment variables up (the
    /// password of `mqtt.password_env`): `|name| std::env::var(name).ok()` for the process's.
    ///
    /// Errors: [`OrchestratorError::Config`] naming the key when the password's variable is not
    /// set or its file cannot be read, when `mqtt.ca_file` cannot be read or holds no
    /// certificate, or when TLS finds no certificate authority;
    /// [`OrchestratorError::ThreadLost`] when a thread cannot be started.
    pub fn start(config: &MqttConfig, var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let client_id = config.client_id.clone().unwrap_or_else(default_client_id);
        let host = host_name();
        let node = topic_level(config.node_id.as_deref().unwrap_or(&host));
        let topics = MqttTopics {
            prefix: config.topic_prefix.clone(),
            node,
        };
        let mut options = MqttOptions::new(client_id.clone(), config.host.clone(), config.port);
        options
            .set_keep_alive(Duration::from_secs(u64::from(config.keep_alive_seconds)))
            .set_clean_session(true)
            .set_max_packet_size(64 * 1024, MAX_PACKET_BYTES)
            .set_request_channel_capacity(CLIENT_CHANNEL)
            .set_last_will(LastWill::new(
                topics.available(),
                OFFLINE,
                QoS::AtLeastOnce,
                true,
            ));
        if let Some(user) = &config.username {
            let password = read_password(config, &var)?.unwrap_or_default();
            options.set_credentials(user.clone(), password);
        }
        if config.tls {
            let tls = tls_config(config.ca_file.as_deref())?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        }
        let (client, mut connection) = Client::new(options, CLIENT_CHANNEL);
        let mut network = connection.eventloop.network_options();
        network.set_connection_timeout(CONNECT_TIMEOUT_S);
        connection.eventloop.set_network_options(network);

        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                control: VecDeque::new(),
                capacity: config.buffer_messages,
                connected: false,
                in_hand: false,
                net_alive: true,
                phase: Phase::Running,
            }),
            wake: Condvar::new(),
            published: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        });
        let identity = Arc::new(Identity {
            topics,
            client_id,
            host,
            broker: format!("{}:{}", config.host, config.port),
            tls: config.tls,
        });
        let handle = MqttHandle {
            shared: shared.clone(),
            identity,
        };
        let lost = |what: &str, e: std::io::Error| {
            OrchestratorError::ThreadLost(format!("{what} (cannot start: {e})"))
        };
        let net = {
            let handle = handle.clone();
            std::thread::Builder::new()
                .name("surveil-mqtt-net".into())
                .spawn(move || run_connection(&mut connection, &handle))
                .map_err(|e| lost("mqtt connection", e))?
        };
        let forwarder = {
            let shared = shared.clone();
            let client = client.clone();
            std::thread::Builder::new()
                .name("surveil-mqtt-out".into())
                .spawn(move || forward(&shared, &client))
        };
        let forwarder = match forwarder {
            Ok(f) => f,
            Err(e) => {
                shared.lock().phase = Phase::Closed;
                let _ = client.try_disconnect();
                return Err(lost("mqtt forwarder", e));
            }
        };
        tracing::info!(
            broker = %handle.identity.broker,
            client_id = %handle.identity.client_id,
            prefix = %handle.identity.topics.prefix,
            node = %handle.identity.topics.node,
            "publishing events to MQTT"
        );
        Ok(Self {
            handle,
            client,
            qos_events: qos(config.events_qos),
            net: Some(net),
            forwarder: Some(forwarder),
            report: None,
        })
    }

    /// A handle for stats and counters, usable from other threads.
    pub fn handle(&self) -> MqttHandle {
        self.handle.clone()
    }

    /// The counters now.
    pub fn counters(&self) -> MqttCounters {
        self.handle.counters()
    }

    /// The topics.
    pub fn topics(&self) -> &MqttTopics {
        self.handle.topics()
    }

    /// The report of a finished publisher (after [`EventSink::finish`]), else `None`.
    pub fn report(&self) -> Option<&MqttReport> {
        self.report.as_ref()
    }

    /// Append `message` to the buffer, or count it as dropped when the buffer is full or the
    /// publisher is finishing.
    fn enqueue(&self, message: Message) {
        let shared = &self.handle.shared;
        let mut st = shared.lock();
        if st.phase != Phase::Running || st.queue.len() >= st.capacity {
            drop(st);
            let n = shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // A warning at the 1st, 10th, 100th... drop: a long outage must not flood the log.
            if is_power_of_ten(n) {
                tracing::warn!(
                    dropped = n,
                    broker = %self.handle.identity.broker,
                    "MQTT buffer full: messages dropped (events.jsonl still has every event)"
                );
            }
            return;
        }
        st.queue.push_back(message);
        drop(st);
        shared.wake.notify_all();
    }

    /// Sends what is buffered (at most until `deadline`), publishes `offline`, disconnects and
    /// stops the threads; the report is kept. Does nothing the second time.
    fn close(&mut self, deadline: Instant) {
        if self.report.is_some() {
            return;
        }
        let shared = self.handle.shared.clone();
        let identity = self.handle.identity.clone();
        {
            let mut st = shared.lock();
            st.phase = Phase::Draining;
            // Stats would be stale: only events, alerts and availability go out now.
            let stats = identity.topics.stats();
            st.control.retain(|m| m.topic != stats);
        }
        shared.wake.notify_all();
        // 1. Buffered messages go out while the broker is reachable (or comes back).
        let mut st = shared.lock();
        while (!st.queue.is_empty() || !st.control.is_empty() || st.in_hand)
            && st.net_alive
            && Instant::now() < deadline
        {
            st = shared.wait(st, Duration::from_millis(20));
        }
        // 2. `offline`, then DISCONNECT (no last will: this is a clean finish).
        let clean = st.connected && st.queue.is_empty() && st.control.is_empty() && !st.in_hand;
        if st.connected {
            st.control.push_back(Message {
                topic: identity.topics.available(),
                qos: QoS::AtLeastOnce,
                retain: true,
                payload: OFFLINE.as_bytes().to_vec(),
            });
            shared.wake.notify_all();
            while (!st.control.is_empty() || st.in_hand)
                && st.connected
                && Instant::now() < deadline
            {
                st = shared.wait(st, Duration::from_millis(20));
            }
            if st.control.is_empty() && !st.in_hand {
                drop(st);
                // The channel may be full for a moment: retry until the deadline.
                while self.client.try_disconnect().is_err() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                st = shared.lock();
                while st.net_alive && Instant::now() < deadline {
                    st = shared.wait(st, Duration::from_millis(20));
                }
            }
        }
        // 3. Stop; what is left was not delivered.
        st.phase = Phase::Closed;
        let left = st.queue.len() as u64 + u64::from(st.in_hand);
        st.queue.clear();
        st.control.clear();
        drop(st);
        shared.wake.notify_all();
        if left > 0 {
            shared.dropped.fetch_add(left, Ordering::Relaxed);
            tracing::warn!(
                undelivered = left,
                broker = %identity.broker,
                "MQTT messages still buffered at the end were dropped (events.jsonl has them)"
            );
        }
        if let Some(f) = self.forwarder.take() {
            let _ = f.join();
        }
        // The connection thread ends at once in its backoff or after DISCONNECT; a connection
        // attempt in progress ends within its timeout (5 s), after which the thread sees the
        // publisher closed: wait until the deadline (at least 200 ms), else leave it to end on
        // its own.
        if let Some(net) = self.net.take() {
            let give_up = deadline.max(Instant::now() + Duration::from_millis(200));
            while !net.is_finished() && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(10));
            }
            if net.is_finished() {
                let _ = net.join();
            }
        }
        let counters = shared.counters();
        tracing::info!(
            published = counters.published,
            dropped = counters.dropped,
            reconnects = counters.reconnects,
            clean,
            "MQTT publisher finished"
        );
        self.report = Some(MqttReport {
            broker: identity.broker.clone(),
            tls: identity.tls,
            client_id: identity.client_id.clone(),
            topics: identity.topics.clone(),
            counters,
        });
    }
}

impl EventSink for MqttPublisher {
    /// Serialise `event` and buffer it for `<prefix>/<camera>/events` and, at level alert or
    /// above, `<prefix>/<camera>/alerts` (retained, QoS 1). Never blocks on the network, never
    /// fails: a full buffer drops the message and counts it.
    fn write(&mut self, event: &Event) -> Result<()> {
        let payload = match serde_json::to_vec(event) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot serialise an event for MQTT");
                self.handle.shared.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        };
        let topics = &self.handle.identity.topics;
        if event.alert_level >= AlertLevel::Alert {
            self.enqueue(Message {
                topic: topics.events(&event.camera),
                qos: self.qos_events,
                retain: false,
                payload: payload.clone(),
            });
            self.enqueue(Message {
                topic: topics.alerts(&event.camera),
                qos: QoS::AtLeastOnce,
                retain: true,
                payload,
            });
        } else {
            self.enqueue(Message {
                topic: topics.events(&event.camera),
                qos: self.qos_events,
                retain: false,
                payload,
            });
        }
        Ok(())
    }

    /// Send what is buffered for up to [`FINISH_GRACE`], publish `offline` and disconnect.
    /// Never fails: undelivered messages are counted as dropped.
    fn finish(&mut self) -> Result<()> {
        self.close(Instant::now() + FINISH_GRACE);
        Ok(())
    }

    /// `("mqtt", MqttReport)` once finished.
    fn summary_section(&self) -> Option<(String, serde_json::Value)> {
        let report = self.report.as_ref()?;
        serde_json::to_value(report)
            .ok()
            .map(|v| ("mqtt".to_string(), v))
    }
}

impl Drop for MqttPublisher {
    /// A publisher dropped without [`EventSink::finish`] (a run that failed to start) ends the
    /// same way with a shorter grace: 1 s.
    fn drop(&mut self) {
        self.close(Instant::now() + Duration::from_secs(1));
    }
}

/// Whether `n` is 1, 10, 100, ...
fn is_power_of_ten(mut n: u64) -> bool {
    while n >= 10 && n.is_multiple_of(10) {
        n /= 10;
    }
    n == 1
}

/// The forwarder thread: hands buffered messages to rumqttc while connected, availability and
/// stats first, until the publisher is closed or the connection thread ended.
fn forward(shared: &Shared, client: &Client) {
    loop {
        let message = {
            let mut st = shared.lock();
            loop {
                if st.phase == Phase::Closed || !st.net_alive {
                    return;
                }
                if st.connected {
                    if let Some(m) = st.control.pop_front().or_else(|| st.queue.pop_front()) {
                        st.in_hand = true;
                        break m;
                    }
                }
                st = shared.wait(st, Duration::from_millis(100));
            }
        };
        // rumqttc's channel is short and only full for a moment while connected; topics are
        // valid by construction, so a refusal means "full" or "connection gone".
        loop {
            let sent = client.try_publish(
                message.topic.clone(),
                message.qos,
                message.retain,
                message.payload.clone(),
            );
            match sent {
                Ok(()) => break,
                Err(ClientError::TryRequest(_) | ClientError::Request(_)) => {
                    let st = shared.lock();
                    if st.phase == Phase::Closed || !st.net_alive {
                        return;
                    }
                    drop(st);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        shared.lock().in_hand = false;
        shared.wake.notify_all();
    }
}

/// The connection thread: drives rumqttc's event loop; on CONNACK marks the publisher
/// connected and queues `online` first; on an error waits the backoff (doubling from
/// [`RECONNECT_BACKOFF_START`] to [`RECONNECT_BACKOFF_MAX`]) before the next attempt; ends
/// after DISCONNECT or when the publisher is closed.
fn run_connection(connection: &mut Connection, handle: &MqttHandle) {
    let shared = &handle.shared;
    let identity = &handle.identity;
    let mut backoff = RECONNECT_BACKOFF_START;
    let mut connected_once = false;
    let mut failures = 0u64;
    for notification in connection.iter() {
        match notification {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                if connected_once {
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(broker = %identity.broker, after_failures = failures, "MQTT reconnected");
                } else {
                    tracing::info!(broker = %identity.broker, "MQTT connected");
                }
                connected_once = true;
                failures = 0;
                backoff = RECONNECT_BACKOFF_START;
                let mut st = shared.lock();
                st.connected = true;
                // A restarted broker without persistence forgot the retained `online`.
                st.control.push_front(Message {
                    topic: identity.topics.available(),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    payload: ONLINE.as_bytes().to_vec(),
                });
                drop(st);
                shared.wake.notify_all();
            }
            Ok(MqttEvent::Outgoing(Outgoing::Publish(_))) => {
                shared.published.fetch_add(1, Ordering::Relaxed);
            }
            Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) => {
                drain_until_closed(connection, DISCONNECT_DRAIN);
                break;
            }
            Ok(_) => {}
            Err(e) => {
                let was_connected = {
                    let mut st = shared.lock();
                    std::mem::replace(&mut st.connected, false)
                };
                shared.wake.notify_all();
                failures += 1;
                log_connection_error(&e, &identity.broker, was_connected, failures, backoff);
                // The backoff, in short steps so that a finished publisher is seen at once.
                let until = Instant::now() + backoff;
                while Instant::now() < until {
                    if shared.lock().phase == Phase::Closed {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20).min(backoff));
                }
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
            }
        }
        if shared.lock().phase == Phase::Closed {
            break;
        }
    }
    let mut st = shared.lock();
    st.connected = false;
    st.net_alive = false;
    drop(st);
    shared.wake.notify_all();
}

/// After DISCONNECT, read until the broker closes the connection, at most `limit`. Closing our
/// end with acknowledgements still unread in the socket makes the kernel reset the connection,
/// and the broker then loses what it had not read yet (the last messages, the DISCONNECT
/// itself: it would publish the last will).
fn drain_until_closed(connection: &mut Connection, limit: Duration) {
    let until = Instant::now() + limit;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match connection.recv_timeout(left) {
            Ok(Ok(_)) => continue,
            // Closed by the broker (the expected end), another error, or the time is up.
            _ => return,
        }
    }
}

/// A lost connection is a warning once; the attempts that follow are debug lines, with a
/// warning again every 10 failures.
fn log_connection_error(
    e: &ConnectionError,
    broker: &str,
    was_connected: bool,
    failures: u64,
    backoff: Duration,
) {
    let retry_s = backoff.as_secs_f64();
    if was_connected {
        tracing::warn!(broker, error = %e, retry_s, "MQTT connection lost; reconnecting");
    } else if failures == 1 || failures.is_multiple_of(10) {
        tracing::warn!(broker, error = %e, failures, retry_s, "cannot reach the MQTT broker; retrying");
    } else {
        tracing::debug!(broker, error = %e, failures, retry_s, "MQTT connection attempt failed");
    }
}

/// A [`RunObserver`] that forwards everything to `inner` and publishes [`NodeStats`] on the
/// stats topic after a frame once `interval` has passed since the last ones (and after the
/// first frame). A source that stalls stalls the stats too; the `available` topic still says
/// `online`.
pub struct MqttStatsObserver<'a> {
    inner: &'a mut dyn RunObserver,
    handle: MqttHandle,
    interval: Duration,
    last: Option<Instant>,
}

impl<'a> MqttStatsObserver<'a> {
    /// Wrap `inner`; stats every `interval` (`mqtt.stats_interval_seconds`).
    pub fn new(inner: &'a mut dyn RunObserver, handle: MqttHandle, interval: Duration) -> Self {
        Self {
            inner,
            handle,
            interval,
            last: None,
        }
    }
}

impl RunObserver for MqttStatsObserver<'_> {
    fn model_loaded(&mut self, summary: &surveil_models::load::manager::LoadSummary) {
        self.inner.model_loaded(summary);
    }

    fn source_opened(&mut self, description: &str, total_frames: Option<u64>) {
        self.inner.source_opened(description, total_frames);
    }

    fn camera_opened(&mut self, camera: &str, description: &str, total_frames: Option<u64>) {
        self.inner.camera_opened(camera, description, total_frames);
    }

    fn frame_done(&mut self, progress: &RunProgress) {
        self.inner.frame_done(progress);
        if self.last.is_none_or(|t| t.elapsed() >= self.interval) {
            self.last = Some(Instant::now());
            self.handle.publish_stats(progress);
        }
    }

    fn camera_progress(&mut self, progress: &CameraProgress) {
        self.inner.camera_progress(progress);
    }

    fn stage_timed(&mut self, camera: &str, stage: Stage, duration: Duration) {
        self.inner.stage_timed(camera, stage, duration);
    }

    fn analysis_queue(&mut self, pending: usize) {
        self.inner.analysis_queue(pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_single_topic_levels() {
        assert_eq!(topic_level("entrance"), "entrance");
        assert_eq!(topic_level("a/b+c#d"), "a_b_c_d");
        assert_eq!(topic_level("tab\there"), "tab_here");
        assert_eq!(topic_level(""), "_");
        let t = MqttTopics {
            prefix: "site/surveil".into(),
            node: "n1".into(),
        };
        assert_eq!(t.events("cam/1"), "site/surveil/cam_1/events");
        assert_eq!(t.alerts("cam"), "site/surveil/cam/alerts");
        assert_eq!(t.stats(), "site/surveil/node/n1/stats");
        assert_eq!(t.available(), "site/surveil/node/n1/available");
    }

    /// Every call an observer gets, by name.
    #[derive(Default)]
    struct Calls(Vec<String>);

    impl RunObserver for Calls {
        fn model_loaded(&mut self, _: &surveil_models::load::manager::LoadSummary) {
            self.0.push("model_loaded".into());
        }
        fn source_opened(&mut self, _: &str, _: Option<u64>) {
            self.0.push("source_opened".into());
        }
        fn camera_opened(&mut self, camera: &str, _: &str, _: Option<u64>) {
            self.0.push(format!("camera_opened {camera}"));
        }
        fn frame_done(&mut self, _: &RunProgress) {
            self.0.push("frame_done".into());
        }
        fn camera_progress(&mut self, p: &CameraProgress) {
            self.0.push(format!("camera_progress {}", p.camera));
        }
        fn stage_timed(&mut self, camera: &str, _: Stage, _: Duration) {
            self.0.push(format!("stage_timed {camera}"));
        }
        fn analysis_queue(&mut self, pending: usize) {
            self.0.push(format!("analysis_queue {pending}"));
        }
    }

    #[test]
    fn the_stats_observer_passes_every_call_on() {
        let publisher = MqttPublisher::start(&unreachable(4), |_| None).unwrap();
        let mut calls = Calls::default();
        {
            let mut observer =
                MqttStatsObserver::new(&mut calls, publisher.handle(), Duration::from_secs(60));
            observer.source_opened("clip", None);
            observer.camera_opened("till", "clip", Some(3));
            observer.frame_done(&RunProgress {
                frames: 1,
                total_frames: Some(3),
                fps: 1.0,
                alerts: 0,
                analyses: 0,
                elapsed_s: 1.0,
                queue_depth: 0,
            });
            observer.camera_progress(&CameraProgress {
                camera: "till".into(),
                frames: 1,
                total_frames: Some(3),
                fps: 1.0,
                frames_dropped: 0,
                queue_depth: Some(0),
                analyses: 0,
                analyses_skipped: 0,
                alerts: 0,
                elapsed_s: 1.0,
            });
            observer.stage_timed("till", Stage::Detect, Duration::from_millis(5));
            observer.analysis_queue(2);
        }
        assert_eq!(
            calls.0,
            [
                "source_opened",
                "camera_opened till",
                "frame_done",
                "camera_progress till",
                "stage_timed till",
                "analysis_queue 2"
            ]
        );
    }

    /// A configuration aimed at a loopback port nothing listens on.
    fn unreachable(buffer: usize) -> MqttConfig {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        MqttConfig {
            enabled: true,
            host: "127.0.0.1".into(),
            port,
            buffer_messages: buffer,
            node_id: Some("unit".into()),
            ..MqttConfig::default()
        }
    }

    fn event(camera: &str, level: AlertLevel) -> Event {
        Event {
            kind: crate::event::EventKind::Frame,
            frame_id: 1,
            source_time_s: 0.04,
            timestamp: "2026-01-01T00:00:00Z".into(),
            camera: camera.into(),
            persons: 0,
            tracks: Vec::new(),
            tool_observations: Vec::new(),
            tool_failures: Vec::new(),
            alert_level: level,
            needs_review: false,
            rules: Vec::new(),
            vlm_analysis: None,
            vlm: None,
            trigger: None,
            actions: Vec::new(),
            processing_ms: 1.0,
            snapshot: None,
        }
    }

    #[test]
    fn without_a_broker_writes_return_and_a_full_buffer_drops() {
        let mut p = MqttPublisher::start(&unreachable(5), |_| None).unwrap();
        for _ in 0..18 {
            p.write(&event("cam", AlertLevel::Normal)).unwrap();
        }
        // Each alert is two messages (events and alerts): both dropped, the buffer is full.
        p.write(&event("cam", AlertLevel::Alert)).unwrap();
        let c = p.counters();
        assert_eq!(
            (c.buffered, c.dropped, c.connected),
            (5, 15, false),
            "{c:?}"
        );
        // Finishing gives up what is left: all 20 messages are accounted for.
        p.close(Instant::now() + Duration::from_millis(50));
        let report = p.report().unwrap();
        assert_eq!(report.counters.dropped, 20);
        assert_eq!(report.counters.buffered, 0);
        assert_eq!(report.counters.published, 0);
        let (name, section) = p.summary_section().unwrap();
        assert_eq!(name, "mqtt");
        assert_eq!(section["dropped"], 20);
        assert_eq!(section["topics"]["node"], "unit");
        // Writes after the end are dropped too, never an error.
        p.write(&event("cam", AlertLevel::Normal)).unwrap();
    }

    #[test]
    fn the_password_stays_inside_the_connection() {
        let mut config = unreachable(10);
        config.username = Some("surveil".into());
        config.password_env = Some("SURVEIL_UNIT_MQTT_PASSWORD".into());
        let secret = "s3cr3t-unit";
        let var = |name: &str| (name == "SURVEIL_UNIT_MQTT_PASSWORD").then(|| secret.to_string());
        let mut p = MqttPublisher::start(&config, var).unwrap();
        assert!(!format!("{p:?}").contains(secret));
        p.close(Instant::now());
        let (_, section) = p.summary_section().unwrap();
        assert!(!section.to_string().contains(secret), "{section}");
    }

    #[test]
    fn credentials_and_certificates_that_cannot_be_read_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = unreachable(10);
        config.username = Some("surveil".into());
        config.password_env = Some("SURVEIL_UNIT_UNSET".into());
        let err = MqttPublisher::start(&config, |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mqtt.password_env") && err.contains("not set"),
            "{err}"
        );

        config.password_env = None;
        config.password_file = Some(dir.path().join("missing"));
        let err = MqttPublisher::start(&config, |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mqtt.password_file") && err.contains("cannot read"),
            "{err}"
        );

        let mut config = unreachable(10);
        config.tls = true;
        config.ca_file = Some(dir.path().join("missing.pem"));
        let err = MqttPublisher::start(&config, |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mqtt.ca_file") && err.contains("cannot read"),
            "{err}"
        );
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        config.ca_file = Some(not_pem);
        let err = MqttPublisher::start(&config, |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mqtt.ca_file") && err.contains("no PEM certificate"),
            "{err}"
        );
    }

    #[test]
    fn a_password_file_gives_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "first line\nsecond\n").unwrap();
        let config = MqttConfig {
            username: Some("u".into()),
            password_file: Some(file),
            ..MqttConfig::default()
        };
        assert_eq!(
            read_password(&config, &|_| None).unwrap().as_deref(),
            Some("first line")
        );
    }

    #[test]
    fn drop_warnings_thin_out() {
        let warned: Vec<u64> = (1..=1000).filter(|n| is_power_of_ten(*n)).collect();
        assert_eq!(warned, [1, 10, 100, 1000]);
    }

    #[test]
    fn the_default_client_id_names_host_and_process() {
        let id = default_client_id();
        assert!(id.starts_with("surveil-"), "{id}");
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
        assert!(id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
    }
}
