//! Differential fuzzing of the contract engines.
//!
//! [`gen::Generator`] writes call sequences from the ABI (every
//! state-changing function, senders from every role and strangers, arguments
//! biased to the edges); [`Fuzzer`] runs each call on every engine from a
//! fresh deployment and compares success, return or revert data and logs,
//! then every view of the ABI over the ids the sequence touched
//! ([`probes`]). On a difference, [`shrink::shrink`] cuts the sequence down
//! by replaying it on fresh engines, and [`render`] prints what is left as
//! Rust with the seed that produced it.
//!
//! The engines: the Stylus edition on the SDK's TestVM
//! ([`engines::TestVmEngine`]), the EVM edition on a real anvil, reset
//! between sequences with `evm_snapshot`/`evm_revert`
//! ([`engines::AnvilEngine`]), and any other [`Engine`].

// Locals named as the ABI's parameters, for field shorthand in the calls.
#![allow(non_snake_case)]

pub mod engines;
pub mod gas;
pub mod gen;
pub mod shrink;

use std::collections::{BTreeMap, HashMap, HashSet};

use alloy::json_abi::StateMutability;
use alloy::primitives::{address, Address, B256};
use alloy::sol_types::SolInterface;
use healthsense_abi::bindings::HealthSense::{self as H, HealthSenseCalls as C};
use healthsense_abi::rules::ids;

use crate::twin::decode_error;
use crate::Outcome;

/// anvil's first ten dev accounts (its default mnemonic): the senders of
/// every sequence, so a sequence means the same on every engine.
pub const ACCOUNTS: [Address; 10] = [
    address!("f39Fd6e51aad88F6F4ce6aB8827279cffFb92266"),
    address!("70997970C51812dc3A010C7d01b50e0d17dc79C8"),
    address!("3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"),
    address!("90F79bf6EB2c4f870365E785982E1f101E93b906"),
    address!("15d34AAf54267DB7D7c367839AAf71A00a2C6A65"),
    address!("9965507D1a55bcC2695C58ba16FB37d819B0A4dc"),
    address!("976EA74026E726554dB657fA54763abd0C3a0aa9"),
    address!("14dC79964da2C08b23698B3D3cc7Ca32193d9955"),
    address!("23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f"),
    address!("a0Ee7A142d267C1f36714E4a8F75612F20a79720"),
];

/// What each of [`ACCOUNTS`] is meant to be (the generator grants roles
/// mostly, not only, along these lines).
pub const ACTORS: [&str; 10] = ["admin", "hub", "doctor", "insurer", "stranger", "hub2", "insurer2", "doctor2", "admin2", "stranger2"];

/// Where and when every engine's contract lives: the same address, chain and
/// deployment time everywhere, so EIP-712 signatures and block times agree.
#[derive(Debug, Clone)]
pub struct Env {
    /// Contract address.
    pub address: Address,
    /// Chain id (EIP-712 domain).
    pub chain_id: u64,
    /// Block time of the deployment; the first call comes after it.
    pub t0: u64,
    /// Senders; `accounts[0]` deploys and is the first admin.
    pub accounts: [Address; 10],
}

impl Env {
    /// The deployment anvil gives the first contract of its first account,
    /// for runs without anvil.
    pub fn offline() -> Self {
        Self {
            address: address!("5FbDB2315678afecb367f032d93F642f64180aa3"),
            chain_id: crate::evm::CHAIN_ID,
            t0: 1_764_000_000,
            accounts: ACCOUNTS,
        }
    }
}

/// One call of a sequence.
#[derive(Debug, Clone)]
pub struct Step {
    /// Sender.
    pub from: Address,
    /// Seconds the clock moves before this call (0 for views, which run at
    /// the current block time).
    pub advance: u64,
    /// The call, as the ABI's bindings spell it.
    pub call: C,
}

impl Step {
    /// A view call from `from`.
    pub fn view(from: Address, call: C) -> Self {
        Self { from, advance: 0, call }
    }
}

/// A contract engine the fuzzer drives; every sequence starts from a fresh
/// deployment.
pub trait Engine {
    /// Short name for reports.
    fn name(&self) -> &'static str;
    /// Deploys afresh (or rewinds to the fresh deployment) at the fuzz
    /// [`Env`]; returns what the constructor did.
    fn reset(&mut self) -> Outcome;
    /// Calls the contract as [`crate::Edition::call`] does.
    fn call(&mut self, from: Address, calldata: &[u8], view: bool, time: u64) -> Outcome;
    /// Gas the last call used, for engines that meter it.
    fn last_gas(&self) -> Option<u64> {
        None
    }
    /// The contract's non-zero storage slots, for engines that can list
    /// them (the Stylus engines, whose layouts are the same program's).
    fn storage(&self) -> Option<BTreeMap<B256, B256>> {
        None
    }
}

/// Where two engines first disagreed.
#[derive(Debug, Clone)]
pub struct Divergence {
    /// The steps up to and including the one that diverged (a final view
    /// appears as the last step).
    pub steps: Vec<Step>,
    /// What differed, engine by engine.
    pub what: String,
}

/// Counters over a whole run: how deep the sequences got.
#[derive(Debug, Default, Clone)]
pub struct Coverage {
    /// Sequences run.
    pub sequences: usize,
    /// State-changing calls run (on each engine).
    pub calls: usize,
    /// View calls run (follow-ups and final probes).
    pub views: usize,
    /// Per state-changing function: (succeeded, reverted).
    pub by_function: BTreeMap<&'static str, (usize, usize)>,
}

impl Coverage {
    /// One line per function.
    pub fn table(&self) -> String {
        let mut s = format!("{} sequences, {} state-changing calls, {} views\n", self.sequences, self.calls, self.views);
        for (f, (ok, rev)) in &self.by_function {
            s.push_str(&format!("  {f:<16} {ok:>6} ok {rev:>6} reverted\n"));
        }
        s
    }
}

/// Runs sequences on a set of engines and compares them.
pub struct Fuzzer {
    /// The deployment every engine shares.
    pub env: Env,
    engines: Vec<Box<dyn Engine>>,
    views: HashSet<[u8; 4]>,
    names: HashMap<[u8; 4], &'static str>,
    /// How deep the run got.
    pub coverage: Coverage,
    /// Gas per engine and function, successful state-changing calls only.
    pub gas: gas::GasBook,
}

/// The ABI's function names by selector, leaked once for `&'static` keys.
fn function_names() -> HashMap<[u8; 4], &'static str> {
    H::abi::contract()
        .functions()
        .map(|f| (f.selector().0, &*Box::leak(f.name.clone().into_boxed_str())))
        .collect()
}

impl Fuzzer {
    /// A fuzzer over `engines` (at least two), all deployed at `env`.
    pub fn new(env: Env, engines: Vec<Box<dyn Engine>>) -> Self {
        assert!(engines.len() >= 2, "differential fuzzing needs two engines");
        let views = H::abi::contract()
            .functions()
            .filter(|f| matches!(f.state_mutability, StateMutability::View | StateMutability::Pure))
            .map(|f| f.selector().0)
            .collect();
        Self { env, engines, views, names: function_names(), coverage: Coverage::default(), gas: gas::GasBook::default() }
    }

    /// The engines' names, in order.
    pub fn engine_names(&self) -> Vec<&'static str> {
        self.engines.iter().map(|e| e.name()).collect()
    }

    /// The ABI name of a call.
    pub fn function_name(&self, call: &C) -> &'static str {
        self.names.get(&call.selector()).copied().unwrap_or("?")
    }

    fn is_view(&self, call: &C) -> bool {
        self.views.contains(&call.selector())
    }

    /// Fresh deployments everywhere; the constructors must agree.
    fn reset(&mut self) -> Result<(), String> {
        let outs: Vec<Outcome> = self.engines.iter_mut().map(|e| e.reset()).collect();
        if let Some(i) = outs.iter().position(|o| !same(o, &outs[0])) {
            return Err(format!("constructors differ:\n{}", self.describe(&[(0, &outs[0]), (i, &outs[i])])));
        }
        Ok(())
    }

    fn describe(&self, outs: &[(usize, &Outcome)]) -> String {
        outs.iter()
            .map(|(i, o)| {
                let data = if o.success { format!("returned 0x{}", alloy::hex::encode(&o.data)) } else { format!("reverted {}", decode_error(&o.data)) };
                let logs: Vec<String> = o.logs.iter().map(|(t, d)| format!("{t:?} 0x{}", alloy::hex::encode(d))).collect();
                format!("  {}: {data}; logs {logs:?}", self.engines[*i].name())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs one step on every engine at `time`; the reference outcome, or
    /// what differed.
    fn exec(&mut self, step: &Step, time: u64, record: bool) -> Result<Outcome, String> {
        let data = step.call.abi_encode();
        let view = self.is_view(&step.call);
        let name = self.function_name(&step.call);
        let mut outs = Vec::with_capacity(self.engines.len());
        for e in self.engines.iter_mut() {
            let out = e.call(step.from, &data, view, time);
            if record && out.success && !view {
                if let Some(g) = e.last_gas() {
                    self.gas.record(e.name(), name, g);
                }
            }
            outs.push(out);
        }
        if let Some(i) = outs.iter().position(|o| !same(o, &outs[0])) {
            return Err(format!("{name} differs:\n{}", self.describe(&[(0, &outs[0]), (i, &outs[i])])));
        }
        if !view {
            self.same_storage(name)?;
        }
        if record {
            if view {
                self.coverage.views += 1;
            } else {
                self.coverage.calls += 1;
                let c = self.coverage.by_function.entry(name).or_default();
                if outs[0].success {
                    c.0 += 1;
                } else {
                    c.1 += 1;
                }
            }
        }
        Ok(outs.swap_remove(0))
    }

    /// The storage of every engine that lists it must agree slot by slot.
    fn same_storage(&self, after: &str) -> Result<(), String> {
        let listed: Vec<(&'static str, BTreeMap<B256, B256>)> =
            self.engines.iter().filter_map(|e| Some((e.name(), e.storage()?))).collect();
        let Some((first, reference)) = listed.first() else { return Ok(()) };
        for (name, storage) in &listed[1..] {
            if storage == reference {
                continue;
            }
            let keys: std::collections::BTreeSet<&B256> = reference.keys().chain(storage.keys()).collect();
            let slot = keys.into_iter().find(|k| reference.get(*k) != storage.get(*k));
            return Err(format!(
                "storage after {after} differs between {first} and {name} at slot {slot:?}: {:?} vs {:?}",
                slot.and_then(|k| reference.get(k)),
                slot.and_then(|k| storage.get(k)),
            ));
        }
        Ok(())
    }

    /// Generates sequence `seed` of `calls` state-changing calls (plus the
    /// views the generator adds) while running it, then the final probes.
    pub fn run(&mut self, seed: u64, calls: usize) -> Result<(), Divergence> {
        let mut steps = Vec::new();
        self.reset().map_err(|what| Divergence { steps: vec![], what })?;
        let mut g = gen::Generator::new(seed, &self.env, self.env.t0);
        let mut time = self.env.t0;
        for _ in 0..calls {
            let step = g.next_step();
            time += step.advance;
            steps.push(step.clone());
            let out = self.exec(&step, time, true).map_err(|what| Divergence { steps: steps.clone(), what })?;
            g.observe(&step, time, out.success);
            for v in g.take_follow_up() {
                steps.push(v.clone());
                self.exec(&v, time, true).map_err(|what| Divergence { steps: steps.clone(), what })?;
            }
        }
        for p in probes(&steps) {
            steps.push(p.clone());
            self.exec(&p, time, true).map_err(|what| Divergence { steps: steps.clone(), what })?;
        }
        self.coverage.sequences += 1;
        Ok(())
    }

    /// Replays fixed `steps` on fresh engines, then the probes of its ids.
    pub fn replay(&mut self, steps: &[Step]) -> Result<(), String> {
        self.reset()?;
        let mut time = self.env.t0;
        for s in steps {
            time += s.advance;
            self.exec(s, time, false)?;
        }
        for p in probes(steps) {
            self.exec(&p, time, false)?;
        }
        Ok(())
    }

    /// Shrinks a divergence to a minimal sequence that still diverges and
    /// renders it with its seed.
    pub fn report(&mut self, seed: u64, d: Divergence) -> String {
        let engines = self.engine_names().join(" vs ");
        let steps = shrink::shrink(d.steps.clone(), |s| self.replay(s).is_err());
        let what = self.replay(&steps).err().unwrap_or_else(|| d.what.clone());
        format!(
            "engines {engines} diverge on sequence seed {seed} \
             (rerun: HEALTHSENSE_FUZZ_SEED={seed} HEALTHSENSE_FUZZ_SEQUENCES=1)\n\
             first difference: {}\nshrunk from {} to {} steps:\n{}\nthere: {what}",
            d.what,
            d.steps.len(),
            steps.len(),
            render(&steps),
        )
    }
}

/// Same success, data and logs (anything else an engine reports, such as
/// gas, may differ).
fn same(a: &Outcome, b: &Outcome) -> bool {
    a.success == b.success && a.data == b.data && a.logs == b.logs
}

/// Every view of the ABI over what `steps` touched: roles of every account
/// named, each device, patient (record, every charge and one past the end,
/// policy, bill, archive), ward tariff, batch (id, record, a one-leaf proof
/// of its root), the singletons, and the leaf and digest of posted readings.
pub fn probes(steps: &[Step]) -> Vec<Step> {
    let mut devices = Vec::new();
    let mut patients: Vec<(B256, u32)> = Vec::new();
    let mut wards = Vec::new();
    let mut batches = Vec::new();
    let mut accounts: Vec<Address> = ACCOUNTS.to_vec();
    let mut roles: Vec<B256> = ids::ROLES.iter().map(|r| r.1).collect();
    let mut readings = Vec::new();
    fn add<T: PartialEq>(v: &mut Vec<T>, x: T) {
        if !v.contains(&x) {
            v.push(x);
        }
    }
    let mut patient = |p: B256, charge: bool| match patients.iter_mut().find(|(q, _)| *q == p) {
        Some((_, n)) => *n += charge as u32,
        None => patients.push((p, charge as u32)),
    };
    for s in steps {
        match &s.call {
            C::grantRole(c) => {
                add(&mut roles, c.role);
                add(&mut accounts, c.account);
            }
            C::revokeRole(c) => add(&mut accounts, c.account),
            C::provisionDevice(c) => {
                add(&mut devices, c.deviceId);
                add(&mut wards, c.ward);
            }
            C::activateDevice(c) => add(&mut devices, c.deviceId),
            C::revokeDevice(c) => add(&mut devices, c.deviceId),
            C::admitPatient(c) => {
                patient(c.patientId, false);
                add(&mut devices, c.deviceId);
            }
            C::addCharge(c) => patient(c.patientId, true),
            C::setPolicy(c) => patient(c.patientId, false),
            C::discharge(c) => patient(c.patientId, false),
            C::setArchive(c) => patient(c.patientId, false),
            C::setTariff(c) => add(&mut wards, c.ward),
            C::anchorBatch(c) => add(&mut batches, (s.from, c.seq, c.root)),
            C::postReadings(c) => {
                for r in &c.readings {
                    add(&mut devices, r.deviceId);
                    if readings.len() < 3 {
                        readings.push(r.clone());
                    }
                }
            }
            _ => {}
        }
    }
    let who = ACCOUNTS[4];
    let v = |call: C| Step::view(who, call);
    let mut out = vec![
        v(C::ADMIN_ROLE(H::ADMIN_ROLECall {})),
        v(C::HUB_ROLE(H::HUB_ROLECall {})),
        v(C::DOCTOR_ROLE(H::DOCTOR_ROLECall {})),
        v(C::INSURER_ROLE(H::INSURER_ROLECall {})),
        v(C::paused(H::pausedCall {})),
        v(C::billingRules(H::billingRulesCall {})),
        v(C::DOMAIN_SEPARATOR(H::DOMAIN_SEPARATORCall {})),
    ];
    for role in &roles {
        for account in &accounts {
            out.push(v(C::hasRole(H::hasRoleCall { role: *role, account: *account })));
        }
    }
    for deviceId in devices {
        out.push(v(C::getDevice(H::getDeviceCall { deviceId })));
    }
    for (patientId, charges) in patients {
        out.push(v(C::getPatient(H::getPatientCall { patientId })));
        for index in 0..=charges.min(6) {
            out.push(v(C::getCharge(H::getChargeCall { patientId, index })));
        }
        out.push(v(C::getPolicy(H::getPolicyCall { patientId })));
        out.push(v(C::getBill(H::getBillCall { patientId })));
        out.push(v(C::getArchive(H::getArchiveCall { patientId })));
    }
    for ward in wards {
        out.push(v(C::tariff(H::tariffCall { ward })));
    }
    for (hub, seq, root) in batches {
        let batchId = ids::batch_id(hub, seq);
        out.push(v(C::batchIdOf(H::batchIdOfCall { hub, seq })));
        out.push(v(C::batchRoot(H::batchRootCall { batchId })));
        out.push(v(C::verifyReading(H::verifyReadingCall { batchId, leaf: root, proof: vec![] })));
    }
    for reading in readings {
        out.push(v(C::readingLeaf(H::readingLeafCall { reading: reading.clone() })));
        out.push(v(C::readingDigest(H::readingDigestCall { reading })));
    }
    out
}

/// A sequence as Rust, senders by role name (`who[i]` is `ACCOUNTS[i]`),
/// hashes and addresses as alloy literals, ready to paste into a regression
/// test.
pub fn render(steps: &[Step]) -> String {
    let mut s = String::from("vec![\n");
    for st in steps {
        let who = ACCOUNTS.iter().position(|a| *a == st.from).map(|i| format!("who[{i}] /* {} */", ACTORS[i])).unwrap_or_else(|| format!("{:?}", st.from));
        s.push_str(&format!("    Step {{ from: {who}, advance: {}, call: C::{} }},\n", st.advance, literals(&format!("{:?}", st.call))));
    }
    s.push(']');
    s
}

/// Rewrites `0x…` hex in Debug output as `address!`, `b256!` or `bytes!`.
fn literals(debug: &str) -> String {
    let mut out = String::with_capacity(debug.len());
    let mut rest = debug;
    while let Some(i) = rest.find("0x") {
        out.push_str(&rest[..i]);
        let hex: String = rest[i + 2..].chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        let mac = match hex.len() {
            40 => "address",
            64 => "b256",
            _ => "bytes",
        };
        out.push_str(&format!("{mac}!(\"{hex}\")"));
        rest = &rest[i + 2 + hex.len()..];
    }
    out.push_str(rest);
    out
}

