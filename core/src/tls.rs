//! TLS for the bridge's listeners: the `[tls]` certificate and key, loaded
//! once at startup into one rustls configuration that HTTPS (actix-web),
//! `wss://` (the WebSocket listener) and MQTT over TLS (the MQTT gate,
//! [`crate::gate`]) share.
//!
//! MQTT over TLS is terminated by the bridge rather than by rumqttd:
//! rumqttd 0.20's TLS would bring a second rustls (0.22) and crypto backend
//! (ring), and it performs each handshake inside its accept loop, with no
//! timeout, so one client that connects and stays silent stalls every
//! later connection. The gate runs each handshake in its own task with
//! [`HANDSHAKE_TIMEOUT`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::config::TlsConfig;

/// A client has this long to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the certificate or key cannot be used; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.{key} is not set")]
    NotSet { key: &'static str },
    #[error("tls.cert_path: cannot read certificates from `{path}`: {reason}")]
    Certificates { path: PathBuf, reason: String },
    #[error("tls.key_path: cannot read a private key from `{path}`: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error(
        "tls: the certificate in `{cert}` and the key in `{key}` cannot be used together: {source}"
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// The server configuration every TLS listener uses.
pub fn server_config(config: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let path =
        |value: &Option<PathBuf>, key: &'static str| value.clone().ok_or(TlsError::NotSet { key });
    let cert_path = path(&config.cert_path, "cert_path")?;
    let key_path = path(&config.key_path, "key_path")?;
    let certificates = load_certificates(&cert_path)?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::Key {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    // The provider is named rather than taken from the process default, so
    // that no other crate's choice can change it.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| {
            builder
                .with_no_client_auth()
                .with_single_cert(certificates, key)
        })
        .map_err(|source| TlsError::Mismatch {
            cert: cert_path,
            key: key_path,
            source,
        })?;
    Ok(Arc::new(server))
}

fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |reason: String| TlsError::Certificates {
        path: path.to_owned(),
        reason,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certificates.is_empty() {
        return Err(error("no CERTIFICATE block found".into()));
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    /// A certificate and its key load; a missing file, a file without a
    /// certificate and a key of another certificate are refused by name.
    #[test]
    fn loading_names_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("tidewater-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
        let other = rcgen::KeyPair::generate().expect("another key");
        let config = |cert: &Path, key: &Path| TlsConfig {
            cert_path: Some(cert.to_owned()),
            key_path: Some(key.to_owned()),
        };
        let cert_path = write(&dir, "cert.pem", &cert.pem());
        let key_path = write(&dir, "key.pem", &signing_key.serialize_pem());
        let other_path = write(&dir, "other.pem", &other.serialize_pem());
        assert!(server_config(&config(&cert_path, &key_path)).is_ok());
        assert!(matches!(
            server_config(&config(&dir.join("missing.pem"), &key_path)),
            Err(TlsError::Certificates { .. })
        ));
        assert!(matches!(
            server_config(&config(&key_path, &key_path)),
            Err(TlsError::Certificates { .. })
        ));
        assert!(matches!(
            server_config(&config(&cert_path, &cert_path)),
            Err(TlsError::Key { .. })
        ));
        assert!(matches!(
            server_config(&config(&cert_path, &other_path)),
            Err(TlsError::Mismatch { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
