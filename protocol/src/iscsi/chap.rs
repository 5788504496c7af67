//! CHAP with MD5 as used by iSCSI (RFC 1994, RFC 7143 §12.1.3).
//!
//! [`ChapAuthenticator`] is the target side (it challenges and verifies, and
//! answers a mutual challenge); [`ChapResponder`] is the initiator side.
//! Randomness comes from an injected [`RngCore`] so tests are deterministic.

use md5::{Digest, Md5};
use rand::RngCore;

use super::text::{encode_hex, parse_binary, parse_number, split_list, TextPairs};

/// CHAP_A value for MD5, the only algorithm we implement.
pub const CHAP_MD5: u64 = 5;
/// Bytes of challenge we generate.
pub const CHALLENGE_LEN: usize = 16;
/// Shortest peer challenge accepted (shorter weakens the exchange).
pub const MIN_CHALLENGE_LEN: usize = 16;
/// Longest challenge accepted (RFC 7143 caps binary CHAP values at 1024 bytes).
pub const MAX_CHALLENGE_LEN: usize = 1024;
/// RFC 7143 §12.1.3: CHAP secrets must be at least 96 bits.
pub const MIN_SECRET_LEN: usize = 12;

/// Secrets used to authenticate one initiator to one target.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapCredentials {
    /// CHAP_N the initiator must present.
    pub user: String,
    /// Secret the initiator proves knowledge of.
    pub secret: Vec<u8>,
    /// For mutual CHAP: the target's own name and secret.
    pub mutual: Option<(String, Vec<u8>)>,
}

impl std::fmt::Debug for ChapCredentials {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapCredentials")
            .field("user", &self.user)
            .field("mutual", &self.mutual.as_ref().map(|(n, _)| n))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChapError {
    #[error("no supported CHAP algorithm offered")]
    UnsupportedAlgorithm,
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("challenge length out of bounds")]
    BadChallengeLength,
    #[error("CHAP name mismatch")]
    WrongName,
    #[error("CHAP response mismatch")]
    WrongResponse,
    #[error("mutual challenge reflects our own challenge")]
    Reflection,
    #[error("configured CHAP secret shorter than {MIN_SECRET_LEN} bytes")]
    SecretTooShort,
    #[error("mutual CHAP uses the same secret in both directions")]
    SameSecret,
    #[error("peer sent mutual CHAP keys we did not ask for, or omitted them")]
    MutualMismatch,
    #[error("CHAP key out of sequence")]
    OutOfSequence,
}

/// MD5(id || secret || challenge), RFC 1994 §4.1.
pub fn md5_response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Constant-time comparison so response checks leak no timing.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn get<'a>(t: &'a TextPairs, key: &'static str) -> Result<&'a str, ChapError> {
    t.get(key).ok_or(ChapError::Missing(key))
}

fn parse_id(v: &str) -> Result<u8, ChapError> {
    parse_number(v)
        .ok()
        .and_then(|n| u8::try_from(n).ok())
        .ok_or(ChapError::Malformed("CHAP_I"))
}

fn parse_challenge(v: &str) -> Result<Vec<u8>, ChapError> {
    let c = parse_binary(v).map_err(|_| ChapError::Malformed("CHAP_C"))?;
    if !(MIN_CHALLENGE_LEN..=MAX_CHALLENGE_LEN).contains(&c.len()) {
        return Err(ChapError::BadChallengeLength);
    }
    Ok(c)
}

fn pair(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_string(), v.into())
}

/// Pick MD5 from a CHAP_A list, or fail.
pub fn choose_algorithm(list: &str) -> Result<u64, ChapError> {
    split_list(list)
        .filter_map(|v| parse_number(v).ok())
        .find(|&a| a == CHAP_MD5)
        .ok_or(ChapError::UnsupportedAlgorithm)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AuthState {
    WaitAlgorithm,
    WaitResponse { id: u8, challenge: Vec<u8> },
    Done,
}

/// Target-side CHAP.
#[derive(Debug, Clone)]
pub struct ChapAuthenticator {
    state: AuthState,
}

impl Default for ChapAuthenticator {
    fn default() -> Self {
        Self::new()
    }
}

impl ChapAuthenticator {
    pub fn new() -> Self {
        Self {
            state: AuthState::WaitAlgorithm,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == AuthState::Done
    }

    /// CHAP_A from the initiator: answer CHAP_A, CHAP_I, CHAP_C.
    pub fn on_algorithms(
        &mut self,
        list: &str,
        rng: &mut dyn RngCore,
    ) -> Result<Vec<(String, String)>, ChapError> {
        if self.state != AuthState::WaitAlgorithm {
            return Err(ChapError::OutOfSequence);
        }
        choose_algorithm(list)?;
        let mut id = [0u8; 1];
        rng.fill_bytes(&mut id);
        let mut challenge = vec![0u8; CHALLENGE_LEN];
        rng.fill_bytes(&mut challenge);
        let out = vec![
            pair("CHAP_A", CHAP_MD5.to_string()),
            pair("CHAP_I", id[0].to_string()),
            pair("CHAP_C", encode_hex(&challenge)),
        ];
        self.state = AuthState::WaitResponse {
            id: id[0],
            challenge,
        };
        Ok(out)
    }

    /// CHAP_N/CHAP_R (and CHAP_I/CHAP_C for mutual): verify, and answer the
    /// mutual challenge with CHAP_N/CHAP_R.
    pub fn on_response(
        &mut self,
        text: &TextPairs,
        creds: &ChapCredentials,
    ) -> Result<Vec<(String, String)>, ChapError> {
        let AuthState::WaitResponse { id, challenge } = &self.state else {
            return Err(ChapError::OutOfSequence);
        };
        if creds.secret.len() < MIN_SECRET_LEN {
            return Err(ChapError::SecretTooShort);
        }
        let name = get(text, "CHAP_N")?;
        let resp =
            parse_binary(get(text, "CHAP_R")?).map_err(|_| ChapError::Malformed("CHAP_R"))?;
        // Verify the response before looking at the name so a wrong name and a
        // wrong secret cost the same.
        let expected = md5_response(*id, &creds.secret, challenge);
        let resp_ok = ct_eq(&resp, &expected);
        if name != creds.user {
            return Err(ChapError::WrongName);
        }
        if !resp_ok {
            return Err(ChapError::WrongResponse);
        }
        let mutual_keys = (text.get("CHAP_I"), text.get("CHAP_C"));
        let reply = match (mutual_keys, &creds.mutual) {
            ((None, None), None) => Vec::new(),
            ((Some(i), Some(c)), Some((tname, tsecret))) => {
                let mid = parse_id(i)?;
                let mchal = parse_challenge(c)?;
                // Reflection: the initiator echoing our challenge back would make
                // us compute the very answer it owes us.
                if ct_eq(&mchal, challenge) {
                    return Err(ChapError::Reflection);
                }
                if tsecret.len() < MIN_SECRET_LEN {
                    return Err(ChapError::SecretTooShort);
                }
                if ct_eq(tsecret, &creds.secret) {
                    return Err(ChapError::SameSecret);
                }
                let r = md5_response(mid, tsecret, &mchal);
                vec![
                    pair("CHAP_N", tname.clone()),
                    pair("CHAP_R", encode_hex(&r)),
                ]
            }
            // Half a mutual challenge, or mutual asked of a target configured
            // without a mutual secret (or the reverse): refuse.
            _ => return Err(ChapError::MutualMismatch),
        };
        self.state = AuthState::Done;
        Ok(reply)
    }
}

/// Initiator's CHAP settings.
#[derive(Clone, PartialEq, Eq)]
pub struct InitiatorChap {
    pub user: String,
    pub secret: Vec<u8>,
    /// For mutual CHAP: the name and secret the target must answer with.
    pub mutual: Option<(String, Vec<u8>)>,
}

impl std::fmt::Debug for InitiatorChap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitiatorChap")
            .field("user", &self.user)
            .field("mutual", &self.mutual.as_ref().map(|(n, _)| n))
            .finish_non_exhaustive()
    }
}

/// Initiator-side CHAP.
#[derive(Debug, Clone)]
pub struct ChapResponder {
    creds: InitiatorChap,
    /// Our mutual challenge, once sent.
    sent: Option<(u8, Vec<u8>)>,
    done: bool,
}

impl ChapResponder {
    pub fn new(creds: InitiatorChap) -> Self {
        Self {
            creds,
            sent: None,
            done: false,
        }
    }

    /// The CHAP_A list we offer.
    pub fn algorithms() -> (String, String) {
        pair("CHAP_A", CHAP_MD5.to_string())
    }

    /// The target's CHAP_A/CHAP_I/CHAP_C: answer with CHAP_N/CHAP_R and,
    /// for mutual, our own CHAP_I/CHAP_C.
    pub fn on_challenge(
        &mut self,
        text: &TextPairs,
        rng: &mut dyn RngCore,
    ) -> Result<Vec<(String, String)>, ChapError> {
        if self.sent.is_some() || self.done {
            return Err(ChapError::OutOfSequence);
        }
        if choose_algorithm(get(text, "CHAP_A")?)? != CHAP_MD5 {
            return Err(ChapError::UnsupportedAlgorithm);
        }
        let id = parse_id(get(text, "CHAP_I")?)?;
        let challenge = parse_challenge(get(text, "CHAP_C")?)?;
        let r = md5_response(id, &self.creds.secret, &challenge);
        let mut out = vec![
            pair("CHAP_N", self.creds.user.clone()),
            pair("CHAP_R", encode_hex(&r)),
        ];
        if self.creds.mutual.is_some() {
            let mut mid = [0u8; 1];
            rng.fill_bytes(&mut mid);
            let mut mchal = vec![0u8; CHALLENGE_LEN];
            rng.fill_bytes(&mut mchal);
            out.push(pair("CHAP_I", mid[0].to_string()));
            out.push(pair("CHAP_C", encode_hex(&mchal)));
            self.sent = Some((mid[0], mchal));
        } else {
            self.done = true;
        }
        Ok(out)
    }

    /// Mutual only: verify the target's CHAP_N/CHAP_R.
    pub fn on_mutual_response(&mut self, text: &TextPairs) -> Result<(), ChapError> {
        let (Some((id, chal)), Some((tname, tsecret))) = (&self.sent, &self.creds.mutual) else {
            return Err(ChapError::OutOfSequence);
        };
        let name = get(text, "CHAP_N")?;
        let resp =
            parse_binary(get(text, "CHAP_R")?).map_err(|_| ChapError::Malformed("CHAP_R"))?;
        let ok = ct_eq(&resp, &md5_response(*id, tsecret, chal));
        if name != tname {
            return Err(ChapError::WrongName);
        }
        if !ok {
            return Err(ChapError::WrongResponse);
        }
        self.done = true;
        Ok(())
    }

    pub fn is_mutual(&self) -> bool {
        self.creds.mutual.is_some()
    }

    pub fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn creds(mutual: bool) -> ChapCredentials {
        ChapCredentials {
            user: "alice".into(),
            secret: b"initiator-secret".to_vec(),
            mutual: mutual.then(|| ("iqn.target".to_string(), b"target-secret!".to_vec())),
        }
    }

    fn icreds(mutual: bool) -> InitiatorChap {
        let c = creds(mutual);
        InitiatorChap {
            user: c.user,
            secret: c.secret,
            mutual: c.mutual,
        }
    }

    fn text(pairs: &[(String, String)]) -> TextPairs {
        let mut t = TextPairs::new();
        for (k, v) in pairs {
            t.push(k, v.clone()).unwrap();
        }
        t
    }

    #[test]
    fn known_answer() {
        // Computed independently: MD5 over the concatenation.
        let id = 0x2a;
        let secret = b"0123456789ab";
        let challenge: Vec<u8> = (0u8..16).collect();
        let mut buf = vec![id];
        buf.extend_from_slice(secret);
        buf.extend_from_slice(&challenge);
        let expect: [u8; 16] = Md5::digest(&buf).into();
        assert_eq!(md5_response(id, secret, &challenge), expect);
        // RFC 1321 test vector for MD5("abc") through the same path.
        assert_eq!(
            hex::encode(md5_response(b'a', b"b", b"c")),
            "900150983cd24fb0d6963f7d28e17f72"
        );
    }

    #[test]
    fn one_way_and_mutual() {
        for mutual in [false, true] {
            let mut rng = StdRng::seed_from_u64(7);
            let mut auth = ChapAuthenticator::new();
            let mut resp = ChapResponder::new(icreds(mutual));
            let (k, v) = ChapResponder::algorithms();
            let chal = auth.on_algorithms(&v, &mut rng).unwrap();
            assert_eq!(k, "CHAP_A");
            let answer = resp.on_challenge(&text(&chal), &mut rng).unwrap();
            assert_eq!(answer.len(), if mutual { 4 } else { 2 });
            let back = auth.on_response(&text(&answer), &creds(mutual)).unwrap();
            assert!(auth.is_done());
            if mutual {
                assert!(!resp.is_done());
                resp.on_mutual_response(&text(&back)).unwrap();
            } else {
                assert!(back.is_empty());
            }
            assert!(resp.is_done());
        }
    }

    #[test]
    fn refusals() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut auth = ChapAuthenticator::new();
        assert_eq!(
            auth.on_algorithms("7,6", &mut rng),
            Err(ChapError::UnsupportedAlgorithm)
        );
        let chal = auth.on_algorithms("7,5", &mut rng).unwrap();
        let chal_t = text(&chal);

        // Wrong secret.
        let mut wrong = icreds(false);
        wrong.secret = b"not-the-secret".to_vec();
        let ans = ChapResponder::new(wrong)
            .on_challenge(&chal_t, &mut rng)
            .unwrap();
        assert_eq!(
            auth.clone().on_response(&text(&ans), &creds(false)),
            Err(ChapError::WrongResponse)
        );
        // Wrong name.
        let mut wrong = icreds(false);
        wrong.user = "mallory".into();
        let ans = ChapResponder::new(wrong)
            .on_challenge(&chal_t, &mut rng)
            .unwrap();
        assert_eq!(
            auth.clone().on_response(&text(&ans), &creds(false)),
            Err(ChapError::WrongName)
        );
        // Reflection: the initiator's mutual challenge equals ours.
        let mut ans = ChapResponder::new(icreds(false))
            .on_challenge(&chal_t, &mut rng)
            .unwrap();
        ans.push(("CHAP_I".into(), "1".into()));
        ans.push(("CHAP_C".into(), chal_t.get("CHAP_C").unwrap().to_string()));
        assert_eq!(
            auth.clone().on_response(&text(&ans), &creds(true)),
            Err(ChapError::Reflection)
        );
        // Mutual asked but target has no mutual secret.
        assert_eq!(
            auth.clone().on_response(&text(&ans), &creds(false)),
            Err(ChapError::MutualMismatch)
        );
        // Short secret configured.
        let mut short = creds(false);
        short.secret = b"short".to_vec();
        assert_eq!(
            auth.clone().on_response(&text(&ans[..2]), &short),
            Err(ChapError::SecretTooShort)
        );
        // Same secret both ways.
        let mut same = creds(true);
        same.mutual = Some(("t".into(), same.secret.clone()));
        let mut ans2 = ans[..2].to_vec();
        ans2.push(("CHAP_I".into(), "1".into()));
        ans2.push(("CHAP_C".into(), encode_hex(&[9u8; 16])));
        assert_eq!(
            auth.clone().on_response(&text(&ans2), &same),
            Err(ChapError::SameSecret)
        );
        // Too-short mutual challenge.
        ans2[3].1 = encode_hex(&[9u8; 8]);
        assert_eq!(
            auth.clone().on_response(&text(&ans2), &creds(true)),
            Err(ChapError::BadChallengeLength)
        );
        // Missing CHAP_R.
        assert_eq!(
            auth.clone().on_response(&text(&ans[..1]), &creds(false)),
            Err(ChapError::Missing("CHAP_R"))
        );
    }

    #[test]
    fn initiator_detects_bad_mutual_answer() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut auth = ChapAuthenticator::new();
        let chal = auth.on_algorithms("5", &mut rng).unwrap();
        let mut resp = ChapResponder::new(icreds(true));
        let ans = resp.on_challenge(&text(&chal), &mut rng).unwrap();
        let mut c = creds(true);
        c.mutual = Some(("iqn.target".into(), b"another-secret".to_vec()));
        let back = auth.on_response(&text(&ans), &c).unwrap();
        assert_eq!(
            resp.on_mutual_response(&text(&back)),
            Err(ChapError::WrongResponse)
        );
    }

    #[test]
    fn base64_response_accepted() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut auth = ChapAuthenticator::new();
        let chal = text(&auth.on_algorithms("5", &mut rng).unwrap());
        let id = parse_id(chal.get("CHAP_I").unwrap()).unwrap();
        let c = parse_binary(chal.get("CHAP_C").unwrap()).unwrap();
        let r = md5_response(id, b"initiator-secret", &c);
        let ans = vec![
            pair("CHAP_N", "alice"),
            pair("CHAP_R", super::super::text::encode_base64(&r)),
        ];
        assert!(auth.on_response(&text(&ans), &creds(false)).is_ok());
    }
}
