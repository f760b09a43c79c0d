//! `quorumkv certs init DIR`: a development CA, a certificate for every node (valid as server
//! and as client, for the peer and the client port), a client certificate for the CLI from a
//! second CA (never a member's), and a peer token: everything `scripts/start-3-nodes.sh --tls`
//! needs, made with `rcgen`.
//!
//! For test clusters and trying TLS out. In production, certificates come from the
//! organisation's CA (README, "Security"); quorumkv only reads PEM files.

use std::io::Read;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::CertifiedIssuer;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;

/// Certificates made here are valid this long: a year, so a test cluster left running does
/// not break soon, and a leaked development key does not stay valid for ever.
pub const DEVELOPMENT_CERT_VALIDITY_DAYS: i64 = 365;
/// Most node certificates `certs init` makes at once.
pub const MAX_DEVELOPMENT_NODES: u64 = 99;
/// Random bytes in a generated peer token (printed as hex: twice as many characters).
pub const GENERATED_TOKEN_BYTES: usize = 32;

/// The names every node certificate is valid for, besides those given with `--hosts`.
const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// What `certs init` writes.
pub struct CertsInit<'a> {
    pub dir: &'a Path,
    /// Node certificates `node-1.pem` ... `node-N.pem`.
    pub nodes: u64,
    /// More host names or addresses every node certificate is valid for.
    pub hosts: Vec<String>,
}

/// Writes `ca.pem`, `ca-key.pem`, `node-N.pem`/`node-N-key.pem`, `client-ca.pem`,
/// `client-ca-key.pem`, `client.pem`/`client-key.pem` and `peer-token` into the directory (created when missing). Refuses a directory that
/// already holds a CA, so an existing cluster's certificates are never overwritten.
pub fn init(request: &CertsInit<'_>) -> Result<(), String> {
    if !(1..=MAX_DEVELOPMENT_NODES).contains(&request.nodes) {
        return Err(format!("--nodes must be between 1 and {MAX_DEVELOPMENT_NODES}"));
    }
    let dir = request.dir;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if dir.join("ca.pem").exists() {
        return Err(format!("{} already holds a CA (ca.pem); choose an empty directory", dir.display()));
    }
    let failed = |e: rcgen::Error| format!("cannot make a certificate: {e}");
    let now = time::OffsetDateTime::now_utc();
    let validity = |params: &mut CertificateParams| {
        // A day back, so a node whose clock is slightly behind accepts it at once.
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(DEVELOPMENT_CERT_VALIDITY_DAYS);
    };

    // A CA, written as `<file>.pem` and `<file>-key.pem`.
    let make_ca = |common_name: &str, file: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().map_err(failed)?).map_err(failed)?;
        write_file(&dir.join(format!("{file}-key.pem")), ca.key().serialize_pem().as_bytes(), true)?;
        write_file(&dir.join(format!("{file}.pem")), ca.pem().as_bytes(), false)?;
        Ok::<_, String>(ca)
    };
    let ca = make_ca("quorumkv development CA", "ca")?;

    // A certificate `name` signed by `issuer`, written as `<name>.pem` and `<name>-key.pem`.
    let leaf = |issuer: &CertifiedIssuer<'_, KeyPair>,
                name: &str,
                names: Vec<String>,
                usages: Vec<ExtendedKeyUsagePurpose>|
     -> Result<(), String> {
        let mut params = CertificateParams::new(names).map_err(failed)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        validity(&mut params);
        let key = KeyPair::generate().map_err(failed)?;
        let cert = params.signed_by(&key, issuer).map_err(failed)?;
        write_file(&dir.join(format!("{name}-key.pem")), key.serialize_pem().as_bytes(), true)?;
        write_file(&dir.join(format!("{name}.pem")), cert.pem().as_bytes(), false)
    };
    let mut names: Vec<String> = LOCAL_NAMES.iter().map(|name| name.to_string()).collect();
    names.extend(request.hosts.iter().map(|host| host.trim().to_string()).filter(|host| !host.is_empty()));
    for id in 1..=request.nodes {
        // Server and client: a node's certificate is presented by its listeners and when it
        // calls its peers.
        let usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        leaf(&ca, &format!("node-{id}"), names.clone(), usages)?;
    }
    // The CLI's certificate comes from a CA of its own: the peer port trusts every certificate
    // of the peer CA as a member, and a client must never be one.
    let client_ca = make_ca("quorumkv development client CA", "client-ca")?;
    leaf(&client_ca, "client", Vec::new(), vec![ExtendedKeyUsagePurpose::ClientAuth])?;
    write_file(&dir.join("peer-token"), format!("{}\n", random_token()?).as_bytes(), true)
}

/// A peer token of [`GENERATED_TOKEN_BYTES`] random bytes from the kernel, in hex.
pub fn random_token() -> Result<String, String> {
    let mut bytes = [0u8; GENERATED_TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Writes a new file; secrets readable by their owner only.
fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), String> {
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;

    use super::*;

    /// Goal: the files load as the node loads them, and the node certificate is valid for the
    /// local names and the extra host, signed by the CA.
    #[test]
    fn init_makes_certificates_the_node_can_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        init(&CertsInit { dir: dir.path(), nodes: 2, hosts: vec!["node1.example".into()] }).expect("init");
        let pair = crate::tls::ReloadableCert::load(&dir.path().join("node-2.pem"), &dir.path().join("node-2-key.pem"));
        pair.expect("node certificate loads");
        let roots = crate::tls::load_roots(&dir.path().join("ca.pem")).expect("CA loads");
        assert_eq!(roots.len(), 1);
        let pem = std::fs::read(dir.path().join("node-1.pem")).expect("read");
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).expect("pem");
        let cert = webpki::EndEntityCert::try_from(&der).expect("parses");
        for name in ["localhost", "127.0.0.1", "node1.example"] {
            let server_name = rustls::pki_types::ServerName::try_from(name).expect("name");
            cert.verify_is_valid_for_subject_name(&server_name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
        // The CLI's certificate is not one of the peer CA's (which would make it a member).
        let client_pem = std::fs::read(dir.path().join("client.pem")).expect("read");
        let client_der = rustls::pki_types::CertificateDer::from_pem_slice(&client_pem).expect("pem");
        let ca_pem = std::fs::read(dir.path().join("ca.pem")).expect("read");
        let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(&ca_pem).expect("pem");
        let anchors = [webpki::anchor_from_trusted_cert(&ca_der).expect("anchor")];
        let client = webpki::EndEntityCert::try_from(&client_der).expect("parses");
        let chains_to_ca = |cert: &webpki::EndEntityCert<'_>| {
            let now = rustls::pki_types::UnixTime::now();
            let usage = webpki::KeyUsage::client_auth();
            cert.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &anchors, &[], now, usage, None, None).map(|_| ())
        };
        assert!(chains_to_ca(&client).is_err(), "client.pem must not chain to the peer CA");
        // The same check passes for a node's certificate (so the refusal above is the CA's).
        let node = chains_to_ca(&cert);
        assert!(node.is_ok(), "node-1.pem chains to the peer CA: {:?}", node.err());
        assert!(dir.path().join("client-ca.pem").exists());
        let token = std::fs::read_to_string(dir.path().join("peer-token")).expect("token");
        assert_eq!(token.trim().len(), 2 * GENERATED_TOKEN_BYTES);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("node-1-key.pem")).expect("key").permissions().mode();
        assert_eq!(mode & 0o077, 0, "keys are private");
        let again = init(&CertsInit { dir: dir.path(), nodes: 1, hosts: Vec::new() });
        assert!(again.expect_err("refused").contains("already holds a CA"));
    }
}
