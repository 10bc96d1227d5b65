//! What the group stresses share: their seeded steps, and the check of W2
//! when they end.

use super::*;

/// A xorshift step (a stress replays from its seed).
pub(super) fn xs(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// W2 once a stress ended: no request written twice, every completed one
/// (`completed`: the first seqs their producers got) in the file, and the
/// reservations equal to what was written. Returns how many requests were
/// written. `what` names the run in the messages.
pub(super) fn assert_written_once(f: &Fixture, completed: &BTreeSet<u64>, what: &str) -> usize {
    let st = f.log.lock();
    let written: Vec<u64> = st.unindexed.iter().map(|e| e.first_seq).collect();
    let distinct: BTreeSet<u64> = written.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        written.len(),
        "{what}a request written twice"
    );
    assert!(
        completed.is_subset(&distinct),
        "{what}a completed request is not in the file"
    );
    assert_eq!(
        f.totals.get().0,
        st.unindexed_usage.events,
        "{what}reservations = writes"
    );
    written.len()
}
