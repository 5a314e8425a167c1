//! Conformance with spconv 2.3.8: runs every layer of spconv dumps and compares outputs.
//!
//! ```sh
//! cargo run --release --example conformance -- ../shared/conformance
//! cargo run --release --example conformance -- DUMP/lidar_20000 DUMP/room_20000 --tolerance 1e-5
//! ```
//! Each argument is a workload folder written by `spconv_bench.py --dump` (it holds
//! `workload.json`) or a folder of such folders. Prints one line per layer and spconv output
//! variant with the max abs error relative to max |spconv|, and exits non-zero on any
//! failure or on a dump it cannot read.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sparsegen::runtime::conformance::{Workload, check_layer, find_workloads};
use sparsegen::runtime::{Accumulate, Engine, ReferenceBackend};

#[derive(Parser)]
#[command(about = "Check sparsegen against spconv dumps")]
struct Args {
    /// Dump folders (a workload, or a folder of workloads).
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Largest accepted max abs error relative to max |spconv|.
    #[arg(long, default_value_t = 1e-5)]
    tolerance: f64,
    /// Executor: `reference` (f32 accumulation), `reference-f64`, `cpu` (the JITed backend) or
    /// `cuda` (the GPU, fp32).
    #[arg(long, default_value = "reference")]
    device: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let engine = match args.device.as_str() {
        "reference" => Engine::reference(),
        "cpu" => Engine::with_backend(std::sync::Arc::new(
            sparsegen::runtime::cpu::CpuBackend::new(),
        )),
        "reference-f64" => Engine::with_backend(std::sync::Arc::new(ReferenceBackend {
            accumulate: Accumulate::F64,
        })),
        "cuda" => match sparsegen::runtime::cuda::CudaBackend::new(Default::default()) {
            Ok(gpu) => Engine::with_backend(std::sync::Arc::new(gpu)),
            Err(e) => {
                eprintln!("--device cuda: {e}");
                return ExitCode::from(2);
            }
        },
        other => {
            eprintln!("unknown --device {other}: use reference, reference-f64, cpu or cuda");
            return ExitCode::from(2);
        }
    };
    let (mut passed, mut failed) = (0usize, 0usize);
    for dir in &args.dirs {
        let workloads = match find_workloads(dir) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("FAIL cannot read dump: {e}");
                failed += 1;
                continue;
            }
        };
        for wdir in workloads {
            let result = Workload::load(&wdir).and_then(|w| w.layers().map(|l| (w, l)));
            let (workload, layers) = match result {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("FAIL cannot read workload: {e}");
                    failed += 1;
                    continue;
                }
            };
            engine.rulebooks().clear();
            for layer in &layers {
                match check_layer(&engine, &workload, layer, &layers) {
                    Ok(reports) => {
                        for r in reports {
                            let ok = r.passes(args.tolerance);
                            println!(
                                "{:<16} {:<20} {:<22} n_out={:<7} rel_err={:.3e} {}{}",
                                r.workload,
                                r.layer,
                                r.variant,
                                r.n_out,
                                r.rel_err,
                                if ok { "PASS" } else { "FAIL" },
                                if r.coords_match {
                                    ""
                                } else {
                                    " (output coordinates differ)"
                                }
                            );
                            if ok { passed += 1 } else { failed += 1 }
                        }
                    }
                    Err(e) => {
                        println!("{:<16} {:<20} FAIL {e}", workload.name, layer.name);
                        failed += 1;
                    }
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
