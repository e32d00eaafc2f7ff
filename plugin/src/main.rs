//! `flannel`: the CNI plugin binary. Reads the CNI environment and the
//! config on stdin, prints the result (or the error JSON) on stdout, logs
//! on stderr, exits non-zero on failure.

use std::io::{Read, Write};

fn main() {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    if command.is_empty() {
        eprintln!(
            "CNI plugin flannel v{}\nCNI protocol versions supported: {}",
            env!("CARGO_PKG_VERSION"),
            flannel_cni::spec::SUPPORTED_VERSIONS.join(", ")
        );
    }
    let mut stdin = Vec::new();
    // VERSION takes no input; everything else reads its config.
    if command != "VERSION" {
        if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
            let err = flannel_cni::spec::CniError::new(
                flannel_cni::spec::code::IO_FAILURE,
                format!("error reading from stdin: {e}"),
            );
            fail(&err, &stdin);
        }
    }
    match flannel_cni::run(|k| std::env::var(k).ok(), &stdin) {
        Ok(Some(out)) => println!("{out}"),
        Ok(None) => {}
        Err(err) => fail(&err, &stdin),
    }
}

/// Prints the error document in the caller's version and exits 1.
fn fail(err: &flannel_cni::spec::CniError, stdin: &[u8]) -> ! {
    let version = flannel_cni::config::peek_version(stdin)
        .unwrap_or_else(|| flannel_cni::spec::LATEST.as_str().to_string());
    eprintln!("flannel: {err}");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", err.to_json(&version));
    let _ = out.flush();
    std::process::exit(1);
}
