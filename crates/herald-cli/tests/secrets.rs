//! The `herald` binary never prints a broker password: URLs it refuses (from `--broker`,
//! `HERALD_BROKER` or `herald.toml`), with `--log debug`, and the banner of `herald serve`.
//! Connection errors and logs are covered in `herald-http/tests/secrets.rs`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const LEFT: &str = "Lf7kqz";
const RIGHT: &str = "Rg9wvx";

fn herald(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
    c.current_dir(dir)
        .env_remove("HERALD_TOKEN")
        .env_remove("HERALD_BROKER")
        .args(["--log", "debug"]);
    c
}

fn assert_hidden(what: &str, text: &str) {
    assert!(
        !text.contains(LEFT) && !text.contains(RIGHT),
        "a password leaked through {what}: {text}"
    );
}

#[test]
fn refused_urls_are_printed_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let mut refused = 0;
    for c in ["/", "?", "#", "/?,#@%"] {
        let password = format!("{LEFT}{c}{RIGHT}");
        for url in [
            format!("amqp://alice:{password}@127.0.0.1:5672/%2f"),
            format!("amqps://alice:{password}@h1,amqp://bob:{password}@h2"),
            format!("alice:{password}@127.0.0.1:5672"),
            format!("kafka://alice:{password}@127.0.0.1:9092"),
        ] {
            let from_flag = herald(dir.path())
                .args(["--broker", &url, "topology", "--live"])
                .output()
                .unwrap();
            let from_env = herald(dir.path())
                .env("HERALD_BROKER", &url)
                .args(["dlq", "list"])
                .output()
                .unwrap();
            let toml = dir.path().join("herald.toml");
            std::fs::write(&toml, format!("broker = {url:?}\n")).unwrap();
            let from_file = herald(dir.path())
                .args(["publish", "a.b", "{}"])
                .output()
                .unwrap();
            std::fs::remove_file(&toml).unwrap();
            for (how, out) in [
                ("--broker", from_flag),
                ("HERALD_BROKER", from_env),
                ("herald.toml", from_file),
            ] {
                assert!(!out.status.success(), "{how} {url} was accepted");
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(text.contains("error"), "{text}");
                assert_hidden(how, &text);
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 48);
}

#[test]
fn serve_prints_the_broker_redacted() {
    let dir = tempfile::tempdir().unwrap();
    for c in ["/", "?", ",", "#", "@", "%"] {
        let url = format!("memory://alice:{LEFT}{c}{RIGHT}@broker");
        let mut child = herald(dir.path())
            .args(["--broker", &url, "serve", "--listen", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = String::new();
        loop {
            let line = lines.next().expect("the banner").unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with("dashboard: ") {
                break;
            }
        }
        assert!(
            seen.contains("herald serve on memory://alice:***@broker"),
            "{seen}"
        );
        assert_hidden("the serve banner", &seen);
        child.kill().unwrap();
        child.wait().unwrap();
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        assert_hidden("the serve logs", &rest.join("\n"));
    }
}
