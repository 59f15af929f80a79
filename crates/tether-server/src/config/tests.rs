use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn no_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// Writes `text` to a fresh file with `ext` and returns its path.
fn file(name: &str, ext: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-config-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.{ext}"));
    std::fs::write(&path, text).unwrap();
    path
}

fn key_of(err: &ConfigError) -> String {
    match err {
        ConfigError::UnknownKey { key }
        | ConfigError::Invalid { key, .. }
        | ConfigError::Env { key, .. } => key.clone(),
        other => panic!("error without a key: {other}"),
    }
}

#[test]
fn defaults_match_centrifugo() {
    let c = Config::default();
    assert_eq!(c.http_server.address, "127.0.0.1");
    assert_eq!(c.http_server.port, 8000);
    assert_eq!(c.client.ping_interval, Duration::from_secs(25));
    assert_eq!(c.client.pong_timeout, Duration::from_secs(8));
    assert_eq!(c.client.channel_limit, 128);
    assert_eq!(c.client.queue_max_size, 1 << 20);
    assert_eq!(c.channel.max_length, 255);
    assert_eq!(c.channel.history_meta_ttl, Duration::from_secs(720 * 3600));
    assert_eq!(c.websocket.message_size_limit, 65536);
    assert_eq!(c.log.level, "info");
    c.validate().unwrap();
}

#[test]
fn load_without_file_gives_defaults_and_node_name() {
    let c = Config::load(None, &no_env()).unwrap();
    assert_eq!(c.client, ClientConfig::default());
    assert!(!c.node.name.is_empty());
}

#[test]
fn json_yaml_and_toml_files_load_the_same() {
    let json = r#"{"http_server":{"port":9000},"client":{"token":{"hmac_secret_key":"s"},
        "ping_interval":"30s"},"channel":{"namespaces":[{"name":"chat","history_size":10,
        "history_ttl":"5m","force_recovery":true}]}}"#;
    let yaml = "http_server:\n  port: 9000\nclient:\n  token:\n    hmac_secret_key: s\n  ping_interval: 30s\nchannel:\n  namespaces:\n    - name: chat\n      history_size: 10\n      history_ttl: 5m\n      force_recovery: true\n";
    let toml = "[http_server]\nport = 9000\n[client]\nping_interval = \"30s\"\n[client.token]\nhmac_secret_key = \"s\"\n[[channel.namespaces]]\nname = \"chat\"\nhistory_size = 10\nhistory_ttl = \"5m\"\nforce_recovery = true\n";
    let mut loaded = Vec::new();
    for (ext, text) in [
        ("json", json),
        ("yaml", yaml),
        ("yml", yaml),
        ("toml", toml),
    ] {
        let mut c = Config::load(Some(&file("same", ext, text)), &no_env()).unwrap();
        c.node.name.clear();
        loaded.push(c);
    }
    let c = &loaded[0];
    assert_eq!(c.http_server.port, 9000);
    assert_eq!(c.client.token.hmac_secret_key, "s");
    assert_eq!(c.client.ping_interval, Duration::from_secs(30));
    assert_eq!(
        c.client.pong_timeout,
        Duration::from_secs(8),
        "unset keys keep defaults"
    );
    let chat = c.namespace_for("chat:room").unwrap();
    assert_eq!(chat.history_size, 10);
    assert_eq!(chat.history_ttl, Duration::from_secs(300));
    assert!(chat.force_recovery);
    for other in &loaded[1..] {
        assert_eq!(other, c);
    }
}

#[test]
fn unknown_file_keys_are_errors_naming_the_key() {
    let cases = [
        (r#"{"http_server":{"prot":8000}}"#, "http_server.prot"),
        (r#"{"nope":1}"#, "nope"),
        (
            r#"{"channel":{"namespaces":[{"name":"ok"},{"name":"x1","presense":true}]}}"#,
            "channel.namespaces[1].presense",
        ),
        (
            r#"{"client":{"subscription_token":{"enabled":true,"hmac":"x"}}}"#,
            "client.subscription_token.hmac",
        ),
    ];
    for (text, key) in cases {
        let err = Config::load(Some(&file("unknown", "json", text)), &no_env()).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err}");
        assert_eq!(key_of(&err), key);
        assert!(err.to_string().starts_with(key), "{err}");
    }
}

#[test]
fn type_errors_name_the_key() {
    let cases = [
        (r#"{"http_server":{"port":"eighty"}}"#, "http_server.port"),
        (
            r#"{"client":{"ping_interval":"soon"}}"#,
            "client.ping_interval",
        ),
        (
            r#"{"channel":{"without_namespace":{"presence":"yes"}}}"#,
            "channel.without_namespace.presence",
        ),
        (
            r#"{"http_api":{"error_mode":"loud"}}"#,
            "http_api.error_mode",
        ),
    ];
    for (text, key) in cases {
        let err = Config::load(Some(&file("types", "json", text)), &no_env()).unwrap_err();
        assert_eq!(key_of(&err), key, "{err}");
    }
}

#[test]
fn type_error_inside_a_namespace_names_the_namespace() {
    let text = r#"{"channel":{"namespaces":[{"name":"chat","history_size":"many"}]}}"#;
    let err = Config::load(Some(&file("nstype", "json", text)), &no_env()).unwrap_err();
    assert_eq!(key_of(&err), "channel.namespaces[0].history_size", "{err}");
    let text = r#"{"channel":{"namespaces":[{"name":"chat","history_ttl":"later"}]}}"#;
    let err = Config::load(Some(&file("nstype2", "json", text)), &no_env()).unwrap_err();
    assert_eq!(key_of(&err), "channel.namespaces[0].history_ttl", "{err}");
    let text = r#"{"client":{"subscription_token":{"enabled":true,"hmac_secret_key":5}}}"#;
    let err = Config::load(Some(&file("subtype", "json", text)), &no_env()).unwrap_err();
    assert_eq!(
        key_of(&err),
        "client.subscription_token.hmac_secret_key",
        "{err}"
    );
    let e = env(&[
        ("TETHER_CHANNEL_NAMESPACES", "feed"),
        ("TETHER_CHANNEL_NAMESPACES_FEED_HISTORY_TTL", "later"),
    ]);
    let err = Config::load(None, &e).unwrap_err();
    assert_eq!(key_of(&err), "channel.namespaces[0].history_ttl", "{err}");
    assert!(
        err.to_string()
            .contains("TETHER_CHANNEL_NAMESPACES_FEED_HISTORY_TTL"),
        "{err}"
    );
}

#[test]
fn file_errors_name_the_file() {
    let err = Config::load(Some(&file("bad", "json", "{not json")), &no_env()).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    assert!(err.to_string().contains("bad.json"));
    let err = Config::load(Some(&file("bad", "ini", "a=1")), &no_env()).unwrap_err();
    assert!(
        matches!(err, ConfigError::UnsupportedFormat { .. }),
        "{err}"
    );
    let err =
        Config::load(Some(std::path::Path::new("/nonexistent/x.json")), &no_env()).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
}

#[test]
fn env_overrides_typed_values() {
    let e = env(&[
        ("TETHER_CLIENT_INSECURE", "true"),
        ("TETHER_HTTP_SERVER_PORT", "9100"),
        ("TETHER_HTTP_SERVER_ADDRESS", "0.0.0.0"),
        ("TETHER_CLIENT_TOKEN_HMAC_SECRET_KEY", "from-env"),
        ("TETHER_CLIENT_PING_INTERVAL", "40s"),
        (
            "TETHER_CLIENT_ALLOWED_ORIGINS",
            "https://a.example, https://b.example",
        ),
        ("TETHER_CHANNEL_WITHOUT_NAMESPACE_PRESENCE", "1"),
        ("TETHER_CLIENT_SUBSCRIPTION_TOKEN_ENABLED", "true"),
        (
            "TETHER_CLIENT_SUBSCRIPTION_TOKEN_HMAC_SECRET_KEY",
            "sub-secret",
        ),
        ("TETHER_LOG_FORMAT", "json"),
        ("PATH", "/usr/bin"),
    ]);
    let c = Config::load(None, &e).unwrap();
    assert!(c.client.insecure);
    assert_eq!(c.http_server.port, 9100);
    assert_eq!(c.http_server.address, "0.0.0.0");
    assert_eq!(c.client.token.hmac_secret_key, "from-env");
    assert_eq!(c.client.ping_interval, Duration::from_secs(40));
    assert_eq!(
        c.client.allowed_origins,
        vec!["https://a.example", "https://b.example"]
    );
    assert!(c.channel.without_namespace.presence);
    assert!(c.client.subscription_token.enabled);
    assert_eq!(
        c.client.subscription_token.token.hmac_secret_key,
        "sub-secret"
    );
    assert_eq!(
        c.client.subscription_token_config().hmac_secret_key,
        "sub-secret"
    );
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn env_overrides_win_over_the_file() {
    let path = file(
        "envwins",
        "json",
        r#"{"http_server":{"port":9000},"client":{"insecure":false}}"#,
    );
    let e = env(&[
        ("TETHER_HTTP_SERVER_PORT", "9200"),
        ("TETHER_CLIENT_INSECURE", "true"),
    ]);
    let c = Config::load(Some(&path), &e).unwrap();
    assert_eq!(c.http_server.port, 9200);
    assert!(c.client.insecure);
}

#[test]
fn env_namespaces_are_defined_and_configured_by_name() {
    let e = env(&[
        ("TETHER_CHANNEL_NAMESPACES", "smallhistory,chat-room,my_ns"),
        ("TETHER_CHANNEL_NAMESPACES_SMALLHISTORY_HISTORY_SIZE", "2"),
        ("TETHER_CHANNEL_NAMESPACES_SMALLHISTORY_HISTORY_TTL", "60s"),
        ("TETHER_CHANNEL_NAMESPACES_CHAT_ROOM_PRESENCE", "true"),
        (
            "TETHER_CHANNEL_NAMESPACES_MY_NS_ALLOW_SUBSCRIBE_FOR_CLIENT",
            "true",
        ),
    ]);
    let c = Config::load(None, &e).unwrap();
    let names: Vec<&str> = c
        .channel
        .namespaces
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(names, ["smallhistory", "chat-room", "my_ns"]);
    let small = c.namespace_for("smallhistory:x").unwrap();
    assert_eq!(small.history_size, 2);
    assert!(small.history_enabled());
    assert!(c.namespace_for("chat-room:1").unwrap().presence);
    assert!(
        c.namespace_for("my_ns:1")
            .unwrap()
            .allow_subscribe_for_client
    );
    assert!(
        !c.namespace_for("chat-room:1")
            .unwrap()
            .allow_subscribe_for_client
    );
}

#[test]
fn env_namespace_names_pick_the_longest_match() {
    // "a_b" and "a" both prefix A_B_PRESENCE; the longer name must win, and "a" must still
    // be reachable through an option of its own.
    let e = env(&[
        ("TETHER_CHANNEL_NAMESPACES", "aa,aa_bb"),
        ("TETHER_CHANNEL_NAMESPACES_AA_BB_PRESENCE", "true"),
        ("TETHER_CHANNEL_NAMESPACES_AA_JOIN_LEAVE", "true"),
    ]);
    let c = Config::load(None, &e).unwrap();
    let aa = c.namespace_for("aa:x").unwrap();
    let aa_bb = c.namespace_for("aa_bb:x").unwrap();
    assert!(aa_bb.presence);
    assert!(!aa.presence);
    assert!(aa.join_leave);
    assert!(!aa_bb.join_leave);
}

#[test]
fn env_namespace_list_keeps_file_options_of_listed_names() {
    let path = file(
        "nskeep",
        "yaml",
        "channel:\n  namespaces:\n    - name: keep\n      presence: true\n    - name: drop\n",
    );
    let e = env(&[
        ("TETHER_CHANNEL_NAMESPACES", "keep new"),
        ("TETHER_CHANNEL_NAMESPACES_KEEP_JOIN_LEAVE", "true"),
    ]);
    let c = Config::load(Some(&path), &e).unwrap();
    let names: Vec<&str> = c
        .channel
        .namespaces
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(names, ["keep", "new"]);
    let keep = c.namespace_for("keep:1").unwrap();
    assert!(keep.presence && keep.join_leave);
    assert!(c.namespace_for("drop:1").is_err());
}

#[test]
fn env_namespace_options_apply_to_file_namespaces_without_the_list_variable() {
    let path = file(
        "nsfile",
        "toml",
        "[[channel.namespaces]]\nname = \"feed\"\n",
    );
    let e = env(&[("TETHER_CHANNEL_NAMESPACES_FEED_PRESENCE", "true")]);
    let c = Config::load(Some(&path), &e).unwrap();
    assert!(c.namespace_for("feed:1").unwrap().presence);
}

#[test]
fn env_namespaces_as_json_objects() {
    let e = env(&[(
        "TETHER_CHANNEL_NAMESPACES",
        r#"[{"name":"jsonns","presence":true,"history_size":5,"history_ttl":"1m"}]"#,
    )]);
    let c = Config::load(None, &e).unwrap();
    let ns = c.namespace_for("jsonns:1").unwrap();
    assert!(ns.presence);
    assert_eq!(ns.history_size, 5);

    let e = env(&[(
        "TETHER_CHANNEL_NAMESPACES",
        r#"[{"name":"jsonns","presense":true}]"#,
    )]);
    let err = Config::load(None, &e).unwrap_err();
    assert_eq!(key_of(&err), "channel.namespaces[0].presense");
}

#[test]
fn env_bad_values_name_the_variable_and_key() {
    let e = env(&[("TETHER_CLIENT_INSECURE", "maybe")]);
    let err = Config::load(None, &e).unwrap_err();
    match &err {
        ConfigError::Env { var, key, .. } => {
            assert_eq!(var, "TETHER_CLIENT_INSECURE");
            assert_eq!(key, "client.insecure");
        }
        other => panic!("unexpected {other}"),
    }
    let e = env(&[("TETHER_HTTP_SERVER_PORT", "99999")]);
    let err = Config::load(None, &e).unwrap_err();
    assert_eq!(key_of(&err), "http_server.port");
    assert!(err.to_string().contains("TETHER_HTTP_SERVER_PORT"), "{err}");
    let e = env(&[("TETHER_CLIENT_PONG_TIMEOUT", "whenever")]);
    let err = Config::load(None, &e).unwrap_err();
    assert!(
        err.to_string().contains("TETHER_CLIENT_PONG_TIMEOUT"),
        "{err}"
    );
}

#[test]
fn unknown_env_variables_are_warnings() {
    let e = env(&[
        ("TETHER_CLIENT_INSECUR", "true"),
        ("TETHER_CONFIG", "/x.json"),
    ]);
    let (c, warnings) = Config::load_with_warnings(None, &e).unwrap();
    assert!(!c.client.insecure);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("TETHER_CLIENT_INSECUR"));
}

#[test]
fn env_optional_duration_can_be_set() {
    let e = env(&[
        ("TETHER_CHANNEL_WITHOUT_NAMESPACE_HISTORY_SIZE", "10"),
        ("TETHER_CHANNEL_WITHOUT_NAMESPACE_HISTORY_TTL", "1h"),
        ("TETHER_CHANNEL_WITHOUT_NAMESPACE_HISTORY_META_TTL", "2h"),
    ]);
    let c = Config::load(None, &e).unwrap();
    assert_eq!(
        c.channel.without_namespace.history_meta_ttl,
        Some(Duration::from_secs(7200))
    );
}

#[test]
fn validation_rules_name_the_key() {
    type Mutate = fn(&mut Config);
    let cases: [(Mutate, &str); 12] = [
        (
            |c| c.client.ping_interval = Duration::from_secs(5),
            "client.ping_interval",
        ),
        (
            |c| c.channel.namespaces = vec![ns("ok"), ns("x")],
            "channel.namespaces[1].name",
        ),
        (
            |c| c.channel.namespaces = vec![ns("a b")],
            "channel.namespaces[0].name",
        ),
        (
            |c| c.channel.namespaces = vec![ns("dup"), ns("ok"), ns("dup")],
            "channel.namespaces[2].name",
        ),
        (
            |c| c.channel.without_namespace.history_size = 10,
            "channel.without_namespace.history_size",
        ),
        (
            |c| {
                let mut n = ns("hist");
                n.options.history_size = 10;
                n.options.history_ttl = Duration::from_secs(3600);
                n.options.history_meta_ttl = Some(Duration::from_secs(60));
                c.channel.namespaces = vec![n];
            },
            "channel.namespaces[0].history_meta_ttl",
        ),
        (
            |c| {
                c.channel.history_meta_ttl = Duration::from_secs(60);
                c.channel.without_namespace.history_size = 1;
                c.channel.without_namespace.history_ttl = Duration::from_secs(3600);
            },
            "channel.history_meta_ttl",
        ),
        (
            |c| c.channel.without_namespace.force_recovery = true,
            "channel.without_namespace.force_recovery",
        ),
        (|c| c.log.level = "loud".to_owned(), "log.level"),
        (
            |c| c.client.token.rsa_public_key = "not a pem".to_owned(),
            "client.token.rsa_public_key",
        ),
        (
            |c| c.client.token.hmac_previous_secret_key = "old".to_owned(),
            "client.token.hmac_previous_secret_key_valid_until",
        ),
        (
            |c| c.client.subscription_token.enabled = true,
            "client.subscription_token",
        ),
    ];
    for (mutate, key) in cases {
        let mut c = Config::default();
        mutate(&mut c);
        let err = c.validate().unwrap_err();
        assert_eq!(key_of(&err), key, "{err}");
        assert!(err.to_string().starts_with(key), "{err}");
    }
}

#[test]
fn ping_interval_message_names_both_keys() {
    let mut c = Config::default();
    c.client.pong_timeout = Duration::from_secs(30);
    let msg = c.validate().unwrap_err().to_string();
    assert!(
        msg.starts_with("client.ping_interval: must be greater than client.pong_timeout"),
        "{msg}"
    );
}

#[test]
fn port_zero_is_refused_by_load_only() {
    let e = env(&[("TETHER_HTTP_SERVER_PORT", "0")]);
    let err = Config::load(None, &e).unwrap_err();
    assert_eq!(key_of(&err), "http_server.port");
    let mut c = Config::default();
    c.http_server.port = 0;
    c.validate().unwrap();
}

#[test]
fn personal_channel_namespace_must_exist_and_have_presence_for_single_connection() {
    let mut c = Config::default();
    c.client.subscribe_to_user_personal_channel.enabled = true;
    c.client
        .subscribe_to_user_personal_channel
        .personal_channel_namespace = "personal".to_owned();
    assert_eq!(
        key_of(&c.validate().unwrap_err()),
        "client.subscribe_to_user_personal_channel.personal_channel_namespace"
    );
    c.channel.namespaces.push(ns("personal"));
    c.validate().unwrap();
    c.client
        .subscribe_to_user_personal_channel
        .single_connection = true;
    assert_eq!(
        key_of(&c.validate().unwrap_err()),
        "client.subscribe_to_user_personal_channel.single_connection"
    );
    c.channel.namespaces[0].options.presence = true;
    c.validate().unwrap();
}

#[test]
fn namespace_for_resolves_channels() {
    let mut c = Config::default();
    c.channel.without_namespace.presence = true;
    let mut chat = ns("chat");
    chat.options.join_leave = true;
    c.channel.namespaces.push(chat);

    assert!(c.namespace_for("news").unwrap().presence);
    assert!(c.namespace_for("$news").unwrap().presence);
    assert!(c.namespace_for("chat:room:1").unwrap().join_leave);
    assert!(c.namespace_for("$chat:room").unwrap().join_leave);
    assert!(
        c.namespace_for("chat#42,43").unwrap().presence,
        "no ':' means no namespace"
    );
    assert_eq!(
        c.namespace_for("nope:1").unwrap_err(),
        UnknownNamespace {
            name: "nope".to_owned()
        }
    );
    assert!(c.namespace_for(":x").is_err(), "empty namespace is unknown");
    assert_eq!(c.namespace_name("$chat:room"), Some("chat"));
    assert_eq!(c.namespace_name("plain"), None);
}

#[test]
fn history_enabled_needs_size_and_ttl() {
    let mut o = NamespaceOptions::default();
    assert!(!o.history_enabled());
    o.history_size = 1;
    assert!(!o.history_enabled());
    o.history_ttl = Duration::from_secs(1);
    assert!(o.history_enabled());
}

#[test]
fn debug_output_hides_secrets() {
    let mut c = Config::default();
    c.client.token.hmac_secret_key = "supersecret".to_owned();
    c.http_api.key = "apikey123".to_owned();
    let shown = format!("{c:?}");
    assert!(!shown.contains("supersecret"));
    assert!(!shown.contains("apikey123"));
    assert!(shown.contains("<redacted>"));
}

#[test]
fn loopback_detection() {
    for yes in ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"] {
        assert!(is_loopback_address(yes), "{yes}");
    }
    for no in ["0.0.0.0", "::", "192.168.1.1", "example.com", ""] {
        assert!(!is_loopback_address(no), "{no}");
    }
}

#[test]
fn config_round_trips_through_json() {
    let mut c = Config::default();
    c.channel.namespaces.push(ns("chat"));
    c.channel.namespaces[0].options.force_recovery_mode = RecoveryMode::Cache;
    let text = serde_json::to_string(&c).unwrap();
    assert!(text.contains(r#""ping_interval":"25s""#), "{text}");
    assert!(text.contains(r#""force_recovery_mode":"cache""#), "{text}");
    let back: Config = serde_json::from_str(&text).unwrap();
    assert_eq!(back, c);
}

fn ns(name: &str) -> Namespace {
    Namespace {
        name: name.to_owned(),
        options: NamespaceOptions::default(),
    }
}

#[test]
fn tcp_defaults_env_and_validation() {
    let c = Config::default();
    assert!(c.tcp.enabled);
    assert_eq!(c.tcp.address, "127.0.0.1");
    assert_eq!(c.tcp.port, 8001);

    let e = env(&[("TETHER_TCP_PORT", "9001"), ("TETHER_TCP_ENABLED", "false")]);
    let c = Config::load(None, &e).unwrap();
    assert_eq!(c.tcp.port, 9001);
    assert!(!c.tcp.enabled);

    let e = env(&[("TETHER_TCP_PORT", "0")]);
    assert_eq!(key_of(&Config::load(None, &e).unwrap_err()), "tcp.port");
    // Port 0 is fine while the transport is off.
    let e = env(&[("TETHER_TCP_PORT", "0"), ("TETHER_TCP_ENABLED", "false")]);
    Config::load(None, &e).unwrap();

    let e = env(&[("TETHER_TCP_PORT", "8000")]);
    assert_eq!(key_of(&Config::load(None, &e).unwrap_err()), "tcp.port");
    let e = env(&[("TETHER_TCP_ADDRESS", " ")]);
    assert_eq!(key_of(&Config::load(None, &e).unwrap_err()), "tcp.address");
}

#[test]
fn engine_section_from_env_and_file() {
    let env: BTreeMap<String, String> = [
        ("TETHER_ENGINE_TYPE", "redis"),
        (
            "TETHER_ENGINE_REDIS_ADDRESS",
            "redis://10.0.0.1:6379,redis://10.0.0.2:6379",
        ),
        ("TETHER_ENGINE_REDIS_PREFIX", "myapp"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = Config::load(None, &env).expect("valid");
    assert_eq!(config.engine.kind, EngineKind::Redis);
    assert_eq!(
        config.engine.redis.address,
        ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]
    );
    assert_eq!(config.engine.redis.prefix, "myapp");

    let dir = std::env::temp_dir().join(format!("tether-engine-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("c.json");
    std::fs::write(
        &path,
        r#"{"engine": {"type": "redis", "redis": {"address": "redis://h:1", "prefix": "a{b"}}}"#,
    )
    .expect("write");
    let empty = BTreeMap::<String, String>::new();
    let error = Config::load(Some(&path), &empty).expect_err("braces refused");
    assert!(
        error.to_string().starts_with("engine.redis.prefix"),
        "{error}"
    );
    std::fs::write(
        &path,
        r#"{"engine": {"redis": {"address": "redis://h:1"}}}"#,
    )
    .expect("write");
    let config = Config::load(Some(&path), &empty).expect("one address as a string");
    assert_eq!(config.engine.kind, EngineKind::Memory);
    assert_eq!(config.engine.redis.address, ["redis://h:1"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_redis_circuit_breaker_is_on_by_default_and_its_keys_are_checked() {
    let config = Config::load(None, &env(&[("TETHER_ENGINE_TYPE", "redis")])).expect("valid");
    let breaker = &config.engine.redis.circuit_breaker;
    assert!(breaker.enabled);
    assert_eq!(breaker.stall_timeout, Duration::from_millis(100));
    let config = Config::load(
        None,
        &env(&[
            ("TETHER_ENGINE_TYPE", "redis"),
            ("TETHER_ENGINE_REDIS_CIRCUIT_BREAKER_ENABLED", "false"),
            ("TETHER_ENGINE_REDIS_CIRCUIT_BREAKER_STALL_TIMEOUT", "250ms"),
        ]),
    )
    .expect("valid");
    let breaker = &config.engine.redis.circuit_breaker;
    assert!(!breaker.enabled);
    assert_eq!(breaker.stall_timeout, Duration::from_millis(250));
    let error = Config::load(
        None,
        &env(&[
            ("TETHER_ENGINE_TYPE", "redis"),
            ("TETHER_ENGINE_REDIS_CIRCUIT_BREAKER_FAILURE_RATIO", "1.5"),
        ]),
    )
    .expect_err("a ratio above 1");
    assert!(
        error
            .to_string()
            .contains("engine.redis.circuit_breaker.failure_ratio"),
        "{error}"
    );
}

#[test]
fn redis_cluster_address_is_exclusive_with_address() {
    // Neither set: the local default.
    let config = Config::load(None, &env(&[("TETHER_ENGINE_TYPE", "redis")])).expect("valid");
    assert!(config.engine.redis.address.is_empty());
    assert_eq!(
        config.engine.redis.standalone_addresses(),
        ["redis://127.0.0.1:6379"]
    );

    // Cluster seeds from the environment, as a comma-separated list.
    let config = Config::load(
        None,
        &env(&[
            ("TETHER_ENGINE_TYPE", "redis"),
            (
                "TETHER_ENGINE_REDIS_CLUSTER_ADDRESS",
                "redis://10.0.0.1:7000,redis://10.0.0.2:7000",
            ),
        ]),
    )
    .expect("valid");
    assert_eq!(
        config.engine.redis.cluster_address,
        ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
    );

    // Both: refused, naming the key.
    let error = Config::load(
        None,
        &env(&[
            ("TETHER_ENGINE_TYPE", "redis"),
            ("TETHER_ENGINE_REDIS_ADDRESS", "redis://127.0.0.1:6379"),
            (
                "TETHER_ENGINE_REDIS_CLUSTER_ADDRESS",
                "redis://127.0.0.1:7101",
            ),
        ]),
    )
    .expect_err("both set");
    assert!(
        error
            .to_string()
            .starts_with("engine.redis.cluster_address"),
        "{error}"
    );
    assert!(error.to_string().contains("not both"), "{error}");

    // A seed that is not a URL.
    let error = Config::load(
        None,
        &env(&[
            ("TETHER_ENGINE_TYPE", "redis"),
            ("TETHER_ENGINE_REDIS_CLUSTER_ADDRESS", "127.0.0.1:7101"),
        ]),
    )
    .expect_err("not a url");
    assert!(
        error
            .to_string()
            .starts_with("engine.redis.cluster_address"),
        "{error}"
    );
}

#[test]
fn redis_sentinel_keys_load_validate_and_stay_secret() {
    let sentinel = |extra: &[(&'static str, &'static str)]| {
        let mut pairs = vec![
            ("TETHER_ENGINE_TYPE", "redis"),
            (
                "TETHER_ENGINE_REDIS_SENTINEL_ADDRESS",
                "10.0.0.1:26379,[::1]:26380",
            ),
            ("TETHER_ENGINE_REDIS_SENTINEL_MASTER_NAME", "mymaster"),
        ];
        pairs.extend_from_slice(extra);
        Config::load(None, &env(&pairs))
    };
    let config = sentinel(&[
        ("TETHER_ENGINE_REDIS_SENTINEL_PASSWORD", "sentinel-secret"),
        ("TETHER_ENGINE_REDIS_SENTINEL_USER", "watcher"),
        ("TETHER_ENGINE_REDIS_SENTINEL_CLIENT_NAME", "tether"),
        ("TETHER_ENGINE_REDIS_PASSWORD", "master-secret"),
        ("TETHER_ENGINE_REDIS_DB", "2"),
    ])
    .expect("valid");
    let redis = &config.engine.redis;
    assert_eq!(redis.sentinel_address, ["10.0.0.1:26379", "[::1]:26380"]);
    assert_eq!(redis.sentinel_master_name, "mymaster");
    assert_eq!(redis.sentinel_user, "watcher");
    assert_eq!(redis.sentinel_client_name, "tether");
    assert_eq!(redis.db, 2);
    let shown = format!("{redis:?}");
    assert!(
        !shown.contains("sentinel-secret") && !shown.contains("master-secret"),
        "{shown}"
    );

    let refused = |result: Result<Config, ConfigError>, key: &str| {
        let error = result.expect_err("refused");
        assert!(error.to_string().starts_with(key), "{error}");
    };
    // With another address key.
    refused(
        sentinel(&[("TETHER_ENGINE_REDIS_ADDRESS", "redis://127.0.0.1:6379")]),
        "engine.redis.sentinel_address",
    );
    // No master name; a name without sentinels.
    refused(
        Config::load(
            None,
            &env(&[
                ("TETHER_ENGINE_TYPE", "redis"),
                ("TETHER_ENGINE_REDIS_SENTINEL_ADDRESS", "10.0.0.1:26379"),
            ]),
        ),
        "engine.redis.sentinel_master_name",
    );
    refused(
        Config::load(
            None,
            &env(&[
                ("TETHER_ENGINE_TYPE", "redis"),
                ("TETHER_ENGINE_REDIS_SENTINEL_MASTER_NAME", "mymaster"),
            ]),
        ),
        "engine.redis.sentinel_master_name",
    );
    // Addresses are host:port, not URLs.
    for bad in ["redis://10.0.0.1:26379", "10.0.0.1", "10.0.0.1:0", ":26379"] {
        let pairs = [
            ("TETHER_ENGINE_TYPE", "redis"),
            ("TETHER_ENGINE_REDIS_SENTINEL_ADDRESS", bad),
            ("TETHER_ENGINE_REDIS_SENTINEL_MASTER_NAME", "mymaster"),
        ];
        refused(
            Config::load(None, &env(&pairs)),
            "engine.redis.sentinel_address",
        );
    }
    // TLS to the sentinels, but not with a server name other than the address's host.
    refused(
        sentinel(&[
            ("TETHER_ENGINE_REDIS_SENTINEL_TLS_ENABLED", "true"),
            (
                "TETHER_ENGINE_REDIS_SENTINEL_TLS_SERVER_NAME",
                "redis.internal",
            ),
        ]),
        "engine.redis.sentinel_tls.server_name",
    );
    // The master's credentials belong to a redis:// URL without sentinels.
    refused(
        Config::load(
            None,
            &env(&[
                ("TETHER_ENGINE_TYPE", "redis"),
                ("TETHER_ENGINE_REDIS_PASSWORD", "secret"),
            ]),
        ),
        "engine.redis.password",
    );
}

#[test]
fn token_leeway_and_jwks_endpoint_load_and_validate() {
    let path = file(
        "token-jwks",
        "toml",
        "[client.token]\nleeway = \"30s\"\njwks_public_endpoint = \"http://127.0.0.1:9/jwks\"\n",
    );
    let c = Config::load(Some(&path), &no_env()).unwrap();
    assert_eq!(c.client.token.leeway, Duration::from_secs(30));
    assert_eq!(
        c.client.token.jwks_public_endpoint,
        "http://127.0.0.1:9/jwks"
    );
    // A JWKS endpoint alone is a key: no random HMAC secret is needed.
    assert!(c.client.token.has_key());
    assert_eq!(TokenConfig::default().leeway, Duration::ZERO);

    let env = env(&[("TETHER_CLIENT_TOKEN_LEEWAY", "45s")]);
    let err = Config::load(Some(&path), &env).unwrap_err();
    assert_eq!(key_of(&err), "client.token.leeway", "{err}");

    let mut c = Config::default();
    c.client.token.leeway = Duration::from_secs(31);
    assert_eq!(key_of(&c.validate().unwrap_err()), "client.token.leeway");
    let mut c = Config::default();
    c.client.token.jwks_public_endpoint = "ftp://keys.example/jwks".to_owned();
    let err = c.validate().unwrap_err();
    assert_eq!(key_of(&err), "client.token.jwks_public_endpoint", "{err}");
    let mut c = Config::default();
    c.client.subscription_token.enabled = true;
    c.client.subscription_token.token.jwks_public_endpoint = "not a url".to_owned();
    let err = c.validate().unwrap_err();
    assert_eq!(
        key_of(&err),
        "client.subscription_token.jwks_public_endpoint",
        "{err}"
    );
}

#[test]
fn limit_and_shutdown_keys_load_from_file_and_env() {
    let path = file(
        "limits",
        "json",
        r#"{
            "client": {
                "connection_limit": 1000,
                "ip_connection_limit": 20,
                "command_rate_limit": { "rate": 5.5, "burst": 10 }
            },
            "http_server": { "max_request_headers": 32 },
            "shutdown": { "drain_window": "2s" }
        }"#,
    );
    let e = env(&[
        ("TETHER_CLIENT_CONNECTION_RATE_LIMIT", "50"),
        ("TETHER_CLIENT_HANDSHAKE_TIMEOUT", "3s"),
        ("TETHER_CLIENT_COMMAND_RATE_LIMIT_DISCONNECT_AFTER", "7"),
        ("TETHER_SHUTDOWN_TIMEOUT", "9s"),
    ]);
    let c = Config::load(Some(&path), &e).unwrap();
    assert_eq!(c.client.connection_limit, 1000);
    assert_eq!(c.client.ip_connection_limit, 20);
    assert_eq!(c.client.connection_rate_limit, 50);
    assert_eq!(c.client.handshake_timeout, Duration::from_secs(3));
    let rate = &c.client.command_rate_limit;
    assert_eq!((rate.rate, rate.burst, rate.disconnect_after), (5.5, 10, 7));
    assert_eq!(rate.window, Duration::from_secs(10), "default kept");
    assert_eq!(c.http_server.max_request_headers, 32);
    assert_eq!(c.http_server.max_request_head_size, 8 * 1024);
    assert_eq!(c.shutdown.drain_window, Duration::from_secs(2));
    assert_eq!(c.shutdown.timeout, Duration::from_secs(9));
}

#[test]
fn limit_and_shutdown_validation_names_the_key() {
    type Mutate = fn(&mut Config);
    let cases: [(Mutate, &str); 6] = [
        (
            |c| c.shutdown.timeout = c.shutdown.drain_window,
            "shutdown.timeout",
        ),
        (
            |c| c.client.command_rate_limit.rate = -1.0,
            "client.command_rate_limit.rate",
        ),
        (
            |c| c.client.command_rate_limit.burst = 0,
            "client.command_rate_limit.burst",
        ),
        (
            |c| c.client.command_rate_limit.window = Duration::ZERO,
            "client.command_rate_limit.window",
        ),
        (
            |c| c.client.handshake_timeout = Duration::ZERO,
            "client.handshake_timeout",
        ),
        (
            |c| c.http_server.max_request_head_size = 100,
            "http_server.max_request_head_size",
        ),
    ];
    for (mutate, key) in cases {
        let mut c = Config::default();
        mutate(&mut c);
        let err = c.validate().unwrap_err();
        assert_eq!(key_of(&err), key, "{err}");
    }
    // A zero rate turns the command limit off; then a zero burst is fine.
    let mut c = Config::default();
    c.client.command_rate_limit.rate = 0.0;
    c.client.command_rate_limit.burst = 0;
    c.validate().unwrap();
}

#[test]
fn nats_broker_from_the_environment() {
    let e = env(&[
        ("TETHER_BROKER_ENABLED", "true"),
        ("TETHER_BROKER_TYPE", "nats"),
        ("TETHER_BROKER_NATS_URL", "nats://10.0.0.5:4222"),
        ("TETHER_BROKER_NATS_PREFIX", "app.rt"),
        ("TETHER_BROKER_NATS_DIAL_TIMEOUT", "250ms"),
    ]);
    let c = Config::load(None, &e).unwrap();
    assert!(c.broker.enabled);
    assert_eq!(c.broker.kind, BrokerKind::Nats);
    assert_eq!(c.broker.nats.url, "nats://10.0.0.5:4222");
    assert_eq!(c.broker.nats.prefix, "app.rt");
    assert_eq!(c.broker.nats.dial_timeout, Duration::from_millis(250));
    assert_eq!(c.broker.nats.write_timeout, Duration::from_secs(1));
}

#[test]
fn nats_broker_rules_name_the_key() {
    type Mutate = fn(&mut Config);
    let cases: [(Mutate, &str); 9] = [
        (
            |c| c.broker.nats.url = "redis://x:1".to_owned(),
            "broker.nats.url",
        ),
        (
            |c| c.broker.nats.url = "nats://".to_owned(),
            "broker.nats.url",
        ),
        (
            |c| c.broker.nats.prefix = String::new(),
            "broker.nats.prefix",
        ),
        (
            |c| c.broker.nats.prefix = "a..b".to_owned(),
            "broker.nats.prefix",
        ),
        (
            |c| c.broker.nats.prefix = "a.*".to_owned(),
            "broker.nats.prefix",
        ),
        (
            |c| c.broker.nats.prefix = "a b".to_owned(),
            "broker.nats.prefix",
        ),
        (
            |c| c.broker.nats.dial_timeout = Duration::ZERO,
            "broker.nats.dial_timeout",
        ),
        (
            |c| c.broker.nats.allow_wildcards = true,
            "broker.nats.allow_wildcards",
        ),
        (
            |c| {
                let mut n = ns("hist");
                n.options.history_size = 10;
                n.options.history_ttl = Duration::from_secs(60);
                c.channel.namespaces = vec![ns("plain"), n];
            },
            "channel.namespaces[1].history_size",
        ),
    ];
    for (mutate, key) in cases {
        let mut c = Config::default();
        c.broker.enabled = true;
        mutate(&mut c);
        let err = c.validate().unwrap_err();
        assert_eq!(key_of(&err), key, "{err}");
    }
    // The same options are fine without the broker, and the broker is fine without them.
    let mut c = Config::default();
    c.channel.without_namespace.history_size = 10;
    c.channel.without_namespace.history_ttl = Duration::from_secs(60);
    c.validate().unwrap();
    c.broker.enabled = true;
    let err = c.validate().unwrap_err();
    assert_eq!(key_of(&err), "channel.without_namespace.history_size");
    assert!(err.to_string().contains("nats broker"), "{err}");
    let mut c = Config::default();
    c.broker.enabled = true;
    c.validate().unwrap();
    c.engine.kind = EngineKind::Redis;
    c.validate().unwrap();
}

// === proxies ===

/// The example of compat-proxy §2.2.
const PROXY_EXAMPLE: &str = r#"{
  "client": {
    "proxy": {
      "connect": {"enabled": true, "endpoint": "http://app:3000/centrifugo/connect", "timeout": "1s"},
      "refresh": {"enabled": true, "endpoint": "http://app:3000/centrifugo/refresh"}
    }
  },
  "channel": {
    "proxy": {
      "subscribe":        {"endpoint": "http://app:3000/centrifugo/subscribe"},
      "publish":          {"endpoint": "http://app:3000/centrifugo/publish"},
      "sub_refresh":      {"endpoint": "http://app:3000/centrifugo/sub_refresh"},
      "subscribe_stream": {"endpoint": "grpc://app:9000"}
    },
    "without_namespace": {"subscribe_proxy_enabled": true},
    "namespaces": [
      {"name": "chat", "publish_proxy_enabled": true, "publish_proxy_name": "chat_backend"}
    ]
  },
  "rpc": {
    "proxy": {"endpoint": "http://app:3000/centrifugo/rpc"},
    "without_namespace": {"proxy_enabled": true},
    "namespaces": [{"name": "billing", "proxy_enabled": true, "proxy_name": "billing"}],
    "namespace_boundary": ":"
  },
  "proxies": [
    {"name": "chat_backend", "endpoint": "http://chat:4000/centrifugo/publish", "timeout": "2s"},
    {"name": "billing", "endpoint": "grpc://billing:9000"}
  ]
}"#;

fn proxy_example() -> Config {
    Config::load(
        Some(&file("proxy-example", "json", PROXY_EXAMPLE)),
        &no_env(),
    )
    .unwrap()
}

fn named(name: &str, endpoint: &str) -> NamedProxy {
    NamedProxy {
        name: name.to_owned(),
        proxy: ProxyConfig {
            endpoint: endpoint.to_owned(),
            ..ProxyConfig::default()
        },
    }
}

fn endpoint(proxy: Option<&ProxyConfig>) -> Option<&str> {
    proxy.map(|p| p.endpoint.as_str())
}

#[test]
fn proxy_defaults_match_centrifugo() {
    let c = Config::default();
    assert_eq!(ProxyConfig::default().timeout, Duration::from_secs(1));
    assert!(!c.client.proxy.connect.enabled);
    assert_eq!(c.client.proxy.connect.proxy.timeout, Duration::from_secs(1));
    assert_eq!(
        c.channel.proxy.subscribe_stream.timeout,
        Duration::from_secs(1)
    );
    let ns = NamespaceOptions::default();
    for name in [
        &ns.subscribe_proxy_name,
        &ns.publish_proxy_name,
        &ns.sub_refresh_proxy_name,
        &ns.subscribe_stream_proxy_name,
    ] {
        assert_eq!(name, "default");
    }
    assert!(!ns.subscribe_proxy_enabled && !ns.subscribe_stream_proxy_bidirectional);
    assert_eq!(c.rpc.namespace_boundary, ":");
    assert_eq!(c.rpc.without_namespace.proxy_name, "default");
    assert!(!c.rpc.without_namespace.proxy_enabled);
    assert!(!c.rpc.ping.enabled);
    assert_eq!(c.rpc.ping.method, "ping");
    assert!(c.proxies.is_empty());
    assert!(!c.client.proxy.connect.proxy.http.tls.enabled);
    // A namespace written without proxy keys deserializes to the same defaults.
    let text =
        r#"{"channel":{"namespaces":[{"name":"plain"}]},"rpc":{"namespaces":[{"name":"rp"}]}}"#;
    let c = Config::load(Some(&file("proxy-defaults", "json", text)), &no_env()).unwrap();
    assert_eq!(c.channel.namespaces[0].options, NamespaceOptions::default());
    assert_eq!(c.rpc.namespaces[0].options, RpcNamespaceOptions::default());
    // Nothing is enabled, so the empty proxy objects are not validated.
    Config::default().validate().unwrap();
}

#[test]
fn proxy_example_loads_and_lookups_answer() {
    let c = proxy_example();
    assert_eq!(
        endpoint(c.proxy(ProxyEvent::Connect, "ignored")),
        Some("http://app:3000/centrifugo/connect")
    );
    assert_eq!(
        endpoint(c.proxy(ProxyEvent::Refresh, "default")),
        Some("http://app:3000/centrifugo/refresh")
    );
    assert_eq!(
        c.proxy(ProxyEvent::Refresh, "default").unwrap().timeout,
        Duration::from_secs(1),
        "default timeout"
    );
    for (event, expected) in [
        (
            ProxyEvent::Subscribe,
            "http://app:3000/centrifugo/subscribe",
        ),
        (ProxyEvent::Publish, "http://app:3000/centrifugo/publish"),
        (
            ProxyEvent::SubRefresh,
            "http://app:3000/centrifugo/sub_refresh",
        ),
        (ProxyEvent::SubscribeStream, "grpc://app:9000"),
        (ProxyEvent::Rpc, "http://app:3000/centrifugo/rpc"),
    ] {
        assert_eq!(
            endpoint(c.proxy(event, "default")),
            Some(expected),
            "{event}"
        );
    }
    let chat_backend = c.proxy(ProxyEvent::Publish, "chat_backend").unwrap();
    assert_eq!(chat_backend.endpoint, "http://chat:4000/centrifugo/publish");
    assert_eq!(chat_backend.timeout, Duration::from_secs(2));
    assert!(chat_backend.is_http());
    let billing = c.proxy(ProxyEvent::Rpc, "billing").unwrap();
    assert!(!billing.is_http());
    assert_eq!(billing.timeout, Duration::from_secs(1));
    assert!(c.proxy(ProxyEvent::Subscribe, "nope").is_none());

    // Namespaces pick their proxies by name.
    let top = c.namespace_for("news").unwrap();
    assert_eq!(top.proxy_name(ProxyEvent::Subscribe), Some("default"));
    assert_eq!(top.proxy_name(ProxyEvent::Publish), None);
    let chat = c.namespace_for("chat:room").unwrap();
    assert_eq!(chat.proxy_name(ProxyEvent::Publish), Some("chat_backend"));
    assert_eq!(chat.proxy_name(ProxyEvent::Subscribe), None);

    // RPC methods pick their namespace by the part before the first boundary.
    let plain = c.rpc_namespace_for("getUser").unwrap();
    assert!(plain.proxy_enabled);
    assert_eq!(plain.proxy_name, "default");
    let billing = c.rpc_namespace_for("billing:charge:now").unwrap();
    assert_eq!(billing.proxy_name, "billing");
    assert_eq!(
        c.rpc_namespace_for("shop:buy").unwrap_err(),
        UnknownNamespace {
            name: "shop".to_owned()
        }
    );
    assert!(
        c.rpc_namespace_for(":x").is_err(),
        "empty namespace is unknown"
    );
}

#[test]
fn proxy_lookups_without_config() {
    let mut c = Config::default();
    assert!(c.proxy(ProxyEvent::Connect, "default").is_none(), "off");
    assert!(c.proxy(ProxyEvent::Refresh, "default").is_none(), "off");
    c.client.proxy.refresh.enabled = true;
    assert!(c.proxy(ProxyEvent::Refresh, "default").is_some());
    // An empty boundary means no RPC namespaces at all.
    c.rpc.namespace_boundary = String::new();
    c.rpc.without_namespace.proxy_enabled = true;
    assert!(c.rpc_namespace_for("billing:charge").unwrap().proxy_enabled);
    c.rpc.namespace_boundary = ".".to_owned();
    assert!(c.rpc_namespace_for("billing:charge").is_ok(), "no '.'");
    assert!(c.rpc_namespace_for("a.b").is_err());
}

#[test]
fn proxy_example_in_yaml_and_toml_loads_the_same() {
    let yaml = r#"
client:
  proxy:
    connect: {enabled: true, endpoint: "http://app:3000/c", timeout: 3s,
              http_headers: [Authorization, Cookie],
              http: {static_headers: {X-App: tether}, tls: {enabled: true, server_name: app}}}
proxies:
  - name: g.rpc
    endpoint: grpc://billing:9000
    grpc: {credentials_key: authorization, credentials_value: secret, compression: true,
           static_metadata: {x-team: pay}}
"#;
    let toml = r#"
[client.proxy.connect]
enabled = true
endpoint = "http://app:3000/c"
timeout = "3s"
http_headers = ["Authorization", "Cookie"]
[client.proxy.connect.http.static_headers]
X-App = "tether"
[client.proxy.connect.http.tls]
enabled = true
server_name = "app"
[[proxies]]
name = "g.rpc"
endpoint = "grpc://billing:9000"
[proxies.grpc]
credentials_key = "authorization"
credentials_value = "secret"
compression = true
static_metadata = { x-team = "pay" }
"#;
    let mut a = Config::load(Some(&file("proxy-same", "yaml", yaml)), &no_env()).unwrap();
    let mut b = Config::load(Some(&file("proxy-same", "toml", toml)), &no_env()).unwrap();
    a.node.name.clear();
    b.node.name.clear();
    assert_eq!(a, b);
    let connect = &a.client.proxy.connect.proxy;
    assert_eq!(connect.timeout, Duration::from_secs(3));
    assert_eq!(connect.http_headers, ["Authorization", "Cookie"]);
    assert_eq!(connect.http.static_headers["X-App"], "tether");
    assert!(connect.http.tls.enabled);
    assert_eq!(connect.http.tls.server_name, "app");
    let grpc = &a.proxy(ProxyEvent::Subscribe, "g.rpc").unwrap().grpc;
    assert_eq!(grpc.credentials_value, "secret");
    assert!(grpc.compression);
    assert_eq!(grpc.static_metadata["x-team"], "pay");
}

#[test]
fn proxy_transforms_and_tls_keys_load() {
    let text = r#"{"proxies":[{"name":"tr","endpoint":"http://x/","http":{
        "tls":{"enabled":true,"cert_pem":"c","cert_pem_file":"/c.pem","key_pem":"k",
               "key_pem_file":"/k.pem","server_ca_pem":"ca","server_ca_pem_file":"/ca.pem",
               "client_ca_pem":"cca","insecure_skip_verify":true,"server_name":"x"},
        "status_to_code_transforms":[
          {"status_code":404,"to_error":{"code":404,"message":"not found","temporary":false}},
          {"status_code":401,"to_disconnect":{"code":4501,"reason":"unauthorized"}}]}}]}"#;
    let c = Config::load(Some(&file("transforms", "json", text)), &no_env()).unwrap();
    let http = &c.proxies[0].proxy.http;
    let tls = &http.tls;
    assert!(tls.enabled && tls.insecure_skip_verify);
    assert_eq!(
        [
            &tls.cert_pem,
            &tls.cert_pem_file,
            &tls.key_pem,
            &tls.key_pem_file,
            &tls.server_ca_pem,
            &tls.server_ca_pem_file,
            &tls.client_ca_pem,
            &tls.server_name
        ],
        ["c", "/c.pem", "k", "/k.pem", "ca", "/ca.pem", "cca", "x"]
    );
    let [not_found, unauthorized] = &http.status_to_code_transforms[..] else {
        panic!("two transforms");
    };
    assert_eq!(not_found.status_code, 404);
    assert_eq!(
        not_found.to_error,
        ProxyErrorConfig {
            code: 404,
            message: "not found".to_owned(),
            temporary: false
        }
    );
    assert_eq!(unauthorized.to_disconnect.code, 4501);
    assert_eq!(unauthorized.to_disconnect.reason, "unauthorized");
}

#[test]
fn unknown_proxy_keys_are_errors_naming_the_key() {
    let cases = [
        (
            r#"{"client":{"proxy":{"connect":{"enabled":true,"endpiont":"x"}}}}"#,
            "client.proxy.connect.endpiont",
        ),
        (
            r#"{"proxies":[{"name":"ok","endpoint":"x","timout":"1s"}]}"#,
            "proxies[0].timout",
        ),
        (
            r#"{"proxies":[{"name":"ok","endpoint":"x","http":{"tls":{"cert":"x"}}}]}"#,
            "proxies[0].http.tls.cert",
        ),
        (
            r#"{"channel":{"proxy":{"publish":{"http":{"static_http_headers":{}}}}}}"#,
            "channel.proxy.publish.http.static_http_headers",
        ),
        (
            r#"{"rpc":{"namespaces":[{"name":"ok","proxy":true}]}}"#,
            "rpc.namespaces[0].proxy",
        ),
        (
            r#"{"proxies":[{"name":"ok","endpoint":"x","http":{"status_to_code_transforms":[{"status_code":1,"to_eror":{}}]}}]}"#,
            "proxies[0].http.status_to_code_transforms[0].to_eror",
        ),
        // v5's flat keys do not exist in v6.
        (
            r#"{"client":{"proxy":{"connect":{"proxy_connect_endpoint":"x"}}}}"#,
            "client.proxy.connect.proxy_connect_endpoint",
        ),
    ];
    for (text, key) in cases {
        let err = Config::load(Some(&file("proxy-unknown", "json", text)), &no_env()).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err}");
        assert_eq!(key_of(&err), key);
    }
}

#[test]
fn proxy_type_errors_name_the_key() {
    let cases = [
        (
            r#"{"proxies":[{"name":"ok","endpoint":"x","timeout":"soon"}]}"#,
            "proxies[0].timeout",
        ),
        (
            r#"{"client":{"proxy":{"connect":{"enabled":true,"binary_encoding":"yes"}}}}"#,
            "client.proxy.connect.binary_encoding",
        ),
        (
            r#"{"rpc":{"namespaces":[{"name":"ok","proxy_enabled":1}]}}"#,
            "rpc.namespaces[0].proxy_enabled",
        ),
        (
            r#"{"channel":{"proxy":{"subscribe":{"http":{"static_headers":{"X":1}}}}}}"#,
            "channel.proxy.subscribe.http.static_headers.X",
        ),
        (
            r#"{"proxies":[{"name":"ok","endpoint":"x","http":{"status_to_code_transforms":{}}}]}"#,
            "proxies[0].http.status_to_code_transforms",
        ),
    ];
    for (text, key) in cases {
        let err = Config::load(Some(&file("proxy-types", "json", text)), &no_env()).unwrap_err();
        assert_eq!(key_of(&err), key, "{err}");
    }
}

#[test]
fn proxy_validation_rules_name_the_key() {
    type Mutate = fn(&mut Config);
    let cases: [(Mutate, &str, &str); 22] = [
        (
            |c| c.proxies = vec![named("default", "http://x/")],
            "proxies[0].name",
            "proxy name default is reserved",
        ),
        (
            |c| c.proxies = vec![named("x", "http://x/")],
            "proxies[0].name",
            "must match",
        ),
        (
            |c| c.proxies = vec![named("a b", "http://x/")],
            "proxies[0].name",
            "must match",
        ),
        (
            |c| {
                c.proxies = vec![
                    named("p1", "http://x/"),
                    named("p2", "http://y/"),
                    named("p1", "grpc://z"),
                ]
            },
            "proxies[2].name",
            "duplicate",
        ),
        (
            |c| c.proxies = vec![named("p1", "")],
            "proxies[0].endpoint",
            "must be set",
        ),
        (
            |c| {
                c.proxies = vec![named("p1", "http://x/")];
                c.proxies[0].proxy.timeout = Duration::ZERO;
            },
            "proxies[0].timeout",
            "greater than 0",
        ),
        (
            |c| c.client.proxy.connect.enabled = true,
            "client.proxy.connect.endpoint",
            "must be set",
        ),
        (
            |c| {
                c.client.proxy.refresh.enabled = true;
                c.client.proxy.refresh.proxy.endpoint = "http://x/".to_owned();
                c.client.proxy.refresh.proxy.timeout = Duration::ZERO;
            },
            "client.proxy.refresh.timeout",
            "greater than 0",
        ),
        (
            |c| c.channel.without_namespace.subscribe_proxy_enabled = true,
            "channel.proxy.subscribe.endpoint",
            "must be set",
        ),
        (
            |c| {
                let mut n = ns("chat");
                n.options.sub_refresh_proxy_enabled = true;
                c.channel.namespaces = vec![n];
            },
            "channel.proxy.sub_refresh.endpoint",
            "must be set",
        ),
        (
            |c| {
                let mut n = ns("chat");
                n.options.publish_proxy_enabled = true;
                n.options.publish_proxy_name = "missing".to_owned();
                c.channel.namespaces = vec![ns("ok"), n];
            },
            "channel.namespaces[1].publish_proxy_name",
            "publish proxy with name \"missing\" not found",
        ),
        (
            |c| {
                c.channel.without_namespace.subscribe_proxy_enabled = true;
                c.channel.without_namespace.subscribe_proxy_name = "nope".to_owned();
            },
            "channel.without_namespace.subscribe_proxy_name",
            "subscribe proxy with name \"nope\" not found",
        ),
        (
            |c| {
                c.channel.proxy.subscribe_stream.endpoint = "grpc://x:1".to_owned();
                c.channel.proxy.publish.endpoint = "http://x/".to_owned();
                let o = &mut c.channel.without_namespace;
                o.subscribe_stream_proxy_enabled = true;
                o.publish_proxy_enabled = true;
            },
            "channel.without_namespace.subscribe_stream_proxy_enabled",
            "can not be used together",
        ),
        (
            |c| {
                c.channel.proxy.subscribe_stream.endpoint = "http://x/".to_owned();
                c.channel.without_namespace.subscribe_stream_proxy_enabled = true;
            },
            "channel.proxy.subscribe_stream.endpoint",
            "only GRPC endpoints supported",
        ),
        (
            |c| {
                c.proxies = vec![named("ok", "grpc://a:1"), named("stream", "https://x/")];
                let mut n = ns("live");
                n.options.subscribe_stream_proxy_enabled = true;
                n.options.subscribe_stream_proxy_name = "stream".to_owned();
                c.channel.namespaces = vec![n];
            },
            "proxies[1].endpoint",
            "only GRPC endpoints supported",
        ),
        (
            |c| c.rpc.without_namespace.proxy_enabled = true,
            "rpc.proxy.endpoint",
            "must be set",
        ),
        (
            |c| {
                c.rpc.namespaces = vec![RpcNamespace {
                    name: "billing".to_owned(),
                    options: RpcNamespaceOptions {
                        proxy_enabled: true,
                        proxy_name: "billing".to_owned(),
                    },
                }];
            },
            "rpc.namespaces[0].proxy_name",
            "proxy billing not found for rpc",
        ),
        (
            |c| c.rpc.namespaces = vec![rpc_ns("x")],
            "rpc.namespaces[0].name",
            "must match",
        ),
        (
            |c| c.rpc.namespaces = vec![rpc_ns("a.b"), rpc_ns("a.b")],
            "rpc.namespaces[1].name",
            "duplicate",
        ),
        (
            |c| {
                c.proxies = vec![named("p1", "http://x/")];
                c.proxies[0].proxy.http.status_to_code_transforms =
                    vec![StatusToCodeTransform::default()];
            },
            "proxies[0].http.status_to_code_transforms[0].status_code",
            "must be set",
        ),
        (
            |c| {
                c.proxies = vec![named("p1", "http://x/")];
                let mut both = StatusToCodeTransform {
                    status_code: 404,
                    ..StatusToCodeTransform::default()
                };
                both.to_error.code = 404;
                both.to_disconnect.code = 4404;
                c.proxies[0].proxy.http.status_to_code_transforms = vec![both];
            },
            "proxies[0].http.status_to_code_transforms[0]",
            "exactly one",
        ),
        (
            |c| {
                c.client.proxy.connect.enabled = true;
                c.client.proxy.connect.proxy.endpoint = "http://x/".to_owned();
                let mut t = StatusToCodeTransform {
                    status_code: 403,
                    ..StatusToCodeTransform::default()
                };
                t.to_disconnect.code = 4403;
                t.to_disconnect.reason = "interdit é".to_owned();
                c.client.proxy.connect.proxy.http.status_to_code_transforms = vec![t];
            },
            "client.proxy.connect.http.status_to_code_transforms[0].to_disconnect.reason",
            "ASCII",
        ),
    ];
    for (mutate, key, message) in cases {
        let mut c = Config::default();
        mutate(&mut c);
        let err = c.validate().unwrap_err();
        assert_eq!(key_of(&err), key, "{err}");
        assert!(err.to_string().contains(message), "{err}");
    }
}

#[test]
fn unused_proxies_are_not_validated() {
    let mut c = Config::default();
    // Disabled connect/refresh, channel and rpc objects nobody enables: not checked.
    c.client.proxy.connect.proxy.timeout = Duration::ZERO;
    c.channel.proxy.subscribe_stream.endpoint = "http://x/".to_owned();
    c.channel.proxy.publish.timeout = Duration::ZERO;
    c.rpc.proxy.timeout = Duration::ZERO;
    // A name pointing nowhere is fine while the proxy is off.
    c.channel.without_namespace.publish_proxy_name = "nowhere".to_owned();
    c.validate().unwrap();
    // A namespace that uses a named proxy does not make the "default" object used.
    c.proxies = vec![named("pub", "http://p/")];
    c.channel.without_namespace.publish_proxy_enabled = true;
    c.channel.without_namespace.publish_proxy_name = "pub".to_owned();
    c.validate().unwrap();
    // The stream proxy alone, over gRPC, is fine; so is a transform with one outcome.
    c.channel.proxy.subscribe_stream.endpoint = "grpc://s:1".to_owned();
    let mut n = ns("live");
    n.options.subscribe_stream_proxy_enabled = true;
    n.options.subscribe_stream_proxy_bidirectional = true;
    c.channel.namespaces.push(n);
    let mut t = StatusToCodeTransform {
        status_code: 401,
        ..StatusToCodeTransform::default()
    };
    t.to_disconnect.code = 4501;
    t.to_disconnect.reason = "unauthorized".to_owned();
    c.proxies[0].proxy.http.status_to_code_transforms.push(t);
    c.validate().unwrap();
}

#[test]
fn env_overrides_proxy_keys() {
    let e = env(&[
        ("TETHER_CLIENT_PROXY_CONNECT_ENABLED", "true"),
        (
            "TETHER_CLIENT_PROXY_CONNECT_ENDPOINT",
            "http://app:3000/centrifugo/connect",
        ),
        ("TETHER_CLIENT_PROXY_CONNECT_TIMEOUT", "750ms"),
        (
            "TETHER_CLIENT_PROXY_CONNECT_HTTP_HEADERS",
            "Cookie, Authorization",
        ),
        (
            "TETHER_CLIENT_PROXY_CONNECT_HTTP_STATIC_HEADERS",
            r#"{"X-App":"tether"}"#,
        ),
        ("TETHER_CLIENT_PROXY_CONNECT_HTTP_TLS_ENABLED", "true"),
        (
            "TETHER_CLIENT_PROXY_CONNECT_HTTP_TLS_SERVER_CA_PEM",
            "/ca.pem",
        ),
        (
            "TETHER_CLIENT_PROXY_CONNECT_HTTP_STATUS_TO_CODE_TRANSFORMS",
            r#"[{"status_code":401,"to_disconnect":{"code":4501,"reason":"unauthorized"}}]"#,
        ),
        ("TETHER_CHANNEL_PROXY_PUBLISH_ENDPOINT", "grpc://app:9000"),
        ("TETHER_CHANNEL_PROXY_PUBLISH_GRPC_COMPRESSION", "true"),
        (
            "TETHER_CHANNEL_WITHOUT_NAMESPACE_PUBLISH_PROXY_ENABLED",
            "true",
        ),
        ("TETHER_RPC_PROXY_ENDPOINT", "http://app:3000/rpc"),
        ("TETHER_RPC_WITHOUT_NAMESPACE_PROXY_ENABLED", "1"),
        ("TETHER_RPC_NAMESPACE_BOUNDARY", "."),
        ("TETHER_RPC_PING_ENABLED", "true"),
    ]);
    let (c, warnings) = Config::load_with_warnings(None, &e).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let connect = c.proxy(ProxyEvent::Connect, "default").unwrap();
    assert_eq!(connect.endpoint, "http://app:3000/centrifugo/connect");
    assert_eq!(connect.timeout, Duration::from_millis(750));
    assert_eq!(connect.http_headers, ["Cookie", "Authorization"]);
    assert_eq!(connect.http.static_headers["X-App"], "tether");
    assert!(connect.http.tls.enabled);
    assert_eq!(connect.http.tls.server_ca_pem, "/ca.pem");
    assert_eq!(
        connect.http.status_to_code_transforms[0].to_disconnect.code,
        4501
    );
    let publish = c.proxy(ProxyEvent::Publish, "default").unwrap();
    assert_eq!(publish.endpoint, "grpc://app:9000");
    assert!(publish.grpc.compression);
    assert!(c.channel.without_namespace.publish_proxy_enabled);
    assert_eq!(
        endpoint(c.proxy(ProxyEvent::Rpc, "default")),
        Some("http://app:3000/rpc")
    );
    assert!(
        c.rpc_namespace_for("any:thing").unwrap().proxy_enabled,
        "boundary is '.'"
    );
    assert!(c.rpc.ping.enabled);
}

#[test]
fn env_proxies_as_a_json_list_and_by_name() {
    let e = env(&[(
        "TETHER_PROXIES",
        r#"[{"name":"chat_backend","endpoint":"http://chat:4000/pub","timeout":"2s"},
            {"name":"billing.v2","endpoint":"grpc://billing:9000"}]"#,
    )]);
    let c = Config::load(None, &e).unwrap();
    assert_eq!(c.proxies.len(), 2);
    assert_eq!(
        c.proxy(ProxyEvent::Publish, "chat_backend")
            .unwrap()
            .timeout,
        Duration::from_secs(2)
    );
    assert_eq!(
        c.proxy(ProxyEvent::Rpc, "billing.v2").unwrap().timeout,
        Duration::from_secs(1),
        "defaults fill the rest"
    );

    // Names in the list variable, options per name (`.` and `-` are written `_`).
    let e = env(&[
        ("TETHER_PROXIES", "chat_backend billing.v2"),
        (
            "TETHER_PROXIES_CHAT_BACKEND_ENDPOINT",
            "http://chat:4000/pub",
        ),
        ("TETHER_PROXIES_BILLING_V2_ENDPOINT", "grpc://billing:9000"),
        ("TETHER_PROXIES_BILLING_V2_TIMEOUT", "5s"),
        (
            "TETHER_PROXIES_BILLING_V2_GRPC_CREDENTIALS_KEY",
            "authorization",
        ),
        ("TETHER_RPC_NAMESPACES", "billing"),
        ("TETHER_RPC_NAMESPACES_BILLING_PROXY_ENABLED", "true"),
        ("TETHER_RPC_NAMESPACES_BILLING_PROXY_NAME", "billing.v2"),
    ]);
    let c = Config::load(None, &e).unwrap();
    let billing = c.rpc_namespace_for("billing:charge").unwrap();
    assert!(billing.proxy_enabled);
    let proxy = c.proxy(ProxyEvent::Rpc, &billing.proxy_name).unwrap();
    assert_eq!(proxy.endpoint, "grpc://billing:9000");
    assert_eq!(proxy.timeout, Duration::from_secs(5));
    assert_eq!(proxy.grpc.credentials_key, "authorization");
    assert_eq!(
        endpoint(c.proxy(ProxyEvent::Publish, "chat_backend")),
        Some("http://chat:4000/pub")
    );

    // Options of proxies from the file, without the list variable; env wins.
    let e = env(&[("TETHER_PROXIES_CHAT_BACKEND_TIMEOUT", "3s")]);
    let c = Config::load(Some(&file("proxy-env-file", "json", PROXY_EXAMPLE)), &e).unwrap();
    assert_eq!(
        c.proxy(ProxyEvent::Publish, "chat_backend")
            .unwrap()
            .timeout,
        Duration::from_secs(3)
    );
    assert_eq!(c.proxies.len(), 2);
}

#[test]
fn env_proxy_errors_name_the_variable_and_key() {
    let e = env(&[(
        "TETHER_PROXIES",
        r#"[{"name":"p1","endpoint":"http://x/","timout":"2s"}]"#,
    )]);
    let err = Config::load(None, &e).unwrap_err();
    assert_eq!(key_of(&err), "proxies[0].timout", "{err}");
    let e = env(&[
        ("TETHER_PROXIES", "p1"),
        ("TETHER_PROXIES_P1_ENDPOINT", "http://x/"),
        ("TETHER_PROXIES_P1_TIMEOUT", "later"),
    ]);
    let err = Config::load(None, &e).unwrap_err();
    assert_eq!(key_of(&err), "proxies[0].timeout", "{err}");
    assert!(
        err.to_string().contains("TETHER_PROXIES_P1_TIMEOUT"),
        "{err}"
    );
    let e = env(&[("TETHER_CLIENT_PROXY_REFRESH_TIMEOUT", "soon")]);
    let err = Config::load(None, &e).unwrap_err();
    assert_eq!(key_of(&err), "client.proxy.refresh.timeout", "{err}");
    assert!(
        err.to_string()
            .contains("TETHER_CLIENT_PROXY_REFRESH_TIMEOUT"),
        "{err}"
    );
    // Validation applies to env-built proxies too.
    let e = env(&[("TETHER_PROXIES", "default")]);
    let err = Config::load(None, &e).unwrap_err();
    assert!(
        err.to_string().contains("proxy name default is reserved"),
        "{err}"
    );
}

#[test]
fn debug_output_hides_proxy_secrets() {
    let mut c = Config::default();
    c.client.proxy.connect.proxy.grpc.credentials_value = "grpc-secret".to_owned();
    c.rpc.proxy.http.tls.key_pem = "-----BEGIN PRIVATE KEY-----".to_owned();
    c.proxies.push(named("p1", "grpc://x:1"));
    c.proxies[0].proxy.grpc.tls.key_pem = "PRIVATE-KEY-BYTES".to_owned();
    let shown = format!("{c:?}");
    assert!(!shown.contains("grpc-secret"));
    assert!(!shown.contains("BEGIN PRIVATE KEY"));
    assert!(!shown.contains("PRIVATE-KEY-BYTES"));
}

#[test]
fn proxy_config_round_trips_through_json() {
    let c = proxy_example();
    let text = serde_json::to_string(&c).unwrap();
    assert!(
        text.contains(r#""subscribe_proxy_name":"default""#),
        "{text}"
    );
    let back: Config = serde_json::from_str(&text).unwrap();
    assert_eq!(back, c);
}

fn rpc_ns(name: &str) -> RpcNamespace {
    RpcNamespace {
        name: name.to_owned(),
        options: RpcNamespaceOptions::default(),
    }
}

#[test]
fn an_unknown_webhook_event_type_is_refused_with_the_known_ones() {
    let mut c = Config::default();
    c.webhook.endpoint = "http://127.0.0.1:9000/events".to_owned();
    c.webhook.events = vec!["connect".to_owned(), "user_gone".to_owned()];
    let err = c.validate().unwrap_err();
    assert_eq!(key_of(&err), "webhook.events");
    let msg = err.to_string();
    assert!(
        msg.starts_with("webhook.events: unknown event type \"user_gone\"; known: user_online,"),
        "{msg}"
    );
    for known in EVENT_TYPES {
        assert!(msg.contains(known), "{msg}");
    }
    // Every known type is accepted.
    c.webhook.events = EVENT_TYPES.iter().map(|t| (*t).to_owned()).collect();
    c.validate().unwrap();
    // From a file as well.
    let path = file(
        "webhook-unknown-event",
        "json",
        r#"{"webhook":{"endpoint":"http://127.0.0.1:9000/","events":["Connect"]}}"#,
    );
    let err = Config::load(Some(&path), &no_env()).unwrap_err();
    assert_eq!(key_of(&err), "webhook.events", "{err}");
}

#[test]
fn a_webhook_endpoint_that_is_not_http_is_refused() {
    for endpoint in [
        "ftp://127.0.0.1/events",
        "ws://127.0.0.1:9000/events",
        "127.0.0.1:9000/events",
        "/events",
        "http://",
        "not a url",
    ] {
        let mut c = Config::default();
        c.webhook.endpoint = endpoint.to_owned();
        let err = c.validate().unwrap_err();
        assert_eq!(key_of(&err), "webhook.endpoint", "{endpoint}: {err}");
        let msg = err.to_string();
        assert_eq!(
            msg,
            format!("webhook.endpoint: {endpoint:?} is not an http:// or https:// URL"),
        );
    }
    for endpoint in [
        "http://127.0.0.1:9000/events",
        "https://backend.example/hook",
        "",
    ] {
        let mut c = Config::default();
        c.webhook.endpoint = endpoint.to_owned();
        c.validate().unwrap_or_else(|e| panic!("{endpoint}: {e}"));
    }
    let e = env(&[("TETHER_WEBHOOK_ENDPOINT", "file:///tmp/events")]);
    let err = Config::load(None, &e).unwrap_err();
    assert_eq!(key_of(&err), "webhook.endpoint", "{err}");
}

/// A config file with `consumers` set to `consumers` (JSON).
fn consumers_file(name: &str, consumers: &str) -> PathBuf {
    file(name, "json", &format!(r#"{{"consumers": {consumers}}}"#))
}

const OUTBOX: &str = r#"{"name": "outbox", "enabled": true, "type": "postgresql",
    "postgresql": {"dsn": "postgresql://postgres@127.0.0.1/test", "outbox_table_name": "app.outbox"}}"#;

#[test]
fn consumers_load_with_centrifugo_defaults() {
    let c = Config::load(
        Some(&consumers_file("consumers_ok", &format!("[{OUTBOX}]"))),
        &no_env(),
    )
    .unwrap();
    let pg = &c.consumers[0].postgresql;
    assert_eq!(pg.outbox_table_name, "app.outbox");
    assert_eq!(pg.num_partitions, 1);
    assert_eq!(pg.partition_select_limit, 100);
    assert_eq!(pg.partition_poll_interval, Duration::from_millis(300));
    assert!(!pg.use_try_lock);
}

#[test]
fn consumer_names_match_the_regex_and_are_unique() {
    for (i, bad) in ["", "a", "bad-name", "with space", "dot.ted"]
        .iter()
        .enumerate()
    {
        let list = format!(r#"[{{"name": "{bad}", "type": "postgresql"}}]"#);
        let err = Config::load(
            Some(&consumers_file(&format!("consumers_name_{i}"), &list)),
            &no_env(),
        )
        .unwrap_err();
        assert_eq!(key_of(&err), "consumers[0].name", "{bad:?}: {err}");
    }
    let ok = r#"[{"name": "A_1", "type": "postgresql"}, {"name": "b2", "type": "amqp"}]"#;
    Config::load(Some(&consumers_file("consumers_names_ok", ok)), &no_env()).unwrap();

    let twice = r#"[{"name": "same", "type": "postgresql"}, {"name": "same", "type": "amqp"}]"#;
    let err = Config::load(Some(&consumers_file("consumers_twice", twice)), &no_env()).unwrap_err();
    assert_eq!(key_of(&err), "consumers[1].name", "{err}");
    assert!(err.to_string().contains("unique"), "{err}");
}

#[test]
fn consumer_types_unknown_refused_foreign_only_while_disabled() {
    let unknown = r#"[{"name": "x1", "type": "kafkaa"}]"#;
    let err = Config::load(
        Some(&consumers_file("consumers_unknown", unknown)),
        &no_env(),
    )
    .unwrap_err();
    assert_eq!(key_of(&err), "consumers[0].type", "{err}");
    assert!(err.to_string().contains("unknown consumer type"), "{err}");

    // Centrifugo's Kafka consumer with its options loads while disabled ...
    let kafka = r#"[{"name": "events", "type": "kafka", "enabled": false,
        "kafka": {"brokers": ["kafka:9092"], "topics": ["rt"], "consumer_group": "c"}}]"#;
    let c = Config::load(
        Some(&consumers_file("consumers_kafka_off", kafka)),
        &no_env(),
    )
    .unwrap();
    assert_eq!(c.consumers[0].kafka["topics"][0], "rt");
    // ... and is refused when enabled.
    let enabled = kafka.replace(r#""enabled": false"#, r#""enabled": true"#);
    let err = Config::load(
        Some(&consumers_file("consumers_kafka_on", &enabled)),
        &no_env(),
    )
    .unwrap_err();
    assert_eq!(key_of(&err), "consumers[0].type", "{err}");
    assert!(err.to_string().contains("not supported"), "{err}");
}

#[test]
fn only_enabled_consumers_need_their_options() {
    let off = r#"[{"name": "outbox", "type": "postgresql"}]"#;
    Config::load(Some(&consumers_file("consumers_off", off)), &no_env()).unwrap();
    let on = r#"[{"name": "outbox", "type": "postgresql", "enabled": true}]"#;
    let err = Config::load(Some(&consumers_file("consumers_on", on)), &no_env()).unwrap_err();
    assert_eq!(key_of(&err), "consumers[0].postgresql.dsn", "{err}");

    for (i, (field, value)) in [
        ("num_partitions", serde_json::json!(0)),
        ("partition_select_limit", serde_json::json!(0)),
        ("partition_poll_interval", serde_json::json!("0s")),
        (
            "outbox_table_name",
            serde_json::json!("outbox; DROP TABLE x"),
        ),
        ("dsn", serde_json::json!("")),
    ]
    .into_iter()
    .enumerate()
    {
        let mut consumer: serde_json::Value = serde_json::from_str(OUTBOX).unwrap();
        consumer["postgresql"][field] = value;
        let list = serde_json::json!([consumer]).to_string();
        let err = Config::load(
            Some(&consumers_file(&format!("consumers_pg_{i}"), &list)),
            &no_env(),
        )
        .unwrap_err();
        assert_eq!(
            key_of(&err),
            format!("consumers[0].postgresql.{field}"),
            "{err}"
        );
    }
}

#[test]
fn env_overrides_reach_consumers_by_name() {
    let path = consumers_file("consumers_env", &format!("[{OUTBOX}]"));
    let e = env(&[
        (
            "TETHER_CONSUMERS_OUTBOX_POSTGRESQL_DSN",
            "postgresql://other/db",
        ),
        ("TETHER_CONSUMERS_OUTBOX_POSTGRESQL_NUM_PARTITIONS", "8"),
        ("TETHER_CONSUMERS_OUTBOX_POSTGRESQL_USE_TRY_LOCK", "true"),
    ]);
    let c = Config::load(Some(&path), &e).unwrap();
    let pg = &c.consumers[0].postgresql;
    assert_eq!(pg.dsn, "postgresql://other/db");
    assert_eq!(pg.num_partitions, 8);
    assert!(pg.use_try_lock);
    assert_eq!(pg.outbox_table_name, "app.outbox");

    // A consumer defined by the environment alone.
    let e = env(&[
        ("TETHER_CONSUMERS", "events"),
        ("TETHER_CONSUMERS_EVENTS_TYPE", "postgresql"),
        ("TETHER_CONSUMERS_EVENTS_ENABLED", "true"),
        (
            "TETHER_CONSUMERS_EVENTS_POSTGRESQL_DSN",
            "postgresql://db/app",
        ),
        (
            "TETHER_CONSUMERS_EVENTS_POSTGRESQL_OUTBOX_TABLE_NAME",
            "outbox",
        ),
    ]);
    let c = Config::load(None, &e).unwrap();
    assert_eq!(c.consumers[0].name, "events");
    assert!(c.consumers[0].enabled);
    assert_eq!(c.consumers[0].postgresql.dsn, "postgresql://db/app");

    let e = env(&[("TETHER_CONSUMERS_OUTBOX_POSTGRESQL_NUM_PARTITIONS", "many")]);
    let err = Config::load(Some(&path), &e).unwrap_err();
    assert!(
        err.to_string()
            .contains("TETHER_CONSUMERS_OUTBOX_POSTGRESQL_NUM_PARTITIONS"),
        "{err}"
    );
}
