//! Keys and the keyring: the key new messages are encrypted with, and every key that may still
//! be needed to decrypt.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::{Aes256Gcm, KeyInit};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// One AES-256 key: 32 bytes, wiped from memory when dropped, never printed.
#[derive(Clone)]
pub struct Key(Zeroizing<[u8; 32]>);

impl Key {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(Zeroizing::new(bytes))
    }

    /// A key from 64 hexadecimal digits (what `openssl rand -hex 32` prints).
    ///
    /// ```
    /// let key = herald_crypto::Key::from_hex(&"0f".repeat(32)).unwrap();
    /// assert!(herald_crypto::Key::from_hex("abc").is_err());
    /// # drop(key);
    /// ```
    pub fn from_hex(hex: &str) -> Result<Key> {
        let hex = hex.trim();
        let invalid = |reason: &str| Error::InvalidKey {
            reason: reason.to_string(),
        };
        if hex.len() != 64 {
            return Err(invalid(&format!(
                "expected 64 hexadecimal digits (32 bytes), got {} characters; make one with `openssl rand -hex 32`",
                hex.len()
            )));
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let digit = |b: u8| (b as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(h), Some(l)) => bytes[i] = (h * 16 + l) as u8,
                _ => return Err(invalid("not hexadecimal")),
            }
        }
        Ok(Key(bytes))
    }

    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Key {
        use rand::RngCore;
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut *bytes);
        Key(bytes)
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(***)")
    }
}

/// The keys of one deployment: the **current** one encrypts what is published, and it and every
/// older one decrypt what arrives. Rotation is: add a new key as current and keep the old ones
/// until no message encrypted with them is left (queues, retries, dead letters).
///
/// ```
/// use herald_crypto::{Key, Keyring};
/// let ring = Keyring::new("2026-12", Key::generate()).unwrap()
///     .with_old("2026-06", Key::generate()).unwrap();
/// assert_eq!(ring.current_id(), "2026-12");
/// assert_eq!(ring.ids(), vec!["2026-06", "2026-12"]);
/// ```
#[derive(Clone)]
pub struct Keyring {
    current: String,
    /// Each key with its cipher, set up once (the AES key schedule and GHASH key) rather than
    /// for every message.
    keys: BTreeMap<String, (Key, Aes256Gcm)>,
}

fn entry(key: Key) -> (Key, Aes256Gcm) {
    let cipher = Aes256Gcm::new(&(*key.bytes()).into());
    (key, cipher)
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("ids", &self.ids())
            .finish()
    }
}

fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidKeyId { id: id.to_string() })
    }
}

impl Keyring {
    /// A keyring whose current key is `key`, named `id` (letters, digits, `-`, `_`, `.`; it
    /// travels in every message's `herald-key-id` header).
    pub fn new(id: &str, key: Key) -> Result<Keyring> {
        check_id(id)?;
        Ok(Keyring {
            current: id.to_string(),
            keys: BTreeMap::from([(id.to_string(), entry(key))]),
        })
    }

    /// Also decrypt with `key` (an older key still found on messages).
    pub fn with_old(mut self, id: &str, key: Key) -> Result<Keyring> {
        check_id(id)?;
        if id == self.current {
            return Err(Error::DuplicateKeyId { id: id.to_string() });
        }
        self.keys.insert(id.to_string(), entry(key));
        Ok(self)
    }

    /// Parse `ID=HEX[,ID=HEX...]` (the first is the current key): a form to keep the keys in,
    /// such as an environment variable or a secret the application reads (Herald reads none
    /// itself).
    ///
    /// ```
    /// let keys = format!("k2={},k1={}", "22".repeat(32), "11".repeat(32));
    /// let ring = herald_crypto::Keyring::parse(&keys).unwrap();
    /// assert_eq!(ring.current_id(), "k2");
    /// assert!(herald_crypto::Keyring::parse("k2").is_err());
    /// ```
    pub fn parse(spec: &str) -> Result<Keyring> {
        let mut ring: Option<Keyring> = None;
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, hex) = entry.split_once('=').ok_or_else(|| Error::InvalidKey {
                reason: "expected ID=HEX entries separated by commas, the current key first".into(),
            })?;
            let key = Key::from_hex(hex)?;
            ring = Some(match ring {
                None => Keyring::new(id.trim(), key)?,
                Some(r) => r.with_old(id.trim(), key)?,
            });
        }
        ring.ok_or_else(|| Error::InvalidKey {
            reason: "no key given".into(),
        })
    }

    /// The id of the key new messages are encrypted with.
    pub fn current_id(&self) -> &str {
        &self.current
    }

    /// Every key id, sorted.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.keys().map(String::as_str).collect()
    }

    pub(crate) fn current(&self) -> (&str, &Aes256Gcm) {
        (&self.current, &self.keys[&self.current].1)
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Aes256Gcm> {
        self.keys.get(id).map(|(_, cipher)| cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_never_print() {
        let k = Key::from_hex(&"aB".repeat(32)).unwrap();
        assert_eq!(k.bytes()[0], 0xab);
        assert_eq!(format!("{k:?}"), "Key(***)");
        assert!(Key::from_hex(&"zz".repeat(32)).is_err());
        assert!(Key::from_hex(&"ab".repeat(31)).is_err());
        let ring =
            Keyring::parse(&format!(" a={} , b={}", "01".repeat(32), "02".repeat(32))).unwrap();
        assert_eq!(ring.current_id(), "a");
        assert!(!format!("{ring:?}").contains("0101"));
        assert!(Keyring::new("bad id", Key::generate()).is_err());
        assert!(Keyring::new("a", Key::generate())
            .unwrap()
            .with_old("a", Key::generate())
            .is_err());
    }
}
