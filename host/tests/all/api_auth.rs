//! The aggregator's HTTP API behind tokens and roles: every endpoint with no token, a wrong
//! one, a viewer's, an operator's and an admin's; tokens issued and revoked while it runs; a
//! token over its rate limit.

use std::time::{Duration, Instant};

use fleet_aggregator::ServeConfig;
use fleet_aggregator::auth::{Role, TokenFile};

use crate::fleet::{self, Api, InProcess};

/// What each role gets from each endpoint (no data was synced: unknown ids are 404; a POST
/// without a body is a 400 once past the gate; the stream asked for as a plain GET is 406).
const ENDPOINTS: &[(&str, &str, Option<Role>)] = &[
    ("GET", "/metrics", Some(Role::Viewer)),
    ("GET", "/api/v1/stats", Some(Role::Viewer)),
    ("GET", "/api/v1/devices", Some(Role::Viewer)),
    ("GET", "/api/v1/alerts", Some(Role::Viewer)),
    ("GET", "/api/v1/alerts/pred-1", Some(Role::Viewer)),
    ("GET", "/api/v1/predictions/pred-1", Some(Role::Viewer)),
    ("GET", "/api/v1/drift", Some(Role::Viewer)),
    ("GET", "/api/v1/models", Some(Role::Viewer)),
    (
        "GET",
        "/api/v1/couriers/nearby?lat=1&lon=2",
        Some(Role::Viewer),
    ),
    ("GET", "/api/v1/stream", Some(Role::Viewer)),
    ("GET", "/api/v1/dead-letters", Some(Role::Viewer)),
    ("GET", "/api/v1/tasks/T-1", Some(Role::Viewer)),
    ("GET", "/api/v1/couriers/c1", Some(Role::Viewer)),
    ("GET", "/api/v1/couriers/c1/route", Some(Role::Viewer)),
    ("GET", "/api/v1/releases", Some(Role::Viewer)),
    ("GET", "/api/v1/releases/r@1.0.0", Some(Role::Viewer)),
    ("GET", "/api/v1/deployments", Some(Role::Viewer)),
    ("POST", "/api/v1/releases", Some(Role::Operator)),
    ("POST", "/api/v1/deployments", Some(Role::Operator)),
    ("GET", "/api/v1/tokens", Some(Role::Admin)),
    ("DELETE", "/api/v1/tokens/00000000", Some(Role::Admin)),
    ("GET", "/api/v1/no-such-thing", Some(Role::Viewer)),
    ("GET", "/healthz", None),
    ("GET", "/", None),
    ("GET", "/dashboard/app.js", None),
];

fn status(api: &Api, method: &str, path: &str) -> u16 {
    api.request(method, path, "").expect("the API answers").0
}

#[test]
fn every_endpoint_answers_each_role_as_its_role_allows() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    fleet::pki(&certs, &[]);
    let agg = InProcess::start(&certs, &dir.path().join("history"));
    let nobody = Api {
        addr: agg.http,
        token: String::new(),
    };
    let forged = Api {
        addr: agg.http,
        token: "fleet_not-a-token-this-aggregator-issued".into(),
    };
    for &(method, path, needs) in ENDPOINTS {
        for role in [Role::Viewer, Role::Operator, Role::Admin] {
            let api = Api::with_role(agg.http, &certs, role);
            let got = status(&api, method, path);
            match needs {
                Some(needed) if role < needed => {
                    assert_eq!(got, 403, "{role} {method} {path}");
                }
                _ if method == "POST" => assert_eq!(got, 400, "{role} {method} {path}"),
                _ if path == "/api/v1/stream" => assert_eq!(got, 406, "{role} {method} {path}"),
                _ => assert!(matches!(got, 200 | 404), "{role} {method} {path}: {got}"),
            }
        }
        let (anonymous, forged) = (status(&nobody, method, path), status(&forged, method, path));
        if needs.is_some() {
            // Refused before routing: a caller without a valid token learns nothing, not
            // even whether the path exists.
            assert_eq!((anonymous, forged), (401, 401), "{method} {path}");
        } else {
            assert_eq!((anonymous, forged), (200, 200), "{method} {path}");
        }
    }
    let (_, body) = nobody.request("GET", "/api/v1/stats", "").unwrap();
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let metrics = Api::with_role(agg.http, &certs, Role::Viewer)
        .request("GET", "/metrics", "")
        .unwrap()
        .1;
    for counter in ["fleet_api_unauthorized_total", "fleet_api_forbidden_total"] {
        let n: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(counter)?.trim().parse().ok())
            .unwrap();
        assert!(n > 0, "{counter}");
    }
}

#[test]
fn tokens_are_issued_and_revoked_while_the_aggregator_runs() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    fleet::pki(&certs, &[]);
    let agg = InProcess::start(&certs, &dir.path().join("history"));
    let admin = Api::with_role(agg.http, &certs, Role::Admin);

    // Through the API: the secret is in the answer, and works at once.
    let (status, body) = admin
        .request(
            "POST",
            "/api/v1/tokens",
            r#"{"role":"viewer","name":"grafana"}"#,
        )
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let issued: serde_json::Value = serde_json::from_str(&body).unwrap();
    let grafana = Api {
        addr: agg.http,
        token: issued["token"].as_str().unwrap().to_string(),
    };
    assert_eq!(grafana.request("GET", "/api/v1/stats", "").unwrap().0, 200);
    let listed = admin.get_json("/api/v1/tokens");
    assert!(
        !listed.to_string().contains(&grafana.token),
        "secrets are never listed"
    );
    let (status, _) = admin
        .request("POST", "/api/v1/tokens", r#"{"role":"root","name":"x"}"#)
        .unwrap();
    assert_eq!(status, 400);
    let id = issued["id"].as_str().unwrap();
    let (status, _) = admin
        .request("DELETE", &format!("/api/v1/tokens/{id}"), "")
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(grafana.request("GET", "/api/v1/stats", "").unwrap().0, 401);

    // From the command line's side (the token file): applied within about a second.
    let (record, secret) = TokenFile::in_dir(&certs)
        .issue(Role::Viewer, "cli")
        .unwrap();
    let cli = Api {
        addr: agg.http,
        token: secret,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while cli.request("GET", "/api/v1/stats", "").unwrap().0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the issued token was never accepted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    TokenFile::in_dir(&certs).revoke(&record.id).unwrap();
    while cli.request("GET", "/api/v1/stats", "").unwrap().0 != 401 {
        assert!(
            Instant::now() < deadline,
            "the revoked token was still accepted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_token_over_its_rate_limit_gets_429_and_others_are_not_slowed() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    fleet::pki(&certs, &[]);
    let agg = InProcess::start_with(ServeConfig {
        api_rate: 5,
        ..ServeConfig::loopback(dir.path().join("history"), &certs)
    });
    let viewer = Api::with_role(agg.http, &certs, Role::Viewer);
    let statuses: Vec<u16> = (0..40)
        .map(|_| status(&viewer, "GET", "/api/v1/stats"))
        .collect();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    // A burst of twice the rate passes, then most are refused.
    assert!(statuses[..10].iter().all(|&s| s == 200), "{statuses:?}");
    assert!(limited >= 20, "{statuses:?}");
    let raw = fleet::request(agg.http, Some(&viewer.token), "GET", "/api/v1/stats", "");
    assert!(raw.is_some_and(|(s, b)| s == 429 && b.contains("rate limit")));
    let operator = Api::with_role(agg.http, &certs, Role::Operator);
    assert_eq!(status(&operator, "GET", "/api/v1/stats"), 200);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        status(&viewer, "GET", "/api/v1/stats"),
        200,
        "the limit refills"
    );
}
