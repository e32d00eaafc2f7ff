//! The host end's name of a pod's veth pair, derived from the attachment
//! alone: the plugin's DEL and GC find the device without the pod's
//! namespace, and flanneld's status finds it from the IPAM store.

/// `veth` + 8 hex digits of the FNV-1a hash of `containerID \0 ifname`.
/// Stable, so it can be found again from the attachment alone; 15 bytes
/// at most, as Linux requires.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let bytes = container_id.bytes().chain([0]).chain(ifname.bytes());
    for b in bytes {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("veth{hash:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_and_short() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_eq!(a.len(), 12);
        assert!(a.starts_with("veth"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        // The separator keeps ("ab", "c…") apart from ("a", "bc…").
        assert_ne!(host_veth_name("ab", "ceth"), host_veth_name("a", "bceth"));
        // FNV-1a of the lone separator byte.
        assert_eq!(host_veth_name("", ""), "veth050c5d1f");
    }
}
