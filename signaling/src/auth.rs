//! Access tokens: HS256 JWTs naming the room, the identity and the grants.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::names::{check_identity, check_room, NameError};

/// What a token allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Grants {
    /// May publish audio/video.
    pub publish: bool,
    /// May receive the room's media.
    pub subscribe: bool,
    /// May send chat and data.
    pub publish_data: bool,
    /// May start and stop recordings.
    pub record: bool,
    /// May administer the room.
    pub admin: bool,
}

impl Grants {
    /// Every grant but admin: what a normal meeting participant gets.
    pub fn participant() -> Self {
        Self { publish: true, subscribe: true, publish_data: true, record: false, admin: false }
    }

    /// Parses grant names (`publish`, `subscribe`, `publish_data`, `record`, `admin`).
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, AuthError> {
        let mut grants = Self::default();
        for name in names {
            match name {
                "publish" => grants.publish = true,
                "subscribe" => grants.subscribe = true,
                "publish_data" => grants.publish_data = true,
                "record" => grants.record = true,
                "admin" => grants.admin = true,
                other => return Err(AuthError::UnknownGrant(other.to_owned())),
            }
        }
        Ok(grants)
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The participant's identity (user id).
    pub sub: String,
    /// A display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The room (meeting id) the token admits to.
    pub room: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// What the holder may do.
    pub grants: Grants,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The token has expired.
    #[error("access token expired")]
    Expired,
    /// The token is malformed, forged, or signed with an unknown key.
    #[error("invalid access token: {0}")]
    Invalid(String),
    /// A grant name is not known.
    #[error("unknown grant `{0}`")]
    UnknownGrant(String),
    /// The signing key named in the configuration is missing.
    #[error("no signing key `{0}`")]
    NoSigningKey(String),
    /// The room, identity or display name is not one the server accepts.
    #[error(transparent)]
    BadName(#[from] NameError),
}

/// Issues and verifies tokens with the configured keys.
#[derive(Clone)]
pub struct TokenAuthority {
    keys: BTreeMap<String, String>,
    signing_key: String,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Claims {
    /// Checks the room, identity and display name ([`crate::names`]).
    fn check_names(&self) -> Result<(), NameError> {
        check_room(&self.room)?;
        check_identity("identity", &self.sub)?;
        self.name.as_deref().map_or(Ok(()), |name| check_identity("display name", name))
    }
}

impl TokenAuthority {
    /// An authority knowing `keys` (key id → secret) that signs with `signing_key`.
    pub fn new(keys: BTreeMap<String, String>, signing_key: String) -> Self {
        Self { keys, signing_key }
    }

    /// Signs a token for `identity` in `room`, valid for `ttl_secs`.
    pub fn issue(&self, room: &str, identity: &str, name: Option<&str>, grants: Grants, ttl_secs: u64) -> Result<String, AuthError> {
        let secret = self.keys.get(&self.signing_key).ok_or_else(|| AuthError::NoSigningKey(self.signing_key.clone()))?;
        let iat = unix_now();
        let claims =
            Claims { sub: identity.to_owned(), name: name.map(str::to_owned), room: room.to_owned(), iat, exp: iat + ttl_secs, grants };
        claims.check_names()?;
        let header = Header { kid: Some(self.signing_key.clone()), ..Header::new(Algorithm::HS256) };
        encode(&header, &claims, &EncodingKey::from_secret(secret.as_bytes())).map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// Checks signature, key id, expiry and names; returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let kid = header.kid.ok_or_else(|| AuthError::Invalid("token has no key id (kid)".into()))?;
        let secret = self.keys.get(&kid).ok_or_else(|| AuthError::Invalid(format!("unknown key id `{kid}`")))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let claims = decode::<Claims>(token, &DecodingKey::from_secret(secret.as_bytes()), &validation).map(|data| data.claims).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            },
        )?;
        claims.check_names()?;
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(secret: &str) -> TokenAuthority {
        TokenAuthority::new(BTreeMap::from([("k1".to_owned(), secret.to_owned())]), "k1".to_owned())
    }

    #[test]
    fn issued_token_verifies_with_its_claims() {
        let auth = authority("a-long-enough-secret");
        let token = auth.issue("room1", "alice", Some("Alice"), Grants::participant(), 60).unwrap();
        let claims = auth.verify(&token).unwrap();
        assert_eq!((claims.room.as_str(), claims.sub.as_str()), ("room1", "alice"));
        assert_eq!(claims.grants, Grants::participant());
    }

    #[test]
    fn forged_expired_and_garbage_tokens_are_refused() {
        let token = authority("secret-number-one!").issue("r", "a", None, Grants::default(), 60).unwrap();
        assert!(matches!(authority("secret-number-two!").verify(&token), Err(AuthError::Invalid(_))));
        assert!(matches!(authority("x-secret-x-secret").verify("not.a.jwt"), Err(AuthError::Invalid(_))));
        let auth = authority("a-long-enough-secret");
        let secret = "a-long-enough-secret";
        let claims = Claims { sub: "a".into(), name: None, room: "r".into(), iat: 1, exp: 2, grants: Grants::default() };
        let header = Header { kid: Some("k1".into()), ..Header::new(Algorithm::HS256) };
        let expired = encode(&header, &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap();
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));
    }

    #[test]
    fn tokens_with_names_the_server_does_not_accept_are_neither_issued_nor_verified() {
        let auth = authority("a-long-enough-secret");
        assert_eq!(auth.issue("a/b", "alice", None, Grants::default(), 60), Err(AuthError::BadName(NameError::Room)));
        assert_eq!(auth.issue("r", "eve\nforged", None, Grants::default(), 60), Err(AuthError::BadName(NameError::Identity("identity"))));
        // Signed elsewhere with the right key: the names are checked on the way in as well.
        let forged =
            Claims { sub: "eve\u{1b}[2J".into(), name: None, room: "r".into(), iat: 1, exp: unix_now() + 60, grants: Grants::default() };
        let header = Header { kid: Some("k1".into()), ..Header::new(Algorithm::HS256) };
        let token = encode(&header, &forged, &EncodingKey::from_secret(b"a-long-enough-secret")).unwrap();
        assert_eq!(auth.verify(&token), Err(AuthError::BadName(NameError::Identity("identity"))));
        let named = Claims { sub: "ann".into(), name: Some("Ann\r\n".into()), ..forged };
        let token = encode(&header, &named, &EncodingKey::from_secret(b"a-long-enough-secret")).unwrap();
        assert_eq!(auth.verify(&token), Err(AuthError::BadName(NameError::Identity("display name"))));
    }

    #[test]
    fn grant_names_parse() {
        assert_eq!(Grants::from_names(["subscribe"]).unwrap(), Grants { subscribe: true, ..Default::default() });
        assert_eq!(Grants::from_names(["fly"]), Err(AuthError::UnknownGrant("fly".into())));
    }
}
