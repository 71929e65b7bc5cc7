//! `fleetsnap certs init`: a CA and certificates for a test or demo fleet.
//!
//! Production fleets may use their own CA: what matters is one URI subject alternative name
//! per certificate, `fleetsnap://agent|peer|admin/NAME`, and for coordinators the DNS name
//! `fleetsnap-coordinator`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use fleetsnap_proto::tls::{PeerIdentity, Role, SERVER_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

const CA_NAME: &str = "fleetsnap fleet CA";

fn ca_params() -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, CA_NAME);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    Ok(p)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The file stem for an identity: `peer-1`, `agent-host-a`, `admin-ops`.
pub fn stem(role: Role, name: &str) -> String {
    format!("{role}-{name}")
}

/// Creates (or reuses) the CA in `dir` and a certificate for every identity; returns the files
/// written.
pub fn init(dir: &Path, identities: &[PeerIdentity], force: bool) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (ca_pem, ca_key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let mut written = Vec::new();
    let ca_key = if ca_key_path.exists() && ca_pem.exists() {
        // Reuse the CA: certificates added later (a new coordinator, a new agent) join the same
        // fleet.
        let text = std::fs::read_to_string(&ca_key_path)
            .with_context(|| format!("cannot read {}", ca_key_path.display()))?;
        KeyPair::from_pem(&text)
            .with_context(|| format!("{} is not a private key", ca_key_path.display()))?
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        std::fs::write(&ca_pem, cert.pem())
            .with_context(|| format!("cannot write {}", ca_pem.display()))?;
        write_private(&ca_key_path, &key.serialize_pem())?;
        written.push(ca_pem.display().to_string());
        written.push(ca_key_path.display().to_string());
        key
    };
    let issuer = Issuer::new(ca_params()?, ca_key);
    for id in identities {
        if id.name.is_empty() || id.name.contains(['/', ' ']) {
            bail!(
                "{:?} is not a usable {} name (no spaces or slashes)",
                id.name,
                id.role
            );
        }
        let stem = stem(id.role, &id.name);
        let (cert_path, key_path) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        if cert_path.exists() && !force {
            bail!("{} exists; pass --force to replace it", cert_path.display());
        }
        let dns = if id.role == Role::Peer {
            vec![SERVER_NAME.to_string()]
        } else {
            Vec::new()
        };
        let mut p = CertificateParams::new(dns)?;
        p.distinguished_name.push(
            DnType::CommonName,
            format!("fleetsnap {} {}", id.role, id.name),
        );
        p.subject_alt_names
            .push(SanType::URI(id.uri().as_str().try_into()?));
        p.extended_key_usages = match id.role {
            Role::Peer => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            _ => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(825);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &issuer)?;
        std::fs::write(&cert_path, cert.pem())
            .with_context(|| format!("cannot write {}", cert_path.display()))?;
        write_private(&key_path, &key.serialize_pem())?;
        written.push(cert_path.display().to_string());
        written.push(key_path.display().to_string());
    }
    Ok(written)
}
