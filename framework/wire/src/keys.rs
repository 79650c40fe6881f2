//! Identity keys: ed25519 for replicas, signing clients and the view manager.
//!
//! Secret keys live in files of one line, 64 hex digits (the 32-byte ed25519
//! seed), readable by their owner only. Public keys appear in the cluster
//! configuration as 64 hex digits.

use ed25519_dalek::{SigningKey, VerifyingKey};
use palisade_core::ClientId;
use rand_core::{CryptoRng, RngCore};
use std::fmt;
use std::path::Path;

/// Why a key could not be read or written.
#[derive(Debug)]
pub enum KeyError {
    /// The file could not be read or written.
    Io(String, std::io::Error),
    /// Not 64 hex digits.
    Format(String),
    /// A secret key file others can read.
    Permissions(String, u32),
    /// Not a usable ed25519 public key (for example a small-order point).
    BadPublicKey(String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Io(path, e) => write!(f, "{path}: {e}"),
            KeyError::Format(what) => write!(f, "{what}: expected 64 hex digits (a 32-byte key)"),
            KeyError::Permissions(path, mode) => write!(
                f,
                "{path}: secret key is readable by others (mode {mode:o}); run `chmod 600 {path}` \
                 (a file root owns may also be readable by its group, as with chmod 440 or 640)"
            ),
            KeyError::BadPublicKey(what) => write!(f, "{what}: not a valid ed25519 public key"),
        }
    }
}

impl std::error::Error for KeyError {}

/// A fresh identity key.
pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> SigningKey {
    SigningKey::generate(rng)
}

/// Parses 64 hex digits into 32 bytes; `what` names the field in errors.
pub fn parse_hex32(text: &str, what: &str) -> Result<[u8; 32], KeyError> {
    let bytes = hex::decode(text.trim()).map_err(|_| KeyError::Format(what.to_string()))?;
    bytes.try_into().map_err(|_| KeyError::Format(what.to_string()))
}

/// Parses a public key, refusing small-order points (a key anyone could
/// produce signatures for).
pub fn parse_public(text: &str, what: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = parse_hex32(text, what)?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::BadPublicKey(what.to_string()))?;
    if key.is_weak() {
        return Err(KeyError::BadPublicKey(what.to_string()));
    }
    Ok(key)
}

/// Hex form of a public key, as written in the configuration.
pub fn public_hex(key: &VerifyingKey) -> String {
    hex::encode(key.as_bytes())
}

/// A client's id: the first 8 bytes of SHA-256 over a domain tag and its
/// public key. Nobody can act as a client id without the matching secret
/// key, so short-lived clients need no registration.
pub fn client_id(public: &[u8; 32]) -> ClientId {
    ClientId::of_key(public)
}

/// Writes a secret key file readable by its owner only. Refuses to overwrite.
pub fn write_secret(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    use std::io::Write;
    let name = path.display().to_string();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| KeyError::Io(name.clone(), e))?;
    writeln!(file, "{}", hex::encode(key.to_bytes())).map_err(|e| KeyError::Io(name, e))
}

/// Reads a secret key file, refusing one that others can read.
pub fn read_secret(path: &Path) -> Result<SigningKey, KeyError> {
    let name = path.display().to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(path).map_err(|e| KeyError::Io(name.clone(), e))?;
        let mode = meta.permissions().mode() & 0o777;
        if !private_enough(mode, meta.uid()) {
            return Err(KeyError::Permissions(name, mode));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| KeyError::Io(name.clone(), e))?;
    Ok(SigningKey::from_bytes(&parse_hex32(&text, &name)?))
}

/// Whether a secret key file with `mode`, owned by `uid`, is private
/// enough: readable by its owner alone, or, when root owns it, by its group
/// too, never writable by the group. The second case is how orchestrators
/// hand secrets to a process that runs as neither root nor the file's
/// owner (a Kubernetes Secret volume with `fsGroup`), and the rule
/// PostgreSQL applies to its key file.
#[cfg(unix)]
fn private_enough(mode: u32, uid: u32) -> bool {
    mode & 0o077 == 0 || (uid == 0 && mode & 0o037 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_key_is_private_to_its_owner_or_to_roots_group() {
        for (mode, uid, ok) in [
            (0o600, 1000, true),
            (0o400, 0, true),
            (0o640, 0, true),
            (0o440, 0, true),
            (0o640, 1000, false),
            (0o660, 0, false),
            (0o604, 0, false),
            (0o644, 1000, false),
        ] {
            assert_eq!(private_enough(mode, uid), ok, "mode {mode:o} owned by {uid}");
        }
    }

    #[test]
    fn secret_keys_round_trip_through_owner_only_files() {
        let dir = std::env::temp_dir().join(format!("palisade-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k.key");
        let _ = std::fs::remove_file(&path);
        let key = generate(&mut rand_core::OsRng);
        write_secret(&path, &key).unwrap();
        assert_eq!(read_secret(&path).unwrap().to_bytes(), key.to_bytes());
        assert!(write_secret(&path, &key).is_err(), "never overwrites a key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(read_secret(&path), Err(KeyError::Permissions(_, 0o644))));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_and_small_order_public_keys_are_refused() {
        assert!(matches!(parse_public("abcd", "k"), Err(KeyError::Format(_))));
        assert!(matches!(parse_public(&"zz".repeat(32), "k"), Err(KeyError::Format(_))));
        // The identity point: a small-order key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(parse_public(&hex::encode(identity), "k"), Err(KeyError::BadPublicKey(_))));
        let key = generate(&mut rand_core::OsRng).verifying_key();
        assert_eq!(parse_public(&public_hex(&key), "k").unwrap(), key);
    }

    #[test]
    fn client_ids_differ_per_key() {
        let a = generate(&mut rand_core::OsRng).verifying_key();
        let b = generate(&mut rand_core::OsRng).verifying_key();
        assert_ne!(client_id(a.as_bytes()), client_id(b.as_bytes()));
        assert_eq!(client_id(a.as_bytes()), client_id(a.as_bytes()));
    }
}
