use anyhow::Result;
use clap::Args;

use detris::bench::{print_table, run_case, run_case_isolated, BenchCase};

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
    #[arg(long, default_value_t = 3)]
    runs: usize,
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
    if a.runs == 0 {
        return Err(super::usage("--runs must be at least 1"));
    }
    let mut results = Vec::new();
    for variant in &a.variant {
        let base = BenchCase {
            variant: variant.clone(),
            input_size: a.size,
            sentences: 1,
            fast: false,
            threads: a.threads,
            device: a.device.clone(),
            precision: "f32".into(),
        };
        eprintln!("measuring {variant} plain, 1 sentence …");
        results.push(run_case_isolated(&base, a.warmup, a.runs)?);
        for &k in &a.sentences {
            let case = BenchCase { sentences: k, fast: true, precision: a.precision.clone(), ..base.clone() };
            eprintln!("measuring {variant} fast, {k} sentence(s) …");
            results.push(run_case_isolated(&case, a.warmup, a.runs)?);
        }
    }
    print_table(&results);
    println!("(plain mode runs one full pass per sentence, so its K-sentence time is K × the 1-sentence time)");
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    Ok(())
}
