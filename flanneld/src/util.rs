//! Small helpers with no better home.

/// 64 random bits from the kernel (`getrandom(2)`); falls back to the clock
/// and pid, which is still good enough to spread subnet picks.
pub fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32)
    })
}

/// A random locally administered unicast MAC address (the plugin's kind);
/// with no kernel randomness, one from [`random_u64`]'s fallback.
pub fn random_mac() -> [u8; 6] {
    node_state::random_mac().unwrap_or_else(|_| {
        let r = random_u64().to_ne_bytes();
        node_state::mac::local_unicast([r[0], r[1], r[2], r[3], r[4], r[5]])
    })
}

/// Keeps the heap small: one malloc arena for all threads (they allocate
/// little and rarely), so memory freed by one is reused by the others.
pub fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns freed heap memory to the kernel after a burst (a full listing
/// or a large reconcile), so the resident size stays at the steady state.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn macs_are_local_unicast_and_vary() {
        let a = super::random_mac();
        assert_eq!(a[0] & 0x03, 0x02);
        assert_ne!(a, super::random_mac());
    }
}
