//! Which PCRs the host key is bound to: parsing `sha256:7,16`, and the TPM structures for it.

use std::convert::TryFrom;

use tss_esapi::{
    interface_types::algorithm::HashingAlgorithm,
    structures::{PcrSelectSize, PcrSelectionList, PcrSlot},
};

use super::TpmError;

/// The PCRs of a TPM 2.0 PC client platform: 0..=23.
pub const MAX_PCR_INDEX: u8 = 23;

/// Which PCRs the decryption key is bound to, e.g. `sha256:7,16`.
///
/// Parsing sorts and de-duplicates the indices, so `sha256:16,7,7` and `sha256:7,16` are the
/// same selection and print the same way; the TPM digests the selected PCRs in ascending
/// order anyway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcrSelection {
    /// Only "sha256" for now.
    pub bank: String,
    pub indices: Vec<u8>,
}

impl std::str::FromStr for PcrSelection {
    type Err = TpmError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            TpmError::Failed(format!(
                "bad PCR selection {s:?}: {why} (expected e.g. \"sha256:7,16\")"
            ))
        };
        let (bank, list) = s.trim().split_once(':').ok_or_else(|| bad("no ':'"))?;
        let bank = bank.trim().to_ascii_lowercase();
        if bank != "sha256" {
            return Err(bad("only the sha256 bank is supported"));
        }
        let mut indices = Vec::new();
        for part in list.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(bad("empty PCR index"));
            }
            let index: u8 = part.parse().map_err(|_| bad("PCR index is not a number"))?;
            if index > MAX_PCR_INDEX {
                return Err(bad("PCR index above 23"));
            }
            indices.push(index);
        }
        indices.sort_unstable();
        indices.dedup();
        Ok(PcrSelection { bank, indices })
    }
}

impl std::fmt::Display for PcrSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let indices: Vec<String> = self.indices.iter().map(|i| i.to_string()).collect();
        write!(f, "{}:{}", self.bank, indices.join(","))
    }
}

impl PcrSelection {
    /// The hash algorithm of the bank.
    pub fn hashing_algorithm(&self) -> Result<HashingAlgorithm, TpmError> {
        match self.bank.as_str() {
            "sha256" => Ok(HashingAlgorithm::Sha256),
            other => Err(TpmError::Failed(format!("unsupported PCR bank {other:?}"))),
        }
    }

    /// The TPML_PCR_SELECTION for TPM commands (three select octets: PCRs 0..=23, as a PC
    /// client TPM has them).
    pub fn to_tpm(&self) -> Result<PcrSelectionList, TpmError> {
        if self.indices.is_empty() {
            return Err(TpmError::Failed("empty PCR selection".into()));
        }
        let mut slots = Vec::with_capacity(self.indices.len());
        for &index in &self.indices {
            if index > MAX_PCR_INDEX {
                return Err(TpmError::Failed(format!("PCR index {index} above 23")));
            }
            let slot = PcrSlot::try_from(1u32 << index)
                .map_err(|e| TpmError::Failed(format!("PCR index {index}: {e}")))?;
            slots.push(slot);
        }
        PcrSelectionList::builder()
            .with_size_of_select(PcrSelectSize::ThreeOctets)
            .with_selection(self.hashing_algorithm()?, &slots)
            .build()
            .map_err(|e| TpmError::Failed(format!("PCR selection: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<PcrSelection, TpmError> {
        s.parse()
    }

    #[test]
    fn parses_lists_and_single_indices() {
        let sel = parse("sha256:7,16").expect("parses");
        assert_eq!(sel.bank, "sha256");
        assert_eq!(sel.indices, vec![7, 16]);
        assert_eq!(sel.to_string(), "sha256:7,16");

        let sel = parse("sha256:16").expect("parses");
        assert_eq!(sel.indices, vec![16]);
        assert_eq!(sel.to_string(), "sha256:16");

        let sel = parse(" SHA256: 16 , 7,7 ,0,23").expect("parses");
        assert_eq!(sel.indices, vec![0, 7, 16, 23]);
        assert_eq!(sel.to_string(), "sha256:0,7,16,23");
        assert_eq!(parse(&sel.to_string()).expect("round trip"), sel);
    }

    #[test]
    fn refuses_bad_selections() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:7,",
            "sha256:,7",
            "sha256:24",
            "sha256:-1",
            "sha256:256",
            "sha256:7;16",
            "sha1:7",
            "sha384:7",
            ":7",
            "sha256:x",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn converts_to_a_tpm_selection() {
        let list = parse("sha256:7,16").expect("parses").to_tpm().expect("tpm");
        let selections = list.get_selections();
        assert_eq!(selections.len(), 1);
        assert_eq!(selections[0].hashing_algorithm(), HashingAlgorithm::Sha256);
        assert_eq!(selections[0].size_of_select(), PcrSelectSize::ThreeOctets);
        assert_eq!(
            selections[0].selected(),
            vec![PcrSlot::Slot7, PcrSlot::Slot16]
        );

        let empty = PcrSelection {
            bank: "sha256".into(),
            indices: vec![],
        };
        assert!(empty.to_tpm().is_err());
    }
}
