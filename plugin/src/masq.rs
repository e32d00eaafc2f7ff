//! Per-pod masquerade, as the reference bridge plugin's `ipMasq` does it.
//!
//! Each pod gets a nat chain `CNI-<24 hex of sha512(name + containerID)>`
//! accepting traffic to its own subnet and masquerading the rest (except
//! multicast), and a POSTROUTING rule sending the pod's source address to
//! it, all tagged `name: "<net>" id: "<id>"`. Names and rules are the
//! reference's, so rules left by flannel + bridge are removed by our DEL.
//!
//! Each change is one `iptables-restore --noflush` batch (arguments, no
//! shell). Removal first reads `iptables-save -t nat` and deletes exactly
//! the rules found, so it succeeds whatever is (or is not) left.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::iptables::{restore, save, IptablesError};

/// The chain of one attachment, as libcni's `FormatChainName`.
pub fn chain_name(network: &str, container_id: &str) -> String {
    let digest = sha512(format!("{network}{container_id}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("CNI-{}", &hex[..24])
}

/// The rule comment, as libcni's `FormatComment` (Go's %q quoting).
fn comment(network: &str, container_id: &str) -> String {
    format!("\"name: \\\"{network}\\\" id: \\\"{container_id}\\\"\"")
}

/// Adds the pod's chain and its POSTROUTING jump.
pub fn setup(network: &str, container_id: &str, addr: Ipv4Net) -> Result<(), IptablesError> {
    let chain = chain_name(network, container_id);
    let c = comment(network, container_id);
    let batch = format!(
        "*nat\n:{chain} - [0:0]\n\
         -A {chain} -d {subnet} -m comment --comment {c} -j ACCEPT\n\
         -A {chain} ! -d 224.0.0.0/4 -m comment --comment {c} -j MASQUERADE\n\
         -A POSTROUTING -s {ip}/32 -m comment --comment {c} -j {chain}\n\
         COMMIT\n",
        subnet = addr.trunc(),
        ip = addr.addr(),
    );
    restore(&batch)
}

/// Removes the chains (and their jumps) of these containers; what is
/// already gone is skipped. One read, and at most one write.
pub fn teardown(network: &str, container_ids: &[&str]) -> Result<(), IptablesError> {
    let saved = save(Some("nat"))?;
    let chains: Vec<String> = container_ids
        .iter()
        .map(|id| chain_name(network, id))
        .collect();
    match teardown_batch(&saved, &chains) {
        Some(batch) => restore(&batch),
        None => Ok(()),
    }
}

/// The restore batch deleting `chains` and every rule jumping to them,
/// or `None` when none of them exists in `saved` (iptables-save output).
fn teardown_batch(saved: &str, chains: &[String]) -> Option<String> {
    let mut batch = String::from("*nat\n");
    let mut found = false;
    for line in saved.lines() {
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        if chains.iter().any(|c| line.ends_with(&format!(" -j {c}"))) {
            batch += &format!("-D {rule}\n");
            found = true;
        }
    }
    for chain in chains {
        if saved.lines().any(|l| l.starts_with(&format!(":{chain} "))) {
            // Declaring an existing chain under --noflush empties it.
            batch += &format!(":{chain} - [0:0]\n-X {chain}\n");
            found = true;
        }
    }
    batch += "COMMIT\n";
    found.then_some(batch)
}

/// Whether the pod's jump rule is in place (for CHECK).
pub fn is_set_up(network: &str, container_id: &str, ip: Ipv4Addr) -> Result<bool, IptablesError> {
    let saved = save(Some("nat"))?;
    let jump = format!("-A POSTROUTING -s {ip}/32 ");
    let chain = chain_name(network, container_id);
    Ok(saved
        .lines()
        .any(|l| l.starts_with(&jump) && l.ends_with(&format!(" -j {chain}"))))
}

/// SHA-512 (FIPS 180-4): only chain names need it, so a small local
/// implementation instead of a crypto dependency.
fn sha512(data: &[u8]) -> [u8; 64] {
    let mut h = SHA512_INIT;
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 128 != 112 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u128) * 8).to_be_bytes());
    for block in msg.chunks(128) {
        compress(&mut h, block);
    }
    let mut out = [0u8; 64];
    for (chunk, word) in out.chunks_mut(8).zip(h) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

fn compress(h: &mut [u64; 8], block: &[u8]) {
    let mut w = [0u64; 80];
    for (i, word) in block.chunks(8).enumerate() {
        w[i] = u64::from_be_bytes(word.try_into().expect("8 bytes"));
    }
    for i in 16..80 {
        let s0 = w[i - 15].rotate_right(1) ^ w[i - 15].rotate_right(8) ^ (w[i - 15] >> 7);
        let s1 = w[i - 2].rotate_right(19) ^ w[i - 2].rotate_right(61) ^ (w[i - 2] >> 6);
        w[i] = w[i - 16]
            .wrapping_add(s0)
            .wrapping_add(w[i - 7])
            .wrapping_add(s1);
    }
    let mut v = *h;
    for i in 0..80 {
        let [a, b, c, d, e, f, g, hh] = v;
        let s1 = e.rotate_right(14) ^ e.rotate_right(18) ^ e.rotate_right(41);
        let ch = (e & f) ^ (!e & g);
        let t1 = hh
            .wrapping_add(s1)
            .wrapping_add(ch)
            .wrapping_add(SHA512_K[i])
            .wrapping_add(w[i]);
        let s0 = a.rotate_right(28) ^ a.rotate_right(34) ^ a.rotate_right(39);
        let maj = (a & b) ^ (a & c) ^ (b & c);
        let t2 = s0.wrapping_add(maj);
        v = [t1.wrapping_add(t2), a, b, c, d.wrapping_add(t1), e, f, g];
    }
    for (x, y) in h.iter_mut().zip(v) {
        *x = x.wrapping_add(y);
    }
}

const SHA512_INIT: [u64; 8] = [
    0x6a09e667f3bcc908,
    0xbb67ae8584caa73b,
    0x3c6ef372fe94f82b,
    0xa54ff53a5f1d36f1,
    0x510e527fade682d1,
    0x9b05688c2b3e6c1f,
    0x1f83d9abfb41bd6b,
    0x5be0cd19137e2179,
];

const SHA512_K: [u64; 80] = [
    0x428a2f98d728ae22,
    0x7137449123ef65cd,
    0xb5c0fbcfec4d3b2f,
    0xe9b5dba58189dbbc,
    0x3956c25bf348b538,
    0x59f111f1b605d019,
    0x923f82a4af194f9b,
    0xab1c5ed5da6d8118,
    0xd807aa98a3030242,
    0x12835b0145706fbe,
    0x243185be4ee4b28c,
    0x550c7dc3d5ffb4e2,
    0x72be5d74f27b896f,
    0x80deb1fe3b1696b1,
    0x9bdc06a725c71235,
    0xc19bf174cf692694,
    0xe49b69c19ef14ad2,
    0xefbe4786384f25e3,
    0x0fc19dc68b8cd5b5,
    0x240ca1cc77ac9c65,
    0x2de92c6f592b0275,
    0x4a7484aa6ea6e483,
    0x5cb0a9dcbd41fbd4,
    0x76f988da831153b5,
    0x983e5152ee66dfab,
    0xa831c66d2db43210,
    0xb00327c898fb213f,
    0xbf597fc7beef0ee4,
    0xc6e00bf33da88fc2,
    0xd5a79147930aa725,
    0x06ca6351e003826f,
    0x142929670a0e6e70,
    0x27b70a8546d22ffc,
    0x2e1b21385c26c926,
    0x4d2c6dfc5ac42aed,
    0x53380d139d95b3df,
    0x650a73548baf63de,
    0x766a0abb3c77b2a8,
    0x81c2c92e47edaee6,
    0x92722c851482353b,
    0xa2bfe8a14cf10364,
    0xa81a664bbc423001,
    0xc24b8b70d0f89791,
    0xc76c51a30654be30,
    0xd192e819d6ef5218,
    0xd69906245565a910,
    0xf40e35855771202a,
    0x106aa07032bbd1b8,
    0x19a4c116b8d2d0c8,
    0x1e376c085141ab53,
    0x2748774cdf8eeb99,
    0x34b0bcb5e19b48a8,
    0x391c0cb3c5c95a63,
    0x4ed8aa4ae3418acb,
    0x5b9cca4f7763e373,
    0x682e6ff3d6b2b8a3,
    0x748f82ee5defb2fc,
    0x78a5636f43172f60,
    0x84c87814a1f0ab72,
    0x8cc702081a6439ec,
    0x90befffa23631e28,
    0xa4506cebde82bde9,
    0xbef9a3f7b2c67915,
    0xc67178f2e372532b,
    0xca273eceea26619c,
    0xd186b8c721c0c207,
    0xeada7dd6cde0eb1e,
    0xf57d4f7fee6ed178,
    0x06f067aa72176fba,
    0x0a637dc5a2c898a6,
    0x113f9804bef90dae,
    0x1b710b35131c471b,
    0x28db77f523047d84,
    0x32caab7b40c72493,
    0x3c9ebe0a15c9bebc,
    0x431d67c49c100d4c,
    0x4cc5d4becb3e42b6,
    0x597f299cfc657e2a,
    0x5fcb6fab3ad6faec,
    0x6c44198c4a475817,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha512_known_answers() {
        let hex = |d: [u8; 64]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert!(hex(sha512(b"abc")).starts_with("ddaf35a193617abacc417349ae204131"));
        assert!(hex(sha512(b"")).starts_with("cf83e1357eefb8bdf1542850d66d8007"));
        // Two blocks of padding.
        let long = [b'a'; 200];
        assert!(hex(sha512(&long)).starts_with("4b11459c33f52a22ee8236782714c150"));
    }

    #[test]
    fn chain_names_match_the_reference_bridge() {
        // Seen in iptables-save after the reference bridge's ADD.
        assert_eq!(
            chain_name("cbr0", "abc0.3.1"),
            "CNI-bb7d03d39bcea4783bd151a2"
        );
        assert_eq!(
            chain_name("cbr0", "abc1.0.0"),
            "CNI-62805778e942e8d881d77d8e"
        );
    }

    #[test]
    fn teardown_deletes_exactly_what_exists() {
        let saved = "*nat\n:POSTROUTING ACCEPT [0:0]\n:CNI-bb7d03d39bcea4783bd151a2 - [0:0]\n\
            -A POSTROUTING -s 10.244.3.2/32 -m comment --comment \"name: \\\"cbr0\\\" id: \\\"abc0.3.1\\\"\" -j CNI-bb7d03d39bcea4783bd151a2\n\
            -A POSTROUTING -s 10.244.3.9/32 -j OTHER\n\
            -A CNI-bb7d03d39bcea4783bd151a2 -d 10.244.3.0/24 -j ACCEPT\nCOMMIT\n";
        let chains = [chain_name("cbr0", "abc0.3.1")];
        let batch = teardown_batch(saved, &chains).unwrap();
        assert_eq!(
            batch,
            "*nat\n-D POSTROUTING -s 10.244.3.2/32 -m comment --comment \"name: \\\"cbr0\\\" id: \\\"abc0.3.1\\\"\" -j CNI-bb7d03d39bcea4783bd151a2\n\
             :CNI-bb7d03d39bcea4783bd151a2 - [0:0]\n-X CNI-bb7d03d39bcea4783bd151a2\nCOMMIT\n"
        );
        assert_eq!(teardown_batch(saved, &[chain_name("cbr0", "other")]), None);
    }
}
