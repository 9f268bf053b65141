use anyhow::Result;
use clap::Args;

use detris::bench::{print_table, run_case, run_case_isolated, sgemm_gflops, BenchCase, BenchResult};
use detris::model::Levers;

#[derive(Args)]
pub struct BenchArgs {
    /// Variants to measure (detris-b, detris-l, detris-l-mixed).
    #[arg(long, value_delimiter = ',', default_value = "detris-b")]
    variant: Vec<String>,
    /// Input side in pixels (a multiple of 14).
    #[arg(long, default_value_t = 448)]
    size: usize,
    /// Sentence counts K for the several-sentences figures.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    sentences: Vec<usize>,
    /// Intra-op threads (0 = libtorch's default).
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Precision of the fast mode: f32, f16 or bf16 (plain mode is always f32).
    #[arg(long, default_value = "f32")]
    precision: String,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed passes per case and round (the median counts).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Rounds over all cases; each case reports its best round.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Also measure each lever alone (the plain mode plus that one lever), one sentence.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    levers: bool,
    /// Write the results as JSON to this file too.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Internal: run one case (JSON) in this process and print its result.
    #[arg(long, hide = true)]
    one: Option<String>,
}

pub fn run(a: BenchArgs) -> Result<()> {
    if let Some(one) = &a.one {
        let case: BenchCase = serde_json::from_str(one)?;
        println!("{}", serde_json::to_string(&run_case(&case, a.warmup, a.runs)?)?);
        return Ok(());
    }
    if a.runs == 0 || a.rounds == 0 {
        return Err(super::usage("--runs and --rounds must be at least 1"));
    }
    let cpu = a.device == "cpu";
    // The machine's ceiling: a large square sgemm and DINOv2-B's MLP product at 448.
    let peak = cpu.then(|| {
        let square = sgemm_gflops(2048, 2048, 2048, a.threads);
        let mlp = sgemm_gflops(1029, 768, 3072, a.threads);
        println!(
            "machine: f32 matmul {square:.1} GFLOP/s (2048³), {mlp:.1} GFLOP/s (1029×768·768×3072, DINOv2-B's MLP at 448), {} thread(s)",
            a.threads
        );
        square.max(mlp)
    });
    let mut cases = Vec::new();
    for variant in &a.variant {
        let base = BenchCase {
            variant: variant.clone(),
            input_size: a.size,
            sentences: 1,
            mode: "plain".into(),
            threads: a.threads,
            device: a.device.clone(),
            precision: "f32".into(),
        };
        cases.push(base.clone());
        if a.levers {
            cases.extend(Levers::named().map(|(name, _)| BenchCase { mode: name.into(), ..base.clone() }));
        }
        for &k in &a.sentences {
            cases.push(BenchCase { sentences: k, mode: "fast".into(), precision: a.precision.clone(), ..base.clone() });
        }
    }
    // Rounds go through every case in turn, so that a slow spell of a shared
    // machine hits all cases alike; each case keeps its best round.
    let mut results: Vec<Option<BenchResult>> = vec![None; cases.len()];
    for round in 1..=a.rounds {
        for (case, best) in cases.iter().zip(&mut results) {
            eprintln!("round {round}/{}: {} {}, {} sentence(s) …", a.rounds, case.variant, case.mode, case.sentences);
            let r = run_case_isolated(case, a.warmup, a.runs)?;
            if best.as_ref().is_none_or(|b| r.median_s < b.median_s) {
                *best = Some(r);
            }
        }
    }
    let results: Vec<BenchResult> = results.into_iter().flatten().collect();
    print_table(&results, peak);
    println!("(plain mode runs one full pass per sentence, so its K-sentence time is K × the 1-sentence time;");
    println!(" GFLOP/s counts the spec's 316 (DETRIS-B) or 830 (DETRIS-L) GFLOP per image at 448)");
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    Ok(())
}
