//! The master's certificate authority: created once by `corpus-master init`, it signs the
//! master's server certificate and every accepted agent's client certificate.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(
        "a CA already exists in {0}: refusing to overwrite it (pass --force to replace it and invalidate every enrolled agent)"
    )]
    Exists(PathBuf),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Cert {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("certificate request of agent {agent:?} is invalid: {reason}")]
    BadRequest { agent: String, reason: String },
}

/// File names inside `DATA_DIR/pki/`.
pub const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
pub const MASTER_CERT: &str = "master.crt";
pub const MASTER_KEY: &str = "master.key";

fn cert_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Cert { what, source }
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

/// Writes `contents` atomically (temp file + rename) with the given mode.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |action, source| PkiError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io("create", e))?;
    f.write_all(contents).map_err(|e| io("write", e))?;
    f.sync_all().map_err(|e| io("sync", e))?;
    fs::rename(&tmp, path).map_err(|e| io("rename into place", e))
}

/// The loaded CA and master identity.
pub struct Pki {
    pub ca_cert_pem: String,
    pub master_cert_pem: String,
    pub master_key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// Creates the CA and the master's certificate in `pki_dir`. `sans` are extra DNS names or IP
/// addresses for the master's certificate, on top of localhost and 127.0.0.1.
pub fn init(pki_dir: &Path, sans: &[String], force: bool) -> Result<(), PkiError> {
    let ca_cert_path = pki_dir.join(CA_CERT);
    if ca_cert_path.exists() && !force {
        return Err(PkiError::Exists(pki_dir.to_owned()));
    }
    fs::create_dir_all(pki_dir).map_err(|source| PkiError::Io {
        action: "create",
        path: pki_dir.to_owned(),
        source,
    })?;

    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().map_err(cert_err("generating the CA key"))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = dn("corpus CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - Duration::hours(1);
    ca.not_after = now + Duration::days(3650);
    ca.serial_number = Some(random_serial());
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(cert_err("self-signing the CA"))?;
    let issuer = Issuer::new(ca, ca_key);

    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    for san in sans {
        if !names.contains(san) {
            names.push(san.clone());
        }
    }
    let mut master = CertificateParams::new(names.clone())
        .map_err(cert_err(format!("master certificate names {names:?}")))?;
    master.distinguished_name = dn("corpus master");
    master.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    master.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    master.not_before = now - Duration::hours(1);
    master.not_after = now + Duration::days(1825);
    master.serial_number = Some(random_serial());
    let master_key = KeyPair::generate().map_err(cert_err("generating the master key"))?;
    let master_cert = master
        .signed_by(&master_key, &issuer)
        .map_err(cert_err("signing the master certificate"))?;

    // Keys first, certificates last: a CA certificate on disk means init completed.
    write_file(
        &pki_dir.join(CA_KEY),
        issuer.key().serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(
        &pki_dir.join(MASTER_KEY),
        master_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(
        &pki_dir.join(MASTER_CERT),
        master_cert.pem().as_bytes(),
        0o644,
    )?;
    write_file(&ca_cert_path, ca_cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

/// sha256 of a DER certificate, hex: how the master pins an agent's current certificate.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The public key (DER SubjectPublicKeyInfo) a CSR was made for, after checking its signature.
pub fn csr_public_key(agent: &str, csr_pem: &str) -> Result<Vec<u8>, PkiError> {
    use rcgen::PublicKeyData;
    let csr =
        CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| PkiError::BadRequest {
            agent: agent.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(csr.public_key.der_bytes().to_vec())
}

/// When a certificate (DER) expires, unix seconds.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The DER of the first certificate in a PEM text.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    Some(block.contents)
}

/// The common name of a certificate: for agent certificates, the agent id.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

impl Pki {
    pub fn load(pki_dir: &Path) -> Result<Pki, PkiError> {
        let ca_cert_pem = read(&pki_dir.join(CA_CERT))?;
        let ca_key_pem = read(&pki_dir.join(CA_KEY))?;
        let ca_key = KeyPair::from_pem(&ca_key_pem)
            .map_err(cert_err(format!("{}", pki_dir.join(CA_KEY).display())))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key)
            .map_err(cert_err(format!("{}", pki_dir.join(CA_CERT).display())))?;
        Ok(Pki {
            master_cert_pem: read(&pki_dir.join(MASTER_CERT))?,
            master_key_pem: read(&pki_dir.join(MASTER_KEY))?,
            ca_cert_pem,
            issuer,
        })
    }

    /// Signs an agent's CSR as a client certificate whose common name is the agent id,
    /// whatever the CSR asked for, valid for `lifetime` from now (the agent renews it at two
    /// thirds of that). Returns the PEM and its fingerprint.
    pub fn sign_agent(
        &self,
        agent: &str,
        csr_pem: &str,
        lifetime: std::time::Duration,
    ) -> Result<(String, String), PkiError> {
        let bad = |reason: String| PkiError::BadRequest {
            agent: agent.to_owned(),
            reason,
        };
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| bad(e.to_string()))?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(agent);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        // Backdated a little for clocks slightly behind the master's; the renewal point (two
        // thirds of not_before..not_after) is computed by the agent from these two dates.
        let lifetime = Duration::try_from(lifetime).unwrap_or(Duration::days(3650));
        params.not_before = now - (lifetime / 60_i32).min(Duration::hours(1));
        params.not_after = now + lifetime;
        params.serial_number = Some(random_serial());
        csr.params = params;
        let cert = csr.signed_by(&self.issuer).map_err(cert_err(format!(
            "signing the certificate of agent {agent:?}"
        )))?;
        Ok((cert.pem(), fingerprint(cert.der())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn csr(cn: &str) -> anyhow::Result<(KeyPair, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(cn);
        let pem = params.serialize_request(&key)?.pem()?;
        Ok((key, pem))
    }

    #[test]
    fn init_writes_private_keys_0600_and_refuses_to_overwrite() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let pki = dir.path().join("pki");
        init(&pki, &["master.example".into()], false)?;
        for key in [CA_KEY, MASTER_KEY] {
            let mode = fs::metadata(pki.join(key))?.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
        let before = fs::read(pki.join(CA_CERT))?;
        assert!(matches!(init(&pki, &[], false), Err(PkiError::Exists(_))));
        assert_eq!(fs::read(pki.join(CA_CERT))?, before);
        init(&pki, &[], true)?;
        assert_ne!(fs::read(pki.join(CA_CERT))?, before);
        Ok(())
    }

    #[test]
    fn agent_certificates_carry_the_agent_id_not_what_the_csr_asked() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        init(dir.path(), &[], false)?;
        let pki = Pki::load(dir.path())?;
        let (key, pem) = csr("someone-else")?;
        let lifetime = std::time::Duration::from_secs(600);
        let (cert_pem, fp) = pki.sign_agent("node1", &pem, lifetime)?;
        let der = rustls_pem_der(&cert_pem)?;
        assert_eq!(common_name(&der).as_deref(), Some("node1"));
        assert_eq!(fingerprint(&der), fp);
        assert_eq!(pem_to_der(&cert_pem), Some(der.clone()));
        // The lifetime asked, to the second (signing takes well under one).
        let expires = not_after(&der).ok_or_else(|| anyhow::anyhow!("no not_after"))?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!((expires - now - 600).abs() <= 1, "{expires} vs {now}");
        assert_eq!(
            csr_public_key("node1", &pem)?,
            rcgen::PublicKeyData::der_bytes(&key).to_vec()
        );
        assert!(matches!(
            pki.sign_agent("node1", "garbage", lifetime),
            Err(PkiError::BadRequest { .. })
        ));
        Ok(())
    }

    fn rustls_pem_der(pem: &str) -> anyhow::Result<Vec<u8>> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())?;
        Ok(p.contents)
    }
}
