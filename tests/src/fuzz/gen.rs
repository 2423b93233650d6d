//! The call-sequence generator: every state-changing function of the ABI,
//! senders drawn from each role and from strangers, arguments biased to the
//! edges (zero ids, unknown ids, type maxima, paused state, clock jumps across
//! bed-day boundaries) but mostly "valid", so that sequences reach deep
//! states: granted roles, active devices, admitted patients with charges and
//! policies, discharges, archives, anchored batches with real Merkle roots and
//! posted readings with real device signatures.
//!
//! The generator keeps a small model of the contract (who holds which role,
//! devices, patients, batches) only to aim its choices; the model is updated
//! from what the reference engine actually did, so it never has to predict a
//! revert. Whether the engines agree is decided by running them, not by the
//! model.

// Locals named as the ABI's parameters, for field shorthand in the calls.
#![allow(non_snake_case)]

use std::collections::{HashMap, HashSet};

use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::signers::{local::PrivateKeySigner, SignerSync};
use healthsense_abi::bindings::HealthSense::{self as H, HealthSenseCalls as C};
use healthsense_abi::rules::{eip712, ids, merkle::StandardTree, reading::reading_leaf};
use healthsense_abi::Reading;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Env, Step};

const DAY: u64 = 86_400;
/// secp256k1 group order, for high-s (EIP-2 malleable) signatures.
const SECP256K1_N: U256 = U256::from_limbs([0xbfd25e8cd0364141, 0xbaaedce6af48a03b, 0xfffffffffffffffe, 0xffffffffffffffff]);

/// The generator's belief about one device.
#[derive(Debug, Clone)]
struct Dev {
    id: B256,
    signer: Address,
    ward: B256,
    status: u8,
    patient: Option<B256>,
    last_seq: u64,
}

/// The generator's belief about one patient.
#[derive(Debug, Clone)]
struct Pat {
    id: B256,
    status: u8,
    admitted_at: u64,
    insurer: Option<Address>,
}

/// The state-changing functions, one variant each (weights pick among them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    GrantRole,
    RevokeRole,
    RenounceRole,
    Pause,
    Unpause,
    ProvisionDevice,
    ActivateDevice,
    RevokeDevice,
    AdmitPatient,
    AddCharge,
    SetTariff,
    SetPolicy,
    Discharge,
    SetArchive,
    SetBillingRules,
    AnchorBatch,
    PostReadings,
}

/// Seeded generator of one call sequence.
pub struct Generator {
    rng: StdRng,
    env: Env,
    domain: B256,
    /// Block time of the last state-changing call.
    now: u64,
    roles: HashSet<(B256, Address)>,
    paused: bool,
    devices: Vec<Dev>,
    patients: Vec<Pat>,
    wards: Vec<B256>,
    /// Wards with a bed rate (admission to any other is refused).
    priced: HashSet<B256>,
    keys: HashMap<Address, PrivateKeySigner>,
    /// Anchored (hub, seq) pairs and each hub's next sequence number.
    anchored: Vec<(Address, u64)>,
    next_batch: HashMap<Address, u64>,
    serial: u64,
    /// Views to run right after the step just generated (a proof of the
    /// batch it anchors), so they are part of the sequence and shrink with it.
    follow_up: Vec<Step>,
}

impl Generator {
    /// A generator for the sequence of `seed` against the deployment `env`,
    /// whose constructor ran at `t0` and made `env.accounts[0]` the admin.
    pub fn new(seed: u64, env: &Env, t0: u64) -> Self {
        let mut roles = HashSet::new();
        roles.insert((ids::ADMIN_ROLE, env.accounts[0]));
        Self {
            rng: StdRng::seed_from_u64(seed),
            env: env.clone(),
            domain: eip712::domain_separator(env.chain_id, env.address),
            now: t0,
            roles,
            paused: false,
            devices: Vec::new(),
            patients: Vec::new(),
            wards: ["fz-ward-1", "fz-ward-2", "fz-ward-3"].iter().map(|w| ids::ward_id(w)).collect(),
            priced: HashSet::new(),
            keys: HashMap::new(),
            anchored: Vec::new(),
            next_batch: HashMap::new(),
            serial: 0,
            follow_up: Vec::new(),
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[self.rng.random_range(0..v.len())].clone()
    }

    fn fresh_b256(&mut self) -> B256 {
        B256::from(self.rng.random::<[u8; 32]>())
    }

    fn fresh_key(&mut self) -> PrivateKeySigner {
        loop {
            if let Ok(k) = PrivateKeySigner::from_bytes(&self.fresh_b256()) {
                self.keys.insert(k.address(), k.clone());
                return k;
            }
        }
    }

    /// The intended holders of a role (who a well-run hospital grants it to).
    fn intended(&self, role: B256) -> Vec<Address> {
        let a = &self.env.accounts;
        match role {
            r if r == ids::ADMIN_ROLE => vec![a[0], a[8]],
            r if r == ids::HUB_ROLE => vec![a[1], a[5]],
            r if r == ids::DOCTOR_ROLE => vec![a[2], a[7]],
            _ => vec![a[3], a[6]],
        }
    }

    fn holders(&self, role: B256) -> Vec<Address> {
        let mut v: Vec<Address> = self.roles.iter().filter(|(r, _)| *r == role).map(|(_, a)| *a).collect();
        v.sort();
        v
    }

    /// Mostly a current holder of one of `roles` (else an intended one),
    /// sometimes anyone: strangers and holders of other roles.
    fn sender(&mut self, roles: &[B256]) -> Address {
        if self.chance(0.12) {
            return self.pick(&self.env.accounts.clone());
        }
        let mut holders: Vec<Address> = roles.iter().flat_map(|r| self.holders(*r)).collect();
        if holders.is_empty() {
            holders = roles.iter().flat_map(|r| self.intended(*r)).collect();
        }
        self.pick(&holders)
    }

    fn any_role(&mut self) -> B256 {
        match self.rng.random_range(0..20usize) {
            0 => B256::ZERO,
            1 => self.fresh_b256(),
            n => ids::ROLES[n % 4].1,
        }
    }

    /// A device id: mostly one matching `want`, sometimes any known one,
    /// sometimes an edge (zero, never provisioned).
    fn device_id(&mut self, want: impl Fn(&Dev) -> bool) -> B256 {
        let matching: Vec<B256> = self.devices.iter().filter(|d| want(d)).map(|d| d.id).collect();
        match self.rng.random_range(0..100) {
            0..=3 => B256::ZERO,
            4..=8 => self.fresh_b256(),
            9..=17 if !self.devices.is_empty() => {
                let all: Vec<B256> = self.devices.iter().map(|d| d.id).collect();
                self.pick(&all)
            }
            _ if !matching.is_empty() => self.pick(&matching),
            _ if !self.devices.is_empty() => {
                let all: Vec<B256> = self.devices.iter().map(|d| d.id).collect();
                self.pick(&all)
            }
            _ => self.fresh_b256(),
        }
    }

    fn patient_id(&mut self, want: impl Fn(&Pat) -> bool) -> B256 {
        let matching: Vec<B256> = self.patients.iter().filter(|p| want(p)).map(|p| p.id).collect();
        match self.rng.random_range(0..100) {
            0..=3 => B256::ZERO,
            4..=8 => self.fresh_b256(),
            9..=15 if !self.patients.is_empty() => {
                let all: Vec<B256> = self.patients.iter().map(|p| p.id).collect();
                self.pick(&all)
            }
            _ if !matching.is_empty() => self.pick(&matching),
            _ => self.fresh_b256(),
        }
    }

    fn ward(&mut self) -> B256 {
        match self.rng.random_range(0..20) {
            0 => B256::ZERO,
            1 => self.fresh_b256(),
            _ => self.pick(&self.wards.clone()),
        }
    }

    fn u64_edge(&mut self, typical: std::ops::RangeInclusive<u64>) -> u64 {
        match self.rng.random_range(0..20) {
            0 => 0,
            1 => u64::MAX,
            2 => u64::MAX - 1,
            3 => 1,
            4 => self.rng.random(),
            _ => self.rng.random_range(typical),
        }
    }

    fn cid(&mut self) -> String {
        const B32: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
        let len = match self.rng.random_range(0..20) {
            0..=1 => 0,
            2..=3 => self.rng.random_range(1..=31),
            4..=5 => self.rng.random_range(32..=200),
            _ => 52,
        };
        if len == 0 {
            return String::new();
        }
        let mut s = String::from(if len >= 7 { "bafkrei" } else { "" });
        while s.len() < len {
            s.push(B32[self.rng.random_range(0..B32.len())] as char);
        }
        s
    }

    /// Seconds until the next state-changing call: mostly one, sometimes a
    /// jump to just before, at or after a whole number of days since an
    /// admission (the bed-day rounding edge), sometimes days at once.
    fn advance(&mut self) -> u64 {
        let admitted: Vec<u64> = self.patients.iter().filter(|p| p.status == 1).map(|p| p.admitted_at).collect();
        match self.rng.random_range(0..100) {
            0..=9 if !admitted.is_empty() => {
                let at = self.pick(&admitted);
                let days = self.rng.random_range(1..=3u64);
                let delta = self.rng.random_range(0..=2u64);
                let target = (at + days * DAY + delta).saturating_sub(1);
                if target > self.now {
                    target - self.now
                } else {
                    1
                }
            }
            10..=14 => self.pick(&[DAY - 1, DAY, DAY + 1]),
            15..=17 => self.rng.random_range(2..3 * DAY),
            18 => self.rng.random_range(5..=40) * DAY,
            _ => 1,
        }
    }

    fn kind(&mut self) -> Kind {
        use Kind::*;
        let has = |g: &Self, role: B256| !g.holders(role).is_empty();
        let missing_roles = [ids::HUB_ROLE, ids::DOCTOR_ROLE, ids::INSURER_ROLE].iter().any(|r| !has(self, *r));
        let pending = self.devices.iter().any(|d| d.status == 1);
        let free_active = self.devices.iter().any(|d| d.status == 2 && d.patient.is_none() && self.priced.contains(&d.ward));
        let unpriced = self.devices.iter().any(|d| d.status == 2 && d.patient.is_none() && !self.priced.contains(&d.ward));
        let active = self.devices.iter().any(|d| d.status == 2);
        let admitted = self.patients.iter().any(|p| p.status == 1);
        let discharged = self.patients.iter().any(|p| p.status == 2);
        let w = |c: bool, hi: u32, lo: u32| if c { hi } else { lo };
        let table = [
            (GrantRole, w(missing_roles, 30, 3)),
            (RevokeRole, 2),
            (RenounceRole, 2),
            (Pause, w(self.paused, 1, 2)),
            (Unpause, w(self.paused, 25, 1)),
            (ProvisionDevice, w(self.devices.len() < 3, 12, 3)),
            (ActivateDevice, w(pending, 12, 1)),
            (RevokeDevice, 2),
            (AdmitPatient, w(free_active, 12, 2)),
            (AddCharge, w(admitted, 10, 1)),
            (SetTariff, w(unpriced, 10, 3)),
            (SetPolicy, w(admitted, 8, 1)),
            (Discharge, w(admitted, 10, 1)),
            (SetArchive, w(discharged, 40, 1)),
            (SetBillingRules, 2),
            (AnchorBatch, 6),
            (PostReadings, w(active, 10, 2)),
        ];
        let total: u32 = table.iter().map(|(_, w)| w).sum();
        let mut x = self.rng.random_range(0..total);
        for (k, w) in table {
            if x < w {
                return k;
            }
            x -= w;
        }
        PostReadings
    }

    /// The next state-changing step (and any views to run right after it,
    /// returned by [`Generator::take_follow_up`]).
    pub fn next_step(&mut self) -> Step {
        let advance = self.advance();
        let time = self.now + advance;
        let (from, call) = self.call(time);
        Step { from, advance, call }
    }

    /// Views that belong right after the last generated step.
    pub fn take_follow_up(&mut self) -> Vec<Step> {
        std::mem::take(&mut self.follow_up)
    }

    fn call(&mut self, time: u64) -> (Address, C) {
        let (admin, hub, doctor, insurer) = (ids::ADMIN_ROLE, ids::HUB_ROLE, ids::DOCTOR_ROLE, ids::INSURER_ROLE);
        match self.kind() {
            Kind::GrantRole => {
                let missing: Vec<B256> = [hub, doctor, insurer].into_iter().filter(|r| self.holders(*r).is_empty()).collect();
                let role = if !missing.is_empty() && self.chance(0.8) { self.pick(&missing) } else { self.any_role() };
                let account = match self.rng.random_range(0..20) {
                    0 => Address::ZERO,
                    1..=2 => self.pick(&self.env.accounts.clone()),
                    _ if ids::is_known_role(role) => self.pick(&self.intended(role)),
                    _ => self.pick(&self.env.accounts.clone()),
                };
                (self.sender(&[admin]), C::grantRole(H::grantRoleCall { role, account }))
            }
            Kind::RevokeRole => {
                let role = self.any_role();
                let holders = self.holders(role);
                let account = if !holders.is_empty() && self.chance(0.8) { self.pick(&holders) } else { self.pick(&self.env.accounts.clone()) };
                (self.sender(&[admin]), C::revokeRole(H::revokeRoleCall { role, account }))
            }
            Kind::RenounceRole => {
                let role = self.any_role();
                let holders = self.holders(role);
                let from = if !holders.is_empty() && self.chance(0.8) { self.pick(&holders) } else { self.pick(&self.env.accounts.clone()) };
                let callerConfirmation = if self.chance(0.85) { from } else { self.pick(&self.env.accounts.clone()) };
                (from, C::renounceRole(H::renounceRoleCall { role, callerConfirmation }))
            }
            Kind::Pause => (self.sender(&[admin]), C::pause(H::pauseCall {})),
            Kind::Unpause => (self.sender(&[admin]), C::unpause(H::unpauseCall {})),
            Kind::ProvisionDevice => {
                self.serial += 1;
                let deviceId = match self.rng.random_range(0..20) {
                    0 => B256::ZERO,
                    1..=2 if !self.devices.is_empty() => self.device_id(|_| true),
                    _ => ids::device_id(&format!("FZ-{:04}", self.serial)),
                };
                let signer = match self.rng.random_range(0..20) {
                    0 => Address::ZERO,
                    1 if !self.devices.is_empty() => self.pick(&self.devices.iter().map(|d| d.signer).collect::<Vec<_>>()),
                    2 => Address::from(self.rng.random::<[u8; 20]>()),
                    _ => self.fresh_key().address(),
                };
                let ward = self.ward();
                (self.sender(&[admin]), C::provisionDevice(H::provisionDeviceCall { deviceId, signer, ward }))
            }
            Kind::ActivateDevice => {
                let deviceId = self.device_id(|d| d.status == 1);
                (self.sender(&[hub]), C::activateDevice(H::activateDeviceCall { deviceId }))
            }
            Kind::RevokeDevice => {
                let deviceId = self.device_id(|d| d.status != 3);
                (self.sender(&[admin]), C::revokeDevice(H::revokeDeviceCall { deviceId }))
            }
            Kind::AdmitPatient => {
                let patientId = match self.rng.random_range(0..20) {
                    0 => B256::ZERO,
                    1..=2 if !self.patients.is_empty() => self.patient_id(|_| true),
                    _ => self.fresh_b256(),
                };
                // Mostly a device in a priced ward; the others meet WardHasNoTariff.
                let priced = self.priced.clone();
                let deviceId = self.device_id(|d| d.status == 2 && d.patient.is_none() && priced.contains(&d.ward));
                (self.sender(&[doctor]), C::admitPatient(H::admitPatientCall { patientId, deviceId }))
            }
            Kind::AddCharge => {
                let patientId = self.patient_id(|p| p.status == 1);
                let code = match self.rng.random_range(0..10) {
                    0 => B256::ZERO,
                    1 => B256::repeat_byte(0xff),
                    _ => ids::charge_code(self.pick(&["99213", "J1100", "80053", "71045", "BED"])).unwrap_or_default(),
                };
                let category = match self.rng.random_range(0..20) {
                    0 => 8,
                    1 => u8::MAX,
                    _ => self.rng.random_range(0..8),
                };
                let quantity = match self.rng.random_range(0..20) {
                    0..=1 => 0,
                    2 => u32::MAX,
                    _ => self.rng.random_range(1..=10),
                };
                let unitPrice = self.u64_edge(100..=250_000);
                (self.sender(&[doctor]), C::addCharge(H::addChargeCall { patientId, code, category, quantity, unitPrice }))
            }
            Kind::SetTariff => {
                // Mostly the ward of a device waiting for a bed rate.
                let waiting: Vec<B256> = self.devices.iter().filter(|d| d.status == 2 && !self.priced.contains(&d.ward)).map(|d| d.ward).collect();
                let ward = if !waiting.is_empty() && self.chance(0.7) { self.pick(&waiting) } else { self.ward() };
                let dailyRate = self.u64_edge(10_000..=90_000);
                (self.sender(&[admin]), C::setTariff(H::setTariffCall { ward, dailyRate }))
            }
            Kind::SetPolicy => {
                let patientId = self.patient_id(|p| p.status == 1);
                let coverageBps = match self.rng.random_range(0..20) {
                    0 => 10_001,
                    1 => u16::MAX,
                    2 => 10_000,
                    3 => 0,
                    _ => self.rng.random_range(1..10_000),
                };
                let deductible = match self.rng.random_range(0..4) {
                    0 => 0,
                    _ => self.u64_edge(0..=50_000),
                };
                let cap = self.u64_edge(10_000..=10_000_000);
                let coveredCategories = match self.rng.random_range(0..6) {
                    0 => 0xff,
                    1 => 0,
                    2 => 1,
                    _ => self.rng.random(),
                };
                // The policy's insurer mostly, another insurer sometimes.
                let holder = self.patients.iter().find(|p| p.id == patientId).and_then(|p| p.insurer);
                let from = match holder {
                    Some(i) if self.chance(0.75) => i,
                    _ => self.sender(&[insurer]),
                };
                (from, C::setPolicy(H::setPolicyCall { patientId, coverageBps, deductible, cap, coveredCategories }))
            }
            Kind::Discharge => {
                let patientId = self.patient_id(|p| p.status == 1);
                (self.sender(&[hub, doctor]), C::discharge(H::dischargeCall { patientId }))
            }
            Kind::SetArchive => {
                let patientId = self.patient_id(|p| p.status == 2);
                let cid = self.cid();
                let recordHash = if self.chance(0.1) { B256::ZERO } else { self.fresh_b256() };
                (self.sender(&[hub]), C::setArchive(H::setArchiveCall { patientId, cid, recordHash }))
            }
            Kind::SetBillingRules => {
                let cid = self.cid();
                (self.sender(&[admin]), C::setBillingRules(H::setBillingRulesCall { cid }))
            }
            Kind::AnchorBatch => self.anchor_batch(time),
            Kind::PostReadings => self.post_readings(time),
        }
    }

    fn reading(&mut self, deviceId: B256, seq: u64, time: u64) -> Reading {
        let consciousness = self.rng.random_range(0..=6);
        let mut v = |typical: std::ops::RangeInclusive<u16>| match self.rng.random_range(0..25) {
            0 => 0,
            1 => u16::MAX,
            _ => self.rng.random_range(typical),
        };
        Reading {
            deviceId,
            seq,
            timestamp: time * 1_000 - 500,
            heartRate: v(40..=180),
            respRate: v(8..=30),
            spo2: v(85..=100),
            systolic: v(90..=180),
            diastolic: v(50..=110),
            temperature: v(3_500..=4_100),
            consciousness,
        }
    }

    fn anchor_batch(&mut self, time: u64) -> (Address, C) {
        let from = self.sender(&[ids::HUB_ROLE]);
        let next = self.next_batch.get(&from).copied().unwrap_or(1);
        let seq = match self.rng.random_range(0..20) {
            0 => 0,
            1 => u64::MAX,
            2..=3 if !self.anchored.is_empty() => self.pick(&self.anchored.clone()).1,
            _ => next,
        };
        let (root, leaf_count, proof_of) = match self.rng.random_range(0..20) {
            0..=1 => (B256::ZERO, self.rng.random_range(1..100u32), None),
            2..=5 => (self.fresh_b256(), self.rng.random(), None),
            _ => {
                let dev = if self.devices.is_empty() { self.fresh_b256() } else { self.pick(&self.devices.iter().map(|d| d.id).collect::<Vec<_>>()) };
                let n = self.rng.random_range(1..=40u64);
                let leaves: Vec<B256> = (1..=n).map(|s| reading_leaf(&self.reading(dev, s, time))).collect();
                let tree = StandardTree::new(leaves).expect("at least one leaf");
                let count = match self.rng.random_range(0..10) {
                    0 => 0,
                    1 => u32::MAX,
                    _ => n as u32,
                };
                (tree.root(), count, Some(tree))
            }
        };
        let batchId = ids::batch_id(from, seq);
        if let Some(tree) = proof_of {
            // A real proof, and the same proof with a flipped bit.
            let i = self.rng.random_range(0..tree.len());
            if let Some((leaf, proof)) = tree.proofs().nth(i) {
                let mut bad = leaf;
                bad.0[31] ^= 1;
                let stranger = self.env.accounts[4];
                for leaf in [leaf, bad] {
                    self.follow_up.push(Step::view(stranger, C::verifyReading(H::verifyReadingCall { batchId, leaf, proof: proof.clone() })));
                }
            }
        }
        (from, C::anchorBatch(H::anchorBatchCall { seq, root, leafCount: leaf_count }))
    }

    fn sign(&mut self, key: &PrivateKeySigner, r: &Reading) -> Bytes {
        let digest = eip712::reading_digest(self.domain, r);
        match key.sign_hash_sync(&digest) {
            Ok(sig) => Bytes::from(sig.as_bytes().to_vec()),
            Err(_) => Bytes::new(),
        }
    }

    fn post_readings(&mut self, time: u64) -> (Address, C) {
        let from = self.sender(&[ids::HUB_ROLE]);
        let n = match self.rng.random_range(0..20) {
            0 => 0,
            1..=9 => 1,
            10..=15 => 2,
            _ => self.rng.random_range(3..=6),
        };
        let mut readings = Vec::new();
        let mut signatures = Vec::new();
        let mut last: HashMap<B256, u64> = self.devices.iter().map(|d| (d.id, d.last_seq)).collect();
        // TestVM answers every ecrecover of a call with the output of the
        // last one the harness registered (stylus-test 0.10.10 keeps one
        // return-data buffer), so a batch whose signatures recover to
        // different addresses would diverge in the harness, not the
        // contract: batches of several readings keep one device and one key,
        // and malformed signatures come one reading at a time.
        let batch_device = self.device_id(|d| d.status == 2);
        let batch_key = self.devices.iter().find(|d| d.id == batch_device).and_then(|d| self.keys.get(&d.signer).cloned());
        let batch_key = match batch_key {
            Some(k) => k,
            None => self.fresh_key(),
        };
        for _ in 0..n {
            let id = if n > 1 { batch_device } else { self.device_id(|d| d.status == 2) };
            let prev = last.get(&id).copied().unwrap_or(0);
            let seq = match self.rng.random_range(0..20) {
                0 => prev,
                1 => 0,
                2 => u64::MAX,
                3 => prev.saturating_add(self.rng.random_range(2..1_000)),
                _ => prev.saturating_add(1),
            };
            last.insert(id, seq.max(prev));
            let r = self.reading(id, seq, time);
            let signer = self.devices.iter().find(|d| d.id == id).map(|d| d.signer);
            let key = match signer.and_then(|s| self.keys.get(&s).cloned()) {
                _ if n > 1 => batch_key.clone(),
                Some(k) if self.chance(0.9) => k,
                _ => self.fresh_key(),
            };
            let sig = self.sign(&key, &r);
            let corrupt = if n > 1 { 30 } else { self.rng.random_range(0..30) };
            let (r, sig) = match corrupt {
                0 => (r, sig.slice(..64)),
                1 => (r, Bytes::new()),
                2 => {
                    let mut s = sig.to_vec();
                    if let Some(v) = s.get_mut(64) {
                        *v = self.pick(&[0u8, 1, 26, 29]);
                    }
                    (r, s.into())
                }
                3 if sig.len() == 65 => {
                    // Same signature with the high s (EIP-2 rejects it).
                    let mut s = sig.to_vec();
                    let low = U256::from_be_slice(&sig[32..64]);
                    s[32..64].copy_from_slice(&(SECP256K1_N - low).to_be_bytes::<32>());
                    s[64] = if sig[64] == 27 { 28 } else { 27 };
                    (r, s.into())
                }
                4 => {
                    let mut t = r.clone();
                    t.spo2 ^= 1;
                    (t, sig)
                }
                _ => (r, sig),
            };
            readings.push(r.into());
            signatures.push(sig);
        }
        match self.rng.random_range(0..25) {
            0 => {
                signatures.pop();
            }
            1 => signatures.push(Bytes::new()),
            _ => {}
        }
        (from, C::postReadings(H::postReadingsCall { readings, signatures }))
    }

    /// Updates the model after `step` ran on the reference engine at block
    /// time `time`, with `success`.
    pub fn observe(&mut self, step: &Step, time: u64, success: bool) {
        self.now = time;
        if !success {
            return;
        }
        match &step.call {
            C::grantRole(c) => {
                self.roles.insert((c.role, c.account));
            }
            C::revokeRole(c) => {
                self.roles.remove(&(c.role, c.account));
            }
            C::renounceRole(c) => {
                self.roles.remove(&(c.role, step.from));
            }
            C::pause(_) => self.paused = true,
            C::unpause(_) => self.paused = false,
            C::provisionDevice(c) => self.devices.push(Dev { id: c.deviceId, signer: c.signer, ward: c.ward, status: 1, patient: None, last_seq: 0 }),
            C::activateDevice(c) => self.device_mut(c.deviceId, |d| d.status = 2),
            C::revokeDevice(c) => self.device_mut(c.deviceId, |d| d.status = 3),
            C::admitPatient(c) => {
                self.device_mut(c.deviceId, |d| d.patient = Some(c.patientId));
                self.patients.push(Pat { id: c.patientId, status: 1, admitted_at: time, insurer: None });
            }
            C::setTariff(c) => {
                self.priced.insert(c.ward);
            }
            C::setPolicy(c) => {
                let from = step.from;
                self.patient_mut(c.patientId, |p| p.insurer = Some(from));
            }
            C::discharge(c) => {
                self.patient_mut(c.patientId, |p| p.status = 2);
                self.devices.iter_mut().filter(|d| d.patient == Some(c.patientId)).for_each(|d| d.patient = None);
            }
            C::setArchive(c) => self.patient_mut(c.patientId, |p| p.status = 3),
            C::anchorBatch(c) => {
                self.anchored.push((step.from, c.seq));
                let next = self.next_batch.entry(step.from).or_insert(1);
                *next = (*next).max(c.seq.saturating_add(1));
            }
            C::postReadings(c) => {
                for r in &c.readings {
                    self.device_mut(r.deviceId, |d| d.last_seq = d.last_seq.max(r.seq));
                }
            }
            _ => {}
        }
    }

    fn device_mut(&mut self, id: B256, f: impl FnOnce(&mut Dev)) {
        if let Some(d) = self.devices.iter_mut().find(|d| d.id == id) {
            f(d);
        }
    }

    fn patient_mut(&mut self, id: B256, f: impl FnOnce(&mut Pat)) {
        if let Some(p) = self.patients.iter_mut().find(|p| p.id == id) {
            f(p);
        }
    }
}
