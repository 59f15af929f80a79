use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::*;

const RSA_PRIVATE: &str = include_str!("testdata/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("testdata/rsa_public.pem");
const EC256_PRIVATE: &str = include_str!("testdata/ec256_private.pem");
const EC256_PUBLIC: &str = include_str!("testdata/ec256_public.pem");
const EC384_PRIVATE: &str = include_str!("testdata/ec384_private.pem");
const EC384_PUBLIC: &str = include_str!("testdata/ec384_public.pem");

const SECRET: &str = "current-secret";
const NOW: i64 = 1_700_000_000;

fn hmac_config() -> TokenConfig {
    TokenConfig {
        hmac_secret_key: SECRET.to_owned(),
        ..TokenConfig::default()
    }
}

fn verifier(cfg: &TokenConfig) -> TokenVerifier {
    TokenVerifier::new(cfg).unwrap()
}

fn hs(alg: Algorithm, secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn rs(alg: Algorithm, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap()
}

fn es(alg: Algorithm, private: &str, claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(private.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap()
}

/// A token with an arbitrary header, HS256-signed over whatever header is given.
fn with_header(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let c = URL_SAFE_NO_PAD.encode(claims.to_string());
    let message = format!("{h}.{c}");
    let key = EncodingKey::from_secret(secret);
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
    format!("{message}.{signature}")
}

fn invalid(reason: InvalidTokenReason) -> TokenError {
    TokenError::Invalid(reason)
}

#[test]
fn hmac_token_with_all_claims_is_accepted() {
    let claims = json!({
        "sub": "42",
        "exp": NOW + 60,
        "expire_at": NOW + 30,
        "info": {"name": "Alex"},
        "channels": ["news"],
        "subs": {
            "chat:1": {"info": {"role": "admin"}, "b64data": "aGk=",
                       "override": {"presence": {"value": true}, "join_leave": {"value": false}}}
        },
        "meta": {"plan": "pro"},
        "iat": NOW,
        "jti": "abc"
    });
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token = hs(alg, SECRET.as_bytes(), &claims);
        let got = verifier(&hmac_config())
            .verify_connect(&token, NOW)
            .unwrap();
        assert_eq!(got.sub, "42");
        assert_eq!(got.exp, Some(NOW + 60));
        assert_eq!(got.expire_at, Some(NOW + 30));
        assert_eq!(got.expires_at(), Some(NOW + 30));
        assert_eq!(got.info.as_deref(), Some(br#"{"name":"Alex"}"#.as_slice()));
        assert_eq!(got.channels, vec!["news"]);
        assert_eq!(got.meta.as_deref(), Some(br#"{"plan":"pro"}"#.as_slice()));
        let sub = &got.subs["chat:1"];
        assert_eq!(sub.info.as_deref(), Some(br#"{"role":"admin"}"#.as_slice()));
        assert_eq!(sub.data.as_deref(), Some(b"hi".as_slice()));
        let o = sub.override_.unwrap();
        assert_eq!(o.presence, Some(true));
        assert_eq!(o.join_leave, Some(false));
        assert_eq!(o.force_recovery, None);
    }
}

#[test]
fn b64info_is_decoded_and_wins_over_info() {
    let token = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "info": {"a": 1}, "b64info": "AAEC"}),
    );
    let got = verifier(&hmac_config())
        .verify_connect(&token, NOW)
        .unwrap();
    assert_eq!(got.info.as_deref(), Some([0u8, 1, 2].as_slice()));

    let token = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "b64info": "!!notbase64"}),
    );
    assert_eq!(
        verifier(&hmac_config()).verify_connect(&token, NOW),
        Err(invalid(InvalidTokenReason::BadBase64))
    );
}

#[test]
fn missing_exp_is_fine_and_anonymous_sub_is_empty() {
    let token = hs(Algorithm::HS256, SECRET.as_bytes(), &json!({}));
    let got = verifier(&hmac_config())
        .verify_connect(&token, NOW)
        .unwrap();
    assert_eq!(got.sub, "");
    assert_eq!(got.exp, None);
    assert_eq!(got.expires_at(), None);
}

#[test]
fn expire_at_zero_means_never() {
    let token = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "exp": NOW + 5, "expire_at": 0}),
    );
    let got = verifier(&hmac_config())
        .verify_connect(&token, NOW)
        .unwrap();
    assert_eq!(got.expires_at(), None);
}

#[test]
fn expired_and_not_yet_valid_tokens_are_expired() {
    let v = verifier(&hmac_config());
    let at_exp = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "exp": NOW}),
    );
    assert_eq!(v.verify_connect(&at_exp, NOW), Err(TokenError::Expired));
    assert!(v.verify_connect(&at_exp, NOW - 1).is_ok());
    let nbf = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "nbf": NOW + 10}),
    );
    assert_eq!(v.verify_connect(&nbf, NOW), Err(TokenError::Expired));
    assert!(v.verify_connect(&nbf, NOW + 10).is_ok());
    assert!(TokenError::Expired.is_expired());
    // Floats are accepted as numeric dates.
    let float = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "exp": NOW as f64 + 0.5}),
    );
    assert_eq!(v.verify_connect(&float, NOW), Err(TokenError::Expired));
}

#[test]
fn forged_expired_token_is_invalid_not_expired() {
    let token = hs(
        Algorithm::HS256,
        b"wrong",
        &json!({"sub": "1", "exp": NOW - 100}),
    );
    assert_eq!(
        verifier(&hmac_config()).verify_connect(&token, NOW),
        Err(invalid(InvalidTokenReason::BadSignature))
    );
}

#[test]
fn wrong_secret_and_garbage_are_invalid() {
    let v = verifier(&hmac_config());
    let token = hs(Algorithm::HS256, b"other", &json!({"sub": "1"}));
    assert_eq!(
        v.verify_connect(&token, NOW),
        Err(invalid(InvalidTokenReason::BadSignature))
    );
    for garbage in ["", "abc", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30"] {
        assert!(
            matches!(v.verify_connect(garbage, NOW), Err(TokenError::Invalid(_))),
            "{garbage:?}"
        );
    }
}

#[test]
fn claims_of_the_wrong_shape_are_invalid() {
    let token = hs(Algorithm::HS256, SECRET.as_bytes(), &json!({"sub": 42}));
    assert_eq!(
        verifier(&hmac_config()).verify_connect(&token, NOW),
        Err(invalid(InvalidTokenReason::BadClaims))
    );
    let token = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "exp": "tomorrow"}),
    );
    assert_eq!(
        verifier(&hmac_config()).verify_connect(&token, NOW),
        Err(invalid(InvalidTokenReason::BadClaims))
    );
}

#[test]
fn alg_none_and_unknown_algorithms_are_invalid() {
    let v = verifier(&hmac_config());
    let claims = json!({"sub": "1"});
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    assert!(matches!(
        v.verify_connect(&none, NOW),
        Err(TokenError::Invalid(_))
    ));
    let weird = with_header(&json!({"alg": "HS999"}), &claims, SECRET.as_bytes());
    assert!(matches!(
        v.verify_connect(&weird, NOW),
        Err(TokenError::Invalid(_))
    ));
    // PS256 is an algorithm the library knows and we do not accept.
    let ps = with_header(&json!({"alg": "PS256"}), &claims, SECRET.as_bytes());
    assert_eq!(
        v.verify_connect(&ps, NOW),
        Err(invalid(InvalidTokenReason::UnsupportedAlgorithm))
    );
}

#[test]
fn rsa_tokens_verify_with_the_public_key() {
    let cfg = TokenConfig {
        rsa_public_key: RSA_PUBLIC.to_owned(),
        ..TokenConfig::default()
    };
    let v = verifier(&cfg);
    for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
        let token = rs(alg, &json!({"sub": "rsa-user"}));
        assert_eq!(v.verify_connect(&token, NOW).unwrap().sub, "rsa-user");
    }
    // No HMAC key: an HS256 token is refused before any signature check.
    let token = hs(
        Algorithm::HS256,
        RSA_PUBLIC.as_bytes(),
        &json!({"sub": "1"}),
    );
    assert_eq!(
        v.verify_connect(&token, NOW),
        Err(invalid(InvalidTokenReason::AlgorithmNotConfigured))
    );
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_invalid_even_with_an_hmac_key() {
    let cfg = TokenConfig {
        rsa_public_key: RSA_PUBLIC.to_owned(),
        ..hmac_config()
    };
    let token = hs(
        Algorithm::HS256,
        RSA_PUBLIC.as_bytes(),
        &json!({"sub": "1"}),
    );
    assert_eq!(
        verifier(&cfg).verify_connect(&token, NOW),
        Err(invalid(InvalidTokenReason::BadSignature))
    );
}

#[test]
fn ecdsa_tokens_verify_with_the_public_key() {
    let cfg256 = TokenConfig {
        ecdsa_public_key: EC256_PUBLIC.to_owned(),
        ..TokenConfig::default()
    };
    let token = es(Algorithm::ES256, EC256_PRIVATE, &json!({"sub": "ec"}));
    assert_eq!(
        verifier(&cfg256).verify_connect(&token, NOW).unwrap().sub,
        "ec"
    );

    let cfg384 = TokenConfig {
        ecdsa_public_key: EC384_PUBLIC.to_owned(),
        ..TokenConfig::default()
    };
    let token = es(Algorithm::ES384, EC384_PRIVATE, &json!({"sub": "ec"}));
    assert_eq!(
        verifier(&cfg384).verify_connect(&token, NOW).unwrap().sub,
        "ec"
    );

    // Signed by another key of the same curve's family: refused.
    let token = es(Algorithm::ES384, EC384_PRIVATE, &json!({"sub": "ec"}));
    assert!(matches!(
        verifier(&cfg256).verify_connect(&token, NOW),
        Err(TokenError::Invalid(_))
    ));
    // RS token against an EC-only verifier.
    let token = rs(Algorithm::RS256, &json!({"sub": "1"}));
    assert_eq!(
        verifier(&cfg256).verify_connect(&token, NOW),
        Err(invalid(InvalidTokenReason::AlgorithmNotConfigured))
    );
}

#[test]
fn bad_pem_keys_are_config_errors() {
    let cfg = TokenConfig {
        rsa_public_key: "nope".to_owned(),
        ..TokenConfig::default()
    };
    assert!(matches!(
        TokenVerifier::new(&cfg),
        Err(AuthConfigError::RsaPublicKey(_))
    ));
    let cfg = TokenConfig {
        ecdsa_public_key: "nope".to_owned(),
        ..TokenConfig::default()
    };
    assert!(matches!(
        TokenVerifier::new(&cfg),
        Err(AuthConfigError::EcdsaPublicKey(_))
    ));
}

#[test]
fn no_keys_refuses_everything() {
    let v = verifier(&TokenConfig::default());
    let token = hs(Algorithm::HS256, b"x", &json!({"sub": "1"}));
    assert_eq!(
        v.verify_connect(&token, NOW),
        Err(invalid(InvalidTokenReason::AlgorithmNotConfigured))
    );
}

#[test]
fn previous_hmac_key_is_accepted_until_valid_until() {
    let cfg = TokenConfig {
        hmac_previous_secret_key: "old-secret".to_owned(),
        hmac_previous_secret_key_valid_until: NOW + 100,
        ..hmac_config()
    };
    let v = verifier(&cfg);
    let old = hs(Algorithm::HS256, b"old-secret", &json!({"sub": "1"}));
    assert!(v.verify_connect(&old, NOW).is_ok());
    assert!(v.verify_connect(&old, NOW + 99).is_ok());
    assert_eq!(
        v.verify_connect(&old, NOW + 100),
        Err(invalid(InvalidTokenReason::BadSignature))
    );
    let new = hs(Algorithm::HS256, SECRET.as_bytes(), &json!({"sub": "1"}));
    assert!(v.verify_connect(&new, NOW + 1000).is_ok());
}

#[test]
fn audience_and_issuer_are_enforced_only_when_configured() {
    let plain = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "aud": "x", "iss": "y"}),
    );
    assert!(verifier(&hmac_config()).verify_connect(&plain, NOW).is_ok());

    let cfg = TokenConfig {
        audience: "tether".to_owned(),
        issuer: "backend".to_owned(),
        ..hmac_config()
    };
    let v = verifier(&cfg);
    let good = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "aud": "tether", "iss": "backend"}),
    );
    assert!(v.verify_connect(&good, NOW).is_ok());
    let list = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "aud": ["other", "tether"], "iss": "backend"}),
    );
    assert!(v.verify_connect(&list, NOW).is_ok());
    let no_aud = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "iss": "backend"}),
    );
    assert_eq!(
        v.verify_connect(&no_aud, NOW),
        Err(invalid(InvalidTokenReason::AudienceMismatch))
    );
    let wrong_aud = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "aud": "x", "iss": "backend"}),
    );
    assert_eq!(
        v.verify_connect(&wrong_aud, NOW),
        Err(invalid(InvalidTokenReason::AudienceMismatch))
    );
    let wrong_iss = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "aud": "tether", "iss": "z"}),
    );
    assert_eq!(
        v.verify_connect(&wrong_iss, NOW),
        Err(invalid(InvalidTokenReason::IssuerMismatch))
    );
    let no_iss = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "aud": "tether"}),
    );
    assert_eq!(
        v.verify_connect(&no_iss, NOW),
        Err(invalid(InvalidTokenReason::IssuerMismatch))
    );
}

#[test]
fn connection_token_with_channel_claim_is_invalid() {
    let token = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "channel": "news"}),
    );
    assert_eq!(
        verifier(&hmac_config()).verify_connect(&token, NOW),
        Err(invalid(InvalidTokenReason::ChannelInConnectionToken))
    );
}

#[test]
fn subscription_token_claims() {
    let token = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({
            "sub": "42", "channel": "$private:1", "info": {"x": 1}, "b64data": "AQ==",
            "exp": NOW + 10, "client": "c-1",
            "override": {"force_recovery": {"value": true}, "force_positioning": {}}
        }),
    );
    let got = verifier(&hmac_config())
        .verify_subscribe(&token, NOW)
        .unwrap();
    assert_eq!(got.sub, "42");
    assert_eq!(got.channel, "$private:1");
    assert_eq!(got.info.as_deref(), Some(br#"{"x":1}"#.as_slice()));
    assert_eq!(got.data.as_deref(), Some([1u8].as_slice()));
    assert_eq!(got.exp, Some(NOW + 10));
    assert_eq!(got.expires_at(), Some(NOW + 10));
    assert_eq!(got.client.as_deref(), Some("c-1"));
    let o = got.override_.unwrap();
    assert_eq!(o.force_recovery, Some(true));
    assert_eq!(o.force_positioning, Some(false));
    assert_eq!(o.presence, None);
}

#[test]
fn subscription_token_outcomes() {
    let v = verifier(&hmac_config());
    let no_channel = hs(Algorithm::HS256, SECRET.as_bytes(), &json!({"sub": "1"}));
    assert_eq!(
        v.verify_subscribe(&no_channel, NOW),
        Err(invalid(InvalidTokenReason::MissingChannel))
    );
    let expired = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "channel": "c", "exp": NOW - 1}),
    );
    assert_eq!(v.verify_subscribe(&expired, NOW), Err(TokenError::Expired));
    let forged = hs(
        Algorithm::HS256,
        b"nope",
        &json!({"sub": "1", "channel": "c"}),
    );
    assert!(matches!(
        v.verify_subscribe(&forged, NOW),
        Err(TokenError::Invalid(_))
    ));
}

#[test]
fn sign_hs256_round_trips() {
    let token = sign_hs256(SECRET, &json!({"sub": "7", "exp": NOW + 1})).unwrap();
    assert_eq!(
        verifier(&hmac_config())
            .verify_connect(&token, NOW)
            .unwrap()
            .sub,
        "7"
    );
    assert!(matches!(
        sign_hs256("", &json!({})),
        Err(SignTokenError::NoSecret)
    ));
}

#[test]
fn debug_hides_keys() {
    let shown = format!("{:?}", verifier(&hmac_config()));
    assert!(!shown.contains(SECRET));
    assert!(shown.contains("hmac: true"));
}

#[test]
fn leeway_tolerates_skew_on_exp_and_nbf_only_within_its_bound() {
    let cfg = TokenConfig {
        leeway: std::time::Duration::from_secs(5),
        ..hmac_config()
    };
    let v = verifier(&cfg);
    let exp = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "exp": NOW}),
    );
    assert!(v.verify_connect(&exp, NOW).is_ok());
    assert!(v.verify_connect(&exp, NOW + 4).is_ok());
    assert_eq!(v.verify_connect(&exp, NOW + 5), Err(TokenError::Expired));
    let nbf = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "nbf": NOW + 5}),
    );
    assert!(v.verify_connect(&nbf, NOW).is_ok());
    assert_eq!(v.verify_connect(&nbf, NOW - 1), Err(TokenError::Expired));
    let sub = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "channel": "c", "exp": NOW}),
    );
    assert!(v.verify_subscribe(&sub, NOW + 4).is_ok());
    assert_eq!(v.verify_subscribe(&sub, NOW + 5), Err(TokenError::Expired));
    // Default: no leeway.
    assert_eq!(
        verifier(&hmac_config()).verify_connect(&exp, NOW),
        Err(TokenError::Expired)
    );
    // Huge claims do not overflow the arithmetic.
    let far = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "1", "exp": i64::MAX, "nbf": i64::MIN}),
    );
    assert!(v.verify_connect(&far, NOW).is_ok());
}

#[test]
fn rotation_applies_to_subscription_tokens_and_never_to_other_families() {
    let cfg = TokenConfig {
        hmac_previous_secret_key: "old-secret".to_owned(),
        hmac_previous_secret_key_valid_until: NOW + 100,
        rsa_public_key: RSA_PUBLIC.to_owned(),
        ..hmac_config()
    };
    let v = verifier(&cfg);
    let old = hs(
        Algorithm::HS512,
        b"old-secret",
        &json!({"sub": "1", "channel": "c"}),
    );
    assert!(v.verify_subscribe(&old, NOW + 99).is_ok());
    assert_eq!(
        v.verify_subscribe(&old, NOW + 100),
        Err(invalid(InvalidTokenReason::BadSignature))
    );
    // An HS256 token "signed" with the RSA public key fails before and after valid_until.
    let confused = hs(
        Algorithm::HS256,
        RSA_PUBLIC.as_bytes(),
        &json!({"sub": "1"}),
    );
    for now in [NOW, NOW + 200] {
        assert_eq!(
            v.verify_connect(&confused, now),
            Err(invalid(InvalidTokenReason::BadSignature))
        );
    }
}

// === JWKS ===

const JWKS: &str = include_str!("testdata/jwks.json");
const ED25519_PRIVATE: &str = include_str!("testdata/ed25519_private.pem");

/// An HTTP server on 127.0.0.1:0 that answers every request with `body` (swappable) and
/// counts requests. Ends with the test's runtime.
struct JwksServer {
    url: String,
    body: Arc<parking_lot::Mutex<String>>,
    requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    async fn start(body: &str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let body = Arc::new(parking_lot::Mutex::new(body.to_owned()));
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (served, counter) = (Arc::clone(&body), Arc::clone(&requests));
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                assert!(head.starts_with(b"GET /.well-known/jwks.json HTTP/1.1\r\n"));
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = served.lock().clone();
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        Self {
            url,
            body,
            requests,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn jwks_verifier(url: &str, timing: jwks::JwksTiming) -> TokenVerifier {
    let cfg = TokenConfig {
        jwks_public_endpoint: url.to_owned(),
        ..hmac_config()
    };
    TokenVerifier::with_jwks_timing(&cfg, timing).unwrap()
}

fn fast_timing() -> jwks::JwksTiming {
    jwks::JwksTiming {
        ttl: std::time::Duration::from_secs(3600),
        min_refetch_interval: std::time::Duration::from_millis(300),
        refresh_ahead: std::time::Duration::from_secs(60),
        fetch_timeout: std::time::Duration::from_secs(5),
    }
}

fn with_kid(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// Polls `check` every 20 ms for up to 5 s.
async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..250 {
        if check() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn jwks_keys_verify_tokens_by_kid_with_pinned_algorithms() {
    let server = JwksServer::start(JWKS).await;
    let v = jwks_verifier(&server.url, jwks::JwksTiming::default());
    // rsa-1, rsa-384-only, ec-256, ec-384, ed-1; oct, enc, kid-less, PS256 and broken skipped.
    assert_eq!(v.refresh_jwks().await.unwrap(), Some(5));

    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let ec256 = EncodingKey::from_ec_pem(EC256_PRIVATE.as_bytes()).unwrap();
    let ec384 = EncodingKey::from_ec_pem(EC384_PRIVATE.as_bytes()).unwrap();
    let ed = EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap();
    let claims = json!({"sub": "jwk-user", "exp": NOW + 60});
    for (alg, kid, key) in [
        (Algorithm::RS256, "rsa-1", &rsa),
        (Algorithm::RS512, "rsa-1", &rsa),
        (Algorithm::RS384, "rsa-384-only", &rsa),
        (Algorithm::ES256, "ec-256", &ec256),
        (Algorithm::ES384, "ec-384", &ec384),
        (Algorithm::EdDSA, "ed-1", &ed),
    ] {
        let token = with_kid(alg, kid, key, &claims);
        assert_eq!(
            v.verify_connect(&token, NOW).map(|c| c.sub),
            Ok("jwk-user".to_owned()),
            "{alg:?} {kid}"
        );
    }
    let mismatch = |alg, kid: &str, key: &EncodingKey| {
        v.verify_connect(&with_kid(alg, kid, key, &claims), NOW)
    };
    let pinned = Err(invalid(InvalidTokenReason::KeyAlgorithmMismatch));
    // alg pinned by the key's `alg` and by its curve.
    assert_eq!(mismatch(Algorithm::RS256, "rsa-384-only", &rsa), pinned);
    assert_eq!(mismatch(Algorithm::ES256, "ec-384", &ec256), pinned);
    assert_eq!(mismatch(Algorithm::RS256, "ec-256", &rsa), pinned);
    // HS256 "signed" with the RSA public key's PEM bytes, naming the RSA kid.
    let hs_pem = EncodingKey::from_secret(RSA_PUBLIC.as_bytes());
    assert_eq!(mismatch(Algorithm::HS256, "rsa-1", &hs_pem), pinned);
    // The symmetric key in the set is never used, even with the right secret.
    let secret = EncodingKey::from_secret(SECRET.as_bytes());
    assert_eq!(
        mismatch(Algorithm::HS256, "hmac-secret", &secret),
        Err(invalid(InvalidTokenReason::UnknownKeyId))
    );
    // A signature that does not cover the claims is a bad signature.
    let token = with_kid(Algorithm::ES256, "ec-256", &ec256, &claims);
    let (head, rest) = token.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let forged = format!(
        "{head}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(json!({"sub": "admin"}).to_string())
    );
    assert_eq!(
        v.verify_connect(&forged, NOW),
        Err(invalid(InvalidTokenReason::BadSignature))
    );
    // alg none with a kid is still malformed.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"rsa-1"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    assert_eq!(
        v.verify_connect(&none, NOW),
        Err(invalid(InvalidTokenReason::Malformed))
    );
    // Claim checks still apply to JWKS tokens.
    let expired = with_kid(Algorithm::RS256, "rsa-1", &rsa, &json!({"exp": NOW - 1}));
    assert_eq!(v.verify_connect(&expired, NOW), Err(TokenError::Expired));
    // Tokens without kid use the static keys.
    let plain = hs(Algorithm::HS256, SECRET.as_bytes(), &json!({"sub": "h"}));
    assert_eq!(v.verify_connect(&plain, NOW).unwrap().sub, "h");
    assert!(format!("{v:?}").contains("keys: 5"));
}

#[tokio::test]
async fn unknown_kid_is_invalid_until_a_rate_limited_background_refetch() {
    let server = JwksServer::start(r#"{"keys": []}"#).await;
    // A rate-limit interval far longer than the burst takes even on a loaded machine, so
    // exactly one refetch can follow it.
    let timing = jwks::JwksTiming {
        min_refetch_interval: std::time::Duration::from_secs(2),
        ..fast_timing()
    };
    let v = jwks_verifier(&server.url, timing);
    // The verifier was built inside a runtime: the first fetch happens in the background.
    assert!(eventually(|| server.requests() == 1).await);

    // Ed25519, not RSA: RSA signing is slow in debug builds and this test is timed.
    let ed = EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap();
    let token = with_kid(Algorithm::EdDSA, "ed-1", &ed, &json!({"sub": "rotated"}));
    let junk: Vec<String> = (0..100)
        .map(|i| with_kid(Algorithm::EdDSA, &format!("junk-{i}"), &ed, &json!({})))
        .collect();
    *server.body.lock() = JWKS.to_owned();
    // A burst of misses, real and made up, within one rate-limit interval.
    assert_eq!(
        v.verify_connect(&token, NOW),
        Err(invalid(InvalidTokenReason::UnknownKeyId))
    );
    for junk in &junk {
        assert!(v.verify_connect(junk, NOW).is_err());
    }
    assert!(eventually(|| v.verify_connect(&token, NOW).is_ok()).await);
    assert_eq!(v.verify_connect(&token, NOW).unwrap().sub, "rotated");
    // One refetch served the whole burst, and nothing more happens without misses.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn ensure_key_waits_for_a_rotated_key() {
    let server = JwksServer::start(r#"{"keys": []}"#).await;
    let timing = jwks::JwksTiming {
        min_refetch_interval: std::time::Duration::ZERO,
        ..fast_timing()
    };
    let v = jwks_verifier(&server.url, timing);
    assert_eq!(v.refresh_jwks().await.unwrap(), Some(0));
    *server.body.lock() = JWKS.to_owned();
    let ed = EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap();
    let token = with_kid(Algorithm::EdDSA, "ed-1", &ed, &json!({"sub": "e"}));
    v.ensure_key(&token).await;
    assert_eq!(v.verify_connect(&token, NOW).unwrap().sub, "e");
    // Without JWKS or kid it returns at once.
    verifier(&hmac_config()).ensure_key(&token).await;
    v.ensure_key("not a token").await;
}

#[tokio::test]
async fn jwks_keys_expire_when_the_endpoint_stays_down() {
    let server = JwksServer::start(JWKS).await;
    let timing = jwks::JwksTiming {
        ttl: std::time::Duration::from_millis(400),
        refresh_ahead: std::time::Duration::ZERO,
        ..fast_timing()
    };
    let v = jwks_verifier(&server.url, timing);
    let ed = EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap();
    let token = with_kid(Algorithm::EdDSA, "ed-1", &ed, &json!({}));
    v.refresh_jwks().await.unwrap();
    assert!(v.verify_connect(&token, NOW).is_ok());
    // The endpoint now answers garbage: refreshes fail, and keys lapse with the TTL.
    *server.body.lock() = "<html>oops</html>".to_owned();
    assert!(matches!(
        v.refresh_jwks().await,
        Err(jwks::JwksError::Json(_))
    ));
    assert!(
        eventually(|| {
            v.verify_connect(&token, NOW) == Err(invalid(InvalidTokenReason::UnknownKeyId))
        })
        .await
    );
}

#[tokio::test]
async fn jwks_fetch_failures_are_errors_not_panics() {
    // Nothing listens on the port of a listener that was just dropped.
    let addr = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let v = jwks_verifier(&format!("http://{addr}/jwks"), fast_timing());
    assert!(matches!(
        v.refresh_jwks().await,
        Err(jwks::JwksError::Connect(_))
    ));
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let token = with_kid(Algorithm::RS256, "rsa-1", &rsa, &json!({}));
    assert_eq!(
        v.verify_connect(&token, NOW),
        Err(invalid(InvalidTokenReason::UnknownKeyId))
    );
    assert_eq!(verifier(&hmac_config()).refresh_jwks().await.unwrap(), None);
}

#[test]
fn jwks_endpoint_must_be_http() {
    for bad in [
        "https://keys.example/jwks",
        "keys.example/jwks",
        "http:///x",
        "::",
    ] {
        let cfg = TokenConfig {
            jwks_public_endpoint: bad.to_owned(),
            ..TokenConfig::default()
        };
        assert!(
            matches!(
                TokenVerifier::new(&cfg),
                Err(AuthConfigError::JwksEndpoint(_))
            ),
            "{bad}"
        );
        assert!(
            matches!(
                TokenVerifier::check_config(&cfg),
                Err(AuthConfigError::JwksEndpoint(_))
            ),
            "{bad}"
        );
    }
    // Outside a runtime the verifier builds, and a kid token is refused without panicking.
    let cfg = TokenConfig {
        jwks_public_endpoint: "http://127.0.0.1:9/jwks".to_owned(),
        ..TokenConfig::default()
    };
    let v = TokenVerifier::new(&cfg).unwrap();
    let token = with_header(&json!({"alg": "RS256", "kid": "k"}), &json!({}), b"x");
    assert_eq!(
        v.verify_connect(&token, NOW),
        Err(invalid(InvalidTokenReason::UnknownKeyId))
    );
}

#[tokio::test]
async fn checking_a_config_fetches_nothing() {
    let server = JwksServer::start(JWKS).await;
    let cfg = TokenConfig {
        jwks_public_endpoint: server.url.clone(),
        ..TokenConfig::default()
    };
    TokenVerifier::check_config(&cfg).unwrap();
    // A verifier dropped at once stops its task before the first fetch.
    drop(TokenVerifier::new(&cfg).unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(server.requests(), 0);
    let bad_rsa = TokenConfig {
        rsa_public_key: "nope".to_owned(),
        ..cfg
    };
    assert!(matches!(
        TokenVerifier::check_config(&bad_rsa),
        Err(AuthConfigError::RsaPublicKey(_))
    ));
}
