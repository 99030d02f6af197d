//! `surveil run` publishing to a real MQTT broker: a `mosquitto` started by each test on a free
//! loopback port (its own temporary configuration, killed at the end), and a rumqttc
//! subscriber that records what arrives.
//!
//! `scripts/setup.sh` installs mosquitto (Debian package `mosquitto`) and openssl (the TLS
//! test's certificates). Without them the tests print a note and return; under CI (`CI` set)
//! they fail.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{in_ci, json, stderr, surveil};
use rumqttc::{Client, Event as MqttEvent, MqttOptions, Packet, QoS};
use surveil_orchestrator::{AlertLevel, Event, EventKind, EventSink, MqttPublisher};

/// The mosquitto binary: on `PATH`, else where Debian installs it (`/usr/sbin` is not on every
/// user's `PATH`).
fn mosquitto_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A mosquitto of our own on 127.0.0.1:`port`, without persistence (a restart forgets retained
/// messages, as a broker that lost its disk would).
struct Broker {
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    /// A broker with anonymous access; `None` (after a note) when mosquitto is not installed,
    /// a failure under CI.
    fn start() -> Option<Broker> {
        Self::start_with(|_| "allow_anonymous true\n".to_string())
    }

    /// A broker whose configuration ends with what `auth` returns; `auth` gets the broker's
    /// folder, to put files there.
    fn start_with(auth: impl FnOnce(&Path) -> String) -> Option<Broker> {
        let Some(binary) = mosquitto_binary() else {
            assert!(
                !in_ci(),
                "mosquitto is not installed (scripts/setup.sh installs the Debian package)"
            );
            eprintln!("skipped: mosquitto is not installed (run scripts/setup.sh)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        // Started as root, mosquitto drops to its own user before it reads the password file.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let auth = auth(dir.path());
        let port = free_port();
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\npersistence false\nmax_queued_messages 0\n\
                 log_dest stderr\n{auth}"
            ),
        )
        .unwrap();
        let mut broker = Broker {
            binary,
            dir,
            port,
            child: None,
        };
        broker.launch();
        Some(broker)
    }

    /// Start mosquitto and wait until its port accepts connections.
    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .unwrap();
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("mosquitto exited with {status}: {}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "mosquitto does not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the broker (as a crash or a restart would).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// `--set` flags that point `surveil run` at this broker.
    fn flags(&self) -> Vec<String> {
        vec![
            "--set".into(),
            "mqtt.enabled=true".into(),
            "--set".into(),
            "mqtt.host=127.0.0.1".into(),
            "--set".into(),
            format!("mqtt.port={}", self.port),
        ]
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One message as received.
#[derive(Debug, Clone)]
struct Received {
    topic: String,
    payload: String,
    retain: bool,
}

/// A subscriber to `filter` that records every message; it resubscribes after each
/// (re)connection, so it follows a broker restart.
struct Subscriber {
    client: Client,
    messages: Arc<Mutex<Vec<Received>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    fn new(port: u16, filter: &str) -> Self {
        Self::with_login(port, filter, None)
    }

    fn with_login(port: u16, filter: &str, login: Option<(&str, &str)>) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut options = MqttOptions::new(
            format!("test-sub-{}-{n}", std::process::id()),
            "127.0.0.1",
            port,
        );
        options.set_max_packet_size(16 << 20, 16 << 20);
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        let (client, mut connection) = Client::new(options, 100);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (sink, sub, filter) = (messages.clone(), client.clone(), filter.to_string());
        let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        sink.lock().unwrap().push(Received {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            retain: p.retain,
                        });
                    }
                    Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        subscribed_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the subscription is acknowledged");
        Subscriber {
            client,
            messages,
            thread: Some(thread),
        }
    }

    fn all(&self) -> Vec<Received> {
        self.messages.lock().unwrap().clone()
    }

    fn on(&self, topic: &str) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    /// Wait until `done(messages)` holds (at most `limit`).
    fn wait_until(&self, limit: Duration, what: &str, done: impl Fn(&[Received]) -> bool) {
        let start = Instant::now();
        while !done(&self.all()) {
            assert!(
                start.elapsed() < limit,
                "{what}: not within {limit:?}; received: {:?}",
                self.all()
                    .iter()
                    .map(|m| format!(
                        "{} {}",
                        m.topic,
                        m.payload.chars().take(40).collect::<String>()
                    ))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
        if let Some(t) = self.thread.take() {
            let give_up = Instant::now() + Duration::from_secs(2);
            while !t.is_finished() && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The sample clip, or `None` (skipped, a failure under CI) when the assets are missing.
fn clip() -> Option<PathBuf> {
    let assets = std::env::var_os("SURVEIL_ASSETS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/surveil/assets")
        });
    let needed = [
        "video/vtest.avi",
        "video/bikes.mp4",
        "yolov3-tiny/yolov3-tiny.weights",
        "yolov3-tiny/yolov3-tiny.cfg",
        "yolov3-tiny/coco.names",
        "tokenizers/bert-base-uncased/tokenizer.json",
    ];
    let missing: Vec<_> = needed
        .iter()
        .filter(|p| !assets.join(p).is_file())
        .collect();
    if missing.is_empty() {
        return Some(assets.join(needed[0]));
    }
    assert!(
        !in_ci(),
        "missing assets {missing:?} (run scripts/setup.sh)"
    );
    eprintln!("skipped: missing {missing:?} (run scripts/setup.sh)");
    None
}

/// `surveil run` arguments: profile `testing`, dummy weights, the clip, `frames` frames, output
/// in `out`, JSON summary, then `extra`.
fn run_args(clip: &Path, out: &Path, frames: Option<u64>, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--profile",
        "testing",
        "--weights",
        "dummy",
        "--source",
        clip.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--json",
    ]
    .map(String::from)
    .to_vec();
    if let Some(n) = frames {
        args.extend(["--max-frames".to_string(), n.to_string()]);
    }
    args.extend(extra.iter().cloned());
    args
}

fn spawn_run(args: &[String], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_surveil"));
    cmd.args(args)
        .env_remove("ENV")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// The lines of a run's `events.jsonl`, parsed.
fn events_of(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect()
}

fn parse(m: &Received) -> serde_json::Value {
    serde_json::from_str(&m.payload).unwrap_or_else(|e| panic!("{}: {e}: {}", m.topic, m.payload))
}

/// Wait for `child` and parse its JSON summary.
fn finish(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    json(&out)
}

/// A profile that raises alerts on the sample clip: the whole view is a restricted zone (a
/// person in it is a `notable` cue, so the captioner's verdict reads `medium`) and the premises
/// are closed now (after-hours presence raises the verdict's `attention` to `alert`).
fn alert_profile(dir: &Path) {
    let now = jiff::Zoned::now();
    let open = (now.hour() + 6) % 24;
    let close = (now.hour() + 7) % 24;
    std::fs::write(
        dir.join("mqtt_alerts.toml"),
        format!(
            "[vlm]\nprimary_model = \"git-base-coco\"\nload_in_4bit = true\nmax_new_tokens = 16\n\
             [orchestration]\nmode = \"fast\"\nmax_concurrent_tools = 1\nvlm_cooldown_seconds = 0\n\
             [monitoring]\nenabled = false\n\
             [decision]\nopening_hours = {{ open = \"{open:02}:00\", close = \"{close:02}:00\" }}\n\
             [[zones]]\nname = \"whole-view\"\ncoordinates = \"normalized\"\nrestricted = true\n\
             polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]\n"
        ),
    )
    .unwrap();
}

#[test]
fn run_publishes_every_event_alerts_retained_and_availability() {
    let Some(clip) = clip() else { return };
    let Some(broker) = Broker::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    alert_profile(&profiles);
    let out = dir.path().join("run");
    let sub = Subscriber::new(broker.port, "surveil/#");
    let mut extra = broker.flags();
    extra.extend(
        [
            "--camera",
            "lobby",
            "--profiles-dir",
            profiles.to_str().unwrap(),
            "--set",
            "mqtt.node_id=node-a",
            "--set",
            "mqtt.events_qos=1",
            "--set",
            "mqtt.stats_interval_seconds=0.2",
        ]
        .map(String::from),
    );
    let mut args = run_args(&clip, &out, Some(12), &extra);
    // The alert profile instead of `testing`.
    args[2] = "mqtt_alerts".into();
    let child = spawn_run(&args, &[]);
    // While the run goes on, the node is online.
    sub.wait_until(Duration::from_secs(300), "online", |m| {
        m.iter()
            .any(|m| m.topic == "surveil/node/node-a/available" && m.payload == "online")
    });
    let summary = finish(child);
    assert_eq!(summary["frames"], 12);

    // Every event arrived on the camera's topic, in order, as its events.jsonl line.
    let written = events_of(&out);
    sub.wait_until(Duration::from_secs(10), "every event", |m| {
        m.iter()
            .filter(|m| m.topic == "surveil/lobby/events")
            .count()
            >= written.len()
    });
    let events: Vec<serde_json::Value> = sub.on("surveil/lobby/events").iter().map(parse).collect();
    assert_eq!(
        events, written,
        "the events topic carries the events.jsonl lines"
    );
    assert!(events.iter().all(|e| e["camera"] == "lobby"));

    // Alerts: the events at level alert or critical, QoS 1, retained.
    let alerts_written: Vec<&serde_json::Value> = written
        .iter()
        .filter(|e| e["alert_level"] == "alert" || e["alert_level"] == "critical")
        .collect();
    assert!(
        !alerts_written.is_empty(),
        "the alert profile raises alerts: {:?}",
        summary["alerts_by_level"]
    );
    let alerts: Vec<serde_json::Value> = sub.on("surveil/lobby/alerts").iter().map(parse).collect();
    assert_eq!(alerts.iter().collect::<Vec<_>>(), alerts_written);
    // A subscriber that comes later gets the last alert, retained.
    let late = Subscriber::new(broker.port, "surveil/lobby/alerts");
    late.wait_until(Duration::from_secs(5), "the retained alert", |m| {
        !m.is_empty()
    });
    let retained = late.all();
    assert!(retained[0].retain);
    assert_eq!(&parse(&retained[0]), *alerts_written.last().unwrap());

    // Availability: online during the run, offline (retained) after it.
    let available: Vec<String> = sub
        .on("surveil/node/node-a/available")
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(available, ["online", "offline"]);
    let late = Subscriber::new(broker.port, "surveil/node/node-a/available");
    late.wait_until(Duration::from_secs(5), "retained availability", |m| {
        m.iter().any(|m| m.retain && m.payload == "offline")
    });

    // Stats: health of the node.
    let stats = sub.on("surveil/node/node-a/stats");
    assert!(!stats.is_empty(), "stats every 0.2 s");
    let last = parse(stats.last().unwrap());
    assert_eq!(last["node"], "node-a");
    assert!(last["frames"].as_u64().unwrap() >= 1);
    for key in [
        "fps",
        "analyses",
        "alerts",
        "queue_depth",
        "rss_bytes",
        "pid",
        "client_id",
    ] {
        assert!(!last[key].is_null(), "stats lack {key}: {last}");
    }

    // The summary's account of it.
    let mqtt = &summary["mqtt"];
    assert_eq!(mqtt["dropped"], 0);
    assert_eq!(mqtt["reconnects"], 0);
    assert_eq!(mqtt["topics"]["node"], "node-a");
    let published = mqtt["published"].as_u64().unwrap();
    // Events, alerts, stats, online and offline.
    assert!(
        published >= (written.len() + alerts_written.len() + stats.len() + 2) as u64,
        "{mqtt}"
    );
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(on_disk["mqtt"]["published"], mqtt["published"]);
    let client_id = mqtt["client_id"].as_str().unwrap();
    assert!(client_id.starts_with("surveil-"), "{client_id}");
}

/// The second sample clip, beside [`clip`]'s.
fn second_clip(clip: &Path) -> PathBuf {
    clip.with_file_name("bikes.mp4")
}

#[test]
fn a_two_camera_run_publishes_each_camera_on_its_own_topics() {
    let Some(clip) = clip() else { return };
    let Some(broker) = Broker::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    alert_profile(&profiles);
    // Two cameras on two clips; the profile's whole-view zone applies to both.
    let mut profile = std::fs::read_to_string(profiles.join("mqtt_alerts.toml")).unwrap();
    for (name, source) in [("entrance", clip.clone()), ("till", second_clip(&clip))] {
        profile.push_str(&format!(
            "\n[[cameras]]\nname = \"{name}\"\nsource = {:?}\n",
            source.to_str().unwrap()
        ));
    }
    std::fs::write(profiles.join("mqtt_alerts.toml"), profile).unwrap();
    let out = dir.path().join("run");
    let sub = Subscriber::new(broker.port, "surveil/#");
    let mut args: Vec<String> = [
        "--profiles-dir",
        profiles.to_str().unwrap(),
        "run",
        "--profile",
        "mqtt_alerts",
        "--weights",
        "dummy",
        "--max-frames",
        "12",
        "--output",
        out.to_str().unwrap(),
        "--json",
        "--set",
        "mqtt.node_id=shop-1",
        "--set",
        "mqtt.events_qos=1",
    ]
    .map(String::from)
    .to_vec();
    args.extend(broker.flags());
    let summary = finish(spawn_run(&args, &[]));
    assert_eq!(summary["frames"], 24, "12 frames per camera: {summary}");

    let written = events_of(&out);
    sub.wait_until(Duration::from_secs(10), "every event", |m| {
        m.iter().filter(|m| m.topic.ends_with("/events")).count() >= written.len()
    });
    let mut cameras_with_alerts = 0;
    for camera in ["entrance", "till"] {
        // Each camera's events, in order, on its own topic, as its events.jsonl lines.
        let mine: Vec<&serde_json::Value> =
            written.iter().filter(|e| e["camera"] == camera).collect();
        assert!(!mine.is_empty(), "{camera} wrote no event");
        let events: Vec<serde_json::Value> = sub
            .on(&format!("surveil/{camera}/events"))
            .iter()
            .map(parse)
            .collect();
        assert_eq!(events.iter().collect::<Vec<_>>(), mine, "{camera}");

        // Its alerts on its alerts topic; the last one retained for a later subscriber.
        let alerts_written: Vec<&serde_json::Value> = mine
            .iter()
            .copied()
            .filter(|e| e["alert_level"] == "alert" || e["alert_level"] == "critical")
            .collect();
        let topic = format!("surveil/{camera}/alerts");
        let alerts: Vec<serde_json::Value> = sub.on(&topic).iter().map(parse).collect();
        assert_eq!(
            alerts.iter().collect::<Vec<_>>(),
            alerts_written,
            "{camera}"
        );
        if let Some(last) = alerts_written.last() {
            cameras_with_alerts += 1;
            let late = Subscriber::new(broker.port, &topic);
            late.wait_until(Duration::from_secs(5), "the retained alert", |m| {
                !m.is_empty()
            });
            let retained = late.all();
            assert!(retained[0].retain, "{camera}");
            assert_eq!(&&parse(&retained[0]), last, "{camera}");
        }
    }
    assert!(
        cameras_with_alerts >= 1,
        "the alert profile raises alerts: {:?}",
        summary["alerts_by_level"]
    );
    // No topic outside the two cameras' and the node's.
    for m in sub.all() {
        assert!(
            ["surveil/entrance/", "surveil/till/", "surveil/node/shop-1/"]
                .iter()
                .any(|p| m.topic.starts_with(p)),
            "unexpected topic {}",
            m.topic
        );
    }
    // One node, online then offline.
    let available: Vec<String> = sub
        .on("surveil/node/shop-1/available")
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(available, ["online", "offline"]);
    assert_eq!(summary["mqtt"]["dropped"], 0);
}

#[test]
fn the_last_will_says_offline_when_the_process_is_killed() {
    let Some(clip) = clip() else { return };
    let Some(broker) = Broker::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let sub = Subscriber::new(broker.port, "surveil/node/+/available");
    let mut extra = broker.flags();
    extra.extend(["--set", "mqtt.node_id=doomed"].map(String::from));
    let mut child = spawn_run(&run_args(&clip, &out, None, &extra), &[]);
    sub.wait_until(Duration::from_secs(300), "online", |m| {
        m.iter().any(|m| m.payload == "online")
    });
    child.kill().unwrap(); // SIGKILL: no chance to say goodbye
    child.wait().unwrap();
    sub.wait_until(Duration::from_secs(10), "the last will", |m| {
        m.iter().any(|m| m.payload == "offline")
    });
    let late = Subscriber::new(broker.port, "surveil/node/doomed/available");
    late.wait_until(Duration::from_secs(5), "the retained will", |m| {
        m.iter().any(|m| m.retain && m.payload == "offline")
    });
}

#[test]
fn a_broker_restart_mid_run_neither_stalls_nor_loses_the_record() {
    let Some(clip) = clip() else { return };
    let Some(mut broker) = Broker::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let sub = Subscriber::new(broker.port, "surveil/#");
    let mut extra = broker.flags();
    extra.extend(["--set", "mqtt.node_id=restarted"].map(String::from));
    let child = spawn_run(&run_args(&clip, &out, None, &extra), &[]);
    let events_topic = "surveil/camera-1/events";
    sub.wait_until(Duration::from_secs(300), "first events", |m| {
        m.iter().filter(|m| m.topic == events_topic).count() >= 5
    });
    broker.stop();
    let frame_ids = |m: &[Received]| -> Vec<u64> {
        m.iter()
            .filter(|m| m.topic == events_topic)
            .map(parse)
            .filter(|e| e["kind"] == "frame")
            .map(|e| e["frame_id"].as_u64().unwrap())
            .collect()
    };
    let last_before = *frame_ids(&sub.all()).iter().max().unwrap();
    // The analysis goes on while the broker is down.
    let down_at = events_of(&out).len();
    let start = Instant::now();
    while events_of(&out).len() < down_at + 10 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the run stalled without its broker"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    broker.launch();
    // The publisher comes back: `online` again, then newer events.
    sub.wait_until(Duration::from_secs(60), "reconnection", |m| {
        m.iter()
            .filter(|m| m.topic == "surveil/node/restarted/available" && m.payload == "online")
            .count()
            >= 2
            && frame_ids(m).iter().any(|id| *id > last_before + 10)
    });
    // SAFETY: plain kill(2) on our own child: a Ctrl-C.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let summary = finish(child);

    // The run ended cleanly; events.jsonl is complete.
    assert_eq!(summary["end_reason"], "interrupted", "{summary}");
    let written = events_of(&out);
    assert_eq!(summary["events"], written.len() as u64);
    assert_eq!(
        summary["frames"],
        written.iter().filter(|e| e["kind"] == "frame").count() as u64
    );
    // The publisher counted the reconnection and ended with `offline`.
    let mqtt = &summary["mqtt"];
    assert!(mqtt["reconnects"].as_u64().unwrap() >= 1, "{mqtt}");
    sub.wait_until(Duration::from_secs(10), "offline", |m| {
        m.iter()
            .rev()
            .find(|m| m.topic == "surveil/node/restarted/available")
            .is_some_and(|m| m.payload == "offline")
    });
    // What arrived is part of the record, in order, nothing twice.
    let received = frame_ids(&sub.all());
    assert!(received.windows(2).all(|w| w[0] < w[1]), "{received:?}");
    assert!(received.len() as u64 <= summary["frames"].as_u64().unwrap());
}

#[test]
fn two_processes_share_a_broker_without_clashing() {
    let Some(clip) = clip() else { return };
    let Some(broker) = Broker::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::new(broker.port, "surveil/#");
    let runs: Vec<(&str, &str, PathBuf)> = vec![
        ("cam-a", "host-a", dir.path().join("a")),
        ("cam-b", "host-b", dir.path().join("b")),
    ];
    let children: Vec<Child> = runs
        .iter()
        .map(|(camera, node, out)| {
            let mut extra = broker.flags();
            extra.extend([
                "--camera".to_string(),
                camera.to_string(),
                "--set".into(),
                format!("mqtt.node_id={node}"),
                "--set".into(),
                "mqtt.events_qos=1".into(),
                "--set".into(),
                "mqtt.stats_interval_seconds=0.2".into(),
            ]);
            spawn_run(&run_args(&clip, out, Some(10), &extra), &[])
        })
        .collect();
    let summaries: Vec<serde_json::Value> = children.into_iter().map(finish).collect();
    let ids: Vec<&str> = summaries
        .iter()
        .map(|s| s["mqtt"]["client_id"].as_str().unwrap())
        .collect();
    assert_ne!(ids[0], ids[1], "default client ids differ per process");
    for ((camera, node, out), summary) in runs.iter().zip(&summaries) {
        let mqtt = &summary["mqtt"];
        // A client id clash would have the broker drop one connection for the other, over and
        // over: no reconnects, nothing dropped.
        assert_eq!(mqtt["reconnects"], 0, "{camera}: {mqtt}");
        assert_eq!(mqtt["dropped"], 0, "{camera}: {mqtt}");
        let written = events_of(out);
        let topic = format!("surveil/{camera}/events");
        sub.wait_until(Duration::from_secs(10), &topic, |m| {
            m.iter().filter(|m| m.topic == topic).count() >= written.len()
        });
        let events: Vec<serde_json::Value> = sub.on(&topic).iter().map(parse).collect();
        assert_eq!(events, written, "{camera}");
        let available: Vec<String> = sub
            .on(&format!("surveil/node/{node}/available"))
            .into_iter()
            .map(|m| m.payload)
            .collect();
        assert_eq!(available, ["online", "offline"], "{node}");
        let stats = sub.on(&format!("surveil/node/{node}/stats"));
        assert!(!stats.is_empty(), "{node}");
        assert!(stats.iter().map(parse).all(|s| s["node"] == *node));
    }
}

#[test]
fn the_password_reaches_the_broker_and_nothing_else() {
    let Some(clip) = clip() else { return };
    let secret = "pw-9f3c-never-shown";
    let Some(broker) = Broker::start_with(|dir| {
        let passwd = dir.join("passwd");
        // mosquitto_passwd is on the PATH (/usr/bin) where the broker may not be (/usr/sbin).
        let status = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwd)
            .args(["surveil", secret])
            .status()
            .expect("mosquitto_passwd (package mosquitto) runs");
        assert!(status.success());
        format!(
            "allow_anonymous false\npassword_file {}\n",
            passwd.display()
        )
    }) else {
        return;
    };

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let sub = Subscriber::with_login(broker.port, "surveil/#", Some(("surveil", secret)));
    let mut extra = broker.flags();
    extra.extend(
        [
            "-vv",
            "--set",
            "mqtt.username=surveil",
            "--set",
            "mqtt.password_env=SURVEIL_TEST_MQTT_PASSWORD",
        ]
        .map(String::from),
    );
    let env = [("SURVEIL_TEST_MQTT_PASSWORD", secret)];
    let run = surveil(
        &run_args(&clip, &out, Some(4), &extra)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &env,
    );
    let summary = json(&run);
    assert_eq!(summary["mqtt"]["reconnects"], 0, "{}", summary["mqtt"]);
    sub.wait_until(Duration::from_secs(10), "events with a login", |m| {
        m.iter()
            .filter(|m| m.topic == "surveil/camera-1/events")
            .count()
            >= 4
    });
    // Nowhere: not in the debug log, the summary or its file, `config show`.
    let shown = surveil(
        &[
            "config",
            "show",
            "--set",
            "mqtt.username=surveil",
            "--set",
            "mqtt.password_env=SURVEIL_TEST_MQTT_PASSWORD",
        ],
        &env,
    );
    let shown_json = surveil(
        &[
            "config",
            "show",
            "--json",
            "--set",
            "mqtt.username=surveil",
            "--set",
            "mqtt.password_env=SURVEIL_TEST_MQTT_PASSWORD",
        ],
        &env,
    );
    for (what, text) in [
        ("run stderr", stderr(&run)),
        (
            "run stdout",
            String::from_utf8_lossy(&run.stdout).into_owned(),
        ),
        (
            "summary.json",
            std::fs::read_to_string(out.join("summary.json")).unwrap(),
        ),
        ("config show", common::ok_stdout(&shown)),
        ("config show --json", common::ok_stdout(&shown_json)),
    ] {
        assert!(!text.contains(secret), "the password is in the {what}");
    }

    // A password file that cannot be read: a configuration error naming the key, before any
    // work.
    let missing = dir.path().join("no-such-secret");
    let bad = surveil(
        &run_args(
            &clip,
            &dir.path().join("never"),
            Some(1),
            &[
                broker.flags(),
                [
                    "--set".to_string(),
                    "mqtt.username=surveil".into(),
                    "--set".into(),
                    format!("mqtt.password_file={}", missing.display()),
                ]
                .to_vec(),
            ]
            .concat(),
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
        &[],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    let err = stderr(&bad);
    assert!(err.contains("mqtt.password_file"), "{err}");
    assert!(!dir.path().join("never").exists(), "nothing was started");
}

#[test]
fn mqtt_settings_are_shown_and_checked_like_the_rest() {
    let shown = surveil(
        &["config", "show", "--set", "mqtt.port=8883"],
        &[("SURVEIL_MQTT__HOST", "broker.lan")],
    );
    let text = common::ok_stdout(&shown);
    assert_eq!(
        common::shown(&text, "mqtt.enabled"),
        ("false".into(), "default".into())
    );
    assert_eq!(
        common::shown(&text, "mqtt.host"),
        ("broker.lan".into(), "env SURVEIL_MQTT__HOST".into())
    );
    assert_eq!(
        common::shown(&text, "mqtt.port"),
        ("8883".into(), "flag --set mqtt.port".into())
    );
    assert_eq!(common::shown(&text, "mqtt.client_id").0, "(none)");

    for (set, needle) in [
        (
            "mqtt.events_qos=5",
            "mqtt.events_qos = 5 (from flag --set mqtt.events_qos): must be 0, 1 or 2",
        ),
        ("mqtt.port=70000", "mqtt.port"),
        ("mqtt.colour=blue", "unknown key `mqtt.colour`"),
        (
            "mqtt.topic_prefix=surveil/#",
            "mqtt.topic_prefix = \"surveil/#\"",
        ),
    ] {
        let out = surveil(&["config", "show", "--set", set], &[]);
        assert_eq!(out.status.code(), Some(2), "{set}");
        assert!(stderr(&out).contains(needle), "{set}: {}", stderr(&out));
    }
}

/// Run `openssl` with `args` in `dir`; `None` (after a note) when it is not installed, a
/// failure under CI.
fn openssl(dir: &Path, args: &[&str]) -> Option<()> {
    match Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(())
        }
        Err(_) => {
            assert!(
                !in_ci(),
                "openssl is not installed (scripts/setup.sh installs it)"
            );
            eprintln!("skipped: openssl is not installed");
            None
        }
    }
}

/// A certificate authority `ca.pem` and a server certificate for localhost / 127.0.0.1
/// (`server.pem`, `server.key`) signed by it, in `dir`.
fn test_pki(dir: &Path) -> Option<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=surveil test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    )?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    )?;
    for f in ["ca.pem", "server.pem", "server.key"] {
        std::fs::set_permissions(
            dir.join(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
    }
    Some(())
}

fn sample_event(camera: &str, frame_id: u64, level: AlertLevel) -> Event {
    Event {
        kind: EventKind::Frame,
        frame_id,
        source_time_s: frame_id as f64 / 10.0,
        timestamp: "2026-01-01T00:00:00Z".into(),
        camera: camera.into(),
        persons: 1,
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
fn tls_with_a_private_ca_and_alerts_through_the_sink_api() {
    let pki = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        pki.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    if test_pki(pki.path()).is_none() {
        return;
    }
    let tls_port = free_port();
    let p = pki.path();
    // A TLS listener for surveil, a plain one for the test's subscriber.
    let Some(broker) = Broker::start_with(|_| {
        format!(
            "allow_anonymous true\nlistener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\n\
             keyfile {}\n",
            p.join("ca.pem").display(),
            p.join("server.pem").display(),
            p.join("server.key").display()
        )
    }) else {
        return;
    };
    let sub = Subscriber::new(broker.port, "site-a/surveil/#");
    let config = surveil_config::MqttConfig {
        enabled: true,
        host: "localhost".into(),
        port: tls_port,
        topic_prefix: "site-a/surveil".into(),
        node_id: Some("tls-node".into()),
        tls: true,
        ca_file: Some(p.join("ca.pem")),
        ..surveil_config::MqttConfig::default()
    };
    let mut publisher = MqttPublisher::start(&config, |_| None).unwrap();
    let levels = [
        AlertLevel::Normal,
        AlertLevel::Alert,
        AlertLevel::Attention,
        AlertLevel::Critical,
        AlertLevel::Normal,
    ];
    for (i, level) in levels.into_iter().enumerate() {
        publisher
            .write(&sample_event("dock", i as u64, level))
            .unwrap();
    }
    publisher.finish().unwrap();
    let report = publisher.report().unwrap().clone();
    assert!(report.tls);
    assert_eq!(report.counters.dropped, 0, "{report:?}");
    sub.wait_until(Duration::from_secs(10), "events over TLS", |m| {
        m.iter()
            .filter(|m| m.topic == "site-a/surveil/dock/events")
            .count()
            == levels.len()
    });
    // Alerts are the alert and critical events; the last one stays retained.
    let alerts: Vec<u64> = sub
        .on("site-a/surveil/dock/alerts")
        .iter()
        .map(|m| parse(m)["frame_id"].as_u64().unwrap())
        .collect();
    assert_eq!(alerts, [1, 3]);
    let late = Subscriber::new(broker.port, "site-a/surveil/dock/alerts");
    late.wait_until(Duration::from_secs(5), "the retained alert", |m| {
        m.iter()
            .any(|m| m.retain && parse(m)["alert_level"] == "critical")
    });
    let available: Vec<String> = sub
        .on("site-a/surveil/node/tls-node/available")
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(available, ["online", "offline"]);

    // A broker whose certificate another authority signed is refused: nothing gets through,
    // and what was written is counted as dropped at the end.
    let other = tempfile::tempdir().unwrap();
    if test_pki(other.path()).is_none() {
        return;
    }
    let wrong_ca = surveil_config::MqttConfig {
        ca_file: Some(other.path().join("ca.pem")),
        node_id: Some("wrong-ca".into()),
        ..config
    };
    let mut refused = MqttPublisher::start(&wrong_ca, |_| None).unwrap();
    refused
        .write(&sample_event("dock", 99, AlertLevel::Normal))
        .unwrap();
    refused.finish().unwrap();
    let report = refused.report().unwrap();
    assert_eq!((report.counters.published, report.counters.dropped), (0, 1));
    assert!(sub.on("site-a/surveil/node/wrong-ca/available").is_empty());
}
