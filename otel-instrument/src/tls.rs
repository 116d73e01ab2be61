//! TLS material from `OTEL_EXPORTER_OTLP_{,<SIGNAL>_}CERTIFICATE`, `..._CLIENT_CERTIFICATE`
//! and `..._CLIENT_KEY`.
//!
//! The files are checked when the configuration is read, whatever the transport, so a
//! file that is not what its variable says is an error naming that variable rather than
//! a handshake that fails later with no hint of which file is wrong. The OTLP/HTTP client
//! gets its rustls configuration from here (ring, as tonic's `tls-ring` for gRPC); tonic
//! builds its own from the same PEM.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// The provider every TLS client here uses, passed explicitly: the process-wide
/// default belongs to the application.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in a PEM file: at least one, each one well-formed PEM.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the PEM file does not parse ({e})"))?;
    if certs.is_empty() {
        return Err("the file holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned());
    }
    Ok(certs)
}

/// Adds every certificate of a PEM CA file to `roots`.
fn add_roots(roots: &mut rustls::RootCertStore, pem: &[u8]) -> Result<(), String> {
    for (i, cert) in certificates(pem)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            format!(
                "certificate #{} is not a usable CA certificate ({e})",
                i + 1
            )
        })?;
    }
    Ok(())
}

/// Checks a CA file (`..._CERTIFICATE`): PEM certificates that can all be trusted as
/// roots. Returns why not.
pub(crate) fn check_ca(pem: &[u8]) -> Result<(), String> {
    add_roots(&mut rustls::RootCertStore::empty(), pem)
}

/// Which of the two files of a client identity is at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdentityError {
    /// `..._CLIENT_CERTIFICATE`, and why.
    Certificate(String),
    /// `..._CLIENT_KEY`, and why.
    Key(String),
}

/// A client certificate chain and its private key, parsed and checked to belong
/// together.
fn identity(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), IdentityError> {
    let chain = certificates(cert_pem).map_err(IdentityError::Certificate)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        IdentityError::Key(match e {
            pem::Error::NoItemsFound => "the file holds no PEM private key \
                 (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)"
                .to_owned(),
            e => format!("the PEM file does not parse ({e})"),
        })
    })?;
    CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()).map_err(|e| match e {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            IdentityError::Certificate(format!("not a usable client certificate ({e})"))
        }
        rustls::Error::InconsistentKeys(_) => IdentityError::Key(
            "the key does not belong to the client certificate (its public key differs)".to_owned(),
        ),
        e => IdentityError::Key(format!("not a usable private key ({e})")),
    })?;
    Ok((chain, key))
}

/// Checks a client certificate and key (`..._CLIENT_CERTIFICATE`, `..._CLIENT_KEY`).
pub(crate) fn check_identity(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), IdentityError> {
    identity(cert_pem, key_pem).map(drop)
}

/// The rustls configuration of the OTLP/HTTP client: the system's roots (as tonic's
/// `with_enabled_roots()` loads them for gRPC) plus the configured CA, and the client
/// identity for mTLS when one is configured.
///
/// # Errors
/// The files do not hold what they should (they were checked when the configuration
/// was read, so this only happens for a `TlsFiles` built by hand).
#[cfg(feature = "http-proto")]
pub(crate) fn client_config(
    files: &crate::config::TlsFiles,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "a system CA certificate could not be loaded");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(ca) = &files.ca_certificate {
        add_roots(&mut roots, ca).map_err(|e| format!("CA certificate: {e}"))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    Ok(match &files.client_identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, key) = identity(cert, key).map_err(|e| match e {
                IdentityError::Certificate(e) => format!("client certificate: {e}"),
                IdentityError::Key(e) => format!("client key: {e}"),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
    })
}
