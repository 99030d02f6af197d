//! Cost of one memory snapshot (target: under 50 µs, cheap enough to take per frame).
//!
//! `process_memory` is the `/proc/self/status` read alone; `memory_snapshot` is a full
//! [`MemorySnapshot::take`] (process + GPU query + timestamp + label). Without the `cuda`
//! feature the GPU query returns at once, so run with `--features cuda` on a GPU machine to
//! include the driver calls.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use surveil_memory::{GpuMemory, MemorySnapshot, ProcessMemory};

fn snapshot(c: &mut Criterion) {
    c.bench_function("process_memory", |b| {
        b.iter(|| black_box(ProcessMemory::current()))
    });
    c.bench_function("gpu_query", |b| b.iter(|| black_box(GpuMemory::query())));
    c.bench_function("memory_snapshot", |b| {
        b.iter(|| black_box(MemorySnapshot::take(black_box("frame"))))
    });
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
