//! A small terminal chat on tether-client.
//!
//! Start a server for local experiments, then run two of these in two terminals:
//!
//! ```text
//! tether serve --dev
//! cargo run -p tether-client --example chat -- --name alice
//! cargo run -p tether-client --example chat -- --name bob --url tcp://127.0.0.1:8001
//! ```
//!
//! Lines typed are published to the channel (default `chat`); everyone's lines are printed.
//! Stop the server and start it again: the chat reconnects by itself. Against a server with
//! tokens, pass `--token "$(tether gentoken --user alice)"`.

use std::error::Error as StdError;

use serde_json::{Value, json};
use tether_client::{Client, ClientConfig, ClientEvent, SubscriptionConfig, SubscriptionEvent};
use tokio::io::{AsyncBufReadExt, BufReader};

struct Args {
    url: String,
    token: Option<String>,
    name: String,
    channel: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn StdError>> {
    let args = parse_args()?;
    let config = ClientConfig {
        token: args.token.clone(),
        name: "tether-chat".to_owned(),
        ..ClientConfig::default()
    };
    let (client, mut events) = Client::new(&args.url, config)?;
    let (room, mut room_events) =
        client.new_subscription(&args.channel, SubscriptionConfig::default())?;
    room.subscribe();
    client.connect();
    eprintln!(
        "connecting to {} as {}; type a line to send it, /quit to leave",
        args.url, args.name
    );

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                let text = line.trim();
                if text == "/quit" {
                    break;
                }
                if text.is_empty() {
                    continue;
                }
                let message = json!({ "name": args.name, "text": text }).to_string();
                // Sent now when connected; while reconnecting it waits in the client's buffer.
                if let Err(error) = room.publish(message).await {
                    eprintln!("! not sent: {error}");
                }
            }
            Some(event) = events.next() => match event {
                ClientEvent::Connected { .. } => eprintln!("* connected"),
                ClientEvent::Connecting { code, reason } if code != tether_client::codes::CONNECT_CALLED => {
                    eprintln!("* connection lost ({reason}), reconnecting");
                }
                ClientEvent::Disconnected { code, reason } => {
                    eprintln!("* disconnected for good: {code} {reason}");
                    break;
                }
                _ => {}
            },
            Some(event) = room_events.next() => match event {
                SubscriptionEvent::Publication(publication) => {
                    let message: Value = serde_json::from_slice(&publication.data).unwrap_or(Value::Null);
                    let name = message["name"].as_str().unwrap_or("?");
                    let text = message["text"].as_str().unwrap_or("");
                    println!("{name}: {text}");
                }
                SubscriptionEvent::Subscribed { was_recovering, recovered, .. } => {
                    if was_recovering && !recovered {
                        eprintln!("* back in #{}; some messages were missed", args.channel);
                    } else {
                        eprintln!("* in #{}", args.channel);
                    }
                }
                SubscriptionEvent::Unsubscribed { code, reason } => {
                    eprintln!("* left #{}: {code} {reason}", args.channel);
                    break;
                }
                _ => {}
            },
        }
    }
    client.disconnect();
    Ok(())
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: "ws://127.0.0.1:8000/connection/websocket".to_owned(),
        token: None,
        name: std::env::var("USER").unwrap_or_else(|_| "anonymous".to_owned()),
        channel: "chat".to_owned(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value()?,
            "--token" => args.token = Some(value()?),
            "--name" => args.name = value()?,
            "--channel" => args.channel = value()?,
            _ => {
                return Err(format!(
                    "unknown argument {flag}; usage: chat [--url URL] [--token JWT] [--name NAME] [--channel CHANNEL]"
                ));
            }
        }
    }
    Ok(args)
}
