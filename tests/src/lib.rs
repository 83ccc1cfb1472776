//! Cross-runtime integration tests for the bus.
//!
//! **Placeholder.** The scenarios parametrised over the tokio, smol and compio
//! adapters land with the adapter issues. Until then this crate checks that
//! every adapter crate links against the same protocol core.

#[cfg(test)]
mod tests {
    #[test]
    fn every_adapter_links_the_same_protocol_core() {
        let versions = [
            bus_tokio::bus_proto::wire::PROTOCOL_VERSION,
            bus_smol::bus_proto::wire::PROTOCOL_VERSION,
            bus_compio::bus_proto::wire::PROTOCOL_VERSION,
        ];
        assert!(
            versions
                .iter()
                .all(|&v| v == bus_proto::wire::PROTOCOL_VERSION)
        );
    }
}
