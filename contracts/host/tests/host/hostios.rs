//! The host's semantics on small hand-assembled programs (no WAT compiler
//! in the build): an import the host does not implement fails at load,
//! naming it; cached storage writes persist only when flushed and vanish on
//! revert; return data is clipped to what exists; the `ecrecover`
//! precompile recovers real signatures; a trap and running out of ink are
//! reverts with empty data; nested calls (program -> native -> program) run
//! on the same store.

use std::sync::Arc;

use alloy_primitives::{keccak256, Address, B256};
use healthsense_stylus_host::{HostError, Native, NativeCtx, Program, Tx, World};

// ------------------------------------------------------------ a tiny assembler

fn uleb(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn sleb(mut v: i64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        let done = (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0);
        out.push(if done { byte } else { byte | 0x80 });
        if done {
            return;
        }
    }
}

fn name(s: &str, out: &mut Vec<u8>) {
    uleb(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

fn section(id: u8, items: &[Vec<u8>], out: &mut Vec<u8>) {
    let mut body = Vec::new();
    uleb(items.len() as u64, &mut body);
    for item in items {
        body.extend_from_slice(item);
    }
    out.push(id);
    uleb(body.len() as u64, out);
    out.extend(body);
}

const I32: u8 = 0x7f;
const I64: u8 = 0x7e;

/// A module importing `imports` (name, params, results) from `vm_hooks`,
/// with one page of exported memory and `user_entrypoint(i32) -> i32`
/// whose body is `code` (two extra i32 locals: 1 and 2).
fn module(imports: &[(&str, &[u8], &[u8])], code: &[u8]) -> Vec<u8> {
    let mut types: Vec<Vec<u8>> = Vec::new();
    let mut ty = |params: &[u8], results: &[u8]| {
        let mut t = vec![0x60];
        uleb(params.len() as u64, &mut t);
        t.extend_from_slice(params);
        uleb(results.len() as u64, &mut t);
        t.extend_from_slice(results);
        types.push(t);
        types.len() as u64 - 1
    };
    let import_items: Vec<Vec<u8>> = imports
        .iter()
        .map(|(n, p, r)| {
            let index = ty(p, r);
            let mut item = Vec::new();
            name("vm_hooks", &mut item);
            name(n, &mut item);
            item.push(0x00);
            uleb(index, &mut item);
            item
        })
        .collect();
    let entry_type = ty(&[I32], &[I32]);
    let mut out = b"\0asm\x01\0\0\0".to_vec();
    section(1, &types, &mut out);
    section(2, &import_items, &mut out);
    let mut func = Vec::new();
    uleb(entry_type, &mut func);
    section(3, &[func], &mut out);
    section(5, &[vec![0x00, 0x01]], &mut out);
    let mut mem = Vec::new();
    name("memory", &mut mem);
    mem.extend([0x02, 0x00]);
    let mut entry = Vec::new();
    name("user_entrypoint", &mut entry);
    entry.push(0x00);
    uleb(imports.len() as u64, &mut entry);
    section(7, &[mem, entry], &mut out);
    let mut body = vec![0x01, 0x02, I32];
    body.extend_from_slice(code);
    body.push(0x0b);
    let mut sized = Vec::new();
    uleb(body.len() as u64, &mut sized);
    sized.extend(body);
    section(10, &[sized], &mut out);
    out
}

/// Instructions, built up fluently.
#[derive(Default)]
struct Code(Vec<u8>);

impl Code {
    fn i32(mut self, v: i32) -> Self {
        self.0.push(0x41);
        sleb(v.into(), &mut self.0);
        self
    }
    fn i64(mut self, v: i64) -> Self {
        self.0.push(0x42);
        sleb(v, &mut self.0);
        self
    }
    fn call(mut self, f: u32) -> Self {
        self.0.push(0x10);
        uleb(f.into(), &mut self.0);
        self
    }
    fn get(mut self, local: u8) -> Self {
        self.0.extend([0x20, local]);
        self
    }
    fn set(mut self, local: u8) -> Self {
        self.0.extend([0x21, local]);
        self
    }
    /// `i32.load offset=at` from address 0.
    fn load(self, at: u32) -> Self {
        let mut me = self.i32(0);
        me.0.extend([0x28, 0x02]);
        uleb(at.into(), &mut me.0);
        me
    }
    /// `i32.load8_u offset=at` from address 0.
    fn load8(self, at: u32) -> Self {
        let mut me = self.i32(0);
        me.0.extend([0x2d, 0x00]);
        uleb(at.into(), &mut me.0);
        me
    }
    fn op(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
}

const ADD: &[u8] = &[0x6a];
const SUB: &[u8] = &[0x6b];
const AND: &[u8] = &[0x71];
const SHR_U: &[u8] = &[0x76];
const IF: &[u8] = &[0x04, 0x40];
const END: &[u8] = &[0x0b];
const STORE8: &[u8] = &[0x3a, 0x00, 0x00];
const UNREACHABLE: &[u8] = &[0x00];
const LOOP_FOREVER: &[u8] = &[0x03, 0x40, 0x0c, 0x00, 0x0b];

// ------------------------------------------------------------ the programs

/// Args `[to: 20][offset: u32 LE][size: u32 LE][input...]`: static-calls
/// `to` with `input`, then returns `[status][read_return_data(offset, size)]`.
fn proxy() -> Arc<Program> {
    let imports: &[(&str, &[u8], &[u8])] = &[
        ("read_args", &[I32], &[]),
        ("static_call_contract", &[I32, I32, I32, I64, I32], &[I32]),
        ("read_return_data", &[I32, I32, I32], &[I32]),
        ("write_result", &[I32, I32], &[]),
    ];
    let code = Code::default()
        .i32(0)
        .call(0)
        // mem[1000] = static_call_contract(0, 28, len - 28, gas, 900)
        .i32(1000)
        .i32(0)
        .i32(28)
        .get(0)
        .i32(28)
        .op(SUB)
        .i64(1_000_000)
        .i32(900)
        .call(1)
        .op(STORE8)
        // local1 = read_return_data(1001, args.offset, args.size)
        .i32(1001)
        .load(20)
        .load(24)
        .call(2)
        .set(1)
        .i32(1000)
        .get(1)
        .i32(1)
        .op(ADD)
        .call(3)
        .i32(0);
    Program::from_bytes("proxy", &module(imports, &code.0)).expect("the proxy program loads")
}

/// Args `[mode][key: 32][value: 32]`: caches `value` at `key`, reads `key`
/// back into the result, flushes when `mode & 1`, reverts when `mode & 2`,
/// traps after writing its result when `mode & 4`.
fn storage() -> Arc<Program> {
    let imports: &[(&str, &[u8], &[u8])] = &[
        ("read_args", &[I32], &[]),
        ("storage_cache_bytes32", &[I32, I32], &[]),
        ("storage_load_bytes32", &[I32, I32], &[]),
        ("storage_flush_cache", &[I32], &[]),
        ("write_result", &[I32, I32], &[]),
    ];
    let code = Code::default()
        .i32(0)
        .call(0)
        .i32(1)
        .i32(33)
        .call(1)
        .i32(1)
        .i32(100)
        .call(2)
        .load8(0)
        .i32(1)
        .op(AND)
        .op(IF)
        .i32(0)
        .call(3)
        .op(END)
        .i32(100)
        .i32(32)
        .call(4)
        .load8(0)
        .i32(4)
        .op(AND)
        .op(IF)
        .op(UNREACHABLE)
        .op(END)
        .load8(0)
        .i32(1)
        .op(SHR_U)
        .i32(1)
        .op(AND);
    Program::from_bytes("storage", &module(imports, &code.0)).expect("the storage program loads")
}

const CALLER: Address = Address::repeat_byte(0xca);
const PROXY: Address = Address::repeat_byte(0x01 ^ 0xf0);
const STORE: Address = Address::repeat_byte(0x5a);
const NATIVE: Address = Address::repeat_byte(0x77);

/// Answers every call with ten bytes 0..10, or reverts with `[0xee; 3]`
/// when the input starts with 0xff.
struct Ten;

impl Native for Ten {
    fn call(&self, _: &mut NativeCtx<'_, '_>, input: &[u8]) -> (bool, Vec<u8>) {
        match input.first() {
            Some(0xff) => (false, vec![0xee; 3]),
            _ => (true, (0u8..10).collect()),
        }
    }
}

/// Forwards its input to [`STORE`], returning what it answered.
struct Forward;

impl Native for Forward {
    fn call(&self, ctx: &mut NativeCtx<'_, '_>, input: &[u8]) -> (bool, Vec<u8>) {
        ctx.call(STORE, input)
    }
}

fn proxy_args(to: Address, offset: u32, size: u32, input: &[u8]) -> Vec<u8> {
    let mut args = to.to_vec();
    args.extend(offset.to_le_bytes());
    args.extend(size.to_le_bytes());
    args.extend_from_slice(input);
    args
}

fn storage_args(mode: u8, key: B256, value: B256) -> Vec<u8> {
    [vec![mode], key.to_vec(), value.to_vec()].concat()
}

// ------------------------------------------------------------ the tests

#[test]
fn test_an_unimplemented_import_fails_at_load_naming_it() {
    let bytes = module(&[("account_balance", &[I32, I32], &[])], &Code::default().i32(0).0);
    let err = Program::from_bytes("balance.wasm", &bytes).expect_err("an unknown hostio must not load");
    assert!(matches!(&err, HostError::UnknownImport { import, .. } if import == "account_balance"), "{err}");
    assert!(err.to_string().contains("vm_hooks::account_balance") && err.to_string().contains("balance.wasm"), "{err}");

    // A known name with the wrong signature is refused too, saying why.
    let bytes = module(&[("msg_sender", &[I32, I32], &[])], &Code::default().i32(0).0);
    let err = Program::from_bytes("sender.wasm", &bytes).expect_err("a wrong signature must not load");
    assert!(matches!(&err, HostError::UnknownImport { import, detail, .. } if import == "msg_sender" && detail.contains("signature")), "{err}");
}

#[test]
fn test_cached_writes_persist_only_when_flushed_and_vanish_on_revert() {
    let mut world = World::new(1);
    world.deploy(STORE, storage());
    let (key, value) = (B256::repeat_byte(0x11), B256::repeat_byte(0x22));
    let run = |world: &mut World, mode: u8| world.transact(&Tx::new(CALLER, STORE, storage_args(mode, key, value), 1));

    // Not flushed: the program reads its own write, the world never sees it.
    let out = run(&mut world, 0);
    assert!(out.success, "{out:?}");
    assert_eq!(out.data, value.to_vec());
    assert!(world.storage(STORE).is_empty());
    // Flushed, then reverted: gone, and the revert data is kept.
    let out = run(&mut world, 3);
    assert!(!out.success && out.data == value.to_vec(), "{out:?}");
    assert!(world.storage(STORE).is_empty());
    // Flushed, then trapped: gone, and a trap leaves no data.
    let out = run(&mut world, 5);
    assert!(!out.success && out.data.is_empty() && out.trap.is_some(), "{out:?}");
    assert!(world.storage(STORE).is_empty());
    // Flushed and returned: kept.
    let out = run(&mut world, 1);
    assert!(out.success, "{out:?}");
    assert_eq!(world.slot(STORE, key), value);
    // A simulation runs the same but keeps nothing.
    let other = B256::repeat_byte(0x33);
    let out = world.simulate(&Tx::new(CALLER, STORE, storage_args(1, key, other), 2));
    assert!(out.success && out.data == other.to_vec());
    assert_eq!(world.slot(STORE, key), value);
}

#[test]
fn test_return_data_reads_clip_to_what_exists() {
    let mut world = World::new(1);
    world.deploy(PROXY, proxy());
    world.deploy_native(NATIVE, Arc::new(Ten));
    let mut read = |offset: u32, size: u32, input: &[u8]| {
        let out = world.transact(&Tx::new(CALLER, PROXY, proxy_args(NATIVE, offset, size, input), 1));
        assert!(out.success, "{out:?}");
        out.data
    };
    let ten: Vec<u8> = (0..10).collect();
    assert_eq!(read(0, 10, &[1]), [&[0][..], &ten].concat());
    assert_eq!(read(4, 100, &[1]), [&[0][..], &ten[4..]].concat(), "size past the end");
    assert_eq!(read(3, 2, &[1]), vec![0, 3, 4], "a window inside");
    assert_eq!(read(10, 5, &[1]), vec![0], "offset at the end");
    assert_eq!(read(u32::MAX, 5, &[1]), vec![0], "offset far past the end");
    // A reverted call: status 1 and its revert data.
    assert_eq!(read(0, 32, &[0xff]), vec![1, 0xee, 0xee, 0xee]);
    // An account without code answers success and nothing.
    let out = world.transact(&Tx::new(CALLER, PROXY, proxy_args(Address::repeat_byte(0x42), 0, 32, &[1]), 1));
    assert_eq!(out.data, vec![0]);
}

#[test]
fn test_the_ecrecover_precompile_recovers_real_signatures() {
    use k256::ecdsa::SigningKey;
    let mut world = World::new(1);
    world.deploy(PROXY, proxy());
    let key = SigningKey::from_slice(&[7u8; 32]).expect("a valid key");
    let signer = Address::from_private_key(&key);
    let digest = keccak256(b"a reading");
    let (sig, recid) = key.sign_prehash_recoverable(digest.as_slice()).expect("signing works");
    let mut input = digest.to_vec();
    input.extend([0u8; 31]);
    input.push(27 + recid.to_byte());
    input.extend_from_slice(&sig.to_bytes());
    let mut recover = |input: &[u8]| {
        let out = world.transact(&Tx::new(CALLER, PROXY, proxy_args(Address::with_last_byte(1), 0, 64, input), 1));
        assert!(out.success, "{out:?}");
        out.data
    };
    let got = recover(&input);
    assert_eq!(got.len(), 33);
    assert_eq!(&got[1..13], &[0u8; 12]);
    assert_eq!(Address::from_slice(&got[13..]), signer);
    // A bad v: the precompile succeeds with empty output.
    let mut bad = input.clone();
    bad[63] = 29;
    assert_eq!(recover(&bad), vec![0]);
    // A different digest recovers someone else.
    let mut other = input.clone();
    other[0] ^= 1;
    let got = recover(&other);
    assert!(got.len() == 1 || Address::from_slice(&got[13..]) != signer);
}

#[test]
fn test_traps_and_running_out_of_ink_revert_with_empty_data() {
    let imports: &[(&str, &[u8], &[u8])] = &[("write_result", &[I32, I32], &[])];
    let trap = module(imports, &Code::default().i32(0).i32(4).call(0).op(UNREACHABLE).i32(0).0);
    let spin = module(imports, &Code::default().op(LOOP_FOREVER).i32(0).0);
    let mut world = World::new(1);
    world.deploy(Address::repeat_byte(1), Program::from_bytes("trap", &trap).expect("loads"));
    world.deploy(Address::repeat_byte(2), Program::from_bytes("spin", &spin).expect("loads"));
    let out = world.transact(&Tx::new(CALLER, Address::repeat_byte(1), vec![], 1));
    assert!(!out.success && out.data.is_empty(), "{out:?}");
    let mut tx = Tx::new(CALLER, Address::repeat_byte(2), vec![], 1);
    tx.gas_limit = 100_000;
    let out = world.transact(&tx);
    assert!(!out.success && out.data.is_empty(), "{out:?}");
    assert!(out.trap.as_deref().is_some_and(|t| t.contains("out of ink")), "{:?}", out.trap);
    assert_eq!(out.gas_used(), 100_000, "all the gas is spent");
}

#[test]
fn test_a_native_contract_can_call_back_into_a_program() {
    // proxy -> native (Forward) -> storage program: a program instantiated
    // and run from inside another program's host call, on the same store.
    let mut world = World::new(1);
    world.deploy(PROXY, proxy());
    world.deploy(STORE, storage());
    world.deploy_native(NATIVE, Arc::new(Forward));
    let (key, value) = (B256::repeat_byte(0x44), B256::repeat_byte(0x55));
    let out = world.transact(&Tx::new(CALLER, PROXY, proxy_args(NATIVE, 0, 32, &storage_args(1, key, value)), 1));
    assert!(out.success, "{out:?}");
    // The static call keeps the whole chain static: the flush traps.
    assert_eq!(out.data, vec![1], "a write inside a static call reverts");
    assert!(world.storage(STORE).is_empty());
    // Without a flush it is no write at all, and the value comes back.
    let out = world.transact(&Tx::new(CALLER, PROXY, proxy_args(NATIVE, 0, 32, &storage_args(0, key, value)), 1));
    assert_eq!(out.data, [&[0][..], value.as_slice()].concat());
}

#[test]
fn test_programs_compile_on_one_engine_in_parallel() {
    // Compiles are serialized around the meter's per-module state; several
    // threads loading at once must each get a working program.
    let handles: Vec<_> = (0..4).map(|_| std::thread::spawn(|| (proxy(), storage()))).collect();
    for h in handles {
        let (p, s) = h.join().expect("compiling does not panic");
        let mut world = World::new(1);
        world.deploy(PROXY, p);
        world.deploy(STORE, s);
        world.deploy_native(NATIVE, Arc::new(Ten));
        let out = world.transact(&Tx::new(CALLER, PROXY, proxy_args(NATIVE, 8, 8, &[1]), 1));
        assert_eq!(out.data, vec![0, 8, 9]);
    }
}
