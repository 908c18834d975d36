//! Entries kept by the TTP. A read-only mount cannot write the volume, so its entries go
//! through the host's agent to the TTP, which keeps them per domain in arrival order
//! (`Ttp.AppendAudit`); `domfs audit` reads them back (`Agent.ReadAudit`) and shows them
//! beside the volume's own chained log, newest first.
//!
//! They are not chained: each is the record as its host sent it, with the sender's
//! certificate name and the TTP's sequence number — the TTP vouches for who sent it, not
//! for what it says. A retry after a lost answer stores a batch twice under new numbers;
//! repeats are recognised by their bytes and shown once.

use std::collections::HashSet;

use super::query::Filter;
use super::record::AuditRecord;

/// One entry as the TTP keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteRecord {
    /// The TTP's per-domain sequence number (from 1, in arrival order).
    pub sequence: u64,
    /// The certificate name of the host that sent it.
    pub sender: String,
    /// When the TTP stored it (Unix seconds).
    pub received_unix: u64,
    pub record: AuditRecord,
}

/// An entry the TTP keeps that is not a record (a broken or hostile sender).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undecodable {
    pub sequence: u64,
    pub sender: String,
    pub what: String,
}

/// The TTP's entries as they arrived: (sequence, sender, received, bytes).
pub type RawRemote = (u64, String, u64, Vec<u8>);

/// Decodes what the TTP returned, oldest first; a repeat of an earlier entry's bytes from
/// the same sender is dropped, an entry that does not decode is set aside. An entry's
/// `seq` is 0 whatever its sender wrote: it has no place in the volume's chain.
pub fn decode_remote(raw: Vec<RawRemote>) -> (Vec<RemoteRecord>, Vec<Undecodable>) {
    let mut seen = HashSet::new();
    let mut records = Vec::new();
    let mut bad = Vec::new();
    for (sequence, sender, received_unix, bytes) in raw {
        match AuditRecord::decode(&bytes) {
            Ok(mut record) => {
                record.seq = 0;
                // Per sender: another host sending the same bytes first must not take
                // this one's place.
                if seen.insert((sender.clone(), bytes)) {
                    records.push(RemoteRecord {
                        sequence,
                        sender,
                        received_unix,
                        record,
                    });
                }
            }
            Err(e) => bad.push(Undecodable {
                sequence,
                sender,
                what: e.to_string(),
            }),
        }
    }
    (records, bad)
}

/// Where an entry shown was kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept<'a> {
    /// In the volume's own chained log (its `seq` is its place in the chain).
    Volume,
    /// By the TTP, sent by a read-only host.
    Ttp { sequence: u64, sender: &'a str },
}

impl Kept<'_> {
    /// `volume` or `ttp`.
    pub fn name(&self) -> &'static str {
        match self {
            Kept::Volume => "volume",
            Kept::Ttp { .. } => "ttp",
        }
    }
}

/// An entry to show, with where it was kept.
#[derive(Clone, Copy, Debug)]
pub struct Shown<'a> {
    pub record: &'a AuditRecord,
    pub kept: Kept<'a>,
}

/// The entries of both sources that pass `filter`, newest first: each source in its own
/// order (the log's, the TTP's arrival order), the two merged by time (a volume entry
/// first on a tie).
pub fn merged_newest_first<'a>(
    volume: &'a [AuditRecord],
    remote: &'a [RemoteRecord],
    filter: &Filter,
) -> Vec<Shown<'a>> {
    let mut local = volume.iter().rev().filter(|r| filter.matches(r)).peekable();
    let mut kept = remote
        .iter()
        .rev()
        .filter(|r| filter.matches(&r.record))
        .peekable();
    let mut out = Vec::new();
    loop {
        let take_local = match (local.peek(), kept.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => l.time_us >= r.record.time_us,
        };
        if take_local {
            if let Some(record) = local.next() {
                out.push(Shown {
                    record,
                    kept: Kept::Volume,
                });
            }
        } else if let Some(r) = kept.next() {
            out.push(Shown {
                record: &r.record,
                kept: Kept::Ttp {
                    sequence: r.sequence,
                    sender: &r.sender,
                },
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditOp;

    fn rec(path: &str, time_us: i64) -> AuditRecord {
        AuditRecord {
            path: path.into(),
            op: AuditOp::Open,
            time_us,
            ..AuditRecord::default()
        }
    }

    fn raw(sequence: u64, sender: &str, r: &AuditRecord) -> RawRemote {
        (sequence, sender.into(), 0, r.encode())
    }

    #[test]
    fn a_copy_from_another_sender_does_not_hide_the_original() {
        let a = AuditRecord {
            seq: 99,
            ..rec("/a", 10)
        };
        let (records, _) = decode_remote(vec![raw(1, "impostor", &a), raw(2, "ward-b", &a)]);
        let senders: Vec<_> = records.iter().map(|r| r.sender.as_str()).collect();
        assert_eq!(senders, ["impostor", "ward-b"]);
        assert!(records.iter().all(|r| r.record.seq == 0));
    }

    #[test]
    fn repeats_are_dropped_and_garbage_set_aside() {
        let a = rec("/a", 10);
        let b = rec("/b", 20);
        let (records, bad) = decode_remote(vec![
            raw(1, "ward-b", &a),
            raw(2, "ward-b", &b),
            // A retry after a lost answer: the same bytes under new numbers.
            raw(3, "ward-b", &a),
            raw(4, "ward-b", &b),
            (5, "evil".into(), 0, vec![0xff; 3]),
        ]);
        let kept: Vec<_> = records
            .iter()
            .map(|r| (r.sequence, r.record.path.as_str()))
            .collect();
        assert_eq!(kept, [(1, "/a"), (2, "/b")]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].sequence, 5);
        assert_eq!(bad[0].sender, "evil");
    }

    #[test]
    fn both_sources_merge_newest_first_each_in_its_own_order() {
        let volume = vec![rec("/v1", 10), rec("/v2", 30), rec("/v3", 50)];
        let (remote, _) = decode_remote(vec![
            raw(1, "ro-host", &rec("/r1", 20)),
            raw(2, "ro-host", &rec("/r2", 30)),
            raw(3, "ro-host", &rec("/r3", 60)),
        ]);
        let shown = merged_newest_first(&volume, &remote, &Filter::default());
        let order: Vec<_> = shown
            .iter()
            .map(|s| (s.record.path.as_str(), s.kept.name()))
            .collect();
        assert_eq!(
            order,
            [
                ("/r3", "ttp"),
                ("/v3", "volume"),
                ("/v2", "volume"),
                ("/r2", "ttp"),
                ("/r1", "ttp"),
                ("/v1", "volume"),
            ]
        );
        assert_eq!(
            shown[0].kept,
            Kept::Ttp {
                sequence: 3,
                sender: "ro-host"
            }
        );
        let only_r2 = Filter {
            path: Some("/r2".into()),
            ..Filter::default()
        };
        let shown = merged_newest_first(&volume, &remote, &only_r2);
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0].record.path, "/r2");
    }
}
