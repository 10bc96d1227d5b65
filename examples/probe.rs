use std::time::{Duration, Instant};
fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let fi: u64 = std::env::var("FI").ok().and_then(|v| v.parse().ok()).unwrap_or(500); let q = evspool::Queue::open(dir.path(), evspool::QueueConfig { flush_interval: Duration::from_millis(fi), ..Default::default() }).unwrap();
        let payload = bytes::Bytes::from(vec![b'x'; 300]);
        let n = 200_000;
        let t = Instant::now();
        for _ in 0..n { let _ = q.enqueue("t", payload.clone()).unwrap(); }
        q.sync().await.unwrap();
        eprintln!("fill {:.0} ev/s", n as f64 / t.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_secs(2));
        let (mut tl, mut ts) = (Duration::ZERO, Duration::ZERO);
        let t = Instant::now();
        let mut got = 0;
        loop {
            let a = Instant::now();
            let Some(l) = q.lease("t", 50).unwrap() else { break };
            tl += a.elapsed();
            got += l.len();
            let b = Instant::now();
            q.ack(l).unwrap();
            ts += b.elapsed();
        }
        let el = t.elapsed();
        eprintln!("drain {got} in {:?}: {:.0} ev/s; lease {:?} ({:.1}us/batch), ack {:?} ({:.1}us/batch)", el, got as f64/el.as_secs_f64(), tl, tl.as_micros() as f64/(got/50) as f64, ts, ts.as_micros() as f64/(got/50) as f64);
    });
}
