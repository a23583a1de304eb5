//! The credential checks shared by every guarded route (`/v1/*`, the maintenance admin
//! route, `/metrics`, `/status`): one reading of the `Authorization` header (Bearer and
//! Basic), one loopback rule, and the bcrypt users of `metrics.basic_auth_users`, so that
//! the routes cannot drift apart in what they admit.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::http::header::{HeaderMap, AUTHORIZATION};
use base64::Engine as _;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// The credentials of `Authorization: <scheme> <credentials>`, blanks around them removed.
/// The scheme is case-insensitive (RFC 7235 §2.1). `None` when the header is missing or
/// names another scheme.
fn credentials<'h>(headers: &'h HeaderMap, wanted: &[u8]) -> Option<&'h [u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    scheme
        .eq_ignore_ascii_case(wanted)
        .then(|| rest.trim_ascii())
}

/// The token of `Authorization: Bearer <token>` (RFC 6750 §2.1). `None` when the header is
/// missing or names another scheme; `Some(b"")` for a Bearer header without a token, so
/// that a caller can tell a wrong token from no token at all.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    credentials(headers, b"bearer")
}

/// User and password of `Authorization: Basic <base64(user:password)>` (RFC 7617). `None`
/// when the header is missing or names another scheme; `Some(None)` when it is Basic but
/// does not decode to `user:password` (a wrong credential, not a missing one).
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Option<Option<(String, String)>> {
    let encoded = credentials(headers, b"basic")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .and_then(|d| String::from_utf8(d).ok());
    Some(decoded.and_then(|text| {
        let (user, password) = text.split_once(':')?;
        Some((user.to_string(), password.to_string()))
    }))
}

/// How many verified credentials are remembered; past it the memory starts afresh.
const VERIFIED_MAX: usize = 256;

/// The users of `metrics.basic_auth_users` (name → bcrypt hash), and the credentials
/// verified recently. bcrypt costs ~70 ms by design; a scraper sends the same credentials
/// every 15 s, so a verified (user, password, hash) is remembered by a 128-bit keyed hash
/// (SipHash under two random keys of this process): the password itself is never kept,
/// and a wrong password still pays bcrypt. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct BasicUsers {
    users: Arc<BTreeMap<String, String>>,
    verified: Arc<Mutex<HashMap<u128, ()>>>,
    keys: Arc<(RandomState, RandomState)>,
}

impl std::fmt::Debug for BasicUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicUsers")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl BasicUsers {
    pub(crate) fn new(users: &BTreeMap<String, String>) -> BasicUsers {
        BasicUsers {
            users: Arc::new(users.clone()),
            ..BasicUsers::default()
        }
    }

    /// Whether any user is configured (then a refusal carries a Basic challenge).
    pub(crate) fn is_configured(&self) -> bool {
        !self.users.is_empty()
    }

    fn key(&self, user: &str, password: &str, hash: &str) -> u128 {
        let one = |state: &RandomState| state.hash_one((user, password, hash));
        (u128::from(one(&self.keys.0)) << 64) | u128::from(one(&self.keys.1))
    }

    /// Whether `user:password` was verified recently, so that [`verify`](Self::verify)
    /// costs no bcrypt. False for an unknown user.
    pub(crate) fn is_remembered(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        let key = self.key(user, password, hash);
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&key)
    }

    /// Whether `password` is `user`'s. Pays bcrypt unless remembered: call it off the
    /// async threads when [`is_remembered`](Self::is_remembered) says no.
    pub(crate) fn verify(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            // An unknown user costs as much as a known one, so that timing does not
            // tell which names exist.
            let _ = bcrypt::verify(password, UNKNOWN_USER_HASH);
            return false;
        };
        let key = self.key(user, password, hash);
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.contains_key(&key) {
            return true;
        }
        drop(verified);
        if !bcrypt::verify(password, hash).unwrap_or(false) {
            return false;
        }
        verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= VERIFIED_MAX {
            verified.clear();
        }
        verified.insert(key, ());
        true
    }
}

/// A bcrypt hash (cost 10) that no password given to it is meant to match.
const UNKNOWN_USER_HASH: &str = "$2b$10$c51cTauCps3bTj6e/e5b.uvCvqJex4YyPiCmdNkz1L37mnvc4ra8S";

/// Whether `value` has the shape of a bcrypt hash (`$2a$`, `$2b$`, `$2x$` or `$2y$`, a
/// two-digit cost 4 to 31, 53 characters of bcrypt's base64): what `basic_auth_users`
/// must hold, so that a plain password there is a config error rather than a password
/// nobody can use.
pub(crate) fn is_bcrypt_hash(value: &str) -> bool {
    let b = value.as_bytes();
    b.len() == 60
        && b[0] == b'$'
        && b[1] == b'2'
        && matches!(b[2], b'a' | b'b' | b'x' | b'y')
        && b[3] == b'$'
        && std::str::from_utf8(&b[4..6])
            .ok()
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|c| (4..=31).contains(&c))
        && b[6] == b'$'
        && b[7..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'.' || c == b'/')
}

/// Whether `presented` is `secret`, compared in constant time so that response timing
/// does not reveal how much of a guess was right. An empty secret matches nothing: an
/// unset token must never be satisfied by an empty `Bearer ` header.
pub(crate) fn token_matches(presented: &[u8], secret: &[u8]) -> bool {
    !secret.is_empty() && bool::from(presented.ct_eq(secret))
}

/// The index of the key in `keys` that `presented` is, if any. Every key is compared,
/// each in constant time, and the index is picked without a branch on the outcome: the
/// time taken tells neither which key matched nor how much of a guess was right (only
/// the keys' lengths, which subtle does not hide either). Empty keys match nothing.
pub fn matching_key<K: std::ops::Deref<Target = str>>(
    presented: &[u8],
    keys: &[K],
) -> Option<usize> {
    let mut found = Choice::from(0);
    let mut index = 0u32;
    for (i, key) in keys.iter().enumerate() {
        let key = key.as_bytes();
        let hit = same_bytes(presented, key) & Choice::from(u8::from(!key.is_empty()));
        index.conditional_assign(&u32::try_from(i).unwrap_or(u32::MAX), hit);
        found |= hit;
    }
    bool::from(found).then_some(index as usize)
}

/// Whether `a` and `b` are equal, in time that depends on their lengths only: the bytes'
/// differences are OR-ed together without a branch, and subtle turns the result into a
/// `Choice` behind its optimisation barrier. Subtle's own slice comparison puts that
/// barrier on every byte, which made 100 keys of 40 bytes cost 13 µs per request
/// (benches/cost.rs); folding first keeps the guarantee at a tenth of the cost.
fn same_bytes(a: &[u8], b: &[u8]) -> Choice {
    if a.len() != b.len() {
        // Lengths are not secret (subtle treats them the same way).
        return Choice::from(0);
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    difference.ct_eq(&0)
}

/// Whether the request carries `Authorization: Bearer <secret>`.
pub(crate) fn bearer_matches(headers: &HeaderMap, secret: &str) -> bool {
    bearer_token(headers).is_some_and(|token| token_matches(token, secret.as_bytes()))
}

/// The TCP peer is loopback (127.0.0.0/8, ::1, or ::ffff:127.x). Callers pass the
/// socket's own peer address (or one a trusted proxy vouched for), never a header.
pub(crate) fn is_loopback(peer: IpAddr) -> bool {
    peer.to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn the_scheme_is_accepted_in_any_case() {
        for value in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "bEaReR s3cret",
        ] {
            assert_eq!(bearer_token(&auth(value)), Some(&b"s3cret"[..]), "{value}");
            assert!(bearer_matches(&auth(value), "s3cret"), "{value}");
        }
    }

    #[test]
    fn blanks_around_the_token_are_ignored() {
        for value in ["Bearer   s3cret", "Bearer s3cret  ", "Bearer \t s3cret\t"] {
            assert!(bearer_matches(&auth(value), "s3cret"), "{value:?}");
        }
    }

    #[test]
    fn a_missing_header_or_another_scheme_carries_no_token() {
        assert_eq!(bearer_token(&HeaderMap::new()), None);
        for value in [
            "Basic s3cret",
            "s3cret",
            "Bearer",
            "Bearers s3cret",
            "Bearer\ts3cret",
        ] {
            assert_eq!(bearer_token(&auth(value)), None, "{value:?}");
            assert!(!bearer_matches(&auth(value), "s3cret"), "{value:?}");
        }
    }

    #[test]
    fn an_empty_token_is_present_but_matches_nothing() {
        for value in ["Bearer ", "Bearer    "] {
            assert_eq!(bearer_token(&auth(value)), Some(&b""[..]), "{value:?}");
            assert!(!bearer_matches(&auth(value), "s3cret"), "{value:?}");
            assert!(!bearer_matches(&auth(value), ""), "{value:?}");
        }
        assert!(!token_matches(b"", b""));
    }

    #[test]
    fn a_wrong_token_is_refused() {
        for value in [
            "Bearer s3cre",
            "Bearer s3cret!",
            "Bearer S3CRET",
            "Bearer s3 cret",
        ] {
            assert!(!bearer_matches(&auth(value), "s3cret"), "{value:?}");
        }
    }

    #[test]
    fn bearer_must_match_exactly() {
        assert!(bearer_matches(&auth("Bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(&auth("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(&auth("Bearer s3cret!"), "s3cret"));
        assert!(!bearer_matches(&auth("Basic s3cret"), "s3cret"));
        assert!(!bearer_matches(&HeaderMap::new(), "s3cret"));
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        auth(&format!("Basic {encoded}"))
    }

    #[test]
    fn basic_credentials_are_decoded_and_garbage_is_a_wrong_one() {
        assert_eq!(
            basic_credentials(&basic("alice", "pa:ss word")),
            Some(Some(("alice".into(), "pa:ss word".into())))
        );
        assert_eq!(basic_credentials(&auth("basic !!!")), Some(None));
        assert_eq!(basic_credentials(&auth("Basic bm9jb2xvbg==")), Some(None));
        assert_eq!(basic_credentials(&auth("Bearer x")), None);
        assert_eq!(basic_credentials(&HeaderMap::new()), None);
    }

    #[test]
    fn a_bcrypt_hash_is_recognised_and_a_plain_password_is_not() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        assert!(is_bcrypt_hash(&hash), "{hash}");
        assert!(is_bcrypt_hash(UNKNOWN_USER_HASH));
        for plain in ["s3cret", "", "$2b$10$short", &hash.replace("$2b$", "$3b$")] {
            assert!(!is_bcrypt_hash(plain), "{plain}");
        }
    }

    #[test]
    fn basic_users_verify_the_right_password_and_remember_it() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let users = BasicUsers::new(&BTreeMap::from([("alice".to_string(), hash)]));
        assert!(!users.is_remembered("alice", "s3cret"));
        assert!(!users.verify("alice", "wrong"));
        assert!(!users.verify("bob", "s3cret"));
        assert!(users.verify("alice", "s3cret"));
        assert!(users.is_remembered("alice", "s3cret"));
        assert!(!users.is_remembered("alice", "wrong"));
        assert!(
            !users.verify("alice", "wrong"),
            "a wrong password is never remembered"
        );
        assert!(!format!("{users:?}").contains("$2"));
    }

    #[test]
    fn the_matching_key_is_found_among_many_and_empty_keys_match_nothing() {
        let keys = ["", "alpha", "beta", "gamma"];
        assert_eq!(matching_key(b"beta", &keys), Some(2));
        assert_eq!(matching_key(b"alpha", &keys), Some(1));
        assert_eq!(matching_key(b"gamma", &keys), Some(3));
        assert_eq!(matching_key(b"", &keys), None);
        assert_eq!(matching_key(b"bet", &keys), None);
        assert_eq!(matching_key(b"betaa", &keys), None);
        assert_eq!(matching_key::<&str>(b"beta", &[]), None);
        let long: Vec<String> = (0..100).map(|i| format!("sk-{i:038}")).collect();
        let keys: Vec<&str> = long.iter().map(String::as_str).collect();
        assert_eq!(matching_key(long[99].as_bytes(), &keys), Some(99));
        assert_eq!(matching_key(long[0].as_bytes(), &keys), Some(0));
        let mut near = long[57].clone().into_bytes();
        near[20] ^= 1;
        assert_eq!(matching_key(&near, &keys), None);
    }

    #[test]
    fn loopback_includes_mapped_v4_and_excludes_others() {
        assert!(is_loopback("127.0.0.1".parse().unwrap()));
        assert!(is_loopback("127.8.9.10".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1".parse().unwrap()));
        assert!(!is_loopback("::ffff:10.0.0.1".parse().unwrap()));
    }
}
