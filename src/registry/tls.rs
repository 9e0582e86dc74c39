//! TLS for registry clients: the system's CA roots are read once per process, and only when
//! a TLS connection first needs them.
//!
//! Reading the roots is not free (the bundle and ~150 hashed files in `/etc/ssl/certs`, a few
//! milliseconds each time), and every HTTP client built with the library defaults read them
//! again. A warm build talks to plain-http mirrors or not at all, so it should not pay for
//! them; a cold one pays once.
//!
//! What is trusted is unchanged: the system roots as `rustls-native-certs` finds them
//! (honouring `SSL_CERT_FILE` / `SSL_CERT_DIR`), plus a host's own `ca` files, checked by
//! webpki; `insecure` hosts skip the certificate check.

use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
pub(crate) use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The system's CA roots, read on first use.
pub(crate) fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// The certificates of PEM files' contents (a CA file may hold several).
pub(crate) fn pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// A certificate verifier that builds its root store on the first handshake.
#[derive(Debug)]
struct LazyRoots {
    extra: Vec<CertificateDer<'static>>,
    insecure: bool,
    provider: Arc<CryptoProvider>,
    built: OnceLock<Result<Arc<WebPkiServerVerifier>, String>>,
}

impl LazyRoots {
    fn inner(&self) -> Result<&Arc<WebPkiServerVerifier>, rustls::Error> {
        self.built
            .get_or_init(|| {
                let mut store = RootCertStore::empty();
                store.add_parsable_certificates(system_roots().iter().cloned());
                for c in &self.extra {
                    store.add(c.clone()).map_err(|e| e.to_string())?;
                }
                if store.is_empty() {
                    return Err(
                        "no CA certificates: none in the system's store and no `ca` configured"
                            .into(),
                    );
                }
                WebPkiServerVerifier::builder_with_provider(Arc::new(store), self.provider.clone())
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| rustls::Error::General(e.clone()))
    }
}

impl ServerCertVerifier for LazyRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.insecure {
            return Ok(ServerCertVerified::assertion());
        }
        self.inner()?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS client configuration trusting the system's roots and `extra` (read lazily), or
/// any certificate when `insecure`.
pub(crate) fn client_config(
    extra: Vec<CertificateDer<'static>>,
    insecure: bool,
) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let verifier = LazyRoots {
        extra,
        insecure,
        provider: provider.clone(),
        built: OnceLock::new(),
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_config_reads_no_roots_until_a_handshake() {
        // Building must not fail or need the system's store; the verifier is empty until used.
        let cfg = client_config(Vec::new(), false);
        assert!(cfg.is_ok());
    }

    #[test]
    fn pem_files_are_parsed_and_garbage_is_refused() {
        assert!(pem_certs(b"not a certificate").is_err());
        let bad = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(pem_certs(bad).is_err());
    }
}
