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
