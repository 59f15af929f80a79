//! Writes the seed corpora under `fuzz/corpus/<target>/` from real frames: the JSON commands
//! centrifuge-js sends, the same commands as Protobuf, masked WebSocket frames as a browser
//! sends them, SDK upgrade requests, and signed tokens. Run from `fuzz/` after a protocol
//! change: `cargo run --example gen_corpus`.

use std::fs;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tether_proto::Encoding;

const JSON_COMMANDS: &[&[u8]] = &[
    br#"{"id":1,"connect":{"token":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.x","name":"js","version":"5.0.0","subs":{"news":{"recover":true,"offset":3,"epoch":"abc"}}}}"#,
    br#"{}"#,
    b"{}\n{\"id\":2,\"subscribe\":{\"channel\":\"chat:1\",\"recover\":true,\"offset\":10,\"epoch\":\"e\",\"delta\":\"fossil\"}}\n",
    br#"{"id":3,"publish":{"channel":"chat:1","data":{"text":"hi","n":[1,2.5,null,true]}}}"#,
    br#"{"id":4,"rpc":{"method":"m","data":"\u00e9\ud83d\ude00"}}"#,
    br#"{"id":5,"history":{"channel":"c","limit":10,"since":{"offset":1,"epoch":"x"},"reverse":true}}"#,
    br#"{"id":6,"presence":{"channel":"c"}}"#,
    br#"{"id":7,"presence_stats":{"channel":"c"}}"#,
    br#"{"id":8,"unsubscribe":{"channel":"c"}}"#,
    br#"{"id":9,"refresh":{"token":"t"}}"#,
    br#"{"id":10,"sub_refresh":{"channel":"c","token":"t"}}"#,
    br#"{"send":{"data":{"a":1}}}"#,
];

const UPGRADES: &[&[u8]] = &[
    b"GET /connection/websocket HTTP/1.1\r\nHost: localhost:8000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://localhost:3000\r\n\r\n",
    b"GET /connection/websocket?cf_protocol=protobuf&format=protobuf HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: centrifuge-protobuf, chat\r\n\r\n\x82\x80abcd",
    b"POST /connection/websocket HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
];

const SECRET: &str = "fuzz-secret";
const NOW: i64 = 1_700_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = root.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(name), bytes)
    };

    let mut stream = Vec::new();
    for (i, json) in JSON_COMMANDS.iter().enumerate() {
        write("json_commands", &format!("seed-{i:02}"), json)?;
        let commands = Encoding::Json.decode_commands(json)?;
        let mut proto = Vec::new();
        Encoding::Protobuf.encode_commands(&commands, &mut proto)?;
        write("protobuf_commands", &format!("seed-{i:02}"), &proto)?;
        stream.extend_from_slice(&proto);
        // Chunk plan: one byte, then three bytes of chunk lengths (1, 2, 7), then the stream.
        let mut chunked = vec![3, 0, 1, 6];
        chunked.extend_from_slice(&proto);
        write("delimited_stream", &format!("seed-{i:02}"), &chunked)?;
    }
    let mut whole = vec![0];
    whole.extend_from_slice(&stream);
    write("delimited_stream", "stream", &whole)?;

    // WebSocket frames: whole (plan byte 0) and split byte by byte (plan [1, 0]).
    let frames: Vec<(&str, Vec<u8>)> = vec![
        ("text", masked(0x81, JSON_COMMANDS[0])),
        ("binary", masked(0x82, &stream[..stream.len().min(200)])),
        ("fragmented", {
            let mut f = masked(0x01, b"{\"id\":1,");
            f.extend(masked(0x89, b"ping"));
            f.extend(masked(0x80, b"\"connect\":{}}"));
            f
        }),
        ("close", masked(0x88, b"\x03\xe8bye")),
        ("pong", masked(0x8a, b"")),
        ("len16", masked(0x82, &[7; 200])),
    ];
    for (name, frame) in &frames {
        let mut whole = vec![0];
        whole.extend_from_slice(frame);
        write("ws_frames", name, &whole)?;
        let mut split = vec![1, 0];
        split.extend_from_slice(frame);
        write("ws_frames", &format!("{name}-bytewise"), &split)?;
    }

    for (i, head) in UPGRADES.iter().enumerate() {
        let mut with_cut = vec![40];
        with_cut.extend_from_slice(head);
        write("upgrade_head", &format!("seed-{i:02}"), &with_cut)?;
    }

    // jwt: mode byte 0x80 = raw token at NOW; 0x81 = claims signed by the target itself.
    let claims = serde_json::json!({
        "sub": "42", "exp": NOW + 60, "info": {"n": 1}, "b64info": "aGk=",
        "channels": ["news"], "subs": {"c": {"data": {}, "override": {"presence": {"value": true}}}},
        "aud": ["a"], "iss": "i", "nbf": NOW - 1, "meta": null
    });
    let sub_claims = serde_json::json!({"sub": "42", "channel": "chat:1", "expire_at": 0,
        "client": "c", "b64data": "eA=="});
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )?;
    let rsa = EncodingKey::from_rsa_pem(include_bytes!(
        "../../crates/tether-server/src/auth/testdata/rsa_private.pem"
    ))?;
    let rs = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &sub_claims, &rsa)?;
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    for (name, token) in [("hs256", &hs), ("rs256", &rs), ("none", &none)] {
        let mut input = vec![0x80];
        input.extend_from_slice(token.as_bytes());
        write("jwt", name, &input)?;
    }
    for (name, value) in [("claims", &claims), ("sub-claims", &sub_claims)] {
        let mut input = vec![0x81];
        input.extend_from_slice(value.to_string().as_bytes());
        write("jwt", name, &input)?;
    }
    Ok(())
}

/// A client frame: `first` is FIN/opcode, the payload masked with a fixed key.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![first];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=65535 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&KEY);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    frame
}
