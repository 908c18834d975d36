//! The PolicyPCR digest a decryption key must carry, computed from a quoted PCR selection
//! and digest (TPM 2.0 Part 3, TPM2_PolicyPCR):
//!
//! policyDigest = SHA-256(0^32 || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || pcrDigest)
//!
//! starting from the all-zero digest of a fresh session, with TPM_CC_PolicyPCR =
//! 0x0000017F (big-endian) and the selection marshalled as the TPM received it.

use sha2::{Digest as _, Sha256};

const TPM_CC_POLICY_PCR: u32 = 0x0000_017f;
const TPM_ALG_SHA256: u16 = 0x000b;

/// A selection of SHA-256 PCRs as a TPM quoted it: the select bitmap's length in octets
/// and the selected indices (ascending).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sha256Selection {
    pub size_of_select: u8,
    pub indices: Vec<u8>,
}

impl Sha256Selection {
    /// The marshalled TPML_PCR_SELECTION with this one bank.
    pub(crate) fn marshal(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10);
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        out.push(self.size_of_select);
        let mut bitmap = vec![0u8; usize::from(self.size_of_select)];
        for &index in &self.indices {
            if let Some(octet) = bitmap.get_mut(usize::from(index / 8)) {
                *octet |= 1 << (index % 8);
            }
        }
        out.extend_from_slice(&bitmap);
        out
    }

    /// "sha256:7,16".
    pub(crate) fn describe(&self) -> String {
        let indices: Vec<String> = self.indices.iter().map(|i| i.to_string()).collect();
        format!("sha256:{}", indices.join(","))
    }
}

/// The policy digest of a session that started empty and ran PolicyPCR over `selection`
/// whose values digest to `pcr_digest`.
pub(crate) fn policy_pcr_digest(selection: &Sha256Selection, pcr_digest: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update([0u8; 32]);
    hash.update(TPM_CC_POLICY_PCR.to_be_bytes());
    hash.update(selection.marshal());
    hash.update(pcr_digest);
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeros_digest(count: usize) -> Vec<u8> {
        let mut hash = Sha256::new();
        for _ in 0..count {
            hash.update([0u8; 32]);
        }
        hash.finalize().to_vec()
    }

    #[test]
    fn marshals_the_selection() {
        let sel = Sha256Selection {
            size_of_select: 3,
            indices: vec![0, 7, 16, 23],
        };
        assert_eq!(
            sel.marshal(),
            vec![0, 0, 0, 1, 0x00, 0x0b, 3, 0x81, 0x00, 0x81]
        );
        assert_eq!(sel.describe(), "sha256:0,7,16,23");
    }

    /// Known answers from a TPM (swtpm 0.7.1, `tpm2_createpolicy --policy-pcr`, trial
    /// sessions) with the PCRs at zero.
    #[test]
    fn matches_the_digests_a_tpm_computes() {
        let pcr16 = Sha256Selection {
            size_of_select: 3,
            indices: vec![16],
        };
        assert_eq!(
            hex::encode(policy_pcr_digest(&pcr16, &zeros_digest(1))),
            "bff2d58e9813f97cefc14f72ad8133bc7092d652b7c877959254af140c841f36"
        );
        let pcr7_16 = Sha256Selection {
            size_of_select: 3,
            indices: vec![7, 16],
        };
        assert_eq!(
            hex::encode(policy_pcr_digest(&pcr7_16, &zeros_digest(2))),
            "2aa20d10266e2597a0c0c14ae1d5db0ea93b4c20d76c66d032e4910413cb5fa8"
        );
    }
}
