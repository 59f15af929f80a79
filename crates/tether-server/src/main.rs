//! The `tether` binary: `serve`, `genconfig`, `gentoken`, `checktoken` and `client`.
//!
//! Owns process concerns only: argument parsing, loading and validating the config before
//! anything binds (an invalid config exits with code 2, like `EX_USAGE`), secrets generated
//! for a config-less run, logging setup, the tokio runtime, and exit codes.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use clap::{Parser, Subcommand};
use rand::RngCore as _;
use serde_json::{Value, json};
use tether_server::auth::{self, TokenVerifier};
use tether_server::config::{self, Config, LogConfig, LogFormat, ProcessEnv};

/// Exit code for a bad command line or config (BSD `EX_USAGE` is 64; clap and most tools use
/// 2, so do we).
const EXIT_USAGE: u8 = 2;

/// Exit code for a runtime failure or a refused token.
const EXIT_FAILURE: u8 = 1;

/// Bytes of randomness in a generated secret (256 bits, printed as 64 hex digits).
const SECRET_BYTES: usize = 32;

#[derive(Debug, Parser)]
#[command(
    name = "tether",
    version,
    about = "A real-time gateway, wire-compatible with Centrifugo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (with no config: 127.0.0.1:8000, secrets generated for this run).
    Serve(ServeArgs),
    /// Write a starter config with fresh secrets.
    Genconfig(GenconfigArgs),
    /// Print an HS256 connection (or, with --channel, subscription) token.
    Gentoken(GentokenArgs),
    /// Verify a token with the configured keys and print its claims as JSON.
    Checktoken(ChecktokenArgs),
    /// Talk to a running server as a client: `client sub CHANNEL`, `client pub CHANNEL DATA`.
    Client(ClientArgs),
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// Config file (.json, .yaml, .yml or .toml); TETHER_* variables override it.
    #[arg(long, short = 'c', env = "TETHER_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Local experiments: client.insecure and http_api.insecure on; loopback addresses only.
    #[arg(long)]
    dev: bool,
}

#[derive(Debug, clap::Args)]
struct GenconfigArgs {
    /// Where to write; the extension picks the format (.json, .yaml, .yml, .toml).
    #[arg(long, short = 'o', default_value = "config.json")]
    output: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
struct GentokenArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// User ID for `sub` (empty string = anonymous).
    #[arg(long, short = 'u')]
    user: String,
    /// Lifetime, e.g. `1h` or `7d`; without it the token does not expire.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// Make a subscription token for this channel.
    #[arg(long)]
    channel: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ChecktokenArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The JWT to verify.
    token: String,
}

#[derive(Debug, clap::Args)]
struct ClientArgs {
    #[command(subcommand)]
    action: ClientAction,
    /// Server URL: ws://HOST:PORT/connection/websocket or tcp://HOST:PORT.
    #[arg(long, global = true, default_value = DEFAULT_CLIENT_URL)]
    url: String,
    /// Connection token (JWT), e.g. from `tether gentoken`; omit it for `tether serve --dev`.
    #[arg(long, global = true)]
    token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ClientAction {
    /// Subscribe and print each publication's data on its own line (status goes to stderr);
    /// reconnects and recovers by itself until Ctrl-C or a terminal disconnect.
    Sub {
        /// The channel.
        channel: String,
    },
    /// Publish DATA (JSON for channels read by JSON clients) and exit.
    Pub {
        /// The channel.
        channel: String,
        /// The payload.
        data: String,
        /// Give up after this long (connecting included).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        timeout: Duration,
    },
}

/// Where `tether client` connects by default: `tether serve` without a config.
const DEFAULT_CLIENT_URL: &str = "ws://127.0.0.1:8000/connection/websocket";

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Genconfig(args) => genconfig(&args),
        Command::Gentoken(args) => gentoken(&args),
        Command::Checktoken(args) => checktoken(&args),
        Command::Client(args) => client(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn serve(args: &ServeArgs) -> Result<(), Failure> {
    let (mut config, warnings) =
        Config::load_with_warnings(args.config.config.as_deref(), &ProcessEnv)
            .map_err(config_failure)?;
    if args.dev {
        if !config::is_loopback_address(&config.http_server.address) {
            return Err(usage(format!(
                "--dev refuses http_server.address {:?}: dev mode binds loopback addresses only",
                config.http_server.address
            )));
        }
        config.client.insecure = true;
        config.http_api.insecure = true;
    }
    let generated = fill_missing_secrets(&mut config);
    init_logging(&config.log).map_err(failed)?;
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    print_startup_banner(&config, &generated, args.dev);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
        .map_err(failed)?;
    let served = runtime.block_on(tether_server::server::serve(config));
    // `serve` returned by `shutdown.timeout`; whatever is still running does not hold the
    // exit (exit code 0 after a signal).
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    served.map_err(|error| failed(error.into()))
}

fn client(args: &ClientArgs) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
        .map_err(failed)?;
    runtime.block_on(run_client(args))
}

async fn run_client(args: &ClientArgs) -> Result<(), Failure> {
    use tether_client::{
        Client, ClientConfig, ClientEvent, SubscriptionConfig, SubscriptionEvent, codes,
    };
    let config = ClientConfig {
        token: args.token.clone(),
        name: "tether-cli".to_owned(),
        ..ClientConfig::default()
    };
    let (client, mut events) = Client::new(&args.url, config).map_err(|e| usage(e.to_string()))?;
    match &args.action {
        ClientAction::Pub {
            channel,
            data,
            timeout,
        } => {
            client.connect();
            let publisher = client.with_timeout(*timeout);
            let publish = publisher.publish(channel, data.clone().into_bytes());
            tokio::pin!(publish);
            loop {
                tokio::select! {
                    result = &mut publish => {
                        return result.map_err(|e| {
                            // A terminal disconnect fails the call and is reported at the same
                            // moment; its code says more than "client is closed".
                            while let Some(event) = events.try_next() {
                                if let ClientEvent::Disconnected { code, reason } = event {
                                    return refused(format!("disconnected: {code} {reason}"));
                                }
                            }
                            refused(format!("publish failed: {e}"))
                        });
                    }
                    Some(event) = events.next() => {
                        if let ClientEvent::Disconnected { code, reason } = event {
                            return Err(refused(format!("disconnected: {code} {reason}")));
                        }
                    }
                }
            }
        }
        ClientAction::Sub { channel } => {
            let (sub, mut sub_events) = client
                .new_subscription(channel, SubscriptionConfig::default())
                .map_err(|e| usage(e.to_string()))?;
            sub.subscribe();
            client.connect();
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                    Some(event) = events.next() => match event {
                        ClientEvent::Connected { client, .. } => eprintln!("connected as {client}"),
                        ClientEvent::Connecting { code, reason } if code != codes::CONNECT_CALLED => {
                            eprintln!("reconnecting ({code}: {reason})");
                        }
                        ClientEvent::Disconnected { code, reason } => {
                            return Err(refused(format!("disconnected: {code} {reason}")));
                        }
                        ClientEvent::Error(error) => eprintln!("error: {error}"),
                        _ => {}
                    },
                    Some(event) = sub_events.next() => match event {
                        SubscriptionEvent::Publication(publication) => {
                            println!("{}", String::from_utf8_lossy(&publication.data));
                        }
                        SubscriptionEvent::Subscribed { was_recovering, recovered, .. } => {
                            if was_recovering && !recovered {
                                eprintln!("resubscribed to {channel}; missed publications could not be recovered");
                            } else {
                                eprintln!("subscribed to {channel}");
                            }
                        }
                        SubscriptionEvent::Unsubscribed { code, reason } => {
                            return Err(refused(format!("unsubscribed: {code} {reason}")));
                        }
                        SubscriptionEvent::Error(error) => eprintln!("subscription error: {error}"),
                        _ => {}
                    },
                }
            }
        }
    }
}

/// Secrets generated for a run without configured ones.
#[derive(Debug, Default)]
struct Generated {
    hmac_secret_key: Option<String>,
    api_key: Option<String>,
}

/// No token key of any kind -> a random HMAC secret; no API key and API not insecure -> a
/// random API key. Both live for this run only.
fn fill_missing_secrets(config: &mut Config) -> Generated {
    let mut generated = Generated::default();
    if !config.client.token.has_key() {
        let secret = random_secret();
        config.client.token.hmac_secret_key.clone_from(&secret);
        generated.hmac_secret_key = Some(secret);
    }
    if config.http_api.key.is_empty() && !config.http_api.insecure {
        let key = random_secret();
        config.http_api.key.clone_from(&key);
        generated.api_key = Some(key);
    }
    generated
}

fn print_startup_banner(config: &Config, generated: &Generated, dev: bool) {
    let mut out = String::new();
    let address = &config.http_server.address;
    let port = config.http_server.port;
    let _ = writeln!(
        out,
        "tether: starting on http://{address}:{port} (WebSocket at /connection/websocket, API at /api)"
    );
    if config.tcp.enabled {
        let _ = writeln!(
            out,
            "        raw TCP (varint-delimited Protobuf) on tcp://{}:{}",
            config.tcp.address, config.tcp.port
        );
    }
    if dev {
        let _ = writeln!(
            out,
            "dev mode: client.insecure and http_api.insecure are on; do not expose this node"
        );
    }
    if generated.hmac_secret_key.is_some() || generated.api_key.is_some() {
        let _ = writeln!(
            out,
            "generated for this run only (put them in a config file to keep them):"
        );
        if let Some(secret) = &generated.hmac_secret_key {
            let _ = writeln!(out, "  client.token.hmac_secret_key: {secret}");
        }
        if let Some(key) = &generated.api_key {
            let _ = writeln!(out, "  http_api.key:                 {key}");
        }
        if let Some(secret) = &generated.hmac_secret_key {
            let _ = writeln!(
                out,
                "a connection token for user 42:\n  TETHER_CLIENT_TOKEN_HMAC_SECRET_KEY={secret} tether gentoken --user 42"
            );
        }
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

fn genconfig(args: &GenconfigArgs) -> Result<(), Failure> {
    let path = &args.output;
    let starter = starter_config(&random_secret(), &random_secret());
    let text = render(&starter, path)?;
    if path.exists() && !args.force {
        return Err(usage(format!(
            "{} already exists; pass --force to overwrite it",
            path.display()
        )));
    }
    write_private(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
        .map_err(failed)?;
    println!("wrote {}", path.display());
    println!("start with: tether serve --config {}", path.display());
    println!(
        "a token:    tether gentoken --config {} --user 42 --ttl 1h",
        path.display()
    );
    Ok(())
}

/// A small config that works as is: HMAC tokens, an API key, and one example namespace with
/// history and recovery. Every other key keeps its default (see the docs for the full list).
fn starter_config(hmac_secret_key: &str, api_key: &str) -> Value {
    json!({
        "http_server": { "address": "127.0.0.1", "port": 8000 },
        "client": {
            "token": { "hmac_secret_key": hmac_secret_key },
            "allowed_origins": ["http://localhost:3000"],
            "ping_interval": "25s",
            "pong_timeout": "8s"
        },
        "channel": {
            "without_namespace": {
                "allow_subscribe_for_client": true,
                "allow_history_for_subscriber": true,
                "allow_presence_for_subscriber": true
            },
            "namespaces": [{
                "name": "chat",
                "presence": true,
                "join_leave": true,
                "history_size": 100,
                "history_ttl": "10m",
                "force_recovery": true,
                "allow_subscribe_for_client": true,
                "allow_publish_for_subscriber": true,
                "allow_history_for_subscriber": true,
                "allow_presence_for_subscriber": true
            }]
        },
        "http_api": { "key": api_key },
        "log": { "level": "info", "format": "text" }
    })
}

fn render(value: &Value, path: &Path) -> Result<String, Failure> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let text = match ext.as_str() {
        "json" => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
        "yaml" | "yml" => serde_yaml::to_string(value).map_err(|e| e.to_string()),
        "toml" => toml::to_string(value).map_err(|e| e.to_string()),
        _ => {
            return Err(usage(format!(
                "{}: unsupported extension, use .json, .yaml, .yml or .toml",
                path.display()
            )));
        }
    };
    text.map_err(|e| Failure {
        code: EXIT_FAILURE,
        message: format!("cannot render config: {e}"),
    })
}

/// Writes a file only its owner can read: it holds secrets.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

fn gentoken(args: &GentokenArgs) -> Result<(), Failure> {
    let config =
        Config::load(args.config.config.as_deref(), &ProcessEnv).map_err(config_failure)?;
    let (token_config, key_name) = match &args.channel {
        Some(_) if config.client.subscription_token.enabled => (
            &config.client.subscription_token.token,
            "client.subscription_token.hmac_secret_key",
        ),
        _ => (&config.client.token, "client.token.hmac_secret_key"),
    };
    if token_config.hmac_secret_key.is_empty() {
        return Err(usage(format!(
            "no HMAC secret: set {key_name} in --config FILE or TETHER_{}",
            key_name.replace('.', "_").to_ascii_uppercase()
        )));
    }
    let now = unix_now();
    let mut claims = json!({ "sub": args.user, "iat": now });
    if let Some(ttl) = args.ttl {
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        claims["exp"] = json!(now.saturating_add(ttl));
    }
    if let Some(channel) = &args.channel {
        claims["channel"] = json!(channel);
    }
    if !token_config.audience.is_empty() {
        claims["aud"] = json!(token_config.audience);
    }
    if !token_config.issuer.is_empty() {
        claims["iss"] = json!(token_config.issuer);
    }
    let token = auth::sign_hs256(&token_config.hmac_secret_key, &claims)
        .map_err(|e| failed(anyhow::Error::new(e)))?;
    println!("{token}");
    Ok(())
}

fn checktoken(args: &ChecktokenArgs) -> Result<(), Failure> {
    let config =
        Config::load(args.config.config.as_deref(), &ProcessEnv).map_err(config_failure)?;
    let token = args.token.trim();
    let Some(claims) = peek_claims(token) else {
        return Err(refused("invalid token: malformed token"));
    };
    let is_subscription = claims
        .get("channel")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty());
    let now = unix_now();
    let (kind, user, expires_at) = if is_subscription {
        let verifier = TokenVerifier::new(config.client.subscription_token_config())
            .map_err(|e| failed(anyhow::Error::new(e)))?;
        let verified = verifier
            .verify_subscribe(token, now)
            .map_err(|e| refused(e.to_string()))?;
        ("subscription", verified.sub.clone(), verified.expires_at())
    } else {
        let verifier =
            TokenVerifier::new(&config.client.token).map_err(|e| failed(anyhow::Error::new(e)))?;
        let verified = verifier
            .verify_connect(token, now)
            .map_err(|e| refused(e.to_string()))?;
        ("connection", verified.sub.clone(), verified.expires_at())
    };
    let expiry = match expires_at {
        Some(at) => format!(
            "expires in {}",
            humantime::format_duration(Duration::from_secs(u64::try_from(at - now).unwrap_or(0)))
        ),
        None => "does not expire".to_owned(),
    };
    eprintln!("valid {kind} token for user {user:?}, {expiry}");
    let pretty = serde_json::to_string_pretty(&claims).unwrap_or_else(|_| claims.to_string());
    println!("{pretty}");
    Ok(())
}

/// The payload of a JWT as JSON, unverified (only to pick connection vs subscription and to
/// print what was verified).
fn peek_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn init_logging(log: &LogConfig) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let level = if log.level.eq_ignore_ascii_case("none") {
        "off"
    } else {
        log.level.as_str()
    };
    // RUST_LOG, when set and valid, wins over log.level.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

fn random_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    bytes
        .iter()
        .fold(String::with_capacity(SECRET_BYTES * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "a map_err callback takes the error by value"
)]
fn config_failure(err: config::ConfigError) -> Failure {
    usage(format!("invalid config: {err}"))
}

fn usage(message: String) -> Failure {
    Failure {
        code: EXIT_USAGE,
        message,
    }
}

fn refused(message: impl Into<String>) -> Failure {
    Failure {
        code: EXIT_FAILURE,
        message: message.into(),
    }
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "a map_err callback takes the error by value"
)]
fn failed(err: anyhow::Error) -> Failure {
    Failure {
        code: EXIT_FAILURE,
        message: format!("{err:#}"),
    }
}
