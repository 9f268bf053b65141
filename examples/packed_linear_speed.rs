//! A model-level side-by-side of the packed frozen linear layers: DETRIS
//! (random weights) in bf16 with libtorch's `linear`, with oneDNN's packed
//! bf16 weights and with int8 layers, one forward each in turn for several
//! rounds in one process, so that a shared machine's slow spells hit every
//! case alike. Prints each case's median and best seconds per image.
//!
//!   cargo run --release --example packed_linear_speed -- [variant] [size] [threads] [rounds]

use std::time::Instant;

use detris::config::DetrisConfig;
use detris::model::init::randomise;
use detris::model::packed_linear::Packing;
use detris::model::packing::{pack_frozen_linears, unpack_linears};
use detris::model::{Ctx, Levers};
use detris::Detris;
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let variant = args.first().map_or("detris-b", String::as_str);
    let size: usize = args.get(1).map_or(Ok(448), |s| s.parse())?;
    let threads: i32 = args.get(2).map_or(Ok(2), |s| s.parse())?;
    let rounds: usize = args.get(3).map_or(Ok(5), |s| s.parse())?;
    tch::set_num_threads(threads);
    let mut cfg = DetrisConfig::variant(variant)?;
    cfg.input_size = size;
    cfg.validate()?;
    let mut model = Detris::new_in(cfg.clone(), Device::Cpu, Kind::BFloat16)?;
    randomise(&model, 0);
    model.vs.freeze();
    let s = size as i64;
    let img = Tensor::randn([1, 3, s, s], (Kind::BFloat16, Device::Cpu));
    let ids = Tensor::zeros([1, cfg.word_len as i64], (Kind::Int64, Device::Cpu));
    let _ = ids.narrow(1, 0, 1).fill_(cfg.sot);
    let _ = ids.narrow(1, 1, 8).copy_(&Tensor::randint_low(300, 40000, [1, 8], (Kind::Int64, Device::Cpu)));
    let _ = ids.narrow(1, 9, 1).fill_(cfg.eot);
    let ctx = Ctx { train: false, levers: Levers::FAST, trace: None, sync_bn: None };
    let cases: [(&str, Option<Packing>); 3] =
        [("bf16 linear", None), ("bf16 packed", Some(Packing::Bf16)), ("int8", Some(Packing::Int8))];
    let mut times = vec![Vec::new(); cases.len()];
    let mut outputs: Vec<Option<Tensor>> = cases.iter().map(|_| None).collect();
    println!("{variant} at {size}, {threads} thread(s), {rounds} rounds (+1 warm-up), one image, one sentence");
    for round in 0..=rounds {
        for (i, (_, packing)) in cases.iter().enumerate() {
            unpack_linears(&mut model);
            if let Some(p) = packing {
                pack_frozen_linears(&mut model, *p)?;
            }
            let t = Instant::now();
            let logits = tch::no_grad(|| model.forward(&img, &ids, &ctx));
            if round > 0 {
                times[i].push(t.elapsed().as_secs_f64());
            }
            outputs[i] = Some(logits);
        }
    }
    let base = outputs[0].as_ref().unwrap().to_kind(Kind::Double);
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (med0, best0) = (median(&times[0]), best(&times[0]));
    println!(
        "{:<12} {:>10} {:>10} {:>9} {:>9} {:>22}",
        "case", "median s", "best s", "x(med)", "x(best)", "logits rel L2 vs bf16"
    );
    for (i, (name, _)) in cases.iter().enumerate() {
        let out = outputs[i].as_ref().unwrap().to_kind(Kind::Double);
        let rel = (&out - &base).norm().double_value(&[]) / base.norm().double_value(&[]);
        let (m, b) = (median(&times[i]), best(&times[i]));
        println!("{name:<12} {m:>10.3} {b:>10.3} {:>8.2}x {:>8.2}x {rel:>22.2e}", med0 / m, best0 / b);
    }
    Ok(())
}
