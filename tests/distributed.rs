//! The c10d shim over Gloo: two ranks (threads of this test, each its own
//! process group member) all-reduce, broadcast and all-gather.

use std::time::Duration;

use detris::distributed::{Group, Rendezvous};
use tch::{Device, Kind, Tensor};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn two_ranks<T: Send + 'static>(f: impl Fn(Group) -> T + Send + Sync + Copy + 'static) -> Vec<T> {
    let port = free_port();
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            std::thread::spawn(move || {
                let r = Rendezvous {
                    host: "127.0.0.1".into(),
                    port,
                    rank,
                    world: 2,
                    host_store: rank == 0,
                    timeout: Duration::from_secs(30),
                };
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
