//! Property test: random layouts, concurrent overlapping writes (fast path
//! or control path), discards, reads and leg failures/re-attaches, checked
//! against a flat in-memory model. Mirror legs must be byte-identical once
//! everything is quiet and every leg is back.

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use vtgt_engine::extent::LegState;
use vtgt_engine::{Backend, Exposure, IoKind, Layout, MemBackend, Volume};

const BS: usize = 512;

#[derive(Debug, Clone)]
enum Op {
    /// Concurrent writes: (lba, blocks, through the fast path).
    Batch(Vec<(u64, u64, bool)>),
    Discard(u64, u64),
    Read(u64, u64, bool),
    FailLeg(usize),
    Attach(usize),
    /// Live migration onto a fresh backend, while a batch of writes runs.
    Migrate(Vec<(u64, u64, bool)>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec((0u64..130, 1u64..20, any::<bool>()), 1..5).prop_map(Op::Batch),
        1 => (0u64..130, 1u64..20).prop_map(|(l, n)| Op::Discard(l, n)),
        2 => (0u64..130, 1u64..30, any::<bool>()).prop_map(|(l, n, f)| Op::Read(l, n, f)),
        1 => (0usize..4).prop_map(Op::FailLeg),
        1 => (0usize..4).prop_map(Op::Attach),
        1 => prop::collection::vec((0u64..130, 1u64..20, any::<bool>()), 0..4).prop_map(Op::Migrate),
    ]
}

/// (backend sizes in blocks, layout, groups of backends that mirror each
/// other block for block).
fn layout(kind: u8) -> (Vec<u64>, Layout, Vec<Vec<usize>>) {
    use Layout::*;
    let b = Backend;
    match kind {
        0 => (
            vec![40, 40, 40],
            Stripe {
                unit_blocks: 4,
                legs: vec![b(0), b(1), b(2)],
            },
            vec![],
        ),
        1 => (
            vec![100, 100, 100],
            Mirror {
                legs: vec![b(0), b(1), b(2)],
            },
            vec![vec![0, 1, 2]],
        ),
        2 => (
            vec![48; 4],
            Stripe {
                unit_blocks: 4,
                legs: vec![
                    Mirror {
                        legs: vec![b(0), b(1)],
                    },
                    Mirror {
                        legs: vec![b(2), b(3)],
                    },
                ],
            },
            vec![vec![0, 1], vec![2, 3]],
        ),
        3 => (
            vec![30, 50, 20],
            Concat {
                parts: vec![b(0), b(1), b(2)],
            },
            vec![],
        ),
        4 => (
            vec![40, 40, 30, 20, 20],
            Concat {
                parts: vec![
                    Mirror {
                        legs: vec![b(0), b(1)],
                    },
                    b(2),
                    Stripe {
                        unit_blocks: 2,
                        legs: vec![b(3), b(4)],
                    },
                ],
            },
            vec![vec![0, 1]],
        ),
        _ => (
            vec![40; 4],
            Mirror {
                legs: vec![
                    Stripe {
                        unit_blocks: 4,
                        legs: vec![b(0), b(1)],
                    },
                    Stripe {
                        unit_blocks: 4,
                        legs: vec![b(2), b(3)],
                    },
                ],
            },
            vec![vec![0, 2], vec![1, 3]],
        ),
    }
}

/// Block `k` of write `id`: stamped with both so any mix is detectable.
fn block_data(id: u32, lba: u64) -> Vec<u8> {
    let mut v = vec![(id as u8) ^ 0x5A; BS];
    v[..4].copy_from_slice(&id.to_le_bytes());
    v[4..12].copy_from_slice(&lba.to_le_bytes());
    v
}

fn write_data(id: u32, lba: u64, blocks: u64) -> Bytes {
    let mut v = Vec::with_capacity(blocks as usize * BS);
    for k in 0..blocks {
        v.extend_from_slice(&block_data(id, lba + k));
    }
    Bytes::from(v)
}

async fn do_write(e: &Exposure, lba: u64, data: Bytes, fp: bool) {
    let blocks = (data.len() / BS) as u64;
    if fp {
        if let Ok(a) = e.admit(1, IoKind::Write, lba, blocks) {
            a.write(data, false).await.expect("fast-path write");
            return;
        }
    }
    // A fault (or the control path by choice): what the front ends do.
    e.volume()
        .write(lba, data, false)
        .await
        .expect("control-path write");
}

async fn do_read(e: &Exposure, lba: u64, blocks: u64, fp: bool) -> Bytes {
    if fp {
        if let Ok(a) = e.admit(1, IoKind::Read, lba, blocks) {
            return a.read().await.expect("fast-path read");
        }
    }
    e.volume()
        .read(lba, blocks)
        .await
        .expect("control-path read")
}

async fn run(kind: u8, ops: Vec<Op>) {
    let (sizes, layout, groups) = layout(kind);
    let backends: Vec<Arc<dyn Backend>> = sizes
        .iter()
        .map(|s| Arc::new(MemBackend::new(s * BS as u64).unwrap()) as Arc<dyn Backend>)
        .collect();
    let v = Volume::with_layout("p", backends.clone(), &layout, BS as u32, None).unwrap();
    let e = Exposure::new(v.clone());
    let n = v.num_blocks();
    let mut model = vec![0u8; n as usize * BS];
    let mut next_id = 1u32;
    let legs: Vec<usize> = v.map().legs().iter().map(|l| l.0).collect();
    for op in ops {
        match op {
            Op::Migrate(ws) => {
                if v.is_mirrored() {
                    assert!(v
                        .migrate(Arc::new(MemBackend::new(n * BS as u64).unwrap()))
                        .await
                        .is_err());
                    continue;
                }
                let v2 = v.clone();
                let mig = tokio::spawn(async move {
                    v2.migrate(Arc::new(MemBackend::new(n * BS as u64).unwrap()))
                        .await
                });
                // Sequential writes during the copy: the model stays exact.
                for (l, b, fp) in ws {
                    let l = l % n;
                    let b = b.min(n - l);
                    next_id += 1;
                    let d = write_data(next_id, l, b);
                    do_write(&e, l, d.clone(), fp).await;
                    model[l as usize * BS..(l + b) as usize * BS].copy_from_slice(&d);
                }
                mig.await.unwrap().unwrap();
                assert!(
                    v.read(0, n).await.unwrap()[..] == model[..],
                    "migration lost data"
                );
            }
            Op::Batch(ws) => {
                let ws: Vec<(u64, u64, bool, u32)> = ws
                    .into_iter()
                    .filter_map(|(l, b, fp)| {
                        let l = l % n;
                        let b = b.min(n - l);
                        next_id += 1;
                        (b > 0).then_some((l, b, fp, next_id))
                    })
                    .collect();
                let mut tasks = Vec::new();
                for &(l, b, fp, id) in &ws {
                    let e = e.clone();
                    tasks.push(tokio::spawn(async move {
                        do_write(&e, l, write_data(id, l, b), fp).await
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
                // Each block now holds one of the writes that covered it
                // (in some order), whole, never a mix.
                let got = v.read(0, n).await.unwrap();
                for blk in 0..n {
                    let r = blk as usize * BS..(blk as usize + 1) * BS;
                    let covering: Vec<u32> = ws
                        .iter()
                        .filter(|w| w.0 <= blk && blk < w.0 + w.1)
                        .map(|w| w.3)
                        .collect();
                    if covering.is_empty() {
                        assert!(got[r.clone()] == model[r], "untouched block {blk} changed");
                    } else {
                        assert!(
                            covering
                                .iter()
                                .any(|id| got[r.clone()] == block_data(*id, blk)[..]),
                            "block {blk} is not any of writes {covering:?}"
                        );
                        model[r.clone()].copy_from_slice(&got[r]);
                    }
                }
            }
            Op::Discard(l, b) => {
                let l = l % n;
                let b = b.min(n - l);
                v.discard(l, b).await.unwrap();
                model[l as usize * BS..(l + b) as usize * BS].fill(0);
            }
            Op::Read(l, b, fp) => {
                let l = l % n;
                let b = b.min(n - l);
                let got = do_read(&e, l, b, fp).await;
                assert!(
                    got[..] == model[l as usize * BS..(l + b) as usize * BS],
                    "read {l}+{b} differs from the model"
                );
            }
            Op::FailLeg(i) if !legs.is_empty() => {
                // Refused for a mirror's last live leg; that is fine.
                let _ = v.fail_legs(&[legs[i % legs.len()]], None).await;
            }
            Op::Attach(i) if !legs.is_empty() => {
                let id = legs[i % legs.len()];
                if v.mirror_status().legs.contains(&(id, LegState::Dead)) {
                    v.attach_leg(id).await.unwrap();
                }
            }
            _ => {}
        }
    }
    for id in legs {
        if v.mirror_status().legs.contains(&(id, LegState::Dead)) {
            v.attach_leg(id).await.unwrap();
        }
    }
    assert!(
        v.read(0, n).await.unwrap()[..] == model[..],
        "final image differs"
    );
    for g in groups {
        let img = |i: usize| {
            let mut buf = vec![0u8; backends[i].len() as usize];
            backends[i].read_at(0, &mut buf).unwrap();
            buf
        };
        let first = img(g[0]);
        for &o in &g[1..] {
            assert!(img(o) == first, "backends {} and {o} differ", g[0]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn compositions_match_the_model(kind in 0u8..6, ops in prop::collection::vec(op(), 1..25)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(kind, ops));
    }
}
