//! The credential checks shared by every guarded route (`/v1/*`, the maintenance admin
//! route, `/metrics`): one reading of `Authorization: Bearer <token>` and one loopback
//! rule, so that the routes cannot drift apart in what they admit.

use std::net::IpAddr;

use axum::http::header::{HeaderMap, AUTHORIZATION};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// The token of `Authorization: Bearer <token>`, blanks around it removed. The scheme is
/// case-insensitive (RFC 7235 §2.1, RFC 6750 §2.1). `None` when the header is missing or
/// names another scheme; `Some(b"")` for a Bearer header without a token, so that a
/// caller can tell a wrong token from no token at all.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
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
