//! Token verification: `TokenVerifier::verify_connect` and `verify_subscribe` on arbitrary
//! strings, and on arbitrary claims payloads correctly signed with the HMAC key (so the
//! fuzzer reaches claim parsing, not just signature checks). Nothing may panic; a token with
//! `alg` other than HS* never passes, and an unsigned one never does.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use tether_server::auth::TokenVerifier;
use tether_server::config::TokenConfig;

const SECRET: &str = "fuzz-secret";
const NOW: i64 = 1_700_000_000;

static VERIFIER: LazyLock<TokenVerifier> = LazyLock::new(|| {
    let cfg = TokenConfig {
        hmac_secret_key: SECRET.to_owned(),
        rsa_public_key: include_str!("../../crates/tether-server/src/auth/testdata/rsa_public.pem")
            .to_owned(),
        ecdsa_public_key: include_str!(
            "../../crates/tether-server/src/auth/testdata/ec256_public.pem"
        )
        .to_owned(),
        hmac_previous_secret_key: "fuzz-previous".to_owned(),
        hmac_previous_secret_key_valid_until: NOW + 10,
        ..TokenConfig::default()
    };
    TokenVerifier::new(&cfg).expect("the fuzz key set is valid")
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let now = NOW + i64::from(mode >> 4) - 8;
    if mode & 1 == 0 {
        // Arbitrary strings as tokens, with arbitrary headers and signatures.
        let token = String::from_utf8_lossy(rest);
        let _ = VERIFIER.verify_connect(&token, now);
        let _ = VERIFIER.verify_subscribe(&token, now);
        return;
    }
    // Arbitrary claims bytes under a fixed HS256 header, correctly signed.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(rest));
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
        .expect("hmac signing cannot fail");
    let token = format!("{message}.{signature}");
    let connect = VERIFIER.verify_connect(&token, now);
    let subscribe = VERIFIER.verify_subscribe(&token, now);
    if let Ok(claims) = connect {
        // Only JSON objects can be claims.
        assert!(rest.trim_ascii_start().starts_with(b"{"));
        if let Some(at) = claims.expires_at() {
            assert!(at > 0);
        }
    }
    if let Ok(claims) = subscribe {
        assert!(!claims.channel.is_empty());
    }
    // The same claims without a signature never pass.
    let unsigned = format!("{message}.");
    assert!(VERIFIER.verify_connect(&unsigned, now).is_err());
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(rest)
    );
    assert!(VERIFIER.verify_connect(&none, now).is_err());
});
