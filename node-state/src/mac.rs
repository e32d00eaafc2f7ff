//! Random MAC addresses for the devices both binaries create (the plugin's
//! bridge and veth ends, flanneld's VXLAN device): chosen up front, so
//! nothing has to be read back from the kernel, and pinned, so a bridge's
//! address does not follow its ports.

/// A MAC address, as the netlink layer takes it.
pub type Mac = [u8; 6];

#[derive(Debug, thiserror::Error)]
#[error("cannot get random bytes for a MAC address: {0}")]
pub struct MacError(getrandom::Error);

/// A random locally administered unicast MAC, as the kernel would pick.
pub fn random_mac() -> Result<Mac, MacError> {
    let mut mac = [0u8; 6];
    getrandom::fill(&mut mac).map_err(MacError)?;
    Ok(local_unicast(mac))
}

/// `bytes` with the multicast bit cleared and the locally administered
/// bit set, so the address can never clash with a vendor-assigned one.
pub fn local_unicast(mut bytes: Mac) -> Mac {
    bytes[0] = (bytes[0] & 0xfe) | 0x02;
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_macs_are_local_unicast_and_vary() {
        let first = random_mac().unwrap();
        for _ in 0..32 {
            let mac = random_mac().unwrap();
            assert_eq!(mac[0] & 0x03, 0x02);
            assert_ne!(mac, first);
        }
        assert_eq!(
            local_unicast([0xff; 6]),
            [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(local_unicast([0; 6])[0], 0x02);
    }
}
