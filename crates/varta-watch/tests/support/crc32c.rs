//! CRC-32C (Castagnoli) computed bit by bit: an oracle independent of the crate's table, so a
//! test that builds frames by hand does not lean on the code it checks. Included with `#[path]`
//! by the integration tests and the property tests.

/// The CRC-32C of `data` (reflected polynomial `0x82F6_3B78`, initial and final XOR `!0`).
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn the_oracle_gives_the_standard_check_value() {
    // The check value of CRC-32C: the CRC of the nine ASCII digits "123456789" (RFC 3720).
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
}
