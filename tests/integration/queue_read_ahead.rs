//! Reading ahead in body files (`src/queue/log/read_ahead.rs`) while the
//! file is still being written: a consumer following a topic's tail must
//! read every event as it was enqueued, never bytes from before an append
//! landed (the zeros written ahead of a generation's end with `fsync`, G6).

use evspool::{Queue, QueueConfig};
use evspool_testkit::queue::accepted_seq;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "t";

fn payload(n: u64) -> Vec<u8> {
    format!(
        r#"{{"event":"e","n":{n},"pad":"{}"}}"#,
        "x".repeat((n % 200) as usize)
    )
    .into_bytes()
}

#[test]
fn a_consumer_following_the_tail_reads_every_event_intact_while_appends_overwrite_the_zeros_ahead()
{
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(
        dir.path(),
        QueueConfig {
            fsync: true,
            commit_interval: Duration::from_millis(1),
            ..QueueConfig::default()
        },
    )
    .unwrap();
    const PER_PRODUCER: u64 = 6_000;
    let sent: Arc<Mutex<BTreeMap<u64, Vec<u8>>>> = Arc::default();
    let producers: Vec<_> = (0..2u64)
        .map(|p| {
            let (q, sent) = (q.clone(), sent.clone());
            std::thread::spawn(move || {
                for i in 0..PER_PRODUCER {
                    let body = payload(p * PER_PRODUCER + i);
                    let out = q.enqueue(TOPIC, body.clone()).unwrap();
                    sent.lock().unwrap().insert(accepted_seq(&out), body);
                    if i % 64 == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let mut got: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < (2 * PER_PRODUCER) as usize {
        assert!(
            Instant::now() < deadline,
            "only {} events in 60 s",
            got.len()
        );
        let Some(lease) = q.lease(TOPIC, 50).unwrap() else {
            let damaged = q.stats().quarantined_records;
            assert_eq!(damaged, 0, "damage found after {} events", got.len());
            std::thread::sleep(Duration::from_micros(200));
            continue;
        };
        for e in lease.events() {
            assert!(
                got.insert(e.seq(), e.payload.to_vec()).is_none(),
                "seq {} leased twice",
                e.seq()
            );
        }
        q.ack(lease).unwrap();
    }
    for p in producers {
        p.join().unwrap();
    }
    let stats = q.stats();
    assert_eq!(stats.quarantined_records, 0, "damage found: {stats:?}");
    assert_eq!(got, *sent.lock().unwrap(), "every event, with its bytes");
    q.close();
}
