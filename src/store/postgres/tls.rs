//! TLS to the database, set as libpq sets it: `sslmode` and `sslrootcert` in the connection
//! string (`postgres://…?sslmode=verify-full&sslrootcert=/etc/oprun/db-ca.pem`, or
//! `… sslmode=require sslrootcert=…` in the key-value form).
//!
//! * `disable`, `prefer`, `allow`, or no `sslmode`: no TLS. (libpq's default `prefer` tries
//!   TLS and accepts any certificate; oprun does not pretend to secure a connection it does
//!   not verify.)
//! * `require` and `verify-full`: TLS, the server's certificate verified against the roots
//!   and its host name checked. libpq's `require` without a root certificate file verifies
//!   nothing; oprun reads `require` as `verify-full`.
//! * `verify-ca`: TLS, the certificate's chain verified, its host name not checked (a server
//!   reached by an address its certificate does not name).
//!
//! The roots: the PEM file `sslrootcert` names, or the system's trust store when it is
//! missing or `system`. The driver knows neither `verify-*` nor `sslrootcert`: both are taken
//! out of the string here, and the rest is the driver's.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

/// What `sslmode` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// No TLS.
    Off,
    /// TLS; the chain verified, the host name not checked.
    VerifyCa,
    /// TLS; the chain verified and the host name checked.
    VerifyFull,
}

/// The TLS settings of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Settings {
    /// `None` when the string gave none this module could read (the driver's own reading,
    /// e.g. of `sslmode = require` with spaces, then decides: see [`Settings::settle`]).
    pub mode: Option<Mode>,
    /// `sslrootcert`: a PEM file of root certificates, or `system`.
    pub root: Option<String>,
}

/// Takes the TLS settings out of `url`: the settings, and the string left for the driver.
///
/// # Errors
/// [`StoreError::Unavailable`] for an `sslmode` libpq does not know.
pub(super) fn split(url: &str) -> Result<(String, Settings), StoreError> {
    let mut mode = None;
    let mut root = None;
    let mut take = |key: &str, value: String| -> Result<bool, StoreError> {
        match key {
            "sslmode" => {
                mode = Some(match value.as_str() {
                    "disable" | "allow" | "prefer" => Mode::Off,
                    "require" | "verify-full" => Mode::VerifyFull,
                    "verify-ca" => Mode::VerifyCa,
                    other => {
                        return Err(StoreError::unavailable(format!(
                            "sslmode={other} is not a TLS mode; use disable, require, verify-ca \
                             or verify-full"
                        )))
                    }
                });
                Ok(true)
            }
            "sslrootcert" => {
                root = Some(value);
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    let rest = if let Some((base, query)) = url.split_once("://").and_then(|_| url.split_once('?'))
    {
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(key, percent_decode(value))? {
                kept.push(pair);
            }
        }
        if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else if url.contains("://") {
        url.to_owned()
    } else {
        let mut kept = Vec::new();
        let tight = tight_equals(url);
        for word in tight.split_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            if !take(key, value.trim_matches('\'').to_owned())? {
                kept.push(word);
            }
        }
        kept.join(" ")
    };
    Ok((rest, Settings { mode, root }))
}

/// A key-value connection string with the spaces libpq allows around `=` taken out (outside
/// quotes), so that each `key=value` is one word.
fn tight_equals(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => quoted = !quoted,
            '=' if !quoted => {
                while out.ends_with(char::is_whitespace) {
                    out.pop();
                }
                out.push('=');
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// `%XX` escapes decoded (a URL's query value); anything malformed is kept as it is.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Settings {
    /// Settles the mode with what the driver read from the same string: a `require` it read
    /// where this module read nothing is `verify-full`; nothing at all is no TLS.
    pub(super) fn settle(&mut self, driver: SslMode) {
        if self.mode.is_none() && driver == SslMode::Require {
            self.mode = Some(Mode::VerifyFull);
        }
    }

    fn mode(&self) -> Mode {
        self.mode.unwrap_or(Mode::Off)
    }

    /// The driver's `sslmode` for these settings.
    pub(super) fn driver_mode(&self) -> SslMode {
        match self.mode() {
            Mode::Off => SslMode::Disable,
            Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }

    /// The connector for these settings (with TLS off, one that is never used).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the roots cannot be read.
    pub(super) fn connector(&self) -> Result<MakeRustlsConnect, StoreError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::unavailable(format!("TLS to the database: {e}")))?;
        let roots = match self.mode() {
            Mode::Off => RootCertStore::empty(),
            Mode::VerifyCa | Mode::VerifyFull => self.roots()?,
        };
        let config = match self.mode() {
            Mode::Off | Mode::VerifyFull => builder.with_root_certificates(roots),
            Mode::VerifyCa => {
                let verifier =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| {
                            StoreError::unavailable(format!("TLS to the database: {e}"))
                        })?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
            }
        };
        Ok(MakeRustlsConnect::new(config.with_no_client_auth()))
    }

    fn roots(&self) -> Result<RootCertStore, StoreError> {
        let mut roots = RootCertStore::empty();
        match self.root.as_deref() {
            None | Some("system") => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(StoreError::unavailable(
                        "TLS to the database: the system's trust store has no certificates; \
                         name a CA file with sslrootcert=PATH",
                    ));
                }
            }
            Some(path) => {
                let unreadable = |e: &dyn std::fmt::Display| {
                    StoreError::unavailable(format!(
                        "sslrootcert={path}: cannot read PEM certificates ({e})"
                    ))
                };
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))? {
                    let cert = cert.map_err(|e| unreadable(&e))?;
                    roots.add(cert).map_err(|e| unreadable(&e))?;
                }
                if roots.is_empty() {
                    return Err(unreadable(&"no certificate in it"));
                }
            }
        }
        Ok(roots)
    }
}

/// `verify-ca`: the chain is verified as usual; a certificate that does not name the host
/// is accepted.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is checked after the chain: this error means the chain was good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn settings(mode: Option<Mode>, root: Option<&str>) -> Settings {
        Settings {
            mode,
            root: root.map(str::to_owned),
        }
    }

    #[test]
    fn tls_settings_are_taken_out_of_both_forms() {
        let cases = [
            (
                "postgres://u@h:5432/db",
                "postgres://u@h:5432/db",
                settings(None, None),
            ),
            (
                "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
                "postgres://u@h/db",
                settings(Some(Mode::VerifyFull), Some("/etc/ca.pem")),
            ),
            (
                "postgres://u@h/db?application_name=x&sslmode=require&connect_timeout=3",
                "postgres://u@h/db?application_name=x&connect_timeout=3",
                settings(Some(Mode::VerifyFull), None),
            ),
            (
                "postgresql://h/db?sslmode=prefer",
                "postgresql://h/db",
                settings(Some(Mode::Off), None),
            ),
            (
                "host=h dbname=db sslmode=verify-ca sslrootcert='/a.pem' user=u",
                "host=h dbname=db user=u",
                settings(Some(Mode::VerifyCa), Some("/a.pem")),
            ),
        ];
        for (url, rest, expected) in cases {
            let (left, got) = split(url).expect(url);
            assert_eq!((left.as_str(), &got), (rest, &expected), "{url}");
        }
    }

    /// `sslmode = require` with spaces is read too; and a `require` only the driver read
    /// would be TLS, verified, never plain.
    #[test]
    fn a_require_only_the_driver_read_is_verified_tls() {
        let (rest, s) = split("host=h sslmode = require port = 5432").expect("split");
        assert_eq!(
            (rest.as_str(), s.mode),
            ("host=h port=5432", Some(Mode::VerifyFull))
        );
        let driver = tokio_postgres::Config::from_str(&rest).expect("the driver reads it");
        assert_eq!(driver.get_ports(), &[5432]);
        let mut unread = settings(None, None);
        unread.settle(SslMode::Require);
        assert_eq!(unread.mode, Some(Mode::VerifyFull));
        assert_eq!(unread.driver_mode(), SslMode::Require);
        let (_, mut none) = split("host=h").expect("split");
        none.settle(SslMode::Prefer);
        assert_eq!(none.driver_mode(), SslMode::Disable);
    }

    #[test]
    fn an_unknown_sslmode_is_refused_with_the_choices() {
        let e = split("postgres://h/db?sslmode=on").expect_err("not a mode");
        let text = e.to_string();
        assert!(
            text.contains("sslmode=on") && text.contains("verify-full"),
            "{text}"
        );
    }

    #[test]
    fn an_unreadable_root_file_says_which() {
        let s = settings(Some(Mode::VerifyFull), Some("/nonexistent/ca.pem"));
        let text = s.connector().err().expect("no such file").to_string();
        assert!(text.contains("sslrootcert=/nonexistent/ca.pem"), "{text}");
    }
}
