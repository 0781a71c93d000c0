//! Encrypting and decrypting one envelope's body (the wire format of `docs/wire-format.md`,
//! "Encrypted bodies").
//!
//! - body: a 12-byte random nonce, then the AES-256-GCM ciphertext with its 16-byte tag;
//! - header `herald-encryption: aes-256-gcm` and header `herald-key-id: <key id>`;
//! - associated data (authenticated, not sent): `<event type>\n<event id>`, so a body cannot be
//!   moved onto another event, or its type changed, without decryption failing;
//! - every other attribute (type, id, routing key, `datacontenttype` of the plaintext, trace
//!   context, ...) stays readable, so brokers route and dashboards list as before.
//!
//! The headers are not named `herald_...`: a dead letter's replay clears those, and an
//! encrypted dead letter must still say how to decrypt it after a replay.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::Nonce;
use bytes::Bytes;
use herald::Envelope;
use rand::RngCore;

use crate::error::{Error, Result};
use crate::keyring::Keyring;

/// Header naming the algorithm of an encrypted body.
pub const ENCRYPTION_HEADER: &str = "herald-encryption";
/// Header naming the key an encrypted body was encrypted with.
pub const KEY_ID_HEADER: &str = "herald-key-id";
/// The only algorithm: AES-256 in Galois/Counter Mode.
pub const ALGORITHM: &str = "aes-256-gcm";
/// Bytes of nonce before the ciphertext.
pub const NONCE_BYTES: usize = 12;
/// Bytes of authentication tag at the end of the ciphertext.
pub const TAG_BYTES: usize = 16;

/// The associated data of an envelope: `<type>\n<id>`.
fn associated_data(e: &Envelope) -> Vec<u8> {
    let mut aad = Vec::with_capacity(e.event_type.len() + 1 + e.id.len());
    aad.extend_from_slice(e.event_type.as_bytes());
    aad.push(b'\n');
    aad.extend_from_slice(e.id.as_bytes());
    aad
}

/// Whether an envelope says its body is encrypted.
pub fn is_encrypted(e: &Envelope) -> bool {
    e.headers.contains_key(ENCRYPTION_HEADER)
}

/// Encrypt `e`'s body with the keyring's current key, in place. An envelope already encrypted
/// is left alone.
///
/// ```
/// use herald_crypto::{decrypt, encrypt, Key, Keyring};
/// let ring = Keyring::new("k1", Key::generate()).unwrap();
/// let mut e = herald::Envelope::new("order.placed", 1, "order.placed", "shop", r#"{"order":1}"#.into());
/// encrypt(&ring, &mut e);
/// assert_eq!(e.headers["herald-key-id"], "k1");
/// assert_ne!(&e.body[..], br#"{"order":1}"#);
/// decrypt(&ring, &mut e).unwrap();
/// assert_eq!(&e.body[..], br#"{"order":1}"#);
/// ```
pub fn encrypt(keyring: &Keyring, e: &mut Envelope) {
    if is_encrypted(e) {
        return;
    }
    let (id, cipher) = keyring.current();
    // 96 random bits per message from the thread's CSPRNG (ChaCha, seeded and reseeded from
    // the operating system): as unpredictable as asking the OS each time, without a system call.
    let mut nonce = [0u8; NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut nonce);
    let nonce = Nonce::from(nonce);
    let aad = associated_data(e);
    // Encryption fails only for plaintexts over 64 GiB, far above any broker's message limit.
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: &e.body,
                aad: &aad,
            },
        )
        .unwrap_or_default();
    let mut body = Vec::with_capacity(NONCE_BYTES + sealed.len());
    body.extend_from_slice(&nonce);
    body.extend_from_slice(&sealed);
    e.body = Bytes::from(body);
    e.headers
        .insert(ENCRYPTION_HEADER.to_string(), ALGORITHM.to_string());
    e.headers.insert(KEY_ID_HEADER.to_string(), id.to_string());
}

/// Decrypt `e`'s body in place and drop the encryption headers. The error says why it could not
/// be (no such key, wrong key or tampered message, not encrypted at all), in words fit for a
/// dead letter.
pub fn decrypt(keyring: &Keyring, e: &mut Envelope) -> Result<()> {
    let Some(algorithm) = e.headers.get(ENCRYPTION_HEADER) else {
        return Err(Error::Decrypt(format!(
            "the body is not encrypted (no `{ENCRYPTION_HEADER}` header), and this consumer accepts encrypted events only; publish through EncryptingTransport (or accept_plaintext() during a rollout)"
        )));
    };
    if algorithm != ALGORITHM {
        return Err(Error::Decrypt(format!(
            "the body is encrypted with `{}`, which this consumer cannot decrypt (it knows {ALGORITHM})",
            herald::transport::escape_controls(algorithm)
        )));
    }
    let Some(id) = e.headers.get(KEY_ID_HEADER) else {
        return Err(Error::Decrypt(format!(
            "the body is encrypted but names no key (no `{KEY_ID_HEADER}` header)"
        )));
    };
    let Some(cipher) = keyring.get(id) else {
        return Err(Error::Decrypt(format!(
            "the body is encrypted with key `{}`, which this consumer's keyring does not have (it has {}); add that key to the keyring and replay this dead letter",
            herald::transport::escape_controls(id),
            keyring.ids().join(", ")
        )));
    };
    if e.body.len() < NONCE_BYTES + TAG_BYTES {
        return Err(Error::Decrypt(format!(
            "the encrypted body is {} bytes, shorter than a nonce and a tag ({} bytes)",
            e.body.len(),
            NONCE_BYTES + TAG_BYTES
        )));
    }
    let (nonce, sealed) = e.body.split_at(NONCE_BYTES);
    let mut n = [0u8; NONCE_BYTES];
    n.copy_from_slice(nonce);
    let aad = associated_data(e);
    let plain = cipher
        .decrypt(
            &Nonce::from(n),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .map_err(|_| {
            Error::Decrypt(format!(
                "cannot decrypt with key `{}`: the key is wrong or the message was altered (its body, type or id); authentication failed",
                herald::transport::escape_controls(id)
            ))
        })?;
    e.body = Bytes::from(plain);
    e.headers.remove(ENCRYPTION_HEADER);
    e.headers.remove(KEY_ID_HEADER);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::Key;

    fn event() -> Envelope {
        Envelope::new(
            "a.b",
            1,
            "a.b",
            "svc",
            Bytes::from_static(b"{\"secret\":42}"),
        )
    }

    #[test]
    fn round_trip_rotation_and_refusals() {
        let old = Keyring::new("k1", Key::generate()).unwrap();
        let mut e = event();
        encrypt(&old, &mut e);
        assert_eq!(e.body.len(), 13 + NONCE_BYTES + TAG_BYTES);
        let sealed = e.clone();
        encrypt(&old, &mut e);
        assert_eq!(e, sealed, "not encrypted twice");

        // Rotated: a new current key, the old one kept for what is in flight.
        let k1 = Key::generate();
        let rotated = Keyring::new("k2", Key::generate())
            .unwrap()
            .with_old("k1", k1.clone())
            .unwrap();
        let mut new = event();
        encrypt(&rotated, &mut new);
        assert_eq!(new.headers[KEY_ID_HEADER], "k2");
        let mut d = new.clone();
        decrypt(&rotated, &mut d).unwrap();
        assert_eq!(&d.body[..], b"{\"secret\":42}");
        assert!(!is_encrypted(&d));

        let err = |ring: &Keyring, e: &Envelope| {
            let mut e = e.clone();
            decrypt(ring, &mut e).unwrap_err().to_string()
        };
        assert!(err(&old, &new)
            .contains("key `k2`, which this consumer's keyring does not have (it has k1)"));
        let wrong = Keyring::new("k1", Key::generate()).unwrap();
        assert!(err(&wrong, &sealed).contains("authentication failed"));
        let mut retyped = sealed.clone();
        retyped.event_type = "a.c".into();
        assert!(
            err(&old, &retyped).contains("authentication failed"),
            "type is bound"
        );
        let mut flipped = sealed.clone();
        let mut body = flipped.body.to_vec();
        body[NONCE_BYTES] ^= 1;
        flipped.body = body.into();
        assert!(err(&old, &flipped).contains("authentication failed"));
        assert!(err(&old, &event()).contains("not encrypted"));
        let mut short = sealed.clone();
        short.body = Bytes::from_static(b"x");
        assert!(err(&old, &short).contains("shorter"));
    }
}
