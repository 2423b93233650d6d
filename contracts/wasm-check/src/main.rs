//! Offline validation of a Stylus program: what a Nitro node would reject
//! at activation (`healthsense_wasm_check::check`). Usage:
//! `wasm-check FILE.wasm`; exit 1 with the reasons.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: wasm-check FILE.wasm");
        return ExitCode::from(2);
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("wasm-check: cannot read {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match healthsense_wasm_check::check(&bytes) {
        Ok(report) => {
            println!(
                "wasm-check: {path}: passes Nitro's activation checks ({} vm_hooks imports, {} functions, {} initial pages, no floating point)",
                report.imports.len(),
                report.functions,
                report.footprint
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in problems {
                eprintln!("wasm-check: {path}: {p}");
            }
            ExitCode::FAILURE
        }
    }
}
