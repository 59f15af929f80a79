//! The `tether` binary end to end: genconfig, gentoken/checktoken round trips, and config
//! errors that exit 2 naming the key before anything binds.

mod support;

use std::process::{Command, Output};

use support::{TempDir, tether};

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run tether")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn genconfig_writes_a_loadable_config_in_every_format() {
    let dir = TempDir::new();
    for ext in ["json", "yaml", "toml"] {
        let path = dir.join(format!("config.{ext}"));
        let p = path.to_str().unwrap();
        let out = run(&mut tether(&["genconfig", "--output", p]));
        assert!(out.status.success(), "{ext}: {}", stderr(&out));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("hmac_secret_key"), "{text}");
        assert!(text.contains("chat"), "{text}");

        // The generated config passes validation and its key signs tokens.
        let out = run(&mut tether(&["gentoken", "--config", p, "--user", "42"]));
        assert!(out.status.success(), "{ext}: {}", stderr(&out));
        let token = stdout(&out).trim().to_owned();
        let out = run(&mut tether(&["checktoken", "--config", p, &token]));
        assert!(out.status.success(), "{ext}: {}", stderr(&out));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("config.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "secrets file must not be group/world readable"
        );
    }
}

#[test]
fn genconfig_refuses_to_overwrite_without_force() {
    let dir = TempDir::new();
    let path = dir.join("config.json");
    std::fs::write(&path, "{}").unwrap();
    let p = path.to_str().unwrap();
    let out = run(&mut tether(&["genconfig", "-o", p]));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}");
    let out = run(&mut tether(&["genconfig", "-o", p, "--force"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("hmac_secret_key")
    );
}

#[test]
fn gentoken_and_checktoken_round_trip_with_ttl_and_channel() {
    let secret = "round-trip-secret";
    let out = run(tether(&["gentoken", "--user", "alice", "--ttl", "1h"])
        .env("TETHER_CLIENT_TOKEN_HMAC_SECRET_KEY", secret));
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "{token}");

    let out =
        run(tether(&["checktoken", &token]).env("TETHER_CLIENT_TOKEN_HMAC_SECRET_KEY", secret));
    assert!(out.status.success(), "{}", stderr(&out));
    let claims: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(claims["sub"], "alice");
    let ttl = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(ttl, 3600);
    assert!(
        stderr(&out).contains("valid connection token"),
        "{}",
        stderr(&out)
    );

    let out = run(
        tether(&["gentoken", "--user", "bob", "--channel", "$private:1"])
            .env("TETHER_CLIENT_TOKEN_HMAC_SECRET_KEY", secret),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_owned();
    let out =
        run(tether(&["checktoken", &token]).env("TETHER_CLIENT_TOKEN_HMAC_SECRET_KEY", secret));
    assert!(out.status.success(), "{}", stderr(&out));
    let claims: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(claims["channel"], "$private:1");
    assert!(claims.get("exp").is_none(), "no --ttl, no exp");
    assert!(
        stderr(&out).contains("valid subscription token"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn checktoken_refuses_a_token_signed_with_another_key() {
    let out =
        run(tether(&["gentoken", "--user", "1"]).env("TETHER_CLIENT_TOKEN_HMAC_SECRET_KEY", "a"));
    let token = stdout(&out).trim().to_owned();
    let out = run(tether(&["checktoken", &token]).env("TETHER_CLIENT_TOKEN_HMAC_SECRET_KEY", "b"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("invalid token"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());

    let out =
        run(tether(&["checktoken", "not-a-jwt"]).env("TETHER_CLIENT_TOKEN_HMAC_SECRET_KEY", "b"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("invalid token"), "{}", stderr(&out));
}

#[test]
fn gentoken_without_an_hmac_key_fails_clearly() {
    let out = run(&mut tether(&["gentoken", "--user", "1"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("client.token.hmac_secret_key"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn invalid_config_file_exits_2_naming_the_key() {
    let dir = TempDir::new();
    let cases = [
        (
            "rule.json",
            r#"{"client":{"ping_interval":"5s","pong_timeout":"8s"}}"#,
            "client.ping_interval",
        ),
        (
            "unknown.yaml",
            "http_server:\n  prot: 8000\n",
            "http_server.prot",
        ),
        (
            "ns.toml",
            "[[channel.namespaces]]\nname = \"x\"\n",
            "channel.namespaces[0].name",
        ),
    ];
    for (name, text, key) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = run(&mut tether(&["serve", "--config", path.to_str().unwrap()]));
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(key), "{name}: {}", stderr(&out));
        assert!(
            stdout(&out).is_empty(),
            "nothing printed before validation: {}",
            stdout(&out)
        );
    }
}

#[test]
fn invalid_env_value_exits_2_naming_the_variable() {
    let out = run(tether(&["serve"]).env("TETHER_HTTP_SERVER_PORT", "not-a-port"));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("TETHER_HTTP_SERVER_PORT") && err.contains("http_server.port"),
        "{err}"
    );
}

#[test]
fn config_path_from_tether_config_variable() {
    let dir = TempDir::new();
    let path = dir.join("bad.json");
    std::fs::write(&path, r#"{"log":{"level":"loud"}}"#).unwrap();
    let out = run(tether(&["serve"]).env("TETHER_CONFIG", &path));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("log.level"), "{}", stderr(&out));
}

#[test]
fn dev_mode_refuses_non_loopback_addresses() {
    for address in ["0.0.0.0", "192.168.1.10", "::"] {
        let out = run(tether(&["serve", "--dev"]).env("TETHER_HTTP_SERVER_ADDRESS", address));
        assert_eq!(out.status.code(), Some(2), "{address}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("--dev") && err.contains("http_server.address"),
            "{err}"
        );
    }
}
