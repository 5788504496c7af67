//! iSCSI text data: `key=value\0` pairs (RFC 7143 §6) and value encodings.
//!
//! Everything is bounded so a hostile peer cannot make us allocate without
//! limit, and every failure is a [`TextError`]; nothing here panics on input.

use nom::bytes::complete::{tag, take_till, take_while1};
use nom::IResult;

/// Longest key name we accept (RFC 7143 §6.1: at most 63 bytes).
pub const MAX_KEY_LEN: usize = 63;
/// Longest value for ordinary keys (RFC 7143 §6.1: 255 bytes).
pub const MAX_VALUE_LEN: usize = 255;
/// Longest value for keys carrying large binary data (CHAP_C, CHAP_R).
pub const MAX_LONG_VALUE_LEN: usize = 8192;
/// Most text we accumulate per login phase or text exchange across C-bit PDUs.
pub const MAX_TEXT_LEN: usize = 64 * 1024;
/// Most pairs in one text; bounds work on pathological `a=\0` floods.
pub const MAX_PAIRS: usize = 1024;

/// Why a text segment or a value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("text exceeds {MAX_TEXT_LEN} bytes")]
    TooLarge,
    #[error("more than {MAX_PAIRS} key=value pairs")]
    TooManyPairs,
    #[error("key is empty or contains a character outside [A-Za-z0-9.-+@_#]")]
    BadKey,
    #[error("key longer than {MAX_KEY_LEN} bytes")]
    KeyTooLong,
    #[error("pair without '='")]
    MissingEquals,
    #[error("last pair not terminated by NUL")]
    Unterminated,
    #[error("value of {0} too long")]
    ValueTooLong(String),
    #[error("value of {0} is not UTF-8")]
    ValueNotUtf8(String),
    #[error("key {0} appears more than once")]
    DuplicateKey(String),
    #[error("invalid numeric value")]
    BadNumber,
    #[error("invalid hex value")]
    BadHex,
    #[error("invalid base64 value")]
    BadBase64,
    #[error("invalid boolean value")]
    BadBoolean,
}

/// Keys allowed a value longer than [`MAX_VALUE_LEN`].
fn long_value_key(key: &str) -> bool {
    matches!(key, "CHAP_C" | "CHAP_R")
}

fn is_key_char(b: u8) -> bool {
    // '#' only appears in public extension keys (X#name, RFC 7143 §13.5.2).
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'@' | b'_' | b'#')
}

/// One `key=value` pair up to and including its NUL (structure only).
fn raw_pair(input: &[u8]) -> IResult<&[u8], (&[u8], &[u8])> {
    let (input, key) = take_while1(is_key_char)(input)?;
    let (input, _) = tag("=")(input)?;
    let (input, value) = take_till(|b| b == 0)(input)?;
    let (input, _) = tag("\0")(input)?;
    Ok((input, (key, value)))
}

/// An ordered list of key=value pairs with unique keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextPairs {
    pairs: Vec<(String, String)>,
}

impl TextPairs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parse a complete text (all C-bit PDUs already concatenated).
    pub fn parse(data: &[u8]) -> Result<Self, TextError> {
        if data.len() > MAX_TEXT_LEN {
            return Err(TextError::TooLarge);
        }
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            // Stray NULs (e.g. padding some initiators leave) carry no pair.
            if rest[0] == 0 {
                rest = &rest[1..];
                continue;
            }
            if pairs.len() >= MAX_PAIRS {
                return Err(TextError::TooManyPairs);
            }
            let (next, (k, v)) = match raw_pair(rest) {
                Ok(ok) => ok,
                Err(_) => return Err(classify_failure(rest)),
            };
            if k.len() > MAX_KEY_LEN {
                return Err(TextError::KeyTooLong);
            }
            // is_key_char admits only ASCII, so this cannot fail; map anyway.
            let key = std::str::from_utf8(k).map_err(|_| TextError::BadKey)?;
            let limit = if long_value_key(key) {
                MAX_LONG_VALUE_LEN
            } else {
                MAX_VALUE_LEN
            };
            if v.len() > limit {
                return Err(TextError::ValueTooLong(key.to_string()));
            }
            let value =
                std::str::from_utf8(v).map_err(|_| TextError::ValueNotUtf8(key.to_string()))?;
            if pairs.iter().any(|(k2, _)| k2 == key) {
                return Err(TextError::DuplicateKey(key.to_string()));
            }
            pairs.push((key.to_string(), value.to_string()));
            rest = next;
        }
        Ok(Self { pairs })
    }

    /// Append a pair; a repeated key is refused so we never emit duplicates.
    pub fn push(&mut self, key: &str, value: impl Into<String>) -> Result<(), TextError> {
        if key.is_empty() || !key.bytes().all(is_key_char) {
            return Err(TextError::BadKey);
        }
        if key.len() > MAX_KEY_LEN {
            return Err(TextError::KeyTooLong);
        }
        if self.get(key).is_some() {
            return Err(TextError::DuplicateKey(key.to_string()));
        }
        let value = value.into();
        let limit = if long_value_key(key) {
            MAX_LONG_VALUE_LEN
        } else {
            MAX_VALUE_LEN
        };
        if value.len() > limit {
            return Err(TextError::ValueTooLong(key.to_string()));
        }
        if value.as_bytes().contains(&0) {
            return Err(TextError::ValueNotUtf8(key.to_string()));
        }
        self.pairs.push((key.to_string(), value));
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Wire form: every pair, the last included, ends with a NUL.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        for (k, v) in &self.pairs {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out
    }

    pub fn encoded_len(&self) -> usize {
        self.pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum()
    }
}

/// Give a precise error for the pair at the head of `rest`.
fn classify_failure(rest: &[u8]) -> TextError {
    let end = rest.iter().position(|&b| b == 0);
    let pair = &rest[..end.unwrap_or(rest.len())];
    match pair.iter().position(|&b| b == b'=') {
        None if end.is_none() => TextError::Unterminated,
        None => TextError::MissingEquals,
        Some(0) => TextError::BadKey,
        Some(eq) if eq > MAX_KEY_LEN && pair[..eq].iter().all(|&b| is_key_char(b)) => {
            TextError::KeyTooLong
        }
        Some(eq) if !pair[..eq].iter().all(|&b| is_key_char(b)) => TextError::BadKey,
        Some(_) => TextError::Unterminated,
    }
}

/// Split a list value (`CRC32C,None`); empty items are dropped.
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').filter(|s| !s.is_empty())
}

/// Parse `Yes`/`No`.
pub fn parse_bool(value: &str) -> Result<bool, TextError> {
    match value {
        "Yes" => Ok(true),
        "No" => Ok(false),
        _ => Err(TextError::BadBoolean),
    }
}

pub fn encode_bool(v: bool) -> &'static str {
    if v {
        "Yes"
    } else {
        "No"
    }
}

/// Parse a numeric value: decimal, `0x` hex or `0b` base64 (big-endian).
pub fn parse_number(value: &str) -> Result<u64, TextError> {
    if let Some(h) = strip_prefix_ci(value, "0x") {
        if h.is_empty() || h.len() > 16 {
            return Err(TextError::BadNumber);
        }
        return u64::from_str_radix(h, 16).map_err(|_| TextError::BadNumber);
    }
    if strip_prefix_ci(value, "0b").is_some() {
        let bytes = parse_binary(value).map_err(|_| TextError::BadNumber)?;
        if bytes.len() > 8 {
            return Err(TextError::BadNumber);
        }
        return Ok(bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)));
    }
    // Leading '+' or '-' are not numbers on the wire; from_str would take '+'.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TextError::BadNumber);
    }
    value.parse::<u64>().map_err(|_| TextError::BadNumber)
}

fn strip_prefix_ci<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    // get() rather than slicing: the prefix length may split a UTF-8 char.
    let head = value.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        value.get(prefix.len()..)
    } else {
        None
    }
}

/// Parse a binary value in `0x` hex or `0b` base64 form.
pub fn parse_binary(value: &str) -> Result<Vec<u8>, TextError> {
    if let Some(h) = strip_prefix_ci(value, "0x") {
        if h.is_empty() {
            return Err(TextError::BadHex);
        }
        // An odd digit count means an implied leading zero nibble.
        if h.len() % 2 == 1 {
            let mut padded = String::with_capacity(h.len() + 1);
            padded.push('0');
            padded.push_str(h);
            return hex::decode(padded).map_err(|_| TextError::BadHex);
        }
        return hex::decode(h).map_err(|_| TextError::BadHex);
    }
    if let Some(b) = strip_prefix_ci(value, "0b") {
        return base64_decode(b);
    }
    Err(TextError::BadHex)
}

/// `0x`-prefixed lowercase hex.
pub fn encode_hex(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

/// `0b`-prefixed base64 with padding.
pub fn encode_base64(bytes: &[u8]) -> String {
    let mut out = String::from("0b");
    out.push_str(&base64_encode(bytes));
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_value(c: u8) -> Option<u32> {
    B64.iter().position(|&x| x == c).map(|p| p as u32)
}

fn base64_decode(s: &str) -> Result<Vec<u8>, TextError> {
    let body = s.trim_end_matches('=');
    if body.is_empty() || s.len() - body.len() > 2 || body.len() % 4 == 1 {
        return Err(TextError::BadBase64);
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for c in body.bytes() {
        acc = (acc << 6) | base64_value(c).ok_or(TextError::BadBase64)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let mut t = TextPairs::new();
        t.push("InitiatorName", "iqn.2024-01.com.example:host")
            .unwrap();
        t.push("HeaderDigest", "CRC32C,None").unwrap();
        t.push("MaxBurstLength", "262144").unwrap();
        let wire = t.encode();
        assert_eq!(wire.last(), Some(&0));
        assert_eq!(wire.len(), t.encoded_len());
        let back = TextPairs::parse(&wire).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.get("HeaderDigest"), Some("CRC32C,None"));
        let items: Vec<_> = split_list(back.get("HeaderDigest").unwrap()).collect();
        assert_eq!(items, ["CRC32C", "None"]);
    }

    #[test]
    fn parse_errors() {
        assert_eq!(TextPairs::parse(b"").unwrap().len(), 0);
        assert_eq!(TextPairs::parse(b"A=1"), Err(TextError::Unterminated));
        assert_eq!(TextPairs::parse(b"A1\0"), Err(TextError::MissingEquals));
        assert_eq!(TextPairs::parse(b"=1\0"), Err(TextError::BadKey));
        assert_eq!(TextPairs::parse(b"A b=1\0"), Err(TextError::BadKey));
        assert_eq!(TextPairs::parse("Ä=1\0".as_bytes()), Err(TextError::BadKey));
        assert_eq!(
            TextPairs::parse(b"A=1\0A=2\0"),
            Err(TextError::DuplicateKey("A".into()))
        );
        let long_key = format!("{}=1\0", "K".repeat(64));
        assert_eq!(
            TextPairs::parse(long_key.as_bytes()),
            Err(TextError::KeyTooLong)
        );
        let ok_key = format!("{}=1\0", "K".repeat(63));
        assert!(TextPairs::parse(ok_key.as_bytes()).is_ok());
        let long_val = format!("A={}\0", "v".repeat(256));
        assert_eq!(
            TextPairs::parse(long_val.as_bytes()),
            Err(TextError::ValueTooLong("A".into()))
        );
        let chap = format!("CHAP_C=0x{}\0", "ab".repeat(2048));
        assert!(TextPairs::parse(chap.as_bytes()).is_ok());
        assert_eq!(
            TextPairs::parse(&[b'A', b'=', 0xff, 0]),
            Err(TextError::ValueNotUtf8("A".into()))
        );
        assert_eq!(
            TextPairs::parse(&vec![b'a'; MAX_TEXT_LEN + 1]),
            Err(TextError::TooLarge)
        );
        // Stray NUL padding is tolerated.
        assert_eq!(TextPairs::parse(b"A=1\0\0\0").unwrap().len(), 1);
        // Empty values are legal (they mean an empty string).
        assert_eq!(TextPairs::parse(b"A=\0").unwrap().get("A"), Some(""));
        assert!(TextPairs::parse(b"X#NodeArchitecture=x\0").is_ok());
    }

    #[test]
    fn push_refuses_duplicates_and_bad_keys() {
        let mut t = TextPairs::new();
        t.push("A", "1").unwrap();
        assert!(t.push("A", "2").is_err());
        assert!(t.push("", "2").is_err());
        assert!(t.push("A=B", "2").is_err());
        assert!(t.push("B", "x\0y").is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("8192"), Ok(8192));
        assert_eq!(parse_number("0x2000"), Ok(8192));
        assert_eq!(parse_number("0X2000"), Ok(8192));
        assert_eq!(parse_number("0bIAA="), Ok(8192));
        assert_eq!(parse_number("+1"), Err(TextError::BadNumber));
        assert_eq!(parse_number("-1"), Err(TextError::BadNumber));
        assert_eq!(parse_number(""), Err(TextError::BadNumber));
        assert_eq!(parse_number("0x"), Err(TextError::BadNumber));
        assert_eq!(
            parse_number("99999999999999999999"),
            Err(TextError::BadNumber)
        );
        assert_eq!(parse_bool("Yes"), Ok(true));
        assert_eq!(parse_bool("No"), Ok(false));
        assert_eq!(parse_bool("yes"), Err(TextError::BadBoolean));
        // Multi-byte UTF-8 where a "0x" prefix would be: must not panic.
        assert_eq!(parse_number("\u{800}"), Err(TextError::BadNumber));
        assert_eq!(parse_binary("\u{800}"), Err(TextError::BadHex));
    }

    #[test]
    fn binary_encodings() {
        let data = [0u8, 1, 2, 0xfe, 0xff];
        assert_eq!(encode_hex(&data), "0x000102feff");
        assert_eq!(parse_binary("0x000102feff").unwrap(), data);
        assert_eq!(parse_binary("0xabc").unwrap(), [0x0a, 0xbc]);
        for len in 0..20 {
            let v: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
            if !v.is_empty() {
                assert_eq!(parse_binary(&encode_base64(&v)).unwrap(), v);
                assert_eq!(parse_binary(&encode_hex(&v)).unwrap(), v);
            }
        }
        // Known vector: "foobar".
        assert_eq!(encode_base64(b"foobar"), "0bZm9vYmFy");
        assert_eq!(encode_base64(b"fo"), "0bZm8=");
        assert_eq!(parse_binary("0bZm8").unwrap(), b"fo");
        assert_eq!(parse_binary("0b"), Err(TextError::BadBase64));
        assert_eq!(parse_binary("0b!!!!"), Err(TextError::BadBase64));
        assert_eq!(parse_binary("0xzz"), Err(TextError::BadHex));
        assert_eq!(parse_binary("1234"), Err(TextError::BadHex));
    }

    proptest! {
        #[test]
        fn parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = TextPairs::parse(&data);
        }

        #[test]
        fn values_never_panic(s in ".{0,64}") {
            let _ = parse_number(&s);
            let _ = parse_binary(&s);
            let _ = parse_bool(&s);
        }

        #[test]
        fn pairs_round_trip(
            pairs in proptest::collection::btree_map("[A-Za-z][A-Za-z0-9._]{0,20}", "[ -~]{0,40}", 0..10)
        ) {
            let mut t = TextPairs::new();
            for (k, v) in &pairs {
                t.push(k, v.clone()).unwrap();
            }
            prop_assert_eq!(TextPairs::parse(&t.encode()).unwrap(), t);
        }
    }
}
