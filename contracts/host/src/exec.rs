//! Execution on Wasmer: compiling with the ink meter, the call stack, and
//! the `vm_hooks` host functions.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use alloy_primitives::{keccak256, Address, Signature, B256, U256};
use healthsense_wasm_check::Import;
use wasmer::sys::{CompilerConfig, EngineBuilder, Singlepass};
use wasmer::{
    AsStoreMut, Engine, Function, FunctionEnv, FunctionEnvMut, Global, Imports, Instance, Memory, Module, Store,
    StoreMut, Type,
};

use crate::meter::{self, InkMeter, INK_LEFT, INK_STATUS};
use crate::pricing::{self, gas_to_ink};
use crate::world::{Code, InkProfile, Log, NativeCtx, Outcome, Tx, World};

/// Deepest call stack, as in the EVM.
const MAX_DEPTH: usize = 1024;

/// The `vm_hooks` imports this host implements, with their WebAssembly
/// signatures (wasm32: pointers and `usize` are `i32`).
pub const HOSTIOS: &[(&str, &[Type], &[Type])] = {
    use Type::{I32, I64};
    &[
        ("read_args", &[I32], &[]),
        ("write_result", &[I32, I32], &[]),
        ("storage_load_bytes32", &[I32, I32], &[]),
        ("storage_cache_bytes32", &[I32, I32], &[]),
        ("storage_flush_cache", &[I32], &[]),
        ("emit_log", &[I32, I32, I32], &[]),
        ("call_contract", &[I32, I32, I32, I32, I64, I32], &[I32]),
        ("static_call_contract", &[I32, I32, I32, I64, I32], &[I32]),
        ("delegate_call_contract", &[I32, I32, I32, I64, I32], &[I32]),
        ("return_data_size", &[], &[I32]),
        ("read_return_data", &[I32, I32, I32], &[I32]),
        ("msg_sender", &[I32], &[]),
        ("msg_value", &[I32], &[]),
        ("msg_reentrant", &[], &[I32]),
        ("block_timestamp", &[], &[I64]),
        ("chainid", &[], &[I64]),
        ("contract_address", &[I32], &[]),
        ("native_keccak256", &[I32, I32, I32], &[]),
        ("pay_for_memory_grow", &[I32], &[]),
    ]
};

/// `Ok` when this host implements `import` with its signature; else what
/// is wrong.
pub(crate) fn check_import(import: &Import) -> Result<(), String> {
    use healthsense_wasm_check::ValType as V;
    let Some((_, params, results)) = HOSTIOS.iter().find(|(n, _, _)| *n == import.name) else {
        return Err(String::new());
    };
    let conv = |v: &V| match v {
        V::I32 => Some(Type::I32),
        V::I64 => Some(Type::I64),
        _ => None,
    };
    let got_params: Vec<_> = import.params.iter().map(conv).collect();
    let got_results: Vec<_> = import.results.iter().map(conv).collect();
    let want_params: Vec<_> = params.iter().copied().map(Some).collect();
    let want_results: Vec<_> = results.iter().copied().map(Some).collect();
    if got_params == want_params && got_results == want_results {
        Ok(())
    } else {
        Err(format!(" with the signature {:?} -> {:?} (implemented: {params:?} -> {results:?})", import.params, import.results))
    }
}

/// Compiles `bytes` with the host's engine (singlepass and the ink meter).
pub(crate) fn compile(bytes: &[u8]) -> Result<Module, String> {
    // The meter's per-module state lives in the engine's one middleware.
    let _serial = meter::compile_lock();
    Module::from_binary(engine(), bytes).map_err(|e| e.to_string())
}

/// The one engine every program is compiled with and every store is made
/// from: a Wasmer module must be instantiated in a store of the engine that
/// compiled it (their signature registries and trampolines differ).
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut compiler = Singlepass::new();
        compiler.push_middleware(Arc::new(InkMeter::default()));
        EngineBuilder::new(compiler).into()
    })
}

/// A host function's failure: traps the program, which reverts.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Trap(String);

fn trap<T>(msg: impl Into<String>) -> Result<T, Trap> {
    Err(Trap(msg.into()))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Call,
    Delegate,
    Static,
}

/// One call to run.
pub(crate) struct CallSpec {
    pub(crate) kind: Kind,
    /// Whose code runs.
    pub(crate) code: Address,
    /// Whose storage, address and logs (the caller's, for a delegate call).
    pub(crate) acting: Address,
    pub(crate) sender: Address,
    pub(crate) value: U256,
    pub(crate) input: Vec<u8>,
    pub(crate) is_static: bool,
    /// Ink the callee may spend.
    pub(crate) ink: u64,
}

/// What a call did.
pub(crate) struct CallResult {
    pub(crate) success: bool,
    pub(crate) data: Vec<u8>,
    pub(crate) ink: u64,
    pub(crate) trap: Option<String>,
}

/// A slot in a frame's storage cache.
struct Cached {
    value: B256,
    /// The value in the world, when known.
    known: Option<B256>,
}

/// One running program.
struct Frame {
    acting: Address,
    sender: Address,
    value: U256,
    input: Vec<u8>,
    output: Vec<u8>,
    is_static: bool,
    reentrant: bool,
    cache: HashMap<B256, Cached>,
    reads: usize,
    writes: usize,
    return_data: Vec<u8>,
    memory: Memory,
    remaining: Global,
    exhausted: Global,
}

enum Undo {
    Slot { at: Address, key: B256, old: Option<B256> },
}

/// Everything the host functions reach: the world, the call stack, the
/// journal and the transaction's access lists.
pub(crate) struct Env {
    world: World,
    timestamp: u64,
    frames: Vec<Frame>,
    depth: usize,
    logs: Vec<Log>,
    journal: Vec<Undo>,
    /// Open non-delegate frames per address (`msg_reentrant`).
    active: HashMap<Address, u32>,
    warm_slots: HashSet<(Address, B256)>,
    warm_accounts: HashSet<Address>,
    /// Slot values at the start of the transaction (EIP-2200 pricing).
    original: HashMap<(Address, B256), B256>,
    pages_open: u16,
    pages_ever: u16,
    imports: Option<Imports>,
    profile: InkProfile,
}

impl Env {
    fn frame(&mut self) -> Result<&mut Frame, Trap> {
        match self.frames.last_mut() {
            Some(f) => Ok(f),
            None => trap("hostio called outside a program"),
        }
    }

    fn revert_to(&mut self, journal: usize, logs: usize) {
        while self.journal.len() > journal {
            if let Some(Undo::Slot { at, key, old }) = self.journal.pop() {
                self.world.set_slot(at, key, old.unwrap_or_default());
            }
        }
        self.logs.truncate(logs);
    }

    fn write_slot(&mut self, at: Address, key: B256, value: B256) {
        self.original.entry((at, key)).or_insert_with(|| self.world.slot(at, key));
        let old = self.world.set_slot(at, key, value);
        self.journal.push(Undo::Slot { at, key, old });
    }
}

/// Runs `tx` against `world`; `discard` drops its effects even on success.
pub(crate) fn run_tx(world: &mut World, tx: &Tx, discard: bool) -> Outcome {
    let mut store = Store::new(engine().clone());
    let env = FunctionEnv::new(
        &mut store,
        Env {
            world: std::mem::take(world),
            timestamp: tx.timestamp,
            frames: Vec::new(),
            depth: 0,
            logs: Vec::new(),
            journal: Vec::new(),
            active: HashMap::new(),
            warm_slots: HashSet::new(),
            warm_accounts: HashSet::from([tx.from, tx.to]),
            original: HashMap::new(),
            pages_open: 0,
            pages_ever: 0,
            imports: None,
            profile: InkProfile::default(),
        },
    );
    let imports = host_imports(&mut store, &env);
    env.as_mut(&mut store).imports = Some(imports);
    let spec = CallSpec {
        kind: Kind::Call,
        code: tx.to,
        acting: tx.to,
        sender: tx.from,
        value: tx.value,
        input: tx.input.clone(),
        is_static: false,
        ink: gas_to_ink(tx.gas_limit),
    };
    let result = run_call(&mut store.as_store_mut(), &env, spec);
    let state = env.as_mut(&mut store);
    if discard {
        state.revert_to(0, 0);
    }
    *world = std::mem::take(&mut state.world);
    let logs = if result.success { std::mem::take(&mut state.logs) } else { Vec::new() };
    let mut profile = state.profile;
    profile.instructions =
        result.ink.saturating_sub(profile.hostio).saturating_sub(profile.evm).saturating_sub(profile.memory);
    Outcome { success: result.success, data: result.data, logs, ink_used: result.ink, trap: result.trap, profile }
}

/// Runs one call frame (program, native, precompile or empty account),
/// undoing its writes and logs if it fails.
pub(crate) fn run_call(store: &mut StoreMut<'_>, env: &FunctionEnv<Env>, spec: CallSpec) -> CallResult {
    let state = env.as_mut(store);
    if state.depth >= MAX_DEPTH {
        return CallResult { success: false, data: Vec::new(), ink: 0, trap: Some("call depth limit".into()) };
    }
    let (journal, logs) = (state.journal.len(), state.logs.len());
    let code = state.world.accounts.get(&spec.code).map(|a| a.code.clone()).unwrap_or_default();
    state.depth += 1;
    let result = match code {
        Code::Program(program) => run_program(store, env, &program, spec),
        Code::Native(native) => {
            let ink = spec.ink;
            let mut ctx = NativeCtx {
                store,
                env,
                address: spec.acting,
                sender: spec.sender,
                is_static: spec.is_static,
                ink,
            };
            let (success, data) = native.call(&mut ctx, &spec.input);
            let used = ink - ctx.ink;
            CallResult { success, data, ink: used, trap: None }
        }
        Code::None if spec.code == Address::with_last_byte(1) => {
            let ink = gas_to_ink(pricing::ECRECOVER_GAS);
            let profile = &mut env.as_mut(store).profile;
            profile.evm = profile.evm.saturating_add(ink);
            CallResult { success: true, data: native_ecrecover(&spec.input), ink, trap: None }
        }
        // An account without code: the call succeeds and returns nothing.
        Code::None => CallResult { success: true, data: Vec::new(), ink: 0, trap: None },
    };
    let state = env.as_mut(store);
    state.depth -= 1;
    if !result.success {
        state.revert_to(journal, logs);
    }
    result
}

fn run_program(store: &mut StoreMut<'_>, env: &FunctionEnv<Env>, program: &crate::Program, spec: CallSpec) -> CallResult {
    let fail = |ink: u64, why: String| CallResult { success: false, data: Vec::new(), ink, trap: Some(why) };
    // Nitro charges the program's memory footprint on entry (MemoryModel).
    let state = env.as_mut(store);
    let entry = gas_to_ink(pricing::memory_gas(program.footprint, state.pages_open, state.pages_ever));
    if entry > spec.ink {
        return fail(spec.ink, "out of ink opening the program's memory".into());
    }
    let pages_before = state.pages_open;
    state.profile.memory = state.profile.memory.saturating_add(entry);
    state.pages_open = state.pages_open.saturating_add(program.footprint);
    state.pages_ever = state.pages_ever.max(state.pages_open);
    let budget = spec.ink - entry;
    let Some(imports) = state.imports.clone() else {
        return fail(entry, "host imports missing".into());
    };
    let instance = match Instance::new(store, &program.module, &imports) {
        Ok(i) => i,
        Err(e) => return fail(entry, format!("{}: instantiation failed: {e}", program.name)),
    };
    let globals = (
        instance.exports.get_memory("memory").cloned(),
        instance.exports.get_global(INK_LEFT).cloned(),
        instance.exports.get_global(INK_STATUS).cloned(),
        instance.exports.get_typed_function::<i32, i32>(store, "user_entrypoint"),
    );
    let (Ok(memory), Ok(remaining), Ok(exhausted), Ok(entrypoint)) = globals else {
        return fail(entry, format!("{}: missing memory, meter or user_entrypoint", program.name));
    };
    if remaining.set(store, wasmer::Value::I64(budget as i64)).is_err() {
        return fail(entry, "cannot set the ink meter".into());
    }
    let state = env.as_mut(store);
    let counted = spec.kind != Kind::Delegate;
    let active = state.active.entry(spec.acting).or_insert(0);
    if counted {
        *active += 1;
    }
    let reentrant = *active > 1;
    let len = spec.input.len() as i32;
    state.frames.push(Frame {
        acting: spec.acting,
        sender: spec.sender,
        value: spec.value,
        input: spec.input,
        output: Vec::new(),
        is_static: spec.is_static || spec.kind == Kind::Static,
        reentrant,
        cache: HashMap::new(),
        reads: 0,
        writes: 0,
        return_data: Vec::new(),
        memory,
        remaining: remaining.clone(),
        exhausted: exhausted.clone(),
    });
    let status = entrypoint.call(store, len);
    let left = match (exhausted.get(store), remaining.get(store)) {
        (wasmer::Value::I32(0), wasmer::Value::I64(left)) => (left as u64).min(budget),
        _ => 0,
    };
    // Nitro's heap-bound instrumentation makes every `memory.grow` pay
    // through `pay_for_memory_grow`; here the pages a frame grew are paid
    // for when it ends (same total, charged later).
    let pages_now = env.as_ref(store).frames.last().map_or(0, |f| f.memory.view(store).size().0);
    let grown = u16::try_from(pages_now).unwrap_or(u16::MAX).saturating_sub(program.footprint);
    let state = env.as_mut(store);
    let grow_ink = gas_to_ink(pricing::memory_gas(grown, state.pages_open, state.pages_ever));
    state.profile.memory = state.profile.memory.saturating_add(grow_ink);
    state.pages_open = state.pages_open.saturating_add(grown);
    state.pages_ever = state.pages_ever.max(state.pages_open);
    let frame = state.frames.pop();
    if counted {
        if let Some(n) = state.active.get_mut(&spec.acting) {
            *n -= 1;
        }
    }
    state.pages_open = pages_before;
    let ink = entry + (budget - left) + grow_ink;
    let output = frame.map(|f| f.output).unwrap_or_default();
    match status {
        Ok(0) => CallResult { success: true, data: output, ink, trap: None },
        Ok(_) => CallResult { success: false, data: output, ink, trap: None },
        Err(e) => {
            let why = if left == 0 { format!("out of ink ({e})") } else { e.message() };
            CallResult { success: false, data: Vec::new(), ink, trap: Some(why) }
        }
    }
}

/// `ecrecover` precompile semantics: input right-padded to 128 bytes; the
/// 32-byte left-padded signer, or empty output when it does not recover.
pub fn native_ecrecover(input: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let n = input.len().min(128);
    buf[..n].copy_from_slice(&input[..n]);
    let digest = B256::from_slice(&buf[..32]);
    if buf[32..63] != [0u8; 31] {
        return Vec::new();
    }
    let parity = match buf[63] {
        27 => false,
        28 => true,
        _ => return Vec::new(),
    };
    let r = U256::from_be_slice(&buf[64..96]);
    let s = U256::from_be_slice(&buf[96..128]);
    match Signature::new(r, s, parity).recover_address_from_prehash(&digest) {
        Ok(addr) => {
            let mut out = vec![0u8; 32];
            out[12..].copy_from_slice(addr.as_slice());
            out
        }
        Err(_) => Vec::new(),
    }
}

// ------------------------------------------------------------ host functions

type Ctx<'a> = FunctionEnvMut<'a, Env>;

/// Takes `ink` from the running frame's meter; traps when it runs out.
fn charge(ctx: &mut Ctx<'_>, ink: u64) -> Result<(), Trap> {
    let (state, mut store) = ctx.data_and_store_mut();
    let frame = state.frame()?;
    let (remaining, exhausted) = (frame.remaining.clone(), frame.exhausted.clone());
    let left = match remaining.get(&mut store) {
        wasmer::Value::I64(v) => v as u64,
        _ => 0,
    };
    if left < ink {
        let _ = remaining.set(&mut store, wasmer::Value::I64(0));
        let _ = exhausted.set(&mut store, wasmer::Value::I32(1));
        return trap("out of ink");
    }
    remaining
        .set(&mut store, wasmer::Value::I64((left - ink) as i64))
        .map_err(|e| Trap(format!("ink meter: {e}")))
}

/// Buys hostio ink.
fn buy_ink(ctx: &mut Ctx<'_>, ink: u64) -> Result<(), Trap> {
    let profile = &mut ctx.data_mut().profile;
    profile.hostio = profile.hostio.saturating_add(ink);
    charge(ctx, ink)
}

/// Buys EVM-side gas (storage, logs, account access), as ink.
fn buy_gas(ctx: &mut Ctx<'_>, gas: u64) -> Result<(), Trap> {
    let ink = gas_to_ink(gas);
    let profile = &mut ctx.data_mut().profile;
    profile.evm = profile.evm.saturating_add(ink);
    charge(ctx, ink)
}

fn ink_left(ctx: &mut Ctx<'_>) -> Result<u64, Trap> {
    let (state, mut store) = ctx.data_and_store_mut();
    let remaining = state.frame()?.remaining.clone();
    Ok(match remaining.get(&mut store) {
        wasmer::Value::I64(v) => v as u64,
        _ => 0,
    })
}

fn read(ctx: &mut Ctx<'_>, ptr: i32, len: u32) -> Result<Vec<u8>, Trap> {
    let (state, store) = ctx.data_and_store_mut();
    let memory = state.frame()?.memory.clone();
    let mut buf = vec![0u8; len as usize];
    memory
        .view(&store)
        .read(ptr as u32 as u64, &mut buf)
        .map_err(|e| Trap(format!("read of {len} bytes at {ptr:#x}: {e}")))?;
    Ok(buf)
}

fn read32(ctx: &mut Ctx<'_>, ptr: i32) -> Result<B256, Trap> {
    Ok(B256::from_slice(&read(ctx, ptr, 32)?))
}

fn write(ctx: &mut Ctx<'_>, ptr: i32, data: &[u8]) -> Result<(), Trap> {
    let (state, store) = ctx.data_and_store_mut();
    let memory = state.frame()?.memory.clone();
    memory
        .view(&store)
        .write(ptr as u32 as u64, data)
        .map_err(|e| Trap(format!("write of {} bytes at {ptr:#x}: {e}", data.len())))
}

fn read_args(mut ctx: Ctx<'_>, ptr: i32) -> Result<(), Trap> {
    let input = ctx.data_mut().frame()?.input.clone();
    buy_ink(&mut ctx, pricing::PLAIN_HOSTIO + pricing::write_price(input.len() as u32))?;
    write(&mut ctx, ptr, &input)
}

fn write_result(mut ctx: Ctx<'_>, ptr: i32, len: i32) -> Result<(), Trap> {
    let len = len as u32;
    buy_ink(&mut ctx, pricing::PLAIN_HOSTIO + 2 * pricing::read_price(len))?;
    let data = read(&mut ctx, ptr, len)?;
    ctx.data_mut().frame()?.output = data;
    Ok(())
}

fn storage_load_bytes32(mut ctx: Ctx<'_>, key: i32, dest: i32) -> Result<(), Trap> {
    buy_ink(&mut ctx, pricing::STORAGE_HOSTIO)?;
    let key = read32(&mut ctx, key)?;
    let state = ctx.data_mut();
    let frame = state.frames.last_mut().ok_or_else(|| Trap("no frame".into()))?;
    frame.reads += 1;
    let mut gas = pricing::cache_read_gas(frame.reads);
    let acting = frame.acting;
    let value = match frame.cache.get(&key) {
        Some(c) => c.value,
        None => {
            let value = state.world.slot(acting, key);
            let cold = state.warm_slots.insert((acting, key));
            gas += if cold { pricing::COLD_SLOAD_GAS } else { pricing::WARM_SLOAD_GAS };
            gas += pricing::EVM_API_INK / pricing::INK_PER_GAS;
            if let Some(frame) = state.frames.last_mut() {
                frame.cache.insert(key, Cached { value, known: Some(value) });
            }
            value
        }
    };
    buy_gas(&mut ctx, gas)?;
    write(&mut ctx, dest, value.as_slice())
}

fn storage_cache_bytes32(mut ctx: Ctx<'_>, key: i32, value: i32) -> Result<(), Trap> {
    buy_ink(&mut ctx, pricing::STORAGE_HOSTIO)?;
    let key = read32(&mut ctx, key)?;
    let value = read32(&mut ctx, value)?;
    let frame = ctx.data_mut().frame()?;
    frame.writes += 1;
    let gas = pricing::cache_write_gas(frame.writes);
    frame.cache.entry(key).and_modify(|c| c.value = value).or_insert(Cached { value, known: None });
    buy_gas(&mut ctx, gas)
}

fn storage_flush_cache(mut ctx: Ctx<'_>, clear: i32) -> Result<(), Trap> {
    buy_ink(&mut ctx, pricing::EVM_API_HOSTIO)?;
    let state = ctx.data_mut();
    let frame = state.frames.last_mut().ok_or_else(|| Trap("no frame".into()))?;
    let acting = frame.acting;
    let is_static = frame.is_static;
    let mut dirty: Vec<(B256, B256)> = Vec::new();
    for (key, slot) in frame.cache.iter_mut() {
        if slot.known != Some(slot.value) {
            dirty.push((*key, slot.value));
            slot.known = Some(slot.value);
        }
    }
    if clear != 0 {
        frame.cache.clear();
    }
    if dirty.is_empty() {
        return Ok(());
    }
    if is_static {
        return trap("storage write in a static call");
    }
    dirty.sort();
    let mut gas = 0u64;
    for (key, value) in dirty {
        let current = state.world.slot(acting, key);
        let original = state.original.get(&(acting, key)).copied().unwrap_or(current);
        let cold = state.warm_slots.insert((acting, key));
        gas += pricing::sstore_gas(original.0, current.0, value.0, cold);
        state.write_slot(acting, key, value);
    }
    buy_gas(&mut ctx, gas)
}

fn emit_log(mut ctx: Ctx<'_>, data: i32, len: i32, topics: i32) -> Result<(), Trap> {
    buy_ink(&mut ctx, pricing::EVM_API_HOSTIO)?;
    let (len, topics) = (len as u32, topics as u32);
    if topics > 4 || len < topics * 32 {
        return trap(format!("emit_log with {topics} topics over {len} bytes"));
    }
    buy_ink(&mut ctx, pricing::read_price(len))?;
    buy_gas(&mut ctx, pricing::log_gas(topics, len - topics * 32))?;
    let bytes = read(&mut ctx, data, len)?;
    let state = ctx.data_mut();
    let frame = state.frame()?;
    if frame.is_static {
        return trap("log in a static call");
    }
    let address = frame.acting;
    let split = topics as usize * 32;
    let topics = bytes[..split].chunks(32).map(B256::from_slice).collect();
    state.logs.push(Log { address, topics, data: bytes[split..].to_vec() });
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn do_call(
    mut ctx: Ctx<'_>,
    kind: Kind,
    contract: i32,
    data: i32,
    len: i32,
    value: Option<i32>,
    gas: i64,
    ret_len: i32,
) -> Result<i32, Trap> {
    let len = len as u32;
    buy_ink(&mut ctx, pricing::CALL_HOSTIO + 2 * pricing::read_price(len))?;
    let to = Address::from_slice(&read(&mut ctx, contract, 20)?);
    let input = read(&mut ctx, data, len)?;
    let value = match value {
        Some(ptr) => U256::from_be_bytes(read32(&mut ctx, ptr)?.0),
        None => U256::ZERO,
    };
    let state = ctx.data_mut();
    let cold = state.warm_accounts.insert(to);
    let frame = state.frame()?;
    if kind == Kind::Call && frame.is_static && !value.is_zero() {
        return trap("value transfer in a static call");
    }
    let (acting, sender, frame_value, is_static) = (frame.acting, frame.sender, frame.value, frame.is_static);
    buy_gas(&mut ctx, if cold { pricing::COLD_ACCOUNT_GAS } else { pricing::WARM_SLOAD_GAS })?;
    // The 63/64 rule, in ink.
    let left = ink_left(&mut ctx)?;
    let ink = (left - left / 64).min(gas_to_ink(gas as u64));
    let spec = match kind {
        Kind::Delegate => CallSpec { kind, code: to, acting, sender, value: frame_value, input, is_static, ink },
        Kind::Static => CallSpec { kind, code: to, acting: to, sender: acting, value: U256::ZERO, input, is_static: true, ink },
        Kind::Call => CallSpec { kind, code: to, acting: to, sender: acting, value, input, is_static, ink },
    };
    // Balances are not modelled: a call that moves value fails.
    let result = if value.is_zero() || kind != Kind::Call {
        let env = ctx.as_ref();
        run_call(&mut ctx.as_store_mut(), &env, spec)
    } else {
        CallResult { success: false, data: Vec::new(), ink: 0, trap: None }
    };
    // The callee's ink is already profiled by its own parts.
    charge(&mut ctx, result.ink)?;
    let out_len = result.data.len() as u32;
    ctx.data_mut().frame()?.return_data = result.data;
    write(&mut ctx, ret_len, &out_len.to_le_bytes())?;
    Ok(if result.success { 0 } else { 1 })
}

fn call_contract(ctx: Ctx<'_>, contract: i32, data: i32, len: i32, value: i32, gas: i64, ret_len: i32) -> Result<i32, Trap> {
    do_call(ctx, Kind::Call, contract, data, len, Some(value), gas, ret_len)
}

fn delegate_call_contract(ctx: Ctx<'_>, contract: i32, data: i32, len: i32, gas: i64, ret_len: i32) -> Result<i32, Trap> {
    do_call(ctx, Kind::Delegate, contract, data, len, None, gas, ret_len)
}

fn static_call_contract(ctx: Ctx<'_>, contract: i32, data: i32, len: i32, gas: i64, ret_len: i32) -> Result<i32, Trap> {
    do_call(ctx, Kind::Static, contract, data, len, None, gas, ret_len)
}

fn return_data_size(mut ctx: Ctx<'_>) -> Result<i32, Trap> {
    buy_ink(&mut ctx, pricing::PLAIN_HOSTIO)?;
    Ok(ctx.data_mut().frame()?.return_data.len() as i32)
}

fn read_return_data(mut ctx: Ctx<'_>, dest: i32, offset: i32, size: i32) -> Result<i32, Trap> {
    buy_ink(&mut ctx, pricing::EVM_API_HOSTIO)?;
    let (offset, size) = (offset as u32 as usize, size as u32 as usize);
    let data = ctx.data_mut().frame()?.return_data.clone();
    // Clipped to the bytes that exist, as Nitro's `slice_with_runoff`.
    let start = offset.min(data.len());
    let end = offset.saturating_add(size).min(data.len());
    let out = &data[start..end];
    buy_ink(&mut ctx, pricing::write_price(out.len() as u32))?;
    if !out.is_empty() {
        write(&mut ctx, dest, out)?;
    }
    Ok(out.len() as i32)
}

fn msg_sender(mut ctx: Ctx<'_>, ptr: i32) -> Result<(), Trap> {
    buy_ink(&mut ctx, pricing::ONE_PTR_HOSTIO)?;
    let sender = ctx.data_mut().frame()?.sender;
    write(&mut ctx, ptr, sender.as_slice())
}

fn msg_value(mut ctx: Ctx<'_>, ptr: i32) -> Result<(), Trap> {
    buy_ink(&mut ctx, pricing::ONE_PTR_HOSTIO)?;
    let value = ctx.data_mut().frame()?.value;
    write(&mut ctx, ptr, &value.to_be_bytes::<32>())
}

fn msg_reentrant(mut ctx: Ctx<'_>) -> Result<i32, Trap> {
    buy_ink(&mut ctx, pricing::PLAIN_HOSTIO)?;
    Ok(i32::from(ctx.data_mut().frame()?.reentrant))
}

fn block_timestamp(mut ctx: Ctx<'_>) -> Result<i64, Trap> {
    buy_ink(&mut ctx, pricing::PLAIN_HOSTIO)?;
    Ok(ctx.data().timestamp as i64)
}

fn chainid(mut ctx: Ctx<'_>) -> Result<i64, Trap> {
    buy_ink(&mut ctx, pricing::PLAIN_HOSTIO)?;
    Ok(ctx.data().world.chain_id as i64)
}

fn contract_address(mut ctx: Ctx<'_>, ptr: i32) -> Result<(), Trap> {
    buy_ink(&mut ctx, pricing::ONE_PTR_HOSTIO)?;
    let acting = ctx.data_mut().frame()?.acting;
    write(&mut ctx, ptr, acting.as_slice())
}

fn native_keccak256(mut ctx: Ctx<'_>, input: i32, len: i32, output: i32) -> Result<(), Trap> {
    let len = len as u32;
    buy_ink(&mut ctx, pricing::keccak_price(len))?;
    let bytes = read(&mut ctx, input, len)?;
    write(&mut ctx, output, keccak256(&bytes).as_slice())
}

fn pay_for_memory_grow(mut ctx: Ctx<'_>, pages: i32) -> Result<(), Trap> {
    let pages = pages as u32 as u16;
    if pages == 0 {
        return buy_ink(&mut ctx, pricing::PLAIN_HOSTIO);
    }
    let state = ctx.data_mut();
    let gas = pricing::memory_gas(pages, state.pages_open, state.pages_ever);
    state.pages_open = state.pages_open.saturating_add(pages);
    state.pages_ever = state.pages_ever.max(state.pages_open);
    state.profile.memory = state.profile.memory.saturating_add(gas_to_ink(gas));
    charge(&mut ctx, gas_to_ink(gas))
}

fn host_imports(store: &mut Store, env: &FunctionEnv<Env>) -> Imports {
    let mut imports = Imports::new();
    macro_rules! hostio {
        ($($name:ident),* $(,)?) => {
            $(imports.define("vm_hooks", stringify!($name), Function::new_typed_with_env(store, env, $name));)*
        };
    }
    hostio!(
        read_args,
        write_result,
        storage_load_bytes32,
        storage_cache_bytes32,
        storage_flush_cache,
        emit_log,
        call_contract,
        static_call_contract,
        delegate_call_contract,
        return_data_size,
        read_return_data,
        msg_sender,
        msg_value,
        msg_reentrant,
        block_timestamp,
        chainid,
        contract_address,
        native_keccak256,
        pay_for_memory_grow,
    );
    imports
}
