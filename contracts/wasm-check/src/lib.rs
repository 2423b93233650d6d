//! What a Nitro node checks when a Stylus program is activated, applied
//! offline to the bytes `scripts/build-wasm` writes.
//!
//! The rules are restated from OffchainLabs' nitro repository (commit
//! `6dce8d13902649a1acdfd3f2504129f1f5612358`, April 2026; the prover's
//! `binary.rs` `parse_with_version` / `parse_user` / `check_func`, and
//! `arbos/programs/params.go` for the page limit), for the current ArbOS
//! (multi-value off since ArbOS 60). The code is ours: only the facts come
//! from there.
//!
//! - the module validates with Nitro's WebAssembly feature set: MVP, mutable
//!   globals, sign extension, saturating float-to-int, bulk memory; no
//!   reference types, SIMD, threads, tail calls, exceptions, multi-memory,
//!   memory64, extended constants, multi-value;
//! - `user_entrypoint` is an exported function of type `(i32) -> i32`;
//! - exactly one memory, exported as `memory`, whose initial size is within
//!   the page limit (128 pages of 64 KiB);
//! - no start function;
//! - imports are functions from `vm_hooks` only, none re-exported and none
//!   named with the reserved `stylus` prefix, at most 513;
//! - at most 128 data segments, 128 element segments, 1,024 exports, 4,096
//!   functions, 32,768 globals, 4,096 table entries and element entries,
//!   348 locals and 65,536 operators per function, export names of at most
//!   512 bytes;
//! - no floating-point instruction (Nitro prices them at `u64::MAX` ink:
//!   a program using one could never run);
//! - at most 128 KiB uncompressed (`MaxWasmSize` before ArbOS 40; Stylus
//!   also caps the brotli-compressed program at 24 KiB, which
//!   `scripts/build-wasm` checks).

pub use wasmparser::ValType;
use wasmparser::{ExternalKind, FuncType, Operator, Parser, Payload, TypeRef, Validator, WasmFeatures};

/// Nitro's default page limit (`initialPageLimit`): 128 pages, 8 MiB.
pub const PAGE_LIMIT: u64 = 128;
/// Largest uncompressed program Nitro accepts (`initialMaxWasmSize`).
pub const MAX_WASM_SIZE: usize = 128 * 1024;
/// The only import module a Stylus program may use.
pub const HOSTIO_MODULE: &str = "vm_hooks";
/// The exported entry point.
pub const ENTRYPOINT: &str = "user_entrypoint";

/// One function a program imports from `vm_hooks`, with its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// Import name, e.g. `storage_load_bytes32`.
    pub name: String,
    /// Parameter types.
    pub params: Vec<ValType>,
    /// Result types.
    pub results: Vec<ValType>,
}

/// What a module that passes the checks looks like.
#[derive(Debug, Clone)]
pub struct Report {
    /// Its `vm_hooks` imports, in import order.
    pub imports: Vec<Import>,
    /// Initial memory size in 64 KiB pages (Nitro's "footprint").
    pub footprint: u16,
    /// Parameter count of every type, by type index (the ink price of
    /// `call_indirect` depends on it).
    pub type_params: Vec<usize>,
    /// Number of defined functions.
    pub functions: usize,
}

/// Checks `bytes` as Nitro's activation would; `Err` lists every rule broken
/// (or the parse error when the bytes are not a valid module).
pub fn check(bytes: &[u8]) -> Result<Report, Vec<String>> {
    let mut problems = Vec::new();
    if bytes.len() > MAX_WASM_SIZE {
        problems.push(format!("program is {} bytes uncompressed, above Nitro's limit of {MAX_WASM_SIZE}", bytes.len()));
    }
    let mut validator = Validator::new_with_features(nitro_features());
    if let Err(e) = validator.validate_all(bytes) {
        return Err(vec![format!("not a valid module under Nitro's WebAssembly features: {e}")]);
    }
    match scan(bytes, &mut problems) {
        Ok(report) if problems.is_empty() => Ok(report),
        Ok(_) => Err(problems),
        Err(e) => Err(vec![format!("not a valid module: {e}")]),
    }
}

/// The WebAssembly features a Nitro node enables for user programs.
pub fn nitro_features() -> WasmFeatures {
    WasmFeatures::MUTABLE_GLOBAL
        | WasmFeatures::SATURATING_FLOAT_TO_INT
        | WasmFeatures::SIGN_EXTENSION
        | WasmFeatures::BULK_MEMORY
        | WasmFeatures::FLOATS
        | WasmFeatures::GC_TYPES
}

fn scan(bytes: &[u8], problems: &mut Vec<String>) -> Result<Report, wasmparser::BinaryReaderError> {
    let mut types: Vec<FuncType> = Vec::new();
    let mut func_types: Vec<u32> = Vec::new(); // imported, then defined
    let mut imports = Vec::new();
    let mut exports: Vec<(String, ExternalKind, u32)> = Vec::new();
    let mut memories: Vec<u64> = Vec::new();
    let mut data_count = 0u32;
    let mut elements = 0u32;
    let mut element_entries = 0u64;
    let mut table_entries = 0u64;
    let mut globals = 0u32;
    let mut defined = 0usize;
    let mut float_reported = false;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::TypeSection(reader) => {
                for group in reader {
                    for sub in group?.into_types() {
                        match sub.composite_type.inner {
                            wasmparser::CompositeInnerType::Func(f) => types.push(f),
                            _ => problems.push("a non-function type".into()),
                        }
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader {
                    let import = import?;
                    if import.module != HOSTIO_MODULE {
                        problems.push(format!("import {}::{} is not from {HOSTIO_MODULE}", import.module, import.name));
                    }
                    if import.name.starts_with("stylus") {
                        problems.push(format!("import {} uses the reserved prefix `stylus`", import.name));
                    }
                    match import.ty {
                        TypeRef::Func(ty) => {
                            func_types.push(ty);
                            let f = types.get(ty as usize);
                            imports.push(Import {
                                name: import.name.to_string(),
                                params: f.map(|f| f.params().to_vec()).unwrap_or_default(),
                                results: f.map(|f| f.results().to_vec()).unwrap_or_default(),
                            });
                        }
                        _ => problems.push(format!("import {}::{} is not a function", import.module, import.name)),
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for ty in reader {
                    func_types.push(ty?);
                    defined += 1;
                }
            }
            Payload::TableSection(reader) => {
                for table in reader {
                    table_entries += table?.ty.initial;
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    memories.push(memory?.initial);
                }
            }
            Payload::GlobalSection(reader) => globals += reader.count(),
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export?;
                    exports.push((export.name.to_string(), export.kind, export.index));
                }
            }
            Payload::StartSection { .. } => problems.push("has a start function (Nitro rejects them)".into()),
            Payload::ElementSection(reader) => {
                for element in reader {
                    elements += 1;
                    element_entries += match element?.items {
                        wasmparser::ElementItems::Functions(f) => u64::from(f.count()),
                        wasmparser::ElementItems::Expressions(_, e) => u64::from(e.count()),
                    };
                }
            }
            Payload::DataSection(reader) => data_count += reader.count(),
            Payload::CodeSectionEntry(body) => {
                let mut locals = 0u64;
                for local in body.get_locals_reader()? {
                    locals += u64::from(local?.0);
                }
                limit(problems, 348, locals, "locals in a function");
                let mut ops = body.get_operators_reader()?;
                let mut count = 0u64;
                while !ops.eof() {
                    let op = ops.read()?;
                    count += 1;
                    if !float_reported && is_float(&op) {
                        problems.push(format!("floating-point instruction {op:?} (Nitro prices it at u64::MAX ink)"));
                        float_reported = true;
                    }
                }
                limit(problems, 65_536, count, "operators in a function");
            }
            _ => {}
        }
    }
    limit(problems, 1, memories.len() as u64, "memories");
    limit(problems, 128, u64::from(data_count), "data segments");
    limit(problems, 128, u64::from(elements), "element segments");
    limit(problems, 1024, exports.len() as u64, "exports");
    limit(problems, 4096, defined as u64, "functions");
    limit(problems, 32_768, u64::from(globals), "globals");
    limit(problems, 513, imports.len() as u64, "imports");
    limit(problems, 4096, table_entries, "table entries");
    limit(problems, 4096, element_entries, "element entries");
    for (name, _, _) in &exports {
        if name.len() > 512 {
            problems.push(format!("export name of {} bytes (limit 512)", name.len()));
        }
        let tail = name.rsplit("__").next().unwrap_or(name);
        if tail.starts_with("stylus") {
            problems.push(format!("export {name} uses the reserved prefix `stylus`"));
        }
        if imports.iter().any(|i| i.name == tail) {
            problems.push(format!("export {name} re-exports the import of that name"));
        }
    }
    match exports.iter().find(|(n, _, _)| n == ENTRYPOINT) {
        None => problems.push(format!("no exported function `{ENTRYPOINT}`")),
        Some((_, ExternalKind::Func, index)) => {
            let ty = func_types.get(*index as usize).and_then(|t| types.get(*t as usize));
            let ok = ty.is_some_and(|t| t.params() == [ValType::I32] && t.results() == [ValType::I32]);
            if !ok {
                problems.push(format!("`{ENTRYPOINT}` is not of type (i32) -> i32"));
            }
        }
        Some((_, kind, _)) => problems.push(format!("`{ENTRYPOINT}` is exported as a {kind:?}, not a function")),
    }
    let footprint = match memories.first() {
        None => {
            problems.push("no memory (Nitro wants one, exported as `memory`)".into());
            0
        }
        Some(&pages) => {
            if !exports.iter().any(|(n, k, _)| n == "memory" && *k == ExternalKind::Memory) {
                problems.push("memory is not exported as `memory`".into());
            }
            if pages > PAGE_LIMIT {
                problems.push(format!("memory of {pages} pages exceeds the page limit of {PAGE_LIMIT}"));
            }
            pages.min(u64::from(u16::MAX)) as u16
        }
    };
    let type_params = types.iter().map(|t| t.params().len()).collect();
    Ok(Report { imports, footprint, type_params, functions: defined })
}

fn limit(problems: &mut Vec<String>, max: u64, count: u64, what: &str) {
    if count > max {
        problems.push(format!("too many {what}: {count} > {max}"));
    }
}

fn is_float(op: &Operator) -> bool {
    let name = format!("{op:?}");
    name.contains("F32") || name.contains("F64")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-assembled module: `(memory (export "memory") 1)` plus an
    /// exported `user_entrypoint: (i32) -> i32` returning its argument,
    /// optionally with a start function.
    fn module(with_start: bool, pages: u16) -> Vec<u8> {
        let mut m = vec![0, 0x61, 0x73, 0x6d, 1, 0, 0, 0];
        m.extend([1, 6, 1, 0x60, 1, 0x7f, 1, 0x7f]); // type (i32)->i32
        m.extend([3, 2, 1, 0]); // one function of type 0
        let mut leb = vec![];
        let mut v = pages;
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                leb.push(byte);
                break;
            }
            leb.push(byte | 0x80);
        }
        m.extend([5, 2 + leb.len() as u8, 1, 0]); // memory min `pages`
        m.extend(leb);
        let mut exports = vec![2u8];
        exports.extend([15]);
        exports.extend(b"user_entrypoint");
        exports.extend([0, 0]);
        exports.extend([6]);
        exports.extend(b"memory");
        exports.extend([2, 0]);
        m.push(7);
        m.push(exports.len() as u8);
        m.extend(exports);
        if with_start {
            // A start function must be () -> (); index 0 is not, so the
            // validator refuses it too; either way the module is rejected.
            m.extend([8, 1, 0]);
        }
        m.extend([10, 6, 1, 4, 0, 0x20, 0, 0x0b]); // body: local.get 0
        m
    }

    #[test]
    fn a_minimal_program_passes() {
        let report = check(&module(false, 1)).expect("valid");
        assert_eq!(report.footprint, 1);
        assert!(report.imports.is_empty());
    }

    #[test]
    fn start_functions_and_large_memories_are_refused() {
        assert!(check(&module(true, 1)).is_err());
        let problems = check(&module(false, 129)).unwrap_err();
        assert!(problems.iter().any(|p| p.contains("page limit")), "{problems:?}");
    }

    #[test]
    fn truncated_bytes_are_refused() {
        let m = module(false, 1);
        assert!(check(&m[..m.len() - 3]).is_err());
    }
}
