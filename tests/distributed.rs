//! The c10d shim over Gloo: two ranks (threads of this test, each its own
//! process group member) all-reduce, broadcast and all-gather.

use std::time::Duration;

use detris::distributed::sync_bn::SyncBn;
use detris::distributed::{Group, Rendezvous};
use tch::{Device, Kind, Tensor};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn two_ranks<T: Send + 'static>(f: impl Fn(Group) -> T + Send + Sync + Copy + 'static) -> Vec<T> {
    two_ranks_within(Duration::from_secs(30), f)
}

fn two_ranks_within<T: Send + 'static>(
    timeout: Duration,
    f: impl Fn(Group) -> T + Send + Sync + Copy + 'static,
) -> Vec<T> {
    let port = free_port();
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            std::thread::spawn(move || {
                let r = Rendezvous { host: "127.0.0.1".into(), port, rank, world: 2, host_store: rank == 0, timeout };
                f(Group::join(&r, "test/").unwrap())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn allreduce_broadcast_allgather_over_gloo() {
    let out = two_ranks(|g| {
        let r = g.rank as f64;
        let a = Tensor::full([3], r + 1.0, (Kind::Float, Device::Cpu));
        let b = Tensor::full([2, 2], 10.0 * (r + 1.0), (Kind::Float, Device::Cpu));
        g.allreduce_sum(&[&a, &b]).unwrap();
        let c = Tensor::full([4], r + 5.0, (Kind::Double, Device::Cpu));
        g.broadcast(&[&c], 1).unwrap();
        let gathered = g.allgather(&Tensor::from_slice(&[g.rank as i64, 7])).unwrap();
        let gathered: Vec<Vec<i64>> = gathered.iter().map(|t| Vec::<i64>::try_from(t).unwrap()).collect();
        (
            Vec::<f32>::try_from(&a).unwrap(),
            Vec::<f32>::try_from(&b.flatten(0, -1)).unwrap(),
            Vec::<f64>::try_from(&c).unwrap(),
            gathered,
        )
    });
    for (a, b, c, gathered) in out {
        assert_eq!(a, vec![3.0; 3], "1 + 2 summed over two ranks");
        assert_eq!(b, vec![30.0; 4]);
        assert_eq!(c, vec![6.0; 4], "rank 1's value everywhere");
        assert_eq!(gathered, vec![vec![0, 7], vec![1, 7]], "rank order");
    }
}

#[test]
fn sync_batchnorm_without_its_peer_goes_on_locally_and_the_step_names_the_lost_rank() {
    let out = two_ranks_within(Duration::from_secs(10), |g| {
        // Both ranks are fully connected before one leaves (else the join itself can fail).
        g.barrier().unwrap();
        if g.rank == 1 {
            return None; // rank 1 leaves: its group is dropped
        }
        let sync = SyncBn::new(&g);
        let x = Tensor::randn([4, 3, 2, 2], (Kind::Float, Device::Cpu));
        let (weight, bias) =
            (Tensor::randn([3], (Kind::Float, Device::Cpu)), Tensor::zeros([3], (Kind::Float, Device::Cpu)));
        let (mean, var) =
            (Tensor::zeros([3], (Kind::Float, Device::Cpu)), Tensor::ones([3], (Kind::Float, Device::Cpu)));
        let y = sync.forward(&x, &weight, &bias, &mean, &var, 0.1, 1e-5);
        let local = x.batch_norm(Some(&weight), Some(&bias), None::<&Tensor>, None::<&Tensor>, true, 0.1, 1e-5, false);
        let diff = (y - local).abs().max().double_value(&[]);
        let untouched = mean.abs().max().double_value(&[]) == 0.0 && var.eq(1.0).all().int64_value(&[]) == 1;
        let error = sync.check().map_err(|e| format!("{e:#}"));
        Some((diff, untouched, error, sync.check().is_ok()))
    });
    let (diff, untouched, error, then_clear) = out[0].clone().expect("rank 0's result");
    assert_eq!(diff, 0.0, "the forward goes on with this rank's batch statistics");
    assert!(untouched, "the running statistics are left as they were");
    let e = error.expect_err("the failure is kept for the step");
    assert!(e.contains("SyncBatchNorm") && e.contains("lost rank 1"), "{e}");
    assert!(then_clear, "a check takes the failure");
}

use detris::distributed::sampler::{randperm, DistributedSampler};

fn sampler(len: usize, world: usize, rank: usize, shuffle: bool, seed: u64, drop_last: bool) -> DistributedSampler {
    DistributedSampler { len, world, rank, shuffle, seed, drop_last }
}

#[test]
fn randperm_is_libtorchs_seeded_permutation() {
    // torch.randperm(n, generator=torch.Generator().manual_seed(s)) runs the
    // same libtorch kernel as the default generator after manual_seed(s):
    // tch's randperm after tch::manual_seed is that reference here.
    for (n, seed) in [(10usize, 0u64), (44, 5), (1000, 12345), (1, 3)] {
        tch::manual_seed(seed as i64);
        let via_tch: Vec<i64> = Vec::try_from(&Tensor::randperm(n as i64, (Kind::Int64, Device::Cpu))).unwrap();
        let ours: Vec<i64> = randperm(n, seed).into_iter().map(|i| i as i64).collect();
        assert_eq!(ours, via_tch, "n {n} seed {seed}");
    }
    assert_ne!(randperm(50, 0), randperm(50, 1), "the seed matters");
}

#[test]
fn sampler_pads_by_repetition_and_strides_by_rank() {
    // DistributedSampler(shuffle=False) by its rule: pad [0..len) with its
    // own head to a multiple of world, then rank::world.
    let lists = |len, world, drop_last| -> Vec<Vec<usize>> {
        (0..world).map(|r| sampler(len, world, r, false, 0, drop_last).indices(0)).collect()
    };
    assert_eq!(lists(10, 3, false), vec![vec![0, 3, 6, 9], vec![1, 4, 7, 0], vec![2, 5, 8, 1]]);
    assert_eq!(lists(10, 3, true), vec![vec![0, 3, 6], vec![1, 4, 7], vec![2, 5, 8]]);
    assert_eq!(lists(2, 5, false), vec![vec![0], vec![1], vec![0], vec![1], vec![0]], "padding longer than the data");
    assert_eq!(lists(8, 2, false), vec![vec![0, 2, 4, 6], vec![1, 3, 5, 7]]);
    assert_eq!(sampler(7, 2, 0, false, 0, true).num_samples(), 3);
    assert_eq!(sampler(7, 2, 0, false, 0, false).num_samples(), 4);
}

#[test]
fn shuffled_sampler_strides_the_permutation_of_seed_plus_epoch() {
    for (len, world, seed, epoch) in [(10usize, 2usize, 0u64, 0u64), (11, 3, 5, 2), (44, 4, 7, 9), (5, 8, 1, 1)] {
        let perm = randperm(len, seed + epoch);
        let total = len.div_ceil(world) * world;
        let padded: Vec<usize> = perm.iter().cycle().take(total).copied().collect();
        let mut seen = vec![0usize; len];
        for rank in 0..world {
            let got = sampler(len, world, rank, true, seed, false).indices(epoch);
            let want: Vec<usize> = padded.iter().skip(rank).step_by(world).copied().collect();
            assert_eq!(got, want, "len {len} world {world} seed {seed} epoch {epoch} rank {rank}");
            got.iter().for_each(|&i| seen[i] += 1);
        }
        assert!(seen.iter().all(|&c| c >= 1), "every index appears on some rank");
        assert_eq!(seen.iter().sum::<usize>(), total);
        let other_epoch = sampler(len, world, 0, true, seed, false).indices(epoch + 1);
        assert!(len < 4 || other_epoch != sampler(len, world, 0, true, seed, false).indices(epoch));
    }
}
