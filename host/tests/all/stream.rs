//! Live streams from a real aggregator fed by a real device process: a WebSocket subscriber
//! gets positions and alert steps only once they are in history, resumes after the last
//! sequence it saw without a gap, and Server-Sent Events resume from `Last-Event-ID`; a
//! subscriber that never reads does not slow ingest.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tungstenite::Message;

use crate::fleet::{self, Api, InProcess, KillOnDrop};
use crate::util;

type Socket = tungstenite::WebSocket<TcpStream>;

fn connect(api: &Api, query: &str) -> Socket {
    let stream = TcpStream::connect(api.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let url = format!(
        "ws://{}/api/v1/stream?access_token={}{query}",
        api.addr, api.token
    );
    let (mut socket, _) = tungstenite::client(url.as_str(), stream).unwrap();
    let hello = next_json(&mut socket);
    assert_eq!(hello["kind"], "hello", "{hello}");
    socket
}

fn next_json(socket: &mut Socket) -> serde_json::Value {
    loop {
        match socket.read().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// Reads events until `done` holds for what was read; returns them all.
fn read_until(
    socket: &mut Socket,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut events = Vec::new();
    while !done(&events) {
        assert!(Instant::now() < deadline, "stream: only {events:#?}");
        let m = next_json(socket);
        assert_eq!(m["kind"], "events", "{m}");
        events.extend(m["events"].as_array().unwrap().iter().cloned());
    }
    events
}

fn post(device: SocketAddr, events: &[fleet_host::event::Event]) {
    let body: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    let (status, answer) = fleet::http(device, "POST", "/v1/events", &body.join("\n")).unwrap();
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn the_stream_pushes_what_history_holds_and_resumes_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    fleet::pki(&certs, &["dev-s"]);
    let agg = InProcess::start(&certs, &dir.path().join("history"));
    let api = agg.api();
    let http = fleet::free_port();
    let device: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let _d = KillOnDrop(fleet::spawn_device(
        &certs,
        &dir.path().join("journal"),
        "dev-s",
        agg.quic,
        http,
    ));
    let mut ws = connect(&api, "&topics=alerts,positions,tasks");
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet::http(device, "GET", "/healthz", "").is_none() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }

    post(device, &util::late_task("T-live", 30));
    let got = read_until(&mut ws, |e| {
        e.iter()
            .any(|e| e["topic"] == "alerts" && e["data"]["step"] == "opened")
    });
    // Every event pushed is already in history: its position on the courier's route, its
    // alert in the alerts API.
    let route = fleet::stored_event_ids(&api, "c-T-live");
    for e in &got {
        match e["topic"].as_str().unwrap() {
            "positions" => {
                let id = e["data"]["event_id"].as_str().unwrap();
                assert!(route.iter().any(|r| r == id), "{id} pushed before stored");
            }
            "alerts" => {
                let id = e["data"]["alert"]["id"].as_str().unwrap();
                let stored = api.get_json(&format!("/api/v1/alerts/{id}"));
                assert_eq!(stored["task_id"], "T-live");
            }
            "tasks" => assert_eq!(e["data"]["task_id"], "T-live"),
            other => panic!("{other} was not asked for"),
        }
    }
    // The courier is found near its last position, and in a box around it, with its risk.
    let last_at = got
        .iter()
        .rev()
        .find(|e| e["topic"] == "positions")
        .map(|e| {
            (
                e["data"]["lat"].as_f64().unwrap(),
                e["data"]["lon"].as_f64().unwrap(),
            )
        })
        .unwrap();
    let near = api.get_json(&format!(
        "/api/v1/couriers/nearby?lat={}&lon={}&radius_km=0.5&limit=5",
        last_at.0,
        last_at.1 + 0.002
    ));
    let found = &near["couriers"][0];
    assert_eq!(found["courier_id"], "c-T-live", "{near}");
    assert!(found["distance_km"].as_f64().unwrap() < 0.5);
    assert!(found["score"].as_f64().unwrap() > 0.5, "{found}");
    // Coloured by its open alert, not by whether its latest decision raised one.
    assert!(
        ["warning", "critical"].contains(&found["severity"].as_str().unwrap()),
        "{found}"
    );
    let boxed = api.get_json(&format!(
        "/api/v1/couriers?bbox={},{},{},{}",
        last_at.0 - 0.01,
        last_at.1 - 0.01,
        last_at.0 + 0.01,
        last_at.1 + 0.01
    ));
    assert_eq!(boxed["couriers"].as_array().unwrap().len(), 1, "{boxed}");
    let far = api.get_json("/api/v1/couriers/nearby?lat=0&lon=0&radius_km=5");
    assert!(far["couriers"].as_array().unwrap().is_empty());
    let (status, body) = api
        .request("GET", "/api/v1/couriers/nearby?lat=91&lon=0", "")
        .unwrap();
    assert_eq!(status, 400, "{body}");

    // Positions: at most one per courier per second of event time (pings here are a minute
    // apart, so all of them).
    let positions = got.iter().filter(|e| e["topic"] == "positions").count();
    assert!(positions >= 3, "{got:#?}");
    let last = got.last().unwrap()["seq"].as_u64().unwrap();
    drop(ws);

    // Away for a while: the next task's events are published meanwhile.
    post(device, &util::late_task("T-live-2", 30));
    let mut again = connect(&api, &format!("&topics=positions&since={last}"));
    let resumed = read_until(&mut again, |e| {
        e.iter().any(|e| e["data"]["task_id"] == "T-live-2")
    });
    let first = resumed[0]["seq"].as_u64().unwrap();
    assert!(first > last, "nothing seen twice");
    // Nothing lost: the resumed subscriber gets every position of the new task.
    let all = read_until(&mut again, |e| {
        resumed
            .iter()
            .chain(e)
            .filter(|e| e["data"]["task_id"] == "T-live-2")
            .count()
            >= util::late_task("T-live-2", 30).len()
    });
    let count = resumed
        .iter()
        .chain(&all)
        .filter(|e| e["data"]["task_id"] == "T-live-2")
        .count();
    assert_eq!(count, util::late_task("T-live-2", 30).len());

    // Server-Sent Events: each event with its id; a reconnect with Last-Event-ID resumes.
    let (ids, _) = sse(&api, None, 3);
    let (resumed, _) = sse(&api, Some(ids[0]), 2);
    assert_eq!(resumed, [ids[1], ids[2]]);

    // A customer's token follows one task: its positions and status, nothing else.
    let admin = Api::with_role(api.addr, &certs, fleet_aggregator::auth::Role::Admin);
    let (status, issued) = admin
        .request(
            "POST",
            "/api/v1/tokens",
            r#"{"role":"viewer","name":"customer of T-live","task":"T-live"}"#,
        )
        .unwrap();
    assert_eq!(status, 201, "{issued}");
    let issued: serde_json::Value = serde_json::from_str(&issued).unwrap();
    let customer = Api {
        addr: api.addr,
        token: issued["token"].as_str().unwrap().to_string(),
    };
    let (status, _) = customer.request("GET", "/api/v1/stats", "").unwrap();
    assert_eq!(status, 403);
    let (status, _) = customer
        .request("GET", "/api/v1/stream?task=T-live-2", "")
        .unwrap();
    assert_eq!(status, 403);
    let mut follows = connect(&customer, "&since=0");
    let seen = read_until(&mut follows, |e| {
        e.iter().any(|e| e["data"]["event_type"] == "picked_up")
    });
    for e in &seen {
        assert_eq!(e["data"]["task_id"], "T-live", "{e}");
        assert!(["positions", "tasks"].contains(&e["topic"].as_str().unwrap()));
    }

    // A wrong token, a bad filter and a plain GET are refused.
    let (status, _) = fleet::request(api.addr, Some("nope"), "GET", "/api/v1/stream", "").unwrap();
    assert_eq!(status, 401);
    let (status, body) = api
        .request("GET", "/api/v1/stream?topics=weather", "")
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, body) = api.request("GET", "/api/v1/stream", "").unwrap();
    assert_eq!(status, 406, "{body}");
}

/// Reads `n` SSE events from the start of the feed's memory (or after `last_id`); returns
/// their ids and topics.
fn sse(api: &Api, last_id: Option<u64>, n: usize) -> (Vec<u64>, Vec<String>) {
    let mut s = TcpStream::connect(api.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let resume = match last_id {
        Some(id) => format!("Last-Event-ID: {id}\r\n"),
        None => String::new(),
    };
    let since = if last_id.is_none() { "&since=0" } else { "" };
    write!(
        s,
        "GET /api/v1/stream?topics=positions{since} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n{resume}\r\n",
        api.token
    )
    .unwrap();
    let mut lines = BufReader::new(s).lines();
    let status = lines.next().unwrap().unwrap();
    assert!(status.contains("200"), "{status}");
    let (mut ids, mut topics) = (Vec::new(), Vec::new());
    for line in lines {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("id: ") {
            ids.push(id.parse().unwrap());
        } else if let Some(topic) = line.strip_prefix("event: ") {
            topics.push(topic.to_string());
        }
        if ids.len() == n && topics.len() == n {
            break;
        }
    }
    (ids, topics)
}
