//! The snapshot swap: a source publishing a new `Arc<Snapshot>` on the watch channel,
//! and what each new connection pays to read the current one.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use ferrule_control::model::Snapshot;
use tokio::sync::watch;

fn swap(c: &mut Criterion) {
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    let next = Arc::new(Snapshot::default());
    c.bench_function("snapshot swap (send_replace + reader's borrow)", |b| {
        b.iter(|| {
            tx.send_replace(next.clone());
            black_box(rx.borrow().clone())
        })
    });
    c.bench_function("snapshot read (borrow + Arc clone)", |b| {
        b.iter(|| black_box(rx.borrow().clone()))
    });
}

criterion_group!(benches, swap);
criterion_main!(benches);
