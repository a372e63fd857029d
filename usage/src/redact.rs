//! Redaction of tool arguments before they are audited. It errs on the side of
//! hiding: an audit line with a needless `[REDACTED]` costs little, a leaked key a lot.

use serde_json::{Map, Value};

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// serde_json's own parse limit: arguments that came off the wire are never deeper.
/// Anything deeper is hidden whole rather than risk the stack.
const MAX_DEPTH: usize = 128;

/// Fragments of argument names that hold credentials, compared against the name
/// lowercased with `_` and `-` removed (so `apiKey`, `api_key` and `X-Api-Key` all
/// match `apikey`).
const SECRET_NAME_FRAGMENTS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "authorization",
    "credential",
    "privatekey",
    "cookie",
    "session",
];

/// Prefixes of well-known API key formats, each followed by the key proper.
const KEY_PREFIXES: &[&str] = &[
    "sk-",
    "sk_live_",
    "sk_test_",
    "rk_live_",
    "rk_test_",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "stoa_",
];

/// Shortest random token taken for a credential without a telling prefix.
const MIN_ANONYMOUS_TOKEN_LEN: usize = 32;

/// Redacts arguments for audit: the top-level arguments named in
/// `secret_arguments`, values under credential-like names anywhere in the tree, and
/// string values that look like credentials (`Bearer …`/`Basic …`, JWTs, well-known
/// API key formats, AWS access key ids, PEM blocks, URLs with a password,
/// `password=…` pairs, and long random tokens mixing letters and digits). Each is
/// replaced with [`REDACTED`]. Returns the redacted copy; never panics.
pub fn redact_arguments(arguments: &Value, secret_arguments: &[String]) -> Value {
    match arguments {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(name, value)| {
                    let redacted = if secret_arguments.iter().any(|secret| secret == name) {
                        redacted()
                    } else {
                        redact_named(name, value, 1)
                    };
                    (name.clone(), redacted)
                })
                .collect(),
        ),
        other => redact_value(other, 0),
    }
}

fn redacted() -> Value {
    Value::String(REDACTED.to_owned())
}

fn redact_named(name: &str, value: &Value, depth: usize) -> Value {
    // A flag or an absent value under a secret-sounding name (`use_session: true`)
    // holds no secret and says something useful.
    if is_secret_name(name) && !matches!(value, Value::Null | Value::Bool(_)) {
        redacted()
    } else {
        redact_value(value, depth)
    }
}

fn redact_value(value: &Value, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return redacted();
    }
    match value {
        Value::String(text) if looks_like_credential(text) => redacted(),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| redact_value(item, depth + 1))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(name, value)| (name.clone(), redact_named(name, value, depth + 1)))
                .collect::<Map<_, _>>(),
        ),
        scalar => scalar.clone(),
    }
}

fn is_secret_name(name: &str) -> bool {
    let folded: String = name
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    SECRET_NAME_FRAGMENTS
        .iter()
        .any(|fragment| folded.contains(fragment))
}

fn looks_like_credential(text: &str) -> bool {
    text.contains("-----BEGIN ")
        || has_auth_scheme_credential(text)
        || has_url_password(text)
        || has_secret_assignment(text)
        || text
            .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
            .any(is_credential_token)
}

/// One run of `[A-Za-z0-9_.-]`.
fn is_credential_token(token: &str) -> bool {
    is_jwt(token)
        || has_key_prefix(token)
        || is_slack_token(token)
        || is_aws_access_key_id(token)
        || token.split('.').any(is_anonymous_random_token)
}

/// `eyJ…` is base64url of `{"`: a JWT's header, then payload and signature.
fn is_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    header.starts_with("eyJ")
        && !payload.is_empty()
        && [header, payload, signature]
            .iter()
            .all(|part| part.bytes().all(is_base64url_byte))
}

fn has_key_prefix(token: &str) -> bool {
    KEY_PREFIXES.iter().any(|prefix| {
        token
            .strip_prefix(prefix)
            .is_some_and(|key| key.len() >= 10 && key.bytes().all(is_base64url_byte))
    })
}

/// `xoxb-…`, `xoxp-…` and the other Slack token kinds.
fn is_slack_token(token: &str) -> bool {
    let bytes = token.as_bytes();
    bytes.len() >= 15
        && bytes.starts_with(b"xox")
        && bytes[3].is_ascii_alphabetic()
        && bytes[4] == b'-'
}

/// `AKIA` (long-term) or `ASIA` (temporary) and 16 uppercase letters or digits.
fn is_aws_access_key_id(token: &str) -> bool {
    token.len() == 20
        && (token.starts_with("AKIA") || token.starts_with("ASIA"))
        && token[4..]
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// A long run of `[A-Za-z0-9_-]` with letters and digits mixed inside its words, as
/// random keys are. Identifiers (`customer_account_2024_report`, `v2`) mix them only
/// in short words, and UUIDs name things rather than unlock them.
fn is_anonymous_random_token(token: &str) -> bool {
    token.len() >= MIN_ANONYMOUS_TOKEN_LEN
        && token.bytes().all(is_base64url_byte)
        && !is_uuid(token)
        && token
            .split(['_', '-'])
            .any(|word| word.len() > 4 && mixes_letters_and_digits(word))
}

fn mixes_letters_and_digits(word: &str) -> bool {
    word.bytes().any(|b| b.is_ascii_alphabetic()) && word.bytes().any(|b| b.is_ascii_digit())
}

fn is_uuid(token: &str) -> bool {
    let lengths: Vec<usize> = token.split('-').map(str::len).collect();
    lengths == [8, 4, 4, 4, 12] && token.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())
}

fn is_base64url_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-'
}

/// `Bearer <token>` or `Basic <base64 of user:password>` anywhere in the text.
fn has_auth_scheme_credential(text: &str) -> bool {
    // ASCII lowercasing keeps byte offsets, so offsets in `lower` index `text`.
    let lower = text.to_ascii_lowercase();
    ["bearer", "basic"].iter().any(|scheme| {
        lower.match_indices(scheme).any(|(offset, _)| {
            let starts_word = lower[..offset]
                .chars()
                .next_back()
                .is_none_or(|before| !before.is_alphanumeric());
            let after_scheme = &text[offset + scheme.len()..];
            let credential = after_scheme.trim_start_matches(' ');
            if !starts_word || credential.len() == after_scheme.len() {
                return false;
            }
            let credential = credential
                .split(|c: char| !is_token68_char(c))
                .next()
                .unwrap_or("");
            if *scheme == "bearer" {
                is_bearer_token(credential)
            } else {
                is_basic_credential(credential)
            }
        })
    })
}

/// RFC 6750's token68 alphabet.
fn is_token68_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '+' | '/' | '=')
}

/// Anything but a plain word: `Bearer tokens expire` is prose, `Bearer abc123` is not.
fn is_bearer_token(credential: &str) -> bool {
    let mut chars = credential.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let is_word = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_lowercase())
        && credential.len() < 20;
    !is_word
}

/// Basic credentials are base64 of `user:password`; prose (`Basic usage`) doesn't
/// decode to that.
fn is_basic_credential(credential: &str) -> bool {
    let Some(decoded) = decode_base64(credential.trim_end_matches('=')) else {
        return false;
    };
    decoded.len() >= 2 && decoded.contains(&b':')
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut decoded = Vec::with_capacity(text.len() * 3 / 4);
    let mut bits: u32 = 0;
    let mut bit_count = 0;
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        bit_count += 6;
        if bit_count >= 8 {
            bit_count -= 8;
            decoded.push((bits >> bit_count) as u8);
            bits &= (1 << bit_count) - 1;
        }
    }
    Some(decoded)
}

/// `scheme://user:password@host`.
fn has_url_password(text: &str) -> bool {
    text.match_indices("://").any(|(offset, _)| {
        let authority = text[offset + 3..]
            .split(['/', '?', '#', ' ', '"', '\''])
            .next()
            .unwrap_or("");
        authority
            .rsplit_once('@')
            .is_some_and(|(user_info, _)| user_info.contains(':'))
    })
}

/// `password=…`, `api_key=…` and the like inside a string (query strings, connection
/// strings, command lines).
fn has_secret_assignment(text: &str) -> bool {
    text.match_indices('=').any(|(offset, _)| {
        let name = text[..offset]
            .trim_end()
            .rsplit(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
            .next()
            .unwrap_or("");
        let value = text[offset + 1..].trim_start();
        !name.is_empty()
            && is_secret_name(name)
            && value
                .chars()
                .next()
                .is_some_and(|c| !c.is_whitespace() && c != '&' && c != ';')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_fold_case_and_separators() {
        for name in [
            "password",
            "DB_PASSWORD",
            "apiKey",
            "X-Api-Key",
            "privateKey",
            "refresh_token",
            "Authorization",
            "set-cookie",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in ["query", "user", "path", "limit", "keyword"] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn credential_shaped_strings() {
        for text in [
            "Bearer abc123",
            "authorization: bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
            "Basic dXNlcjpwYXNz",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
            "sk-proj-abcdef0123456789",
            "sk_live_51Habcdefghijklmnop",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "xoxb-1234567890-abcdefghij",
            "AKIAIOSFODNN7EXAMPLE",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1r\n-----END OPENSSH PRIVATE KEY-----",
            "stoa_0123456789abcdef0123456789abcdef",
            "postgres://app:hunter2@db:5432/orders",
            "host=db user=app password=hunter2",
            "https://api.example.com/v1?api_key=abc",
            "k9Jf2LmQ8xR4vT7nW1pZ5sY3hB6cD0eGa",
        ] {
            assert!(looks_like_credential(text), "{text}");
        }
    }

    #[test]
    fn harmless_strings() {
        for text in [
            "",
            "hello world",
            "Bearer tokens expire after an hour",
            "Basic usage of the API",
            "customer_account_2024_quarterly_report",
            "get_user_profile_information_v2_extended",
            "550e8400-e29b-41d4-a716-446655440000",
            "https://example.com/a/b?page=2",
            "user@example.com",
            "sk-learn",
            "the password field is required",
            "/var/lib/stoa/usage/usage.jsonl",
            "Mützenstraße 12, 10115 Berlin",
        ] {
            assert!(!looks_like_credential(text), "{text}");
        }
    }

    #[test]
    fn base64_decoding() {
        assert_eq!(decode_base64("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(decode_base64("YQ").unwrap(), b"a");
        assert_eq!(decode_base64("a b"), None);
    }
}
