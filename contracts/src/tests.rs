//! Unit tests on the SDK's TestVM, calling methods directly. The router-level
//! scenarios (every function, the role matrix, billing edge cases, anchoring,
//! readings) run in the conformance suite (`tests/tests/contracts/conformance.rs`),
//! which drives this edition through its router on TestVM and compares it
//! call by call with the EVM edition on anvil.

use alloy_primitives::{address, Address, B256, U256};
use alloy_sol_types::SolError;
use healthsense_abi::rules::{billing, ids, merkle::StandardTree, reading::reading_leaf};
use stylus_sdk::testing::*;

use super::*;

const ADMIN: Address = address!("00000000000000000000000000000000000a11ce");
const HUB: Address = address!("000000000000000000000000000000000000004b");
const DOCTOR: Address = address!("0000000000000000000000000000000000000d0c");
const INSURER: Address = address!("00000000000000000000000000000000000001a5");
const RECORDS: Address = address!("000000000000000000000000000000000000005e");

fn deployed() -> (TestVM, HealthSense) {
    let vm = TestVM::default();
    vm.set_sender(ADMIN);
    let mut c = HealthSense::from(&vm);
    c.constructor(ADMIN, RECORDS).must();
    for (role, who) in [(ids::HUB_ROLE, HUB), (ids::DOCTOR_ROLE, DOCTOR), (ids::INSURER_ROLE, INSURER)] {
        c.grant_role(role, who).must();
    }
    (vm, c)
}

fn revert_data(e: crate::errors::Error) -> Vec<u8> {
    e.into()
}

/// `unwrap` for contract results (the error type has no `Debug` in the WASM).
trait Must<T> {
    fn must(self) -> T;
}

impl<T> Must<T> for Result<T, crate::errors::Error> {
    fn must(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => panic!("reverted with 0x{}", alloy_primitives::hex::encode(revert_data(e))),
        }
    }
}

fn admitted(vm: &TestVM, c: &mut HealthSense, ward: &str, rate: u64) -> B256 {
    let device = ids::device_id(ward);
    let p = ids::device_id(&format!("stay-{ward}"));
    vm.set_sender(ADMIN);
    c.set_tariff(ids::ward_id(ward), rate).must();
    c.provision_device(device, address!("0000000000000000000000000000000000000007"), ids::ward_id(ward)).must();
    vm.set_sender(HUB);
    c.activate_device(device).must();
    vm.set_sender(DOCTOR);
    c.admit_patient(p, device).must();
    p
}

#[test]
fn constructor_grants_admin_and_logs_it() {
    let vm = TestVM::default();
    vm.set_sender(ADMIN);
    let mut c = HealthSense::from(&vm);
    let zero = revert_data(c.constructor(ADMIN, Address::ZERO).unwrap_err());
    assert_eq!(zero, ZeroAddress {}.abi_encode());
    assert_eq!(revert_data(c.constructor(Address::ZERO, RECORDS).unwrap_err()), zero);
    c.constructor(ADMIN, RECORDS).must();
    assert!(c.has_role(ids::ADMIN_ROLE, ADMIN));
    let logs = vm.get_emitted_logs();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].0[1], ids::ADMIN_ROLE);
}

#[test]
fn stranger_is_refused_with_the_needed_role() {
    let (vm, mut c) = deployed();
    let stranger = address!("0000000000000000000000000000000000000bad");
    vm.set_sender(stranger);
    let err = revert_data(c.set_tariff(ids::ward_id("w"), 1).unwrap_err());
    assert_eq!(err, AccessControlUnauthorizedAccount { account: stranger, neededRole: ids::ADMIN_ROLE }.abi_encode());
    let err = revert_data(c.discharge(B256::repeat_byte(1)).unwrap_err());
    assert_eq!(err, AccessControlUnauthorizedAccount { account: stranger, neededRole: ids::DOCTOR_ROLE }.abi_encode());
}

#[test]
fn discharge_bills_with_the_shared_rule_and_frees_the_device() {
    let (vm, mut c) = deployed();
    vm.set_block_timestamp(10_000);
    let p = admitted(&vm, &mut c, "ward-t", 30_000);
    c.add_charge(p, B256::repeat_byte(1), 1, 2, 7_500).must();
    c.add_charge(p, B256::repeat_byte(2), 3, 1, u64::MAX).must();
    vm.set_sender(INSURER);
    c.set_policy(p, 9_000, 500, 40_000, 0b11).must();
    vm.set_block_timestamp(10_000 + 3 * billing::DAY + 1);
    vm.set_sender(HUB);
    c.discharge(p).must();
    let b = c.get_bill(p);
    let mut totals = [U256::ZERO; 8];
    totals[1] = U256::from(15_000);
    totals[3] = U256::from(u64::MAX);
    let want = billing::compute_bill(&billing::BillInput {
        admitted_at: 10_000,
        discharged_at: 10_000 + 3 * billing::DAY + 1,
        daily_rate: 30_000,
        category_totals: totals,
        policy: Some(billing::Policy { coverage_bps: 9_000, deductible: 500, cap: 40_000, covered_categories: 0b11 }),
    });
    assert_eq!((b.total, b.covered, b.due, b.bedDays), (want.total, want.covered, want.due, want.bed_days));
    assert_eq!(b.bedDays, 4);
    assert_eq!(b.covered, U256::from(40_000));
    assert_eq!(c.get_patient(p).status, 2);
    assert!(c.get_device(c.get_patient(p).deviceId).patientId.is_zero());
    vm.set_sender(DOCTOR);
    let err = revert_data(c.add_charge(p, B256::ZERO, 1, 1, 1).unwrap_err());
    assert_eq!(err, InvalidPatientStatus { patientId: p, status: 2 }.abi_encode());
}

#[test]
fn admission_to_a_ward_without_a_tariff_is_refused_until_one_is_set() {
    let (vm, mut c) = deployed();
    let (ward, device, p) = (ids::ward_id("ward-new"), ids::device_id("HS-N"), B256::repeat_byte(0x4e));
    vm.set_sender(ADMIN);
    c.provision_device(device, address!("0000000000000000000000000000000000000007"), ward).must();
    let err = revert_data(c.set_tariff(ward, 0).unwrap_err());
    assert_eq!(err, ZeroTariff { ward }.abi_encode());
    vm.set_sender(HUB);
    c.activate_device(device).must();
    vm.set_sender(DOCTOR);
    let err = revert_data(c.admit_patient(p, device).unwrap_err());
    assert_eq!(err, WardHasNoTariff { ward }.abi_encode());
    assert_eq!(c.get_patient(p).status, 0);
    assert!(c.get_device(device).patientId.is_zero());
    vm.set_sender(ADMIN);
    c.set_tariff(ward, 1).must();
    vm.set_sender(DOCTOR);
    c.admit_patient(p, device).must();
    assert_eq!(c.get_patient(p).status, 1);
}

#[test]
fn fallback_delegates_to_the_records_program_and_relays_its_answer() {
    let (vm, mut c) = deployed();
    let leaf = ids::device_id("any answer");
    let call = [&0xfeedbeefu32.to_be_bytes()[..], leaf.as_slice()].concat();
    vm.mock_delegate_call(RECORDS, call.clone(), Ok(leaf.to_vec()));
    assert_eq!(c.forward(&call), Ok(leaf.to_vec()));
    let revert = EmptyCid {}.abi_encode();
    vm.mock_delegate_call(RECORDS, call.clone(), Err(revert.clone()));
    assert_eq!(c.forward(&call), Err(revert));
}

#[test]
fn anchoring_rejects_repeats_and_verifies_proofs() {
    let (vm, mut c) = deployed();
    let leaves: Vec<B256> = (0u64..9).map(|i| reading_leaf(&healthsense_abi::Reading { seq: i, ..Default::default() })).collect();
    let tree = StandardTree::new(leaves).unwrap();
    vm.set_sender(HUB);
    assert!(c.batch_root(ids::batch_id(HUB, 3)).is_zero());
    let id = c.anchor_batch(3, tree.root(), 9).must();
    assert_eq!(id, ids::batch_id(HUB, 3));
    assert_eq!(c.batch_root(id), tree.root());
    let err = revert_data(c.anchor_batch(3, tree.root(), 9).unwrap_err());
    assert_eq!(err, BatchAlreadyAnchored { batchId: id }.abi_encode());
    for (leaf, proof) in tree.proofs() {
        assert!(c.verify_reading(id, leaf, proof.clone()));
        assert!(!c.verify_reading(id, leaf ^ B256::with_last_byte(1), proof));
    }
}

#[test]
fn an_unanswered_ecrecover_is_an_invalid_signature() {
    let (vm, mut c) = deployed();
    let mut records = HealthSenseRecords::from(&vm);
    let device = ids::device_id("sig");
    vm.set_sender(ADMIN);
    c.provision_device(device, address!("0000000000000000000000000000000000000007"), ids::ward_id("w")).must();
    vm.set_sender(HUB);
    c.activate_device(device).must();
    let r = Reading {
        deviceId: device,
        seq: 1,
        timestamp: 1,
        heartRate: 70,
        respRate: 14,
        spo2: 98,
        systolic: 120,
        diastolic: 80,
        temperature: 3_700,
        consciousness: 1,
    };
    let mut sig = vec![1u8; 65];
    sig[64] = 27;
    // No precompile answer registered: the recovery yields nothing.
    let err = revert_data(records.post_readings(vec![r], vec![sig.into()]).unwrap_err());
    assert_eq!(err, InvalidSignature { deviceId: device, seq: 1 }.abi_encode());
    assert_eq!(c.get_device(device).lastSeq, 0);
}
