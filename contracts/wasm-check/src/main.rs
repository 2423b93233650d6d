//! Offline validation of the Stylus program: what a Nitro node would reject
//! before running it. Usage: `wasm-check FILE.wasm`; exit 1 with the reasons.

use std::process::ExitCode;

use wasmparser::{ExternalKind, Operator, Parser, Payload, TypeRef};

fn check(bytes: &[u8]) -> Result<Vec<String>, wasmparser::BinaryReaderError> {
    let mut problems = Vec::new();
    let mut has_entrypoint = false;
    let mut imports = 0;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::ImportSection(reader) => {
                for import in reader {
                    let import = import?;
                    imports += 1;
                    if import.module != "vm_hooks" {
                        problems.push(format!("import {}::{} is not from vm_hooks", import.module, import.name));
                    }
                    if !matches!(import.ty, TypeRef::Func(_)) {
                        problems.push(format!("import {}::{} is not a function", import.module, import.name));
                    }
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export?;
                    if export.name == "user_entrypoint" && export.kind == ExternalKind::Func {
                        has_entrypoint = true;
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let mut ops = body.get_operators_reader()?;
                while !ops.eof() {
                    let op = ops.read()?;
                    if is_float(&op) {
                        problems.push(format!("floating-point instruction {op:?}"));
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    if !has_entrypoint {
        problems.push("no exported function `user_entrypoint`".into());
    }
    println!("wasm-check: {imports} imports, all checked");
    Ok(problems)
}

fn is_float(op: &Operator) -> bool {
    let name = format!("{op:?}");
    name.starts_with("F32") || name.starts_with("F64") || name.contains("F32") || name.contains("F64")
}

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
    match check(&bytes) {
        Ok(problems) if problems.is_empty() => {
            println!("wasm-check: {path}: exports user_entrypoint, imports only vm_hooks, no floating point");
            ExitCode::SUCCESS
        }
        Ok(problems) => {
            for p in problems {
                eprintln!("wasm-check: {path}: {p}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("wasm-check: {path} is not a valid module: {e}");
            ExitCode::FAILURE
        }
    }
}
