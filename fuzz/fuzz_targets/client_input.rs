//! What a client puts in front of a node's checks before anything is proposed: bearer tokens
//! (`auth::verify_token`, and the claims inside one whose signature holds), `If-Match` and
//! `If-None-Match` values, keys, user and role names, and registered client addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorumkv_wire::auth;
use quorumkv_wire::auth::TokenClaims;
use quorumkv_wire::limits::MAX_KEY_BYTES_CEILING;
use quorumkv_wire::types;
use quorumkv_wire::types::Precondition;

/// Any fixed key: no input can know it, so a forged token must never verify.
const SIGNING_KEY: &[u8; 32] = b"quorumkv-fuzz-signing-key-32byte";

fuzz_target!(|bytes: &[u8]| {
    // The claims of a token whose signature holds: JSON from a node, but checked all the same.
    if let Ok(claims) = serde_json::from_slice::<TokenClaims>(bytes) {
        let token = auth::issue_token(SIGNING_KEY, &claims);
        let expiry = claims.expires_at_unix_ms;
        if expiry > 0 {
            let verified = auth::verify_token(SIGNING_KEY, &token, expiry - 1).expect("a token this key signed verifies");
            assert_eq!(verified.user, claims.user);
        }
        assert!(auth::verify_token(SIGNING_KEY, &token, expiry).is_err(), "an expired token verified");
        assert_eq!(auth::unverified_applied_index(&token), Some(claims.applied_index));
    }
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    // Anything else as a token: never verifies, never panics.
    assert!(auth::verify_token(SIGNING_KEY, text, 0).is_err(), "a forged token verified: {text:?}");
    let _ = (auth::is_token(text), auth::unverified_applied_index(text));
    // Header values: one, the other, both.
    let (first, second) = text.split_once('\n').unwrap_or((text, ""));
    for (if_match, if_none_match) in [(Some(first), None), (None, Some(first)), (Some(first), Some(second))] {
        if let Ok(Precondition::ModRevision(revision)) = Precondition::from_headers(if_match, if_none_match) {
            assert!(first.contains(&revision.to_string()));
        }
    }
    let _ = types::check_key(text, MAX_KEY_BYTES_CEILING);
    let _ = auth::check_name("user", text);
    let _ = types::valid_client_addr(text);
});
