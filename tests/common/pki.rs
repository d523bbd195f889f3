//! Throw-away certificates for TLS tests, made at run time with the `openssl` CLI. This module
//! owns one temp dir holding: a CA; a server certificate from it (SAN `IP:127.0.0.1`,
//! `DNS:localhost`); a client certificate from it; an expired client certificate from it
//! (validity entirely in the past, via `openssl ca -startdate/-enddate`); and a second, unrelated
//! CA with a client certificate of its own. All keys are P-256 (fast to make). Dropping the
//! [`Pki`] removes every file.
//!
//! Not declared in `common/mod.rs`: a test includes it with
//! `#[path = "common/pki.rs"] mod pki;` next to its `mod common;`.

use crate::common::TempDir;
use std::process::{Command, Stdio};

const OPENSSL: &str = "openssl";

pub struct Pki {
    dir: TempDir,
}

/// Extensions of a leaf certificate signed by one of our CAs.
const SERVER_EXT: &str = "basicConstraints=critical,CA:FALSE\n\
keyUsage=critical,digitalSignature\n\
extendedKeyUsage=serverAuth,clientAuth\n\
subjectAltName=IP:127.0.0.1,DNS:localhost\n";
const CLIENT_EXT: &str = "basicConstraints=critical,CA:FALSE\n\
keyUsage=critical,digitalSignature\n\
extendedKeyUsage=clientAuth\n";

impl Pki {
    /// Makes every certificate; panics with openssl's output if any step fails.
    pub fn generate() -> Pki {
        let pki = Pki {
            dir: TempDir::new("pki"),
        };
        pki.ca("ca", "eae-test-ca");
        pki.ca("other-ca", "eae-unrelated-ca");
        std::fs::write(pki.dir.join("server.ext"), SERVER_EXT).unwrap();
        std::fs::write(pki.dir.join("client.ext"), CLIENT_EXT).unwrap();
        pki.leaf("server", "localhost", "ca", "server.ext");
        pki.leaf("client", "elector", "ca", "client.ext");
        pki.leaf("other-client", "elector", "other-ca", "client.ext");
        pki.expired("expired", "elector", "ca");
        pki
    }

    /// Absolute path of one of the files: `ca.pem`, `server.pem`, `server.key`, `client.pem`,
    /// `client.key`, `expired.pem`, `expired.key`, `other-ca.pem`, `other-client.pem`, ...
    pub fn path(&self, name: &str) -> String {
        let p = self.dir.join(name);
        assert!(p.exists(), "pki has no {name}");
        p.to_string_lossy().into_owned()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new(OPENSSL)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {OPENSSL}: {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `openssl req <mode>` with a new P-256 key in `<name>.key` and subject `/CN=<cn>`, writing
    /// `<name>.<out_ext>`, followed by `extra` arguments.
    fn req(&self, mode: &str, name: &str, cn: &str, out_ext: &str, extra: &[&str]) {
        let key = format!("{name}.key");
        let out = format!("{name}.{out_ext}");
        let subj = format!("/CN={cn}");
        let mut args = vec![
            "req",
            mode,
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &out,
            "-subj",
            &subj,
        ];
        args.extend_from_slice(extra);
        self.openssl(&args);
    }

    fn ca(&self, name: &str, cn: &str) {
        self.req(
            "-x509",
            name,
            cn,
            "pem",
            &[
                "-days",
                "2",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }

    fn csr(&self, name: &str, cn: &str) {
        self.req("-new", name, cn, "csr", &[]);
    }

    fn leaf(&self, name: &str, cn: &str, ca: &str, ext: &str) {
        self.csr(name, cn);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            &format!("{}", 1000 + name.len() * 7 + cn.len()),
            "-days",
            "2",
            "-sha256",
            "-extfile",
            ext,
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// A client certificate valid only on 1-2 January 2020. `openssl x509` of OpenSSL 3.0 cannot
    /// set past dates, `openssl ca` can.
    fn expired(&self, name: &str, cn: &str, ca: &str) {
        self.csr(name, cn);
        let db = self.dir.join(&format!("{name}-db"));
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(db.join("index"), "").unwrap();
        std::fs::write(db.join("serial"), "4242\n").unwrap();
        let cnf = format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {db}/index\nnew_certs_dir = {db}\n\
             serial = {db}/serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\n\
             x509_extensions = ext\n[p]\ncommonName = supplied\n[ext]\n{CLIENT_EXT}",
            db = db.display()
        );
        std::fs::write(self.dir.join(&format!("{name}.cnf")), cnf).unwrap();
        self.openssl(&[
            "ca",
            "-batch",
            "-notext",
            "-config",
            &format!("{name}.cnf"),
            "-cert",
            &format!("{ca}.pem"),
            "-keyfile",
            &format!("{ca}.key"),
            "-in",
            &format!("{name}.csr"),
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
            "-out",
            &format!("{name}.pem"),
        ]);
    }
}
