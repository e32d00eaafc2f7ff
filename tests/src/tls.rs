//! Certificates for etcd over TLS: a CA, a server certificate for given
//! IP addresses and a client certificate, made with the `openssl` command
//! in a directory of the test's.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run;

/// The PEM files of a small PKI, all in one directory.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// Generates into `dir` a self-signed CA and, signed by it, a server
    /// certificate whose subject alternative names are `server_ips` and a
    /// client certificate (CN `flanneld`). EC P-256 keys, valid two days.
    pub fn generate(dir: &Path, server_ips: &[&str]) -> Pki {
        let pki = Pki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        };
        let ca_key = dir.join("ca-key.pem");
        let mut ca = openssl(&["req", "-x509", "-days", "2", "-subj", "/CN=flannel test CA"]);
        ca.arg("-keyout").arg(&ca_key).arg("-out").arg(&pki.ca);
        run(&mut ca);
        let sans: Vec<String> = server_ips.iter().map(|ip| format!("IP:{ip}")).collect();
        let server_ext = format!(
            "subjectAltName={}\nextendedKeyUsage=serverAuth,clientAuth\n",
            sans.join(",")
        );
        let signer = (&pki.ca, &ca_key);
        let server = (&pki.server_cert, &pki.server_key);
        issue(dir, "etcd", &server_ext, server, signer);
        let client = (&pki.client_cert, &pki.client_key);
        issue(
            dir,
            "flanneld",
            "extendedKeyUsage=clientAuth\n",
            client,
            signer,
        );
        pki
    }
}

/// `openssl <args>` making a new EC P-256 key, unencrypted.
fn openssl(args: &[&str]) -> Command {
    let mut cmd = Command::new("openssl");
    cmd.args(args).args([
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ]);
    cmd
}

/// A key and a certificate for `cn` with the extensions `ext`, signed by
/// `signer` (certificate, key).
fn issue(dir: &Path, cn: &str, ext: &str, out: (&PathBuf, &PathBuf), signer: (&PathBuf, &PathBuf)) {
    let (csr, ext_file) = (dir.join(format!("{cn}.csr")), dir.join(format!("{cn}.ext")));
    std::fs::write(&ext_file, ext).expect("write extensions");
    let mut req = openssl(&["req", "-subj", &format!("/CN={cn}")]);
    req.arg("-keyout").arg(out.1).arg("-out").arg(&csr);
    run(&mut req);
    let mut sign = Command::new("openssl");
    sign.args(["x509", "-req", "-days", "2", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(signer.0)
        .arg("-CAkey")
        .arg(signer.1)
        .arg("-CAcreateserial")
        .arg("-extfile")
        .arg(&ext_file)
        .arg("-out")
        .arg(out.0);
    run(&mut sign);
}
