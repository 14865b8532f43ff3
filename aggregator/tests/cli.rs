//! `aggregator certs init` and `aggregator tokens` as an operator runs them.

use std::path::Path;
use std::process::{Command, Output};

fn aggregator(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aggregator"))
        .current_dir(dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("aggregator runs")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn certs_init_prints_the_first_admin_token_and_tokens_are_issued_listed_and_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let init = stdout(&aggregator(dir, &["certs", "init"]));
    let admin = std::fs::read_to_string(dir.join("certs/admin.token")).unwrap();
    assert!(init.contains(admin.trim()), "{init}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for file in ["certs/admin.token", "certs/api-tokens.json"] {
            let mode = std::fs::metadata(dir.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }

    let viewer = stdout(&aggregator(
        dir,
        &["tokens", "issue", "--role", "viewer", "--name", "grafana"],
    ));
    assert!(viewer.trim().starts_with("fleet_"), "{viewer}");
    let listed = stdout(&aggregator(dir, &["tokens", "list"]));
    assert!(
        listed.contains("admin") && listed.contains("grafana"),
        "{listed}"
    );
    assert!(!listed.contains(viewer.trim()), "secrets are not listed");
    let id = listed
        .lines()
        .find(|l| l.contains("grafana"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    stdout(&aggregator(dir, &["tokens", "revoke", "--id", id]));
    assert!(!stdout(&aggregator(dir, &["tokens", "list"])).contains("grafana"));

    let refused = aggregator(dir, &["tokens", "issue", "--role", "root"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("viewer, operator or admin"));
    let refused = aggregator(dir, &["tokens", "revoke", "--id", "ffffffff"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no token ffffffff"));
}
