//! HS256 JWTs as the tests mint them.

use serde::Serialize;
use serde_json::json;

use super::SECRET;

/// An HS256 JWT of `claims` signed with `key`, its header naming `kid` when given.
pub(crate) fn sign(key: &[u8], kid: Option<&str>, claims: impl Serialize) -> String {
    let header = jsonwebtoken::Header {
        kid: kid.map(str::to_owned),
        ..Default::default()
    };
    let key = jsonwebtoken::EncodingKey::from_secret(key);
    jsonwebtoken::encode(&header, &claims, &key).expect("encode a JWT")
}

/// A token of `claims` signed with the tests' [`SECRET`].
pub(crate) fn token(claims: impl Serialize) -> String {
    sign(SECRET.as_bytes(), None, claims)
}

/// A connection token for `user`.
pub(crate) fn user_token(user: &str) -> String {
    token(json!({ "sub": user }))
}
